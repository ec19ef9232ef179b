"""Parity of the normalisation, affine and extra activation layers with PyTorch (float64, autograd)
or a numpy transcription of Caffe's loops, through the real YAML → plan → lower → apply path.

Same harness and tolerance as tests/test_parity.py (1e-5 relative, float32 vs float64). BatchNorm
carries state, so it has its own driver: TRAIN forward/gradients vs torch's batch_norm in training
mode, the running-sum update vs a transcription of batch_norm_layer.cpp, TEST vs torch's eval mode
with the stored statistics divided by the scale factor.
"""

from __future__ import annotations

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np
import pytest
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import jit_fast
from test_parity import build, close, compare_many, inputs_layer, run_torch  # noqa: E402

import netc.compiler.layers.norm  # noqa: E402, F401 - registers the units

SEEDS = range(6)


def rand_shape(rng, min_ndim=1, max_ndim=4, hi=5):
    return tuple(int(v) for v in rng.integers(1, hi, size=int(rng.integers(min_ndim, max_ndim + 1))))


def _bshape(ndim, axis, v_ndim):
    return lambda v: v.reshape(v.shape + (1,) * (ndim - axis - v_ndim))


# --------------------------------------------------------------------------------------------
# element-wise activations


def _activation_case(kind, rng):
    """(layer param block or None, torch reference fn, zero_grad) for a random legal config."""
    if kind == "ELU":
        a = float(rng.uniform(0.1, 2))
        return {"elu_param": {"alpha": a}}, lambda x: F.elu(x, a)
    if kind == "AbsVal":
        return {}, torch.abs
    if kind == "BNLL":
        return {}, lambda x: torch.log1p(torch.exp(x))
    if kind == "Power":
        power = float(rng.choice([2.0, 3.0, -1.0, 0.5, 1.5, 1.0]))
        scale, shift = float(rng.uniform(0.2, 0.6)), float(rng.uniform(3.5, 5))  # base > 0
        return ({"power_param": {"power": power, "scale": scale, "shift": shift}},
                lambda x: (shift + scale * x) ** power)
    if kind == "Exp":
        base = float(rng.choice([-1.0, 2.0, 0.5, 10.0]))
        scale, shift = float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))
        b = float(np.e) if base == -1 else base
        return ({"exp_param": {"base": base, "scale": scale, "shift": shift}},
                lambda x: b ** (shift + scale * x))
    if kind == "Log":
        base = float(rng.choice([-1.0, 2.0, 10.0, 0.5]))
        scale, shift = float(rng.uniform(0.2, 1)), float(rng.uniform(4, 6))
        lb = 1.0 if base == -1 else float(np.log(base))
        return ({"log_param": {"base": base, "scale": scale, "shift": shift}},
                lambda x: torch.log(shift + scale * x) / lb)
    if kind == "Swish":
        beta = float(rng.uniform(0.2, 3))
        return {"swish_param": {"beta": beta}}, lambda x: x * torch.sigmoid(beta * x)
    if kind == "GELU":
        approx = bool(rng.integers(0, 2))
        return ({"gelu_param": {"approximate": approx}},
                lambda x: F.gelu(x, approximate="tanh" if approx else "none"))
    if kind == "ReLU6":
        return {}, lambda x: F.relu6(6 * x + 3)  # RELU6_PRE in front
    if kind == "Clip":
        lo = float(rng.uniform(-1.5, 0))
        hi = float(rng.uniform(lo, 1.5))
        return {"clip_param": {"min": lo, "max": hi}}, lambda x: torch.clamp(x, lo, hi)
    raise AssertionError(kind)


ACTIVATIONS = ["ELU", "AbsVal", "BNLL", "Power", "Exp", "Log", "Swish", "GELU", "ReLU6", "Clip"]
# ReLU6's inputs spread over about (−3, 9) by a Power (6x + 3) in front, so that both clips are hit
RELU6_PRE = {"name": "pre", "type": "Power", "bottom": ["x"], "top": ["x6"],
             "power_param": {"scale": 6.0, "shift": 3.0}}


def test_activations():
    """Four random legal configurations of each kind (odd ones in place), all in one program."""
    cases = []
    for kind in ACTIVATIONS:
        rng = np.random.default_rng(ACTIVATIONS.index(kind))
        for i in range(4):
            shape = rand_shape(rng)
            block, fn = _activation_case(kind, rng)
            bottom, kw = ("x6", {"before": [RELU6_PRE]}) if kind == "ReLU6" else ("x", {})
            layer = {"name": "act", "type": kind, "bottom": [bottom],
                     "top": [bottom if i % 2 else "y"], **block}
            cases.append((f"{kind} {block} on {shape}", layer, {"x": shape},
                          lambda p, x, fn=fn: [fn(x["x"])], kw))
    compare_many(cases, np.random.default_rng(99))


def y_and_grad(net, x, top="y", reduce=jnp.sum):
    """The net's `top` on input x and d reduce(top)/dx, in one program compiled with conftest's
    FAST_XLA (eager JAX would compile each operation, and its derivative, on its own)."""

    def objective(v):
        y = net.apply({}, {}, {"x": v})[0][top]
        return reduce(y), y

    (_, y), g = jit_fast(jax.value_and_grad(objective, has_aux=True))(jnp.asarray(x))
    return np.asarray(y), np.asarray(g)


def test_clip_gradient_passes_at_both_bounds_and_relu6_does_not():
    """Caffe's Clip backward passes the gradient where min ≤ x ≤ max (ends included); ReLU6, like
    ReLU, only where 0 < x < 6."""
    x = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 6.0, 7.0], np.float32)
    for kind, block, want_y, want_g in [
        ("Clip", {"clip_param": {"min": -1.0, "max": 1.0}},
         np.clip(x, -1, 1), ((x >= -1) & (x <= 1)).astype(np.float32)),
        ("ReLU6", {}, np.clip(x, 0, 6), ((x > 0) & (x < 6)).astype(np.float32)),
    ]:
        layer = {"name": "c", "type": kind, "bottom": ["x"], "top": ["y"], **block}
        net = build([inputs_layer({"x": x.shape}), layer])
        y, g = y_and_grad(net, x)
        np.testing.assert_array_equal(y, want_y, err_msg=kind)
        np.testing.assert_array_equal(g, want_g, err_msg=kind)


def test_threshold():
    rng = np.random.default_rng(40)
    cases = []
    for _ in range(3):
        shape = rand_shape(rng)
        t = float(rng.uniform(-1, 1))
        layer = {"name": "thr", "type": "Threshold", "bottom": ["x"], "top": ["y"],
                 "threshold_param": {"threshold": t}}
        cases.append((f"Threshold {t} on {shape}", layer, {"x": shape},
                      lambda p, x, t=t: [(x["x"] > t).double()], {"zero_grad": ("x",)}))
    compare_many(cases, rng)
    # a tie is not above the threshold
    net = build([inputs_layer({"x": (3,)}), {"name": "thr", "type": "Threshold", "bottom": ["x"],
                                            "top": ["y"], "threshold_param": {"threshold": 0.5}}])
    y, _ = y_and_grad(net, np.asarray([0.25, 0.5, 0.75], np.float32))
    np.testing.assert_array_equal(y, [0, 0, 1])


def test_power_special_cases_are_constants_without_gradient():
    """power 0 → 1 (even 0^0), scale 0 → shift^power; no gradient (Caffe's diff_scale == 0)."""
    x = jnp.asarray(np.linspace(-2, 2, 7, dtype=np.float32))
    for block, want in [({"power": 0.0, "shift": 0.0}, 1.0), ({"power": 3.0, "scale": 0.0,
                                                              "shift": 2.0}, 8.0),
                        ({"power": 0.5, "scale": 0.0, "shift": -4.0}, np.nan)]:
        net = build([inputs_layer({"x": (7,)}), {"name": "p", "type": "Power", "bottom": ["x"],
                                                 "top": ["y"], "power_param": block}])
        y, g = y_and_grad(net, x)
        np.testing.assert_array_equal(y, np.full(7, want, np.float32))
        np.testing.assert_array_equal(g, np.zeros(7))
    # a negative base with a fractional power is NaN, not an error (Caffe's pow)
    net = build([inputs_layer({"x": (2,)}), {"name": "p", "type": "Power", "bottom": ["x"],
                                             "top": ["y"], "power_param": {"power": 0.5}}])
    y, _ = y_and_grad(net, np.asarray([-4.0, 4.0], np.float32))
    assert np.isnan(y[0]) and y[1] == 2.0


def test_prelu():
    rng = np.random.default_rng(41)
    cases, want = [], []
    for i in range(6):
        shape = rand_shape(rng, min_ndim=2)
        shared = bool(i % 2)
        layer = {"name": "prelu", "type": "PReLU", "bottom": ["x"], "top": ["x" if i % 3 else "y"],
                 "prelu_param": {"channel_shared": shared}}
        cases.append((f"PReLU shared={shared} on {shape}", layer, {"x": shape},
                      lambda p, x: [F.prelu(x["x"], p["weight"])]))
        want.append((1,) if shared else (shape[1],))
    net, _ = compare_many(cases, rng)
    assert [net.plan.params[(f"prelu_{i}", "weight")].shape for i in range(6)] == want
    # the default filler is constant 0.25
    net = build([inputs_layer({"x": (2, 3)}), {"name": "pr", "type": "PReLU", "bottom": ["x"],
                                              "top": ["y"]}])
    params, _ = jit_fast(net.init)(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(params["pr"]["weight"]), [0.25] * 3)


def test_maxout():
    rng = np.random.default_rng(42)
    cases = []
    for _ in range(6):
        shape = list(rand_shape(rng, min_ndim=2))
        axis = int(rng.integers(1, len(shape)))
        k = int(rng.integers(1, 4))
        shape[axis] *= k
        shape = tuple(shape)
        neg = bool(rng.integers(0, 2))
        layer = {"name": "mo", "type": "Maxout", "bottom": ["x"], "top": ["y"],
                 "maxout_param": {"num_pieces": k, "axis": axis - len(shape) if neg else axis}}

        def ref(p, x, axis=axis, k=k, shape=shape):
            v = x["x"].reshape(shape[:axis] + (shape[axis] // k, k) + shape[axis + 1:])
            return [v.max(dim=axis + 1).values]

        cases.append((f"Maxout k={k} axis={axis} on {shape}", layer, {"x": shape}, ref))
    compare_many(cases, rng)


def test_maxout_ties_route_the_gradient_to_the_first_piece():
    x = np.array([[1.0, 1.0, 0.0, 2.0, 2.0, 2.0]], np.float32)
    net = build([inputs_layer({"x": x.shape}), {"name": "mo", "type": "Maxout", "bottom": ["x"],
                                                "top": ["y"], "maxout_param": {"num_pieces": 3}}])
    _, g = y_and_grad(net, x)
    np.testing.assert_array_equal(g, [[1, 0, 0, 1, 0, 0]])


def test_existing_activations_still_work():
    x = jnp.asarray([[-1.0, 2.0]])
    for kind, want in [("ReLU", [[0, 2]]), ("TanH", np.tanh([[-1.0, 2.0]])),
                       ("Sigmoid", 1 / (1 + np.exp([[1.0, -2.0]])))]:
        net = build([inputs_layer({"x": (1, 2)}), {"name": "a", "type": kind, "bottom": ["x"],
                                                   "top": ["y"]}])
        np.testing.assert_allclose(y_and_grad(net, x)[0], want, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Scale / Bias


def _affine_config(rng, kind):
    """A random legal (shapes, layer, reference) for Scale or Bias, one or two bottoms."""
    shape = rand_shape(rng, min_ndim=1, max_ndim=4)
    nd = len(shape)
    axis = int(rng.integers(0, nd))
    num_axes = int(rng.integers(-1, nd - axis + 1))
    n = nd - axis if num_axes == -1 else num_axes
    two = bool(rng.integers(0, 2)) and n > 0  # an Input cannot be a scalar
    field = "scale_param" if kind == "Scale" else "bias_param"
    param = {"axis": axis - nd if rng.integers(0, 2) else axis, "num_axes": num_axes}
    bias_term = kind == "Scale" and bool(rng.integers(0, 2))
    if bias_term:
        param["bias_term"] = True
    shapes = {"x": shape}
    if two:
        shapes["s"] = shape[axis:axis + n]
    layer = {"name": "aff", "type": kind, "bottom": list(shapes), "top": ["y"], field: param}
    op_axis = 0 if n == 0 else axis
    b = _bshape(nd, op_axis, n)

    def ref(p, x):
        v = x["s"] if two else p["weight" if kind == "Scale" else "bias"]
        y = x["x"] * b(v) if kind == "Scale" else x["x"] + b(v)
        if bias_term:
            y = y + b(p["bias"])
        return [y]

    return shapes, layer, ref


def test_scale_and_bias():
    """Ten random legal configurations each of Scale and Bias, in one program."""
    cases = []
    for kind in ("Scale", "Bias"):
        rng = np.random.default_rng(43 + (kind == "Bias"))
        for _ in range(10):
            shapes, layer, ref = _affine_config(rng, kind)
            cases.append((f"{kind} {layer} on {shapes}", layer, shapes, ref))
    compare_many(cases, rng)


def test_scale_default_fillers_are_one_and_zero():
    net = build([inputs_layer({"x": (2, 3, 4)}),
                 {"name": "sc", "type": "Scale", "bottom": ["x"], "top": ["x"],
                  "scale_param": {"bias_term": True}},
                 {"name": "bi", "type": "Bias", "bottom": ["x"], "top": ["x"]}])
    params, state = jit_fast(net.init)(jax.random.PRNGKey(0))
    assert state == {}
    np.testing.assert_array_equal(np.asarray(params["sc"]["weight"]), np.ones(3))
    np.testing.assert_array_equal(np.asarray(params["sc"]["bias"]), np.zeros(3))
    np.testing.assert_array_equal(np.asarray(params["bi"]["bias"]), np.zeros(3))
    assert not [d for d in net.plan.diagnostics.warnings if "filler" in d.message]


# --------------------------------------------------------------------------------------------
# LRN, MVN


def _within_ref(x, n, alpha, beta):
    d = x.dim() - 2
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[d]
    pad = (n - 1) // 2
    s = pool(F.pad(x * x, (pad,) * (2 * d)), n, 1)  # Σ/n^d: Caffe's AVE pooling counts the padding
    return x * (1 + alpha * s) ** (-beta)


def test_lrn():
    rng = np.random.default_rng(45)
    cases = []
    for i in range(10):
        within = bool(i % 2)
        shape = rand_shape(rng, min_ndim=3 if within else 2, max_ndim=5 if within else 4, hi=7)
        n = int(rng.choice([1, 3, 5]))
        alpha, beta, k = float(rng.uniform(0.1, 3)), float(rng.uniform(0.3, 1)), float(rng.uniform(1, 3))
        param = {"local_size": n, "alpha": alpha, "beta": beta, "k": k,
                 "norm_region": "WITHIN_CHANNEL" if within else "ACROSS_CHANNELS"}
        layer = {"name": "lrn", "type": "LRN", "bottom": ["x"], "top": ["y"], "lrn_param": param}

        def ref(p, x, n=n, alpha=alpha, beta=beta, k=k, within=within):
            v = x["x"]
            if within:
                return [_within_ref(v, n, alpha, beta)]
            if v.dim() == 2:
                return [F.local_response_norm(v[..., None], n, alpha, beta, k)[..., 0]]
            return [F.local_response_norm(v, n, alpha, beta, k)]

        cases.append((f"LRN {param} on {shape}", layer, {"x": shape}, ref))
    compare_many(cases, rng)


def test_lrn_across_channels_is_caffes_loop():
    """A direct transcription of CrossChannelForward_cpu (zero-padded square, running window)."""
    rng = np.random.default_rng(46)
    x = rng.standard_normal((2, 6, 3, 2)).astype(np.float32)
    n, alpha, beta, k = 5, 0.7, 0.75, 2.0
    net = build([inputs_layer({"x": x.shape}), {"name": "lrn", "type": "LRN", "bottom": ["x"],
                 "top": ["y"], "lrn_param": {"local_size": n, "alpha": alpha, "beta": beta, "k": k}}])
    y, _ = y_and_grad(net, x)
    x64 = x.astype(np.float64)
    padded = np.zeros((2, 6 + n - 1, 3, 2))
    padded[:, (n - 1) // 2:(n - 1) // 2 + 6] = x64 ** 2
    scale = np.full(x.shape, k)
    for c in range(6):
        scale[:, c] += alpha / n * padded[:, c:c + n].sum(axis=1)
    close(y, x64 * scale ** -beta, "LRN vs Caffe's loop")


def test_mvn():
    rng = np.random.default_rng(47)
    cases = []
    for i in range(8):
        shape = rand_shape(rng, min_ndim=2, max_ndim=4, hi=6)
        if int(np.prod(shape[2:])) < 2 and not i % 2:
            shape = shape[:2] + (3,)
        across, normvar = bool(i % 2), bool((i // 2) % 2) or i == 0
        eps = float(rng.choice([1e-9, 1e-3, 0.1]))
        layer = {"name": "mvn", "type": "MVN", "bottom": ["x"], "top": ["y"],
                 "mvn_param": {"across_channels": across, "normalize_variance": normvar, "eps": eps}}

        def ref(p, x, across=across, normvar=normvar, eps=eps):
            v = x["x"]
            dims = tuple(range(1 if across else 2, v.dim()))
            y = v - v.mean(dim=dims, keepdim=True)
            if normvar:
                y = y / ((y * y).mean(dim=dims, keepdim=True).sqrt() + eps)  # eps on the std
            return [y]

        if int(np.prod(shape[1 if across else 2:])) < 2 and normvar:
            continue  # one element per slice: the std is 0 (checked below)
        cases.append((f"MVN {layer['mvn_param']} on {shape}", layer, {"x": shape}, ref))
    compare_many(cases, rng)
    # a constant slice: output 0 and a finite gradient
    net = build([inputs_layer({"x": (2, 3)}), {"name": "mvn", "type": "MVN", "bottom": ["x"],
                                              "top": ["y"]}])
    y, g = y_and_grad(net, np.ones((2, 3), np.float32), reduce=lambda y: jnp.sum(y**2))
    assert not np.any(y)
    assert np.all(np.isfinite(g))


# --------------------------------------------------------------------------------------------
# BatchNorm


def caffe_batch_norm_update(state, x, maf):
    """batch_norm_layer.cpp's moving-average update, transcribed (float64)."""
    c = 1 if x.ndim == 1 else x.shape[1]
    axes = tuple(i for i in range(x.ndim) if i != 1)
    mean = x.mean(axis=axes).reshape(c)
    var = ((x - mean.reshape((1, c) + (1,) * (x.ndim - 2)) if x.ndim > 1 else x - mean) ** 2
           ).mean(axis=axes).reshape(c)
    m = x.size // c
    corr = m / (m - 1) if m > 1 else 1.0
    return {"mean": state["mean"] * maf + mean, "variance": state["variance"] * maf + corr * var,
            "scale_factor": state["scale_factor"] * maf + 1}


def _bn_run(net, state, x, cot, train):
    def objective(s, v):
        blobs, new_state = net.apply({}, s, {"x": v}, train=train)
        return jnp.sum(blobs["y"] * cot), (blobs["y"], new_state)

    with jax.default_matmul_precision("highest"):
        (_, (y, new_state)), gx = jit_fast(jax.value_and_grad(objective, argnums=1, has_aux=True))(
            state, jnp.asarray(x))
    return np.asarray(y), np.asarray(gx), jax.tree_util.tree_map(np.asarray, new_state)


@pytest.mark.parametrize("seed", SEEDS)
def test_batch_norm(seed):
    rng = np.random.default_rng(60 + seed)
    shape = list(rand_shape(rng, min_ndim=2, max_ndim=5))
    shape[0] = int(rng.integers(4, 7))  # m ≥ 4: with m = 2 the output is ±1 and d/dx cancels to ~0
    shape = tuple(shape)
    c = shape[1]
    maf = float(rng.choice([0.999, 0.9, 0.5, 0.0]))
    eps = float(rng.choice([1e-5, 1e-3, 0.1]))
    global_flag = [None, True, False][seed % 3]
    param = {"moving_average_fraction": maf, "eps": eps}
    if global_flag is not None:
        param["use_global_stats"] = global_flag
    layer = {"name": "bn", "type": "BatchNorm", "bottom": ["x"],
             "top": ["y"] if seed % 2 else ["x"], "batch_norm_param": param}
    net = build([inputs_layer({"x": shape}), layer,
                 {"name": "out", "type": "Split", "bottom": [layer["top"][0]], "top": ["y"]}])
    assert [d.shape for d in net.plan.params.values()] == [(c,), (c,), (1,)]
    assert not any(d.learned for d in net.plan.params.values())
    assert net.plan.param_counts() == (0, 2 * c + 1)
    state = {"bn": {"mean": rng.standard_normal(c).astype(np.float32) * 3,
                    "variance": rng.uniform(0.5, 6, c).astype(np.float32),
                    "scale_factor": np.array([rng.choice([0.0, 1.0, 3.0])], np.float32)}}
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    cot = rng.standard_normal(shape).astype(np.float32)
    for train in (True, False):
        y, gx, new_state = _bn_run(net, state, x, cot, train)
        use_global = global_flag if global_flag is not None else not train
        s = state["bn"]
        if use_global:
            sf = float(s["scale_factor"][0])
            inv = 0.0 if sf == 0 else 1.0 / sf
            rm, rv = s["mean"].astype(np.float64) * inv, s["variance"].astype(np.float64) * inv

            def ref(p, t, rm=rm, rv=rv):
                return [F.batch_norm(t["x"], torch.tensor(rm), torch.tensor(rv), training=False,
                                     eps=eps)]
            for role, v in new_state["bn"].items():
                np.testing.assert_array_equal(v, s[role], err_msg="use_global_stats: no update")
        else:
            def ref(p, t):
                return [F.batch_norm(t["x"], None, None, training=True, eps=eps)]
            want = caffe_batch_norm_update({k: v.astype(np.float64) for k, v in s.items()},
                                           x.astype(np.float64), maf)
            for role in want:
                close(new_state["bn"][role], want[role], f"BatchNorm state {role} (seed {seed})")
        (ry,), _, rgx = run_torch(ref, {}, {"x": x}, [cot])
        close(y, ry, f"BatchNorm forward train={train} global={use_global} {shape}")
        close(gx, rgx["x"], f"BatchNorm d/dx train={train} global={use_global} {shape}")


def test_batch_norm_state_converges_to_the_data_statistics():
    """Repeated TRAIN steps on one batch: mean/scale_factor → the batch mean, variance/scale_factor
    → the unbiased batch variance; TEST then normalises with them (Caffe's sums, divided at use)."""
    rng = np.random.default_rng(70)
    x = (rng.standard_normal((8, 3, 2, 2)) * np.array([1, 2, 3])[None, :, None, None] + 5).astype(np.float32)
    layer = {"name": "bn", "type": "BatchNorm", "bottom": ["x"], "top": ["y"],
             "batch_norm_param": {"moving_average_fraction": 0.5}}
    net = build([inputs_layer({"x": x.shape}), layer])
    params, state = jit_fast(net.init)(jax.random.PRNGKey(0))
    assert all(not np.any(np.asarray(v)) for v in state["bn"].values())  # Caffe: zeros
    step = jit_fast(lambda s: net.apply(params, s, {"x": jnp.asarray(x)}, train=True)[1])
    for _ in range(40):
        state = step(state)
    sf = float(state["bn"]["scale_factor"][0])
    assert abs(sf - 2.0) < 1e-6  # Σ 0.5^i
    np.testing.assert_allclose(np.asarray(state["bn"]["mean"]) / sf, x.mean(axis=(0, 2, 3)),
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state["bn"]["variance"]) / sf,
                               x.var(axis=(0, 2, 3), ddof=1), rtol=1e-5)
    test = jit_fast(lambda s: net.apply(params, s, {"x": jnp.asarray(x)}, train=False)[0]["y"])
    y = np.asarray(test(state))
    m, v = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3), ddof=1)
    want = (x - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_batch_norm_one_axis_and_batch_of_one():
    """A 1-axis blob has one channel; m = 1 uses no bias correction (Caffe: m > 1 ? m/(m−1) : 1)."""
    for shape in [(5,), (1, 3)]:
        net = build([inputs_layer({"x": shape}), {"name": "bn", "type": "BatchNorm",
                                                  "bottom": ["x"], "top": ["y"]}])
        x = np.arange(1, 1 + int(np.prod(shape)), dtype=np.float32).reshape(shape)
        c = 1 if len(shape) == 1 else shape[1]
        zero = {"bn": {"mean": np.zeros(c, np.float32), "variance": np.zeros(c, np.float32),
                       "scale_factor": np.zeros(1, np.float32)}}
        y, _, new_state = _bn_run(net, zero, x, np.ones(shape, np.float32), True)
        want = caffe_batch_norm_update({k: v.astype(np.float64) for k, v in zero["bn"].items()},
                                       x.astype(np.float64), 0.999)
        for role in want:
            close(new_state["bn"][role], want[role], f"{shape} {role}")
        mu, var = x.mean(axis=0 if len(shape) == 1 else (0,)), x.var(axis=0)
        close(y, (x - mu) / np.sqrt(var + 1e-5), f"{shape} forward")


# The parity tests above, by layer type (merged into tests/test_parity.py's coverage guard).
COVERED = {
    "BatchNorm": test_batch_norm, "Scale": test_scale_and_bias, "Bias": test_scale_and_bias,
    "LRN": test_lrn, "MVN": test_mvn, "PReLU": test_prelu, "ELU": test_activations,
    "AbsVal": test_activations, "BNLL": test_activations, "Power": test_activations,
    "Exp": test_activations, "Log": test_activations, "Threshold": test_threshold,
    "Clip": test_activations, "Swish": test_activations, "GELU": test_activations,
    "ReLU6": test_activations, "Maxout": test_maxout,
}
