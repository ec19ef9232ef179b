"""BatchNorm + Scale (+ ReLU / ReLU6) folded into one function with its own VJP
(compiler/layers/norm.py batch_norm_affine; its backward in XLA, or the native kernel
compiler/kernels/batch_norm.cc): values and gradients against PyTorch in float64 on random
chains, with the kernel and without; and where the fold must not happen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import jit_fast
from test_parity import build, close, inputs_layer, run_torch

import netc.compiler.layers.norm as norm

ACTIVATIONS = {None: lambda z: z, "ReLU": F.relu, "ReLU6": lambda z: F.hardtanh(z, 0.0, 6.0)}


def run_netc(net, params, inputs, tops, cots, *, train=True):
    """Outputs and d(Σ top·cot)/d(params, inputs) of the lowered net in TRAIN, jitted, float32,
    BatchNorm's running sums starting at zero (test_parity.run_netc, with state)."""
    import jax
    import jax.numpy as jnp

    state = {pl.name: {role: jnp.zeros(d.shape, jnp.float32) for role, d in pl.params.items()}
             for pl in net.plan.layers if pl.unit.type == "BatchNorm"}

    def objective(p, x, c):
        blobs, _ = net.apply(p, state, x, train=train)
        outs = [blobs[t] for t in tops]
        return sum(jnp.sum(o * ci) for o, ci in zip(outs, c)), outs

    p = jax.tree_util.tree_map(jnp.asarray, params)
    x = {k: jnp.asarray(v) for k, v in inputs.items()}
    with jax.default_matmul_precision("highest"):
        fn = jit_fast(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))
        (_, outs), (gp, gx) = fn(p, x, [jnp.asarray(c) for c in cots])
    return ([np.asarray(o) for o in outs], jax.tree_util.tree_map(np.asarray, gp),
            {k: np.asarray(v) for k, v in gx.items()})


def _chain(i: int, activation, bias: bool, in_place: bool, eps: float) -> list[dict]:
    x, mid = f"x_{i}", (f"x_{i}" if in_place else f"bn_{i}")
    top = mid if in_place else f"y_{i}"
    layers = [
        {"name": f"bn_{i}", "type": "BatchNorm", "bottom": [x], "top": [mid],
         "batch_norm_param": {"eps": eps}},
        {"name": f"scale_{i}", "type": "Scale", "bottom": [mid],
         "top": [mid if in_place or activation else top], "scale_param": {"bias_term": bias}},
    ]
    if activation:
        layers.append({"name": f"act_{i}", "type": activation, "bottom": [mid], "top": [top]})
    return layers, top


def _cases(seed: int, n: int):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        ndim = int(rng.integers(2, 6))
        shape = [int(rng.integers(1, 5)) for _ in range(ndim)]
        shape[0] = int(rng.integers(3, 6))  # m ≥ 3 values per channel
        cases.append({"shape": tuple(shape), "activation": list(ACTIVATIONS)[i % 3],
                      "bias": bool(rng.random() < 0.7), "in_place": bool(rng.random() < 0.5),
                      "eps": float(rng.choice([1e-5, 1e-3, 0.1]))})
    return rng, cases


def _run(cases, rng, monkeypatch, onednn: str):
    from netc.compiler.kernels.onednn import ENV

    monkeypatch.setenv(ENV, onednn)
    layers, tops = [], []
    for i, c in enumerate(cases):
        chain, top = _chain(i, c["activation"], c["bias"], c["in_place"], c["eps"])
        layers += chain
        tops.append(top)
    net = build([inputs_layer({f"x_{i}": c["shape"] for i, c in enumerate(cases)}), *layers])
    params, inputs = {}, {}
    for i, c in enumerate(cases):
        ch = c["shape"][1]
        # gamma up to ±6 and beta up to ±3: z = gamma·x̂ + beta crosses 0 and 6 (ReLU6's bounds)
        params[f"scale_{i}"] = {"weight": rng.uniform(-6, 6, ch).astype(np.float32)}
        if c["bias"]:
            params[f"scale_{i}"]["bias"] = rng.uniform(-3, 3, ch).astype(np.float32)
        inputs[f"x_{i}"] = (rng.standard_normal(c["shape"]) * 2 + 0.5).astype(np.float32)
    cots = [rng.standard_normal(net.plan.blobs[t]).astype(np.float32) for t in tops]
    calls = []
    real = norm.batch_norm_affine

    def counting(*args, **kw):
        calls.append(kw.get("kernel"))
        return real(*args, **kw)

    monkeypatch.setattr(norm, "batch_norm_affine", counting)
    outs, gp, gx = run_netc(net, params, inputs, tops, cots, train=True)
    return net, params, inputs, cots, outs, gp, gx, calls


@pytest.mark.parametrize("onednn,layout", [("1", "channels_last"), ("1", "channels_first"),
                                           ("0", "")], ids=["kernel", "kernel-nchw", "xla"])
def test_folded_chains_match_pytorch(onednn, layout, monkeypatch):
    """Through the kernels on channels-last memory (the default, batch_norm.cc's *Last
    functions) and on N×C×spatial memory, and through XLA."""
    from netc.compiler.kernels.onednn import LAYOUT_ENV, available

    monkeypatch.setenv(LAYOUT_ENV, layout)
    rng, cases = _cases(11, 9)
    net, params, inputs, cots, outs, gp, gx, calls = _run(cases, rng, monkeypatch, onednn)
    # every Scale folds its BatchNorm, every activation folds both again
    assert len(calls) == len(cases) + sum(c["activation"] is not None for c in cases)
    assert all(k == (onednn == "1" and available()) for k in calls), calls
    bounds: dict = {}
    for i, c in enumerate(cases):
        act = ACTIVATIONS[c["activation"]]
        eps, bias = c["eps"], c["bias"]

        def ref(p, t, act=act, eps=eps, bias=bias):
            x = t["x"]
            shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
            z = F.batch_norm(x, None, None, training=True, eps=eps) * p["weight"].reshape(shape)
            return [act(z + p["bias"].reshape(shape) if bias else z)]

        what = f"case {i} {c}"
        (ry,), rgp, rgx = run_torch(ref, params[f"scale_{i}"], {"x": inputs[f"x_{i}"]}, [cots[i]])
        y = outs[i]
        close(y, ry, f"{what}: forward")
        if c["activation"] == "ReLU6":
            bounds.update({"6": np.any(ry >= 6), "0": np.any(ry <= 0)} if not bounds else
                          {"6": bounds["6"] or np.any(ry >= 6), "0": bounds["0"] or np.any(ry <= 0)})
        close(gx[f"x_{i}"], rgx["x"], f"{what}: d/dx")
        for role in params[f"scale_{i}"]:
            close(gp[f"scale_{i}"][role], rgp[role], f"{what}: d/d {role}")
    assert bounds == {"6": True, "0": True}, "the ReLU6 cases reach both bounds"


def test_kernel_and_xla_backward_agree(monkeypatch):
    """The same chains through the kernels (statistics, backward) and through XLA: equal to
    float rounding."""
    from netc.compiler.kernels.onednn import available

    if not available():
        pytest.fail("the native kernels are not available (CI builds them: tests/test_onednn.py)")
    got = {}
    for onednn in ("1", "0"):
        rng, cases = _cases(12, 6)
        got[onednn] = _run(cases, rng, monkeypatch, onednn)[4:7]
    (o1, p1, x1), (o0, p0, x0) = got["1"], got["0"]
    for a, b in zip(o1, o0):  # the statistics: one pass in double, or XLA's two reductions
        close(a, b, "forward", rtol=1e-5)
    for k in x1:
        close(x1[k], x0[k], f"d/d{k}", rtol=1e-5)
    for layer in p1:
        for role in p1[layer]:
            close(p1[layer][role], p0[layer][role], f"d/d {layer}/{role}", rtol=1e-5)


def _count_folds(monkeypatch, layers, shapes, train=True, phase="TRAIN"):
    import jax
    import jax.numpy as jnp

    net = build([inputs_layer(shapes), *layers], phase=phase)
    calls = []
    real = norm.batch_norm_affine
    monkeypatch.setattr(norm, "batch_norm_affine",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    x = {k: jnp.ones(s, jnp.float32) for k, s in shapes.items()}
    params, state = net.init(jax.random.PRNGKey(0))
    jax.eval_shape(lambda p, s: net.apply(p, s, x, train=train), params, state)
    return len(calls)


def test_the_fold_happens_only_where_it_is_exact(monkeypatch):
    shapes = {"x": (4, 3, 5)}
    bn = {"name": "bn", "type": "BatchNorm", "bottom": ["x"], "top": ["x"]}
    scale = {"name": "sc", "type": "Scale", "bottom": ["x"], "top": ["x"],
             "scale_param": {"bias_term": True}}
    relu = {"name": "relu", "type": "ReLU", "bottom": ["x"], "top": ["x"]}
    assert _count_folds(monkeypatch, [bn, scale, relu], shapes) == 2
    # TEST (the stored statistics): BatchNorm is an affine map XLA fuses by itself
    assert _count_folds(monkeypatch, [bn, scale, relu], shapes, train=False, phase="TEST") == 0
    glob = {**bn, "batch_norm_param": {"use_global_stats": True}}
    assert _count_folds(monkeypatch, [glob, scale, relu], shapes) == 0
    # a gradient stopped between the layers, a leaky ReLU, Scale on another axis, or with a
    # second input
    stopped = {**scale, "propagate_down": [False]}
    assert _count_folds(monkeypatch, [bn, stopped, relu], shapes) == 0
    leaky = {**relu, "relu_param": {"negative_slope": 0.1}}
    assert _count_folds(monkeypatch, [bn, scale, leaky], shapes) == 1  # Scale still folds
    last_axis = {**scale, "scale_param": {"bias_term": True, "axis": 2}}
    assert _count_folds(monkeypatch, [bn, last_axis, relu], shapes) == 0
    two = {"name": "sc", "type": "Scale", "bottom": ["x", "s"], "top": ["x"]}
    assert _count_folds(monkeypatch, [bn, two, relu], {**shapes, "s": (3,)}) == 0
    # ReLU after a Scale whose input is not a BatchNorm's
    assert _count_folds(monkeypatch, [scale, relu], shapes) == 0


def test_a_second_reader_of_the_normalised_blob_keeps_its_gradient(monkeypatch):
    """BatchNorm's output also feeds another layer: that path's gradient flows through
    BatchNorm's own backward and adds to the folded chain's."""
    shape = (5, 3, 4)
    layers = [
        {"name": "bn", "type": "BatchNorm", "bottom": ["x"], "top": ["n"]},
        {"name": "sc", "type": "Scale", "bottom": ["n"], "top": ["s"],
         "scale_param": {"bias_term": True}},
        {"name": "relu", "type": "ReLU", "bottom": ["s"], "top": ["y"]},
        {"name": "side", "type": "Power", "bottom": ["n"], "top": ["side"],
         "power_param": {"power": 2.0}},
    ]
    net = build([inputs_layer({"x": shape}), *layers])
    rng = np.random.default_rng(3)
    params = {"sc": {"weight": rng.uniform(-2, 2, 3).astype(np.float32),
                     "bias": rng.uniform(-1, 1, 3).astype(np.float32)}}
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    cots = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
    outs, gp, gx = run_netc(net, params, {"x": x}, ["y", "side"], cots, train=True)

    def ref(p, t):
        n = F.batch_norm(t["x"], None, None, training=True, eps=1e-5)
        return [torch.relu(n * p["weight"].reshape(1, 3, 1) + p["bias"].reshape(1, 3, 1)),
                n ** 2]

    routs, rgp, rgx = run_torch(ref, params["sc"], {"x": x}, cots)
    for o, r, what in zip(outs, routs, ("y", "side")):
        close(o, r, f"forward {what}")
    close(gx["x"], rgx["x"], "d/dx, both paths")
    for role in ("weight", "bias"):
        close(gp["sc"][role], rgp[role], f"d/d {role}")


LAYOUTS = ["channels_last", "channels_first"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(7, 3), (5, 4, 33), (3, 2, 50, 41), (2, 3, 1, 2, 3),
                                   (16, 40, 17, 13)])
def test_statistics_kernel_is_exact_with_a_large_mean(shape, layout, monkeypatch):
    """The native statistics (one pass; rows, or channels-last blocks of rows, combined by Chan
    et al.'s update) against float64 NumPy, on data whose mean is 10^4 times its spread: float32
    rounding, no cancellation. The last shape is large enough for the kernels' threads."""
    import jax

    from netc.compiler.kernels.onednn import LAYOUT_ENV, available, batch_norm_stats_call

    if not available():
        pytest.fail("the native kernels are not available (CI builds them: tests/test_onednn.py)")
    monkeypatch.setenv(LAYOUT_ENV, layout)
    rng = np.random.default_rng(len(shape))
    x = (1e4 + rng.standard_normal(shape) * np.arange(1, shape[1] + 1).reshape(
        (1, -1) + (1,) * (len(shape) - 2))).astype(np.float32)
    mean, var = jax.jit(batch_norm_stats_call)(x)
    axes = (0,) + tuple(range(2, len(shape)))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(np.asarray(mean), x64.mean(axis=axes), rtol=1e-7)
    np.testing.assert_allclose(np.asarray(var), x64.var(axis=axes), rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,lo,hi", [((3, 5, 7, 9), 0.0, 6.0), ((16, 40, 17, 13), 0.0, None),
                                         ((4, 6, 300), None, None)])
def test_backward_kernel_matches_float64(shape, lo, hi, layout, monkeypatch):
    """batch_norm.cc's backward of clamp(gamma·x̂ + beta, lo, hi) on either memory layout
    against the formula in float64 NumPy: row counts that are not a multiple of the channels-
    last block (64 rows) and tensors large enough for the kernels' threads."""
    import jax
    import jax.numpy as jnp

    from netc.compiler.kernels.onednn import LAYOUT_ENV, available, batch_norm_backward_call

    if not available():
        pytest.fail("the native kernels are not available (CI builds them: tests/test_onednn.py)")
    monkeypatch.setenv(LAYOUT_ENV, layout)
    rng = np.random.default_rng(sum(shape))
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, c).astype(np.float32), rng.uniform(-1, 1, c).astype(np.float32)
    axes = (0,) + tuple(range(2, len(shape)))
    rows = (1, c) + (1,) * (len(shape) - 2)
    mean = x.astype(np.float64).mean(axis=axes).astype(np.float32)
    inv = (1 / np.sqrt(x.astype(np.float64).var(axis=axes) + 1e-5)).astype(np.float32)
    bounds = (-np.inf if lo is None else lo, np.inf if hi is None else hi)
    dx, dgamma, dbeta = jax.jit(lambda *a: batch_norm_backward_call(*a, *bounds))(
        jnp.asarray(dy), jnp.asarray(x), mean, inv, gamma, beta)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    xhat = (x64 - mean.reshape(rows)) * inv.reshape(rows)
    z = xhat * gamma.reshape(rows) + beta.reshape(rows)
    g = np.where((z > bounds[0]) & (z < bounds[1]), dy64, 0.0)
    m = x.size // c
    want_db, want_dg = g.sum(axis=axes), (g * xhat).sum(axis=axes)
    want_dx = (gamma * inv).reshape(rows) * (g - (want_db / m).reshape(rows)
                                             - xhat * (want_dg / m).reshape(rows))
    scale = np.sqrt(m)  # sums of m terms of unit size
    np.testing.assert_allclose(np.asarray(dbeta), want_db, atol=1e-5 * scale, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(dgamma), want_dg, atol=1e-5 * scale, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), want_dx, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kernels_read_and_write_bfloat16_as_float32_rounded(layout, monkeypatch):
    """bfloat16 activations (`precision: bfloat16`): the kernels read x and dy as they are and
    compute in float32, so on bfloat16-exact values the statistics (summed in double) equal the
    float32 kernels' bit for bit, dgamma and dbeta to float32 rounding, and dx is the float32 dx
    rounded to nearest even (to one bfloat16 step where the two builds' float32 arithmetic, whose
    multiply-adds the compiler contracts differently per type, lands on either side of a tie)."""
    import jax
    import jax.numpy as jnp

    from netc.compiler.kernels.onednn import (
        LAYOUT_ENV,
        available,
        batch_norm_backward_call,
        batch_norm_stats_call,
    )

    if not available():
        pytest.fail("the native kernels are not available (CI builds them: tests/test_onednn.py)")
    monkeypatch.setenv(LAYOUT_ENV, layout)
    rng = np.random.default_rng(5)
    shape = (16, 24, 11, 13)
    x16 = jnp.asarray(rng.standard_normal(shape) * 3 + 1, jnp.bfloat16)
    dy16 = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    gamma, beta = rng.uniform(0.5, 2, 24).astype(np.float32), rng.uniform(-1, 1, 24).astype(np.float32)

    def run(dy, x):
        mean, var = batch_norm_stats_call(x)
        inv = 1 / jnp.sqrt(var + 1e-5)
        return (mean, var) + tuple(batch_norm_backward_call(dy, x, mean, inv, gamma, beta, 0.0, 6.0))

    got = jax.jit(run)(dy16, x16)
    want = jax.jit(run)(dy16.astype(jnp.float32), x16.astype(jnp.float32))
    assert got[2].dtype == jnp.bfloat16 and got[0].dtype == got[3].dtype == jnp.float32
    for name, a, b in zip(("mean", "var"), got[:2], want[:2]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), name)
    for name, a, b in zip(("dgamma", "dbeta"), got[3:], want[3:]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4, err_msg=name)
    dx, rounded = np.asarray(got[2], np.float32), np.asarray(want[2].astype(jnp.bfloat16), np.float32)
    np.testing.assert_allclose(dx, rounded, rtol=2.0 ** -7, atol=0)
    assert np.mean(dx == rounded) > 0.999
