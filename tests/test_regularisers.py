"""The regularisers: label smoothing (SoftmaxWithLoss loss_param), GaussianNoise, spatial
dropout, weight noise (ParamSpec.weight_noise) and max-norm constraints (ParamSpec.max_norm),
each against an independent computation (PyTorch's cross_entropy, numpy) or the statistics it
must have, TRAIN and TEST."""

from __future__ import annotations

import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MLP, jit_fast
from test_parity import build, inputs_layer

from netc.runtime.checkpoint import latest_checkpoint, load_checkpoint
from netc.runtime.solver import make_optimizer, with_max_norm
from netc.runtime.trainer import Solver, TrainConfig
from netc.spec.solver import SolverParameter

# --- label smoothing -----------------------------------------------------------------------------


def smoothed_numpy(logits, lab, eps, ignore):
    """(1 − ε)·(−log p_label) + ε·mean_c(−log p_c), averaged over the positions not ignored;
    classes on axis 1."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    logp = np.moveaxis(logp, 1, -1).reshape(-1, logits.shape[1])
    lab = lab.reshape(-1)
    valid = lab != ignore if ignore is not None else np.ones(lab.shape, bool)
    safe = np.where(valid, lab, 0)
    per = -(1 - eps) * logp[np.arange(lab.size), safe] - eps * logp.mean(axis=1)
    return per[valid].sum() / max(valid.sum(), 1)


@pytest.mark.parametrize(
    "pred_shape, eps, ignore",
    [((6, 5), 0.1, None), ((3, 4, 2, 3), 0.25, 2), ((8, 3), 0.5, -1)],
)
def test_label_smoothing_matches_torch_and_the_formula(pred_shape, eps, ignore):
    rng = np.random.default_rng(int(eps * 100))
    n, classes = pred_shape[:2]
    label = rng.integers(0, classes, size=(n, *pred_shape[2:])).astype(np.float32)
    if ignore is not None:
        label[rng.random(label.shape) < 0.3] = ignore
    logits = (2 * rng.standard_normal(pred_shape)).astype(np.float32)
    loss_param = {
        "label_smoothing": eps,
        **({"ignore_label": ignore} if ignore is not None else {}),
    }
    net = build(
        [
            inputs_layer({"x": pred_shape, "label": label.shape}),
            {
                "name": "loss",
                "type": "SoftmaxWithLoss",
                "bottom": ["x", "label"],
                "top": ["loss"],
                "loss_param": loss_param,
            },
        ]
    )
    value, grad = jit_fast(
        jax.value_and_grad(
            lambda x: net.apply({}, {}, {"x": x, "label": jnp.asarray(label)})[0]["loss"]
        )
    )(jnp.asarray(logits))
    want = smoothed_numpy(logits.astype(np.float64), label.astype(np.int64), eps, ignore)
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    # PyTorch: the mean over the targets not ignored, as Caffe's VALID normalisation
    x = torch.tensor(logits.astype(np.float64), requires_grad=True)
    kw = {"ignore_index": ignore} if ignore is not None else {}
    ref = F.cross_entropy(x, torch.tensor(label.astype(np.int64)), label_smoothing=eps, **kw)
    ref.backward()
    np.testing.assert_allclose(float(value), ref.item(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), x.grad.numpy(), rtol=1e-4, atol=1e-6)
    if ignore is not None:  # ignored positions get no gradient at all
        assert not np.asarray(grad)[np.broadcast_to((label == ignore)[:, None], pred_shape)].any()


def test_label_smoothing_only_where_it_means_something(check_spec):
    from conftest import errors_of

    spec = """\
    layers:
      - {name: in, type: Input, top: [x, t], input_param: {shape: [{dim: [2, 3]}, {dim: [2, 3]}]}}
      - {name: loss, type: EuclideanLoss, bottom: [x, t], top: loss,
         loss_param: {label_smoothing: 0.1}}
    """
    (err,) = errors_of(check_spec, spec)
    assert "loss_param.label_smoothing" in err and err.startswith("spec.yaml:4:")
    bad = spec.replace("EuclideanLoss", "SoftmaxWithLoss").replace("0.1}", "1.0}")
    (err,) = errors_of(check_spec, bad)
    assert err.endswith("loss_param.label_smoothing: must be < 1.0, got 1")


# --- input noise, spatial dropout ----------------------------------------------------------------


def test_gaussian_noise_train_statistics_and_test_identity():
    std, shape = 0.3, (4, 50_000)
    layer = {
        "name": "noise",
        "type": "GaussianNoise",
        "bottom": ["x"],
        "top": ["x"],
        "gaussian_noise_param": {"std": std},
    }
    net = build([inputs_layer({"x": shape}), layer])
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32))

    def f(x, key):
        y = net.apply({}, {}, {"x": x}, rng=key)[0]["x"]
        return jnp.sum(y), y

    f = jit_fast(jax.value_and_grad(f, has_aux=True))
    (_, y), g = f(x, jax.random.PRNGKey(1))
    d = np.asarray(y) - np.asarray(x)
    n = d.size
    assert abs(d.mean()) < 5 * std / math.sqrt(n)
    assert abs(d.std() / std - 1) < 5 / math.sqrt(2 * n)
    assert abs(np.corrcoef(d.ravel()[:-1], d.ravel()[1:])[0, 1]) < 5 / math.sqrt(n)
    np.testing.assert_array_equal(np.asarray(g), 1.0)  # additive: the gradient passes unchanged
    other = np.asarray(f(x, jax.random.PRNGKey(2))[0][1])
    assert np.mean(other != np.asarray(y)) > 0.99
    test_net = build([inputs_layer({"x": shape}), layer], phase="TEST")
    for blobs, _ in (test_net.apply({}, {}, {"x": x}), net.apply({}, {}, {"x": x}, train=False)):
        assert blobs["x"] is x  # the identity, not even a copy


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_spatial_dropout_drops_whole_channels(ratio):
    shape = (64, 32, 5, 4)
    layer = {
        "name": "drop",
        "type": "Dropout",
        "bottom": ["x"],
        "top": ["y"],
        "dropout_param": {"dropout_ratio": ratio, "spatial": True},
    }
    net = build([inputs_layer({"x": shape}), layer])
    x = np.random.default_rng(1).uniform(1, 2, shape).astype(np.float32)
    y = np.asarray(net.apply({}, {}, {"x": jnp.asarray(x)}, rng=jax.random.PRNGKey(5))[0]["y"])
    dropped = (y == 0).all(axis=(2, 3))
    kept = (y != 0).all(axis=(2, 3))
    assert (dropped | kept).all()  # every channel of every sample: all kept or all dropped
    np.testing.assert_allclose(y[kept], x[kept] / (1 - ratio), rtol=1e-6)
    n = dropped.size
    assert abs(dropped.mean() - ratio) < 5 * math.sqrt(ratio * (1 - ratio) / n)
    # samples draw their own channels
    assert len({tuple(row) for row in dropped}) > 1
    test_net = build([inputs_layer({"x": shape}), layer], phase="TEST")
    np.testing.assert_array_equal(np.asarray(test_net.apply({}, {}, {"x": x})[0]["y"]), x)


def test_spatial_dropout_needs_channels(check_spec):
    from conftest import errors_of

    (err,) = errors_of(
        check_spec,
        """\
    layers:
      - {name: in, type: Input, top: x, input_param: {shape: {dim: [8, 10]}}}
      - {name: drop, type: Dropout, bottom: x, top: x,
         dropout_param: {spatial: true}}
    """,
    )
    assert err == (
        "spec.yaml:4:22: error: layer 'drop' (Dropout): dropout_param.spatial: spatial "
        "dropout drops whole channels of a batch-major N×C×… blob (N×C×H×W, N×C×L); "
        "x is 8×10"
    )


# --- weight noise --------------------------------------------------------------------------------


def test_weight_noise_is_train_only():
    k, std = 128, 0.05
    layers = [
        inputs_layer({"x": (k, k)}),
        {
            "name": "ip",
            "type": "InnerProduct",
            "bottom": ["x"],
            "top": ["y"],
            "inner_product_param": {"num_output": k, "bias_term": False},
            "param": [{"weight_noise": std}],
        },
    ]
    net, test_net = build(layers), build(layers, phase="TEST")
    w = np.random.default_rng(2).standard_normal((k, k)).astype(np.float32)
    params = {"ip": {"weight": jnp.asarray(w)}}
    eye = {"x": jnp.eye(k, dtype=jnp.float32)}  # y = x·Wᵀ = Wᵀ: the weights the layer used

    @jit_fast
    def forward(p):
        return net.apply(p, {}, eye, rng=jax.random.PRNGKey(0))[0]["y"]

    used = np.asarray(forward(params)).T
    d = used - w
    assert abs(d.mean()) < 5 * std / k and abs(d.std() / std - 1) < 5 / math.sqrt(2 * k * k)
    for y in (
        test_net.apply(params, {}, eye)[0]["y"],
        net.apply(params, {}, eye, rng=jax.random.PRNGKey(0), train=False)[0]["y"],
    ):
        np.testing.assert_array_equal(np.asarray(y).T, w)  # TEST: the weights themselves

    def loss(p):  # the gradient reaches the noiseless weight: d/dW Σ y² = 2·(W + noise)
        return jnp.sum(net.apply(p, {}, eye, rng=jax.random.PRNGKey(0))[0]["y"] ** 2)

    grad = jit_fast(jax.grad(loss))(params)["ip"]["weight"]
    np.testing.assert_allclose(np.asarray(grad), 2 * used, rtol=1e-5, atol=1e-5)


# --- max-norm ------------------------------------------------------------------------------------


def sgd_step(params, grads, max_norms):
    sp = SolverParameter(base_lr=1.0, lr_policy="fixed")
    mult = jax.tree_util.tree_map(lambda _: 1.0, params)
    opt = with_max_norm(make_optimizer(sp, mult, mult), max_norms)

    @jit_fast
    def step(params, grads):
        updates, _ = opt.update(grads, opt.init(params), params)
        return jax.tree_util.tree_map(jnp.add, params, updates)

    return jax.tree_util.tree_map(np.asarray, step(params, grads))


def test_max_norm_clips_only_the_rows_above_the_bound():
    rng = np.random.default_rng(3)
    c = 3.0
    params = {
        "ip": {
            "weight": jnp.asarray(rng.standard_normal((16, 9)).astype(np.float32)),
            "bias": jnp.asarray(rng.standard_normal(16).astype(np.float32)),
        },
        "conv": {"weight": jnp.asarray(rng.standard_normal((6, 3, 2, 2)).astype(np.float32))},
    }
    grads = jax.tree_util.tree_map(
        lambda w: -jnp.asarray(rng.standard_normal(w.shape), jnp.float32), params
    )
    free = sgd_step(params, grads, {})
    held = sgd_step(params, grads, {"ip": {"weight": c}, "conv": {"weight": c}})
    for layer in ("ip", "conv"):
        f, h = free[layer]["weight"], held[layer]["weight"]
        axes = tuple(range(1, f.ndim))
        norm_f, norm_h = (np.sqrt((a.astype(np.float64) ** 2).sum(axis=axes)) for a in (f, h))
        assert (norm_f > c).any() and (norm_f <= c).any()  # both kinds of rows are there
        assert (norm_h <= c * (1 + 1e-6)).all()
        below = norm_f <= c
        np.testing.assert_array_equal(h[below], f[below])  # untouched, bit for bit
        np.testing.assert_allclose(norm_h[~below], c, rtol=1e-6)  # onto the ball
        scaled = f[~below] * (c / norm_f[~below]).reshape((-1,) + (1,) * len(axes))
        np.testing.assert_allclose(h[~below], scaled, rtol=1e-5, atol=1e-6)  # same direction
    np.testing.assert_array_equal(held["ip"]["bias"], free["ip"]["bias"])  # unconstrained blob


def test_max_norm_and_weight_noise_in_a_training_run(tmp_path):
    """The trainer applies the spec's max_norm after every update: ip1's rows (xavier starts
    them near norm 1) end on or inside 0.5; weight noise on ip2 in the same run."""
    text = (
        MLP.read_text()
        .replace("  test_iter: 2\n", "")
        .replace("    top: ip1\n", "    top: ip1\n    param: [{max_norm: 0.5}]\n", 1)
        .replace("    top: ip2\n", "    top: ip2\n    param: [{weight_noise: 0.01}]\n", 1)
    )
    spec = tmp_path / "mlp.yaml"
    spec.write_text(text)
    cfg = TrainConfig(str(spec), max_iter=20, out=str(tmp_path / "run"), progress=False)
    assert Solver(cfg, out=io.StringIO(), err=io.StringIO()).solve() == 0
    tree, _ = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    norms = np.linalg.norm(tree["params"]["ip1"]["weight"].astype(np.float64), axis=1)
    assert norms.max() <= 0.5 * (1 + 1e-6)
    assert np.isclose(norms, 0.5, rtol=1e-5).sum() > 8  # the bound was active on many rows


def test_max_norm_on_state_is_a_warning(check_spec):
    from conftest import warnings_of

    (warn,) = warnings_of(
        check_spec,
        """\
    layers:
      - {name: in, type: Input, top: x, input_param: {shape: {dim: [8, 3, 4, 4]}}}
      - {name: bn, type: BatchNorm, bottom: x, top: x, param: [{lr_mult: 0, max_norm: 2}]}
    """,
    )
    assert warn == (
        "spec.yaml:3:60: warning: layer 'bn' (BatchNorm): param[0]: max_norm and "
        "weight_noise act on learned blobs; mean is state the layer updates itself "
        "(ignored)"
    )


def test_max_norms_from_the_spec():
    net = build(
        [
            inputs_layer({"x": (2, 3)}),
            {
                "name": "a",
                "type": "InnerProduct",
                "bottom": ["x"],
                "top": ["y"],
                "inner_product_param": {"num_output": 4},
                "param": [{"max_norm": 2.0, "name": "shared"}, {"lr_mult": 2}],
            },
            {
                "name": "b",
                "type": "InnerProduct",
                "bottom": ["x"],
                "top": ["z"],
                "inner_product_param": {"num_output": 4},
                "param": [{"name": "shared", "max_norm": 9.0}],
            },
        ]
    )
    assert net.max_norms() == {"a": {"weight": 2.0}}  # the owner's ParamSpec, as lr_mult


@pytest.mark.parametrize(
    "layer, field",
    [
        ({"type": "Dropout", "dropout_param": {"spatial": True}}, "dropout_param.spatial"),
        ({"type": "InnerProduct", "param": [{"max_norm": 2.0}]}, "param.max_norm"),
        ({"type": "InnerProduct", "param": [{"weight_noise": 0.1}]}, "param.weight_noise"),
        (
            {"type": "SoftmaxWithLoss", "loss_param": {"label_smoothing": 0.1}},
            "loss_param.label_smoothing",
        ),
        ({"type": "GaussianNoise", "gaussian_noise_param": {"std": 0.1}}, "type GaussianNoise"),
    ],
)
def test_caffe_prototxt_refuses_the_extensions(layer, field):
    from netc.spec.prototxt import NotCaffeError, data_to_prototxt, solver_to_prototxt

    with pytest.raises(NotCaffeError, match=field.replace(".", r"\.")):
        data_to_prototxt({"layers": [{"name": "l", **layer}]})
    with pytest.raises(NotCaffeError, match=r"solver\.early_stopping"):
        solver_to_prototxt({"base_lr": 0.1, "early_stopping": {"metric": "accuracy"}})
