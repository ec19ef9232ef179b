"""Numerical parity of every lowered layer type with an independent implementation.

Each case goes through the real path — a small YAML spec → parse_spec → plan → lower → Net.apply —
so the plan/lowering glue (in-place tops, propagate_down, parameter roles, phases) is tested too.
The reference is PyTorch (CPU, float64, autograd) or, where Caffe's semantics have no PyTorch
equivalent (Caffe's pooling rounding/clipping and AVE divisor, Accuracy), a direct transcription of
Caffe's loops.

Tolerance: netc runs in float32 (the dtype it trains in) under
`jax.default_matmul_precision("highest")`; the reference runs in float64. Forward values and
gradients must agree to 1e-5 relative, element-wise, with an absolute floor of 1e-5 × the largest
reference magnitude of that array (`close`). The floor is needed because float32 accumulation over a
convolution window (up to a few hundred terms here) gives errors of ~1e-7 × the array's scale, which
is far below 1e-5 of that scale but not below 1e-5 of an element that happens to cancel to ~0.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np
import pytest
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml
from conftest import SCRATCH, jit_fast

from netc.compiler.catalogue import layer_models, units  # noqa: E402
from netc.compiler.layer import Layer  # noqa: E402
from netc.compiler.lower import LoweringError, lower  # noqa: E402
from netc.compiler.plan import plan  # noqa: E402
from netc.spec.messages import NetState  # noqa: E402
from netc.spec.net import parse_spec  # noqa: E402

RTOL = 1e-5

# --------------------------------------------------------------------------------------------
# harness


def build(layers: list[dict], phase: str = "TRAIN"):
    """YAML text → parse_spec → plan → lower, asserting that the spec is clean."""
    folder = tempfile.mkdtemp(prefix="netc_parity_", dir=SCRATCH)
    path = os.path.join(folder, "spec.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"name": "parity", "layers": layers}, f, sort_keys=False)
    spec = parse_spec(path, layer_models())
    assert not spec.diagnostics.errors, [d.format() for d in spec.diagnostics.errors]
    p = plan(spec, NetState(phase=phase))
    assert p.ok, [d.format() for d in p.diagnostics.errors]
    return lower(p)


def inputs_layer(shapes: dict[str, tuple[int, ...]]) -> dict:
    return {"name": "inputs", "type": "Input", "top": list(shapes),
            "input_param": {"shape": [{"dim": list(s)} for s in shapes.values()]}}


def close(actual, ref, what: str, rtol: float = RTOL):
    actual = np.asarray(actual, np.float64)
    ref = np.asarray(ref, np.float64)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != reference {ref.shape}"
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    np.testing.assert_allclose(actual, ref, rtol=rtol, atol=rtol * max(scale, 1e-6), err_msg=what)


def random_params(net, rng: np.random.Generator) -> dict:
    """Every learned blob of the plan, drawn at random (biases non-zero, unlike the fillers; not
    through Net.init, whose per-shape compilations would dominate the run time)."""
    params: dict = {}
    for (layer, role), decl in net.plan.params.items():
        assert decl.learned
        params.setdefault(layer, {})[role] = rng.standard_normal(decl.shape).astype(np.float32)
    return params


def run_netc(net, params, inputs, tops, cots, *, train=None, rng=None):
    """Outputs and d(Σ_t Σ top_t·cot_t)/d(params, inputs) of the lowered net, jitted, float32
    (compiled for compile speed: conftest.FAST_XLA)."""

    def objective(p, x, c):
        blobs, _ = net.apply(p, {}, x, rng=rng, train=train)
        outs = [blobs[t] for t in tops]
        return sum(jnp.sum(o * ci) for o, ci in zip(outs, c)), outs

    p = jax.tree_util.tree_map(jnp.asarray, params)
    x = {k: jnp.asarray(v) for k, v in inputs.items()}
    c = [jnp.asarray(v, jnp.float32) for v in cots]
    with jax.default_matmul_precision("highest"):
        fn = jit_fast(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))
        (_, outs), (gp, gx) = fn(p, x, c)
    return ([np.asarray(o) for o in outs], jax.tree_util.tree_map(np.asarray, gp),
            {k: np.asarray(v) for k, v in gx.items()})


def run_torch(fn, params: dict, inputs: dict, cots, *, no_grad=()):
    """The reference in float64 with autograd: fn(params, inputs) → list of outputs."""
    tp = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True) for k, v in params.items()}
    tx = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=k not in no_grad)
          for k, v in inputs.items()}
    outs = fn(tp, tx)
    total = sum((o * torch.tensor(np.asarray(c, np.float64))).sum() for o, c in zip(outs, cots))
    leaves = [t for t in list(tp.values()) + list(tx.values()) if t.requires_grad]
    grads = (torch.autograd.grad(total, leaves, allow_unused=True)
             if leaves and total.requires_grad else [])
    g = {id(t): gr for t, gr in zip(leaves, grads)}

    def grad_of(t):
        gr = g.get(id(t))
        return np.zeros(t.shape) if gr is None else gr.detach().numpy()

    return ([o.detach().numpy() for o in outs], {k: grad_of(t) for k, t in tp.items()},
            {k: grad_of(t) for k, t in tx.items()})


def compare(name, layer_spec, shapes, reference, rng, *, tops=None, label_inputs=None,
            zero_grad=(), rtol=RTOL, train=None, phase="TRAIN", extra_layers=()):
    """Build Input(shapes) + layer, draw inputs/params/cotangents, compare outputs and gradients.

    reference(params_of_layer, inputs) → outputs (torch, float64). `label_inputs` gives integer
    data (as floats, like Caffe) for some inputs; `zero_grad` are inputs whose gradient must be 0.
    """
    net = build([inputs_layer(shapes), layer_spec, *extra_layers], phase=phase)
    tops = tops or list(layer_spec["top"])
    inputs = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    inputs.update(label_inputs or {})
    params = random_params(net, rng)
    shapes_out = [net.plan.blobs[t] for t in tops]
    cots = [rng.standard_normal(s).astype(np.float32) for s in shapes_out]
    outs, gp, gx = run_netc(net, params, inputs, tops, cots, train=train)
    lp = params.get(layer_spec["name"], {})
    routs, rgp, rgx = run_torch(reference, lp, inputs, cots, no_grad=tuple(label_inputs or ()))
    for t, o, r in zip(tops, outs, routs):
        close(o, r, f"{name}: forward {t}", rtol)
    for role in lp:
        close(gp[layer_spec["name"]][role], rgp[role], f"{name}: d/d {role}", rtol)
    for k in inputs:
        if k in zero_grad or k in (label_inputs or {}):
            assert not np.any(gx[k]), f"{name}: gradient reaches {k}, which must get none"
        else:
            close(gx[k], rgx[k], f"{name}: d/d input {k}", rtol)
    return net, outs


def _case_layer(layer_spec: dict, i: int) -> dict:
    """The layer of case i in a merged net: its name and blob names suffixed with `_i`."""
    s = f"_{i}"
    return dict(layer_spec, name=layer_spec["name"] + s,
                bottom=[b + s for b in layer_spec.get("bottom", [])],
                top=[t + s for t in layer_spec["top"]])


def compare_many(cases, rng, *, rtol=RTOL, train=None, phase="TRAIN"):
    """compare() for several independent cases in ONE net and ONE compiled program (XLA compiles
    a program per net; the cases share nothing, so each output and gradient is the case's own).

    cases: (name, layer_spec, shapes, reference) tuples, or with a 5th item, a dict of compare's
    per-case keywords `tops`, `zero_grad`, `label_inputs`, `inputs` (given values that, unlike
    label inputs, are differentiated; by the case's own blob names),
    `before` / `after` (layers before / after the layer under test, part of the reference) and
    the planned shapes to check (see _check_case). Returns the net and each case's outputs
    ({top: array} per case)."""
    cases = [c if len(c) == 5 else (*c, {}) for c in cases]
    layers, shapes = [], {}
    for i, (_, layer_spec, case_shapes, _, kw) in enumerate(cases):
        layers += [_case_layer(lay, i)
                   for lay in (*kw.get("before", ()), layer_spec, *kw.get("after", ()))]
        shapes.update({f"{k}_{i}": s for k, s in case_shapes.items()})
    net = build([inputs_layer(shapes), *layers], phase=phase)
    inputs = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    tops = []
    for i, (_, layer_spec, _, _, kw) in enumerate(cases):
        given = {**kw.get("inputs", {}), **kw.get("label_inputs", {})}
        inputs.update({f"{k}_{i}": v for k, v in given.items()})
        tops += [f"{t}_{i}" for t in kw.get("tops") or layer_spec["top"]]
    params = random_params(net, rng)
    cots = [rng.standard_normal(net.plan.blobs[t]).astype(np.float32) for t in tops]
    outs, gp, gx = run_netc(net, params, inputs, tops, cots, train=train)
    got = dict(zip(tops, outs))
    cot_of = dict(zip(tops, cots))
    for i, case in enumerate(cases):
        _check_case(net, case, f"_{i}", (params, inputs, got, cot_of, gp, gx), rtol)
    return net, [{t: got[f"{t}_{i}"] for t in kw.get("tops") or layer_spec["top"]}
                 for i, (_, layer_spec, _, _, kw) in enumerate(cases)]


def _check_case(net, case, s, results, rtol):
    """compare_many's checks of one case (its blobs and layer suffixed with `s`), plus the
    planned shapes its keywords `blob_shapes` {top: shape} and `param_shapes` {(layer, role):
    shape} give."""
    name, layer_spec, case_shapes, reference, kw = case
    params, inputs, got, cot_of, gp, gx = results
    labels = kw.get("label_inputs", {})
    case_tops = list(kw.get("tops") or layer_spec["top"])
    lp = params.get(layer_spec["name"] + s, {})
    x = {k: inputs[k + s] for k in case_shapes}
    routs, rgp, rgx = run_torch(reference, lp, x, [cot_of[t + s] for t in case_tops],
                                no_grad=tuple(labels))
    for t, r in zip(case_tops, routs):
        close(got[t + s], r, f"{name}: forward {t}", rtol)
    for role in lp:
        close(gp[layer_spec["name"] + s][role], rgp[role], f"{name}: d/d {role}", rtol)
    for k in case_shapes:
        if k in kw.get("zero_grad", ()) or k in labels:
            assert not np.any(gx[k + s]), f"{name}: gradient reaches {k}, which must get none"
        else:
            close(gx[k + s], rgx[k], f"{name}: d/d input {k}", rtol)
    for t, want in kw.get("blob_shapes", {}).items():
        assert net.plan.blobs[t + s] == want, f"{name}: {t} is {net.plan.blobs[t + s]}"
    for (layer, role), want in kw.get("param_shapes", {}).items():
        got_shape = net.plan.params[(layer + s, role)].shape
        assert got_shape == want, f"{name}: {layer}/{role} is {got_shape}"


def spatial_list(rng, n, lo, hi):
    """A Caffe repeated field: one value for every axis, or one per axis."""
    if rng.random() < 0.4:
        return [int(rng.integers(lo, hi + 1))]
    return [int(v) for v in rng.integers(lo, hi + 1, size=n)]


def per_axis(values, n):
    return values * n if len(values) == 1 else values


SEEDS = range(16)

# --------------------------------------------------------------------------------------------
# Convolution / Deconvolution


def conv_config(seed, transposed=False):
    rng = np.random.default_rng(1000 * (2 if transposed else 1) + seed)
    n = int(rng.choice([1, 2, 2, 3])) if seed >= 3 else seed + 1  # every rank at least once
    group = int(rng.choice([1, 1, 2, 3]))
    cin = group * int(rng.integers(1, 4))
    cout = group * int(rng.integers(1, 4))
    kmax = 3 if n == 3 else 4
    kernel = spatial_list(rng, n, 1, kmax)
    stride = spatial_list(rng, n, 1, 3)
    dilation = spatial_list(rng, n, 1, 2)
    pad = spatial_list(rng, n, 0, 2)
    K, S, P, D = (per_axis(v, n) for v in (kernel, stride, pad, dilation))
    extent = [d * (k - 1) + 1 for k, d in zip(K, D)]
    sizes = []
    for e, p, s in zip(extent, P, S):
        if transposed:
            lo = max(1, -(-(2 * p - e + 1) // s) + 1)  # s·(in−1) + e − 2p ≥ 1
        else:
            lo = max(1, e - 2 * p)
        sizes.append(int(rng.integers(lo, lo + (4 if n == 3 else 6))))
    param = {"num_output": cout, "group": group, "bias_term": bool(rng.random() < 0.75)}
    if n == 2 and rng.random() < 0.3:  # the 2-D spellings
        param.update(kernel_h=K[0], kernel_w=K[1], stride_h=S[0], stride_w=S[1],
                     pad_h=P[0], pad_w=P[1])
    else:
        param.update(kernel_size=kernel, stride=stride, pad=pad)
    if D != [1] * n or rng.random() < 0.5:
        param["dilation"] = dilation
    x_shape = (int(rng.integers(1, 3)), cin, *sizes)
    return rng, n, param, x_shape, (K, S, P, D)


def _convolution_case(seed):
    rng, n, param, x_shape, (K, S, P, D) = conv_config(seed)
    conv = [F.conv1d, F.conv2d, F.conv3d][n - 1]
    group = param["group"]
    layer = {"name": "conv", "type": "Convolution", "bottom": ["x"], "top": ["y"],
             "convolution_param": param}

    def ref(p, x):
        return [conv(x["x"], p["weight"], p.get("bias"), stride=S, padding=P, dilation=D,
                     groups=group)]

    want = (param["num_output"], x_shape[1] // group, *K)
    return (f"Convolution {param} on {x_shape}", layer, {"x": x_shape}, ref,
            {"param_shapes": {("conv", "weight"): want}})


@pytest.mark.parametrize("onednn", ["1", "0"], ids=["onednn", "xla"])
def test_convolution(onednn, monkeypatch):
    """Random geometries (every rank, groups, stride, pad, dilation, both 2-D spellings), all in
    one program; with the oneDNN kernels where the lowering picks them, and with XLA alone."""
    from netc.compiler.kernels.onednn import ENV, available

    monkeypatch.setenv(ENV, onednn)
    net, _ = compare_many([_convolution_case(seed) for seed in SEEDS], np.random.default_rng(1))
    by_onednn = [pl.name for pl in net.plan.layers if pl.resolved and pl.resolved.kernel]
    # 8 of the 16: one-channel inputs with a small patch matrix stay im2col (_use_kernel)
    assert net.kernels == (onednn == "1") and len(by_onednn) >= 8
    assert available() or onednn == "0"


def _deconvolution_case(seed):
    rng, n, param, x_shape, (K, S, P, D) = conv_config(seed, transposed=True)
    deconv = [F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d][n - 1]
    group = param["group"]
    layer = {"name": "deconv", "type": "Deconvolution", "bottom": ["x"], "top": ["y"],
             "convolution_param": param}

    def ref(p, x):  # Caffe's (C_in, C_out/group, k...) is torch's conv_transpose weight layout
        return [deconv(x["x"], p["weight"], p.get("bias"), stride=S, padding=P, dilation=D,
                       groups=group)]

    want = (x_shape[1], param["num_output"] // group, *K)
    return (f"Deconvolution {param} on {x_shape}", layer, {"x": x_shape}, ref,
            {"param_shapes": {("deconv", "weight"): want}})


@pytest.mark.parametrize("onednn", ["1", "0"], ids=["onednn", "xla"])
def test_deconvolution(onednn, monkeypatch):
    from netc.compiler.kernels.onednn import ENV, available

    monkeypatch.setenv(ENV, onednn)
    net, _ = compare_many([_deconvolution_case(seed) for seed in SEEDS], np.random.default_rng(2))
    by_onednn = [pl.name for pl in net.plan.layers if pl.resolved and pl.resolved.kernel]
    assert net.kernels == (onednn == "1") and len(by_onednn) >= 4
    assert available() or onednn == "0"


def test_convolution_propagate_down_false_still_learns():
    rng = np.random.default_rng(7)
    layer = {"name": "conv", "type": "Convolution", "bottom": ["x"], "top": ["y"],
             "propagate_down": [False],
             "convolution_param": {"num_output": 4, "kernel_size": [3], "pad": [1]}}

    def ref(p, x):
        return [F.conv2d(x["x"], p["weight"], p["bias"], padding=1)]

    compare("Convolution propagate_down false", layer, {"x": (2, 3, 6, 5)}, ref, rng,
            zero_grad=("x",))


def test_convolution_axis_2_treats_leading_axes_as_batch():
    rng = np.random.default_rng(8)
    layer = {"name": "conv", "type": "Convolution", "bottom": ["x"], "top": ["y"],
             "convolution_param": {"num_output": 3, "kernel_size": [2], "axis": 2}}

    def ref(p, x):
        v = x["x"]
        y = F.conv1d(v.reshape(-1, *v.shape[2:]), p["weight"], p["bias"])
        return [y.reshape(*v.shape[:2], *y.shape[1:])]

    compare("Convolution axis 2", layer, {"x": (2, 3, 4, 7)}, ref, rng)


# --------------------------------------------------------------------------------------------
# Pooling: Caffe's loops (pooling_layer.cpp), transcribed independently of netc's lowering


def caffe_pooled(size, k, s, p, mode):
    if mode == "CEIL":
        out = int(math.ceil((size + 2 * p - k) / s)) + 1
    else:
        out = int(math.floor((size + 2 * p - k) / s)) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1
    return out


def caffe_pool(x, pool, K, S, P, mode):
    """PoolingLayer::Forward_cpu (MAX / AVE) for N-D windows, in torch so autograd gives the
    backward pass: MAX over the window clipped to the image; AVE sums the clipped window and
    divides by the window clipped to the *padded* input."""
    n = len(K)
    sizes = x.shape[2:]
    outs = [caffe_pooled(sz, k, s, p, mode) for sz, k, s, p in zip(sizes, K, S, P)]
    flat = []
    for pos in itertools.product(*[range(o) for o in outs]):
        sl, count = [], 1
        for i in range(n):
            start = pos[i] * S[i] - P[i]
            end = min(start + K[i], sizes[i] + P[i])
            count *= end - start
            sl.append(slice(max(start, 0), min(end, sizes[i])))
        win = x[(slice(None), slice(None), *sl)].reshape(x.shape[0], x.shape[1], -1)
        flat.append(win.amax(-1) if pool == "MAX" else win.sum(-1) / count)
    return torch.stack(flat, -1).reshape(x.shape[0], x.shape[1], *outs)


def pool_config(seed):
    rng = np.random.default_rng(3000 + seed)
    n = int(rng.choice([1, 2, 2, 2, 3])) if seed >= 3 else seed + 1
    pool = ["MAX", "AVE"][seed % 2]
    mode = "FLOOR" if seed % 4 >= 2 else "CEIL"
    K = [int(v) for v in rng.integers(1, 5, size=n)]
    S = [int(v) for v in rng.integers(1, 4, size=n)]
    P = [int(rng.integers(0, k)) for k in K]  # Caffe: pad < kernel
    # Caffe's CEIL rule with pad 0 and stride > kernel can make a last window that lies wholly
    # past the image (Caffe then outputs −FLT_MAX, or 0/0 for AVE): keep such configs out.
    S = [min(s, k) if p == 0 else s for s, k, p in zip(S, K, P)]
    sizes = [int(rng.integers(max(1, k - 2 * p), max(1, k - 2 * p) + 6)) for k, p in zip(K, P)]
    param = {"pool": pool, "round_mode": mode}
    if n == 2 and rng.random() < 0.3:
        param.update(kernel_h=K[0], kernel_w=K[1], stride_h=S[0], stride_w=S[1], pad_h=P[0],
                     pad_w=P[1])
    else:
        param.update(kernel_size=K, stride=S, pad=P)
    x_shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), *sizes)
    return rng, param, x_shape, (K, S, P, mode)


def _pooling_case(seed):
    rng, param, x_shape, (K, S, P, mode) = pool_config(seed)
    layer = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": ["y"],
             "pooling_param": param}
    want = x_shape[:2] + tuple(
        caffe_pooled(sz, k, s, p, mode) for sz, k, s, p in zip(x_shape[2:], K, S, P))
    return (f"Pooling {param} on {x_shape}", layer, {"x": x_shape},
            lambda p, x: [caffe_pool(x["x"], param["pool"], K, S, P, mode)],
            {"blob_shapes": {"y": want}})


def test_pooling():
    compare_many([_pooling_case(seed) for seed in range(24)], np.random.default_rng(3))


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_pooling_matches_torch_where_rules_agree(pool):
    """A second, library reference: PyTorch's ceil_mode agrees with Caffe's CEIL rule when
    pad > 0 (both drop a last window starting in the right padding), and its
    count_include_pad=True divisor is Caffe's: the window clipped to the padded input."""
    rng = np.random.default_rng(11)
    cases = []
    for size, k, s, p in [(7, 3, 2, 1), (8, 3, 2, 1), (9, 2, 2, 1), (6, 3, 3, 1), (10, 4, 3, 2)]:
        layer = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": ["y"],
                 "pooling_param": {"pool": pool, "kernel_size": [k], "stride": [s], "pad": [p]}}

        def ref(_, x, k=k, s=s, p=p):
            if pool == "MAX":
                return [F.max_pool2d(x["x"], k, s, p, ceil_mode=True)]
            return [F.avg_pool2d(x["x"], k, s, p, ceil_mode=True, count_include_pad=True)]

        cases.append((f"Pooling {pool} {size}/{k}/{s}/{p}", layer, {"x": (2, 3, size, size)}, ref))
    compare_many(cases, rng)


def test_pooling_ave_divisor_is_window_clipped_to_padded_input():
    """Hand-computed: 1×1×3 input [1, 2, 4], kernel 2, stride 2, pad 1, CEIL → 2 windows:
    [pad, 1] → (0+1)/2, [2, 4] → 6/2 (the second ends at 3 < size + pad = 4: divisor 2);
    kernel 3 stride 2 pad 1 on [1, 2, 4, 8]: windows [-1,2) [1,4) [3,5→clip to 5) →
    (1+2)/3, (2+4+8)/3, (8)/2 (the last window ends at 6 > size + pad = 5: divisor 2)."""
    for data, k, s, p, want in [([1, 2, 4], 2, 2, 1, [0.5, 3.0]),
                                ([1, 2, 4, 8], 3, 2, 1, [1.0, 14 / 3, 4.0])]:
        layer = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": ["y"],
                 "pooling_param": {"pool": "AVE", "kernel_size": [k], "stride": [s], "pad": [p]}}
        net = build([inputs_layer({"x": (1, 1, len(data))}), layer])
        y = jit_fast(lambda x, net=net: net.apply({}, {}, {"x": x})[0]["y"])(
            jnp.asarray([[data]], jnp.float32))
        np.testing.assert_allclose(np.asarray(y)[0, 0], want, rtol=1e-6)


def test_global_pooling():
    rng = np.random.default_rng(12)
    cases = []
    for pool in ("MAX", "AVE"):
        layer = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": ["y"],
                 "pooling_param": {"pool": pool, "global_pooling": True}}

        def ref(_, x, pool=pool):
            v = x["x"]
            return [v.amax((2, 3), keepdim=True) if pool == "MAX" else v.mean((2, 3), keepdim=True)]

        cases.append((f"global {pool}", layer, {"x": (2, 3, 5, 4)}, ref))
    compare_many(cases, rng)


# --------------------------------------------------------------------------------------------
# InnerProduct


def _inner_product_case(seed):
    rng = np.random.default_rng(4000 + seed)
    ndim = int(rng.integers(2, 5))
    x_shape = tuple(int(v) for v in rng.integers(1, 5, size=ndim))
    axis = int(rng.integers(1, ndim)) if rng.random() < 0.7 else -1
    a = axis % ndim
    param = {"num_output": int(rng.integers(1, 7)), "bias_term": bool(rng.random() < 0.7),
             "transpose": bool(rng.random() < 0.3)}
    if axis != 1:
        param["axis"] = axis
    layer = {"name": "ip", "type": "InnerProduct", "bottom": ["x"], "top": ["y"],
             "inner_product_param": param}

    def ref(p, x):
        v = x["x"].reshape(*x["x"].shape[:a], -1)
        w = p["weight"].T if param["transpose"] else p["weight"]
        return [F.linear(v, w, p.get("bias"))]

    return f"InnerProduct {param} on {x_shape}", layer, {"x": x_shape}, ref


def test_inner_product():
    compare_many([_inner_product_case(seed) for seed in range(12)], np.random.default_rng(4))


# --------------------------------------------------------------------------------------------
# Activations (in place and not)


@pytest.mark.parametrize("in_place", [False, True])
def test_activations(in_place):
    cases = []
    for kind in ["ReLU", "LeakyReLU", "Sigmoid", "TanH"]:
        cases += _activation_cases(kind, in_place)
    net, _ = compare_many(cases, np.random.default_rng(5))
    assert [pl.in_place for pl in net.plan.layers[1:]] == [(in_place,)] * len(cases)


def _activation_cases(kind, in_place):
    rng = np.random.default_rng(["ReLU", "LeakyReLU", "Sigmoid", "TanH"].index(kind) + 10 * in_place)
    cases = []
    for _ in range(3):
        shape = tuple(int(v) for v in rng.integers(1, 5, size=int(rng.integers(1, 5))))
        top = "x" if in_place else "y"
        layer = {"name": "act", "type": "ReLU" if "ReLU" in kind else kind, "bottom": ["x"],
                 "top": [top]}
        slope = float(rng.uniform(0.01, 0.5))
        if kind == "LeakyReLU":
            layer["relu_param"] = {"negative_slope": slope}
        fn = {"ReLU": F.relu, "LeakyReLU": lambda v, slope=slope: F.leaky_relu(v, slope),
              "Sigmoid": torch.sigmoid, "TanH": torch.tanh}[kind]
        cases.append((f"{kind} on {shape}", layer, {"x": shape}, lambda p, x, fn=fn: [fn(x["x"])]))
    return cases


def test_in_place_chain_matches_torch():
    """Conv → ReLU (in place) → Pooling → InnerProduct → SoftmaxWithLoss: the blob dictionary
    glue, in-place overwrite and loss wiring together."""
    rng = np.random.default_rng(21)
    layers = [
        {"name": "conv", "type": "Convolution", "bottom": ["x"], "top": ["c"],
         "convolution_param": {"num_output": 4, "kernel_size": [3], "stride": [1]}},
        {"name": "relu", "type": "ReLU", "bottom": ["c"], "top": ["c"]},
        {"name": "pool", "type": "Pooling", "bottom": ["c"], "top": ["p"],
         "pooling_param": {"pool": "MAX", "kernel_size": [2], "stride": [2]}},
        {"name": "ip", "type": "InnerProduct", "bottom": ["p"], "top": ["ip"],
         "inner_product_param": {"num_output": 5}},
        {"name": "loss", "type": "SoftmaxWithLoss", "bottom": ["ip", "label"], "top": ["loss"],
         "loss_weight": [0.5]},
    ]
    net = build([inputs_layer({"x": (3, 2, 8, 7), "label": (3,)}), *layers])
    params = random_params(net, rng)
    x = rng.standard_normal((3, 2, 8, 7)).astype(np.float32)
    label = np.array([0, 4, 2], np.float32)
    with jax.default_matmul_precision("highest"):
        (loss, _), (gp, gx) = jit_fast(jax.value_and_grad(net.loss, argnums=(0, 2), has_aux=True))(
            params, {}, {"x": jnp.asarray(x), "label": jnp.asarray(label)})
    tp = {f"{k}/{r}": torch.tensor(v.astype(np.float64), requires_grad=True)
          for k, d in params.items() for r, v in d.items()}
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    h = F.relu(F.conv2d(tx, tp["conv/weight"], tp["conv/bias"]))
    h = F.max_pool2d(h, 2, 2, ceil_mode=True)
    h = F.linear(h.flatten(1), tp["ip/weight"], tp["ip/bias"])
    ref = 0.5 * F.cross_entropy(h, torch.tensor(label.astype(np.int64)))
    ref.backward()
    close(loss, ref.item(), "chain loss")
    close(gx["x"], tx.grad.numpy(), "chain d/dx")
    assert not np.any(np.asarray(gx["label"]))
    for key, t in tp.items():
        layer, role = key.split("/")
        close(gp[layer][role], t.grad.numpy(), f"chain d/d {key}")


# --------------------------------------------------------------------------------------------
# Dropout


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.8])
def test_dropout_train_statistics_and_scale(ratio):
    layer = {"name": "drop", "type": "Dropout", "bottom": ["x"], "top": ["x"],
             "dropout_param": {"dropout_ratio": ratio}}
    n = 200_000
    net = build([inputs_layer({"x": (4, n // 4)}), layer])
    x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, (4, n // 4)).astype(np.float32))
    key = jax.random.PRNGKey(3)

    def f(x):
        blobs, _ = net.apply({}, {}, {"x": x}, rng=key)
        return jnp.sum(blobs["x"]), blobs["x"]

    (_, y), g = jit_fast(jax.value_and_grad(f, has_aux=True))(x)
    y, g, xn = np.asarray(y), np.asarray(g), np.asarray(x)
    kept = y != 0
    scale = 1 / (1 - ratio)
    np.testing.assert_allclose(y[kept], xn[kept] * scale, rtol=1e-6)
    np.testing.assert_allclose(g, kept * scale, rtol=1e-6)  # backward: the same mask and scale
    frac = 1 - kept.mean()
    assert abs(frac - ratio) < 5 * math.sqrt(ratio * (1 - ratio) / n), (frac, ratio)
    # the mask depends on the key, and only on it
    train = jit_fast(lambda x, k: net.apply({}, {}, {"x": x}, rng=k)[0]["x"])
    np.testing.assert_array_equal(np.asarray(train(x, key)), y)
    assert np.any(np.asarray(train(x, jax.random.PRNGKey(4))) != y)
    # TEST is the identity: either by phase or by train=False
    test_net = build([inputs_layer({"x": (4, n // 4)}), layer], phase="TEST")
    test = jit_fast(lambda x: (test_net.apply({}, {}, {"x": x})[0]["x"],
                               net.apply({}, {}, {"x": x}, train=False)[0]["x"]))
    for out in test(x):
        np.testing.assert_array_equal(np.asarray(out), xn)


def test_dropout_without_scale_train():
    """scale_train: false keeps units unscaled in TRAIN and multiplies by (1 − ratio) in TEST."""
    layer = {"name": "drop", "type": "Dropout", "bottom": ["x"], "top": ["y"],
             "dropout_param": {"dropout_ratio": 0.25, "scale_train": False}}
    net = build([inputs_layer({"x": (1000,)}), layer])
    x = jnp.ones((1000,), jnp.float32)
    y, t = jit_fast(lambda x: (net.apply({}, {}, {"x": x}, rng=jax.random.PRNGKey(0))[0]["y"],
                               net.apply({}, {}, {"x": x}, train=False)[0]["y"]))(x)
    y, t = np.asarray(y), np.asarray(t)
    assert set(np.unique(y)) == {0.0, 1.0}
    np.testing.assert_allclose(t, 0.75)


# --------------------------------------------------------------------------------------------
# Structure layers


def test_softmax():
    compare_many([_softmax_case(seed) for seed in range(8)], np.random.default_rng(6))


def _softmax_case(seed):
    rng = np.random.default_rng(5000 + seed)
    ndim = int(rng.integers(2, 5))
    shape = tuple(int(v) for v in rng.integers(1, 5, size=ndim))
    axis = int(rng.integers(-ndim, ndim))
    layer = {"name": "sm", "type": "Softmax", "bottom": ["x"], "top": ["y"],
             "softmax_param": {"axis": axis}}
    return (f"Softmax axis {axis} on {shape}", layer, {"x": shape},
            lambda p, x: [torch.softmax(x["x"] * 1, dim=axis)])


def test_flatten():
    compare_many([_flatten_case(seed) for seed in range(8)], np.random.default_rng(7))


def _flatten_case(seed):
    rng = np.random.default_rng(6000 + seed)
    ndim = int(rng.integers(2, 6))
    shape = tuple(int(v) for v in rng.integers(1, 4, size=ndim))
    a = int(rng.integers(0, ndim))
    e = int(rng.integers(a, ndim))
    param = {"axis": a - ndim if rng.random() < 0.3 else a,
             "end_axis": e - ndim if rng.random() < 0.5 else e}
    layer = {"name": "fl", "type": "Flatten", "bottom": ["x"], "top": ["y"],
             "flatten_param": param}
    return (f"Flatten {param} on {shape}", layer, {"x": shape},
            lambda p, x: [torch.flatten(x["x"], a, e)])


def test_reshape():
    """The expected shape is built first (a random refactorisation of axes [start, end)); the spec
    then spells it with Caffe's 0 (copy) and −1 (infer)."""
    compare_many([_reshape_case(seed) for seed in range(10)], np.random.default_rng(8))


def _reshape_case(seed):
    rng = np.random.default_rng(7000 + seed)
    ndim = int(rng.integers(1, 5))
    shape = [int(v) for v in rng.integers(1, 5, size=ndim)]
    start = int(rng.integers(0, ndim + 1))
    end = int(rng.integers(start, ndim + 1))
    total = math.prod(shape[start:end])
    new = []
    rest = total
    for _ in range(int(rng.integers(1, 4)) - 1):
        divs = [d for d in range(1, rest + 1) if rest % d == 0]
        d = int(rng.choice(divs))
        new.append(d)
        rest //= d
    new.append(rest)
    dims = list(new)
    for i, d in enumerate(new):
        if start + i < end and shape[start + i] == d and rng.random() < 0.5:
            dims[i] = 0
    j = int(rng.integers(0, len(dims)))
    if dims[j] != 0 and rng.random() < 0.7:
        dims[j] = -1
    want = tuple(shape[:start] + new + shape[end:])
    param = {"shape": {"dim": dims}}
    if start or rng.random() < 0.3:
        param["axis"] = start if rng.random() < 0.5 else start - ndim - 1
    if end != ndim or rng.random() < 0.3:
        param["num_axes"] = end - start
    layer = {"name": "rs", "type": "Reshape", "bottom": ["x"], "top": ["y"],
             "reshape_param": param}
    return (f"Reshape {param} on {shape}", layer, {"x": tuple(shape)},
            lambda p, x: [x["x"].reshape(want)], {"blob_shapes": {"y": want}})


def test_concat():
    compare_many([_concat_case(seed) for seed in range(8)], np.random.default_rng(9))


def _concat_case(seed):
    rng = np.random.default_rng(8000 + seed)
    ndim = int(rng.integers(1, 5))
    base = [int(v) for v in rng.integers(1, 4, size=ndim)]
    axis = int(rng.integers(-ndim, ndim))
    k = int(rng.integers(1, 4))
    shapes = {}
    for i in range(k):
        s = list(base)
        s[axis] = int(rng.integers(1, 4))
        shapes[f"x{i}"] = tuple(s)
    param = {"axis": axis} if axis != 1 or rng.random() < 0.5 else {}
    if axis >= 0 and rng.random() < 0.2:
        param = {"concat_dim": axis}  # the deprecated spelling
    layer = {"name": "cat", "type": "Concat", "bottom": list(shapes), "top": ["y"],
             "concat_param": param}
    return (f"Concat {param} of {list(shapes.values())}", layer, shapes,
            lambda p, x: [torch.cat([x[b] for b in shapes], dim=axis)])


def test_eltwise():
    compare_many([_eltwise_case(seed) for seed in range(12)], np.random.default_rng(10))


def _eltwise_case(seed):
    rng = np.random.default_rng(9000 + seed)
    op = ["SUM", "PROD", "MAX"][seed % 3]
    shape = tuple(int(v) for v in rng.integers(1, 5, size=int(rng.integers(1, 5))))
    k = int(rng.integers(2, 5))
    names = [f"x{i}" for i in range(k)]
    param = {"operation": op}
    coeff = [1.0] * k
    if op == "SUM" and rng.random() < 0.7:
        coeff = [float(c) for c in rng.choice([1.0, -1.0, 0.5, 2.0, -0.25], size=k)]
        param["coeff"] = coeff
    layer = {"name": "elt", "type": "Eltwise", "bottom": names, "top": ["y"],
             "eltwise_param": param}
    stopped = ()
    if seed % 4 == 3:  # propagate_down: false on the last input
        layer["propagate_down"] = [True] * (k - 1) + [False]
        stopped = (names[-1],)

    def ref(p, x):
        xs = [x[b] if b not in stopped else x[b].detach() for b in names]
        if op == "SUM":
            return [sum(c * v for c, v in zip(coeff, xs))]
        out = xs[0]
        for v in xs[1:]:
            out = out * v if op == "PROD" else torch.maximum(out, v)
        return [out]

    return (f"Eltwise {param} ×{k} on {shape}", layer, {b: shape for b in names}, ref,
            {"zero_grad": stopped})


def test_split_gradients_add_up():
    rng = np.random.default_rng(31)
    layer = {"name": "split", "type": "Split", "bottom": ["x"], "top": ["a", "b", "c"]}
    compare("Split", layer, {"x": (2, 3, 4)}, lambda p, x: [x["x"]] * 3, rng)


# --------------------------------------------------------------------------------------------
# Losses and Accuracy


def _labels(rng, shape, classes, ignore):
    lab = rng.integers(0, classes, size=shape)
    if ignore is not None:
        lab[rng.random(shape) < 0.3] = ignore
    return lab.astype(np.float32)


def test_softmax_with_loss():
    compare_many([_softmax_with_loss_case(seed) for seed in range(16)], np.random.default_rng(11))


def _softmax_with_loss_case(seed):
    rng = np.random.default_rng(10_000 + seed)
    modes = ["VALID", "FULL", "BATCH_SIZE", "NONE"]
    mode = modes[seed % 4]
    spatial = seed % 3 == 1
    classes = int(rng.integers(2, 6))
    n = int(rng.integers(1, 4))
    if spatial:
        hw = tuple(int(v) for v in rng.integers(1, 4, size=2))
        pred_shape = (n, classes, *hw)
        label_shape = (n, 1, *hw) if rng.random() < 0.5 else (n, *hw)
    else:
        pred_shape, label_shape = (n, classes), (n,)
    ignore = [None, -1, int(rng.integers(0, classes))][seed % 3]
    loss_param = {"normalization": mode}
    if seed in (5, 9):  # Caffe's deprecated `normalize: false` = BATCH_SIZE
        loss_param, mode = {"normalize": False}, "BATCH_SIZE"
    if ignore is not None:
        loss_param["ignore_label"] = ignore
    two_tops = seed % 2 == 1
    layer = {"name": "loss", "type": "SoftmaxWithLoss", "bottom": ["x", "label"],
             "top": ["loss", "prob"] if two_tops else ["loss"], "loss_param": loss_param}
    if seed == 2:  # all labels ignored: the VALID normaliser is clamped to 1
        label = np.full(label_shape, ignore, np.float32)
    else:
        label = _labels(rng, label_shape, classes, ignore)
    lab_int = label.reshape((n, *pred_shape[2:])).astype(np.int64)

    def ref(p, x):
        logits = x["x"]
        t = torch.tensor(lab_int)
        kw = {"ignore_index": ignore} if ignore is not None else {}
        total = F.cross_entropy(logits, t, reduction="sum", **kw)
        valid = (t != ignore).sum().item() if ignore is not None else t.numel()
        norm = {"VALID": valid, "FULL": t.numel(), "BATCH_SIZE": n, "NONE": 1}[mode]
        outs = [total / max(norm, 1)]
        if two_tops:
            outs.append(torch.softmax(logits, dim=1))
        return outs

    return (f"SoftmaxWithLoss {loss_param} on {pred_shape}", layer,
            {"x": pred_shape, "label": label_shape}, ref, {"label_inputs": {"label": label}})


def test_softmax_with_loss_class_axis_2():
    rng = np.random.default_rng(44)
    layer = {"name": "loss", "type": "SoftmaxWithLoss", "bottom": ["x", "label"], "top": ["loss"],
             "softmax_param": {"axis": 2}}
    label = rng.integers(0, 4, size=(2, 3)).astype(np.float32)

    def ref(p, x):
        return [F.cross_entropy(x["x"].transpose(1, 2), torch.tensor(label.astype(np.int64)))]

    compare("SoftmaxWithLoss axis 2", layer, {"x": (2, 3, 4), "label": (2, 3)}, ref, rng,
            label_inputs={"label": label})


def test_euclidean_loss():
    compare_many([_euclidean_loss_case(seed) for seed in range(6)], np.random.default_rng(12))


def _euclidean_loss_case(seed):
    rng = np.random.default_rng(11_000 + seed)
    n = int(rng.integers(1, 4))
    a_shape = (n, *(int(v) for v in rng.integers(1, 4, size=int(rng.integers(1, 4)))))
    per = math.prod(a_shape[1:])
    b_shape = (n, per) if seed % 2 else a_shape
    layer = {"name": "loss", "type": "EuclideanLoss", "bottom": ["a", "b"], "top": ["loss"]}
    stopped = ()
    if seed == 5:
        layer["propagate_down"] = [True, False]
        stopped = ("b",)

    def ref(p, x):
        d = x["a"].reshape(n, -1) - x["b"].reshape(n, -1)
        return [F.mse_loss(x["a"].reshape(n, -1), x["b"].reshape(n, -1), reduction="sum") / n / 2
                if seed % 3 else (d * d).sum() / n / 2]

    return (f"EuclideanLoss {a_shape} vs {b_shape}", layer, {"a": a_shape, "b": b_shape}, ref,
            {"zero_grad": stopped})


def caffe_accuracy(scores, lab, top_k, ignore, classes):
    """AccuracyLayer::Forward_cpu: a position is correct when fewer than top_k classes score
    >= the true class's score, the true class itself excluded (ties count against it)."""
    scores = np.moveaxis(scores, 1, -1).reshape(-1, classes)
    lab = lab.reshape(-1)
    hits, count = 0, 0
    per_hit, per_seen = np.zeros(classes), np.zeros(classes)
    for row, y in zip(scores, lab):
        if ignore is not None and y == ignore:
            continue
        per_seen[y] += 1
        count += 1
        if (row >= row[y]).sum() - 1 < top_k:
            hits += 1
            per_hit[y] += 1
    per = np.where(per_seen > 0, per_hit / np.maximum(per_seen, 1), 0)
    return (hits / count if count else 0.0), per


@pytest.mark.parametrize("seed", range(12))
def test_accuracy(seed):
    rng = np.random.default_rng(12_000 + seed)
    classes = int(rng.integers(2, 8))
    top_k = int(rng.integers(1, classes + 1))
    spatial = seed % 3 == 2
    n = int(rng.integers(2, 9))
    pred_shape = (n, classes, 3) if spatial else (n, classes)
    label_shape = (n, 3) if spatial else (n,)
    ignore = None if seed % 2 else int(rng.integers(0, classes))
    param = {"top_k": top_k}
    if ignore is not None:
        param["ignore_label"] = ignore
    two = seed % 4 < 2
    layer = {"name": "acc", "type": "Accuracy", "bottom": ["x", "label"],
             "top": ["acc", "per_class"] if two else ["acc"], "accuracy_param": param}
    label = _labels(rng, label_shape, classes, None)
    if ignore is not None and seed == 0:
        label[:] = ignore  # nothing counted: Caffe reports 0
    lab = label.astype(np.int64)
    scores = rng.standard_normal(pred_shape).astype(np.float32)
    if seed % 3 == 0:  # ties: scores from a few integers (and once all equal, as from zero weights)
        scores = rng.integers(0, 3, size=pred_shape).astype(np.float32) * (seed != 3)

    acc, per = caffe_accuracy(scores, lab, top_k, ignore, classes)
    if seed % 3 != 0:  # without ties, also the library reference: the label among torch.topk
        t = torch.tensor(scores).movedim(1, -1)
        hit = (torch.topk(t, top_k, dim=-1).indices == torch.tensor(lab)[..., None]).any(-1)
        valid = torch.ones_like(hit) if ignore is None else torch.tensor(lab != ignore)
        assert math.isclose(acc, (hit & valid).sum().item() / max(int(valid.sum()), 1))

    net = build([inputs_layer({"x": pred_shape, "label": label_shape}), layer])
    tops = layer["top"]
    cots = [rng.standard_normal(net.plan.blobs[t]).astype(np.float32) for t in tops]
    outs, _, gx = run_netc(net, {}, {"x": scores, "label": label}, tops, cots)
    close(outs[0], acc, f"Accuracy {param} on {pred_shape}")
    if two:
        close(outs[1], per, f"Accuracy per class {param} on {pred_shape}")
    assert not np.any(gx["x"]) and not np.any(gx["label"])


def test_max_ties_route_the_gradient_like_caffe():
    """Eltwise MAX: bottoms 0, 1 compare with `a > b` (a tie goes to bottom 1), later bottoms take
    over only when strictly greater; the whole gradient goes to that one input (no 50/50 split)."""
    rng = np.random.default_rng(51)
    shape = (4, 6)
    xs = {f"x{i}": rng.integers(0, 2, size=shape).astype(np.float32) for i in range(3)}
    layer = {"name": "elt", "type": "Eltwise", "bottom": list(xs), "top": ["y"],
             "eltwise_param": {"operation": "MAX"}}
    net = build([inputs_layer(dict.fromkeys(xs, shape)), layer])
    cot = rng.standard_normal(shape).astype(np.float32)
    outs, _, gx = run_netc(net, {}, xs, ["y"], [cot])
    a, b, c = xs.values()
    top = np.where(a > b, a, b)
    mask = np.where(a > b, 0, 1)
    mask = np.where(c > top, 2, mask)
    top = np.maximum(top, c)
    np.testing.assert_array_equal(outs[0], top)
    for i, k in enumerate(xs):
        np.testing.assert_array_equal(gx[k], np.where(mask == i, cot, 0), err_msg=k)


def test_max_pooling_ties_route_the_gradient_to_the_first_max():
    """Caffe's MAX pooling keeps the first maximum in raster order (`>`), and only it gets the
    gradient."""
    rng = np.random.default_rng(52)
    x = rng.integers(0, 2, size=(2, 2, 5, 5)).astype(np.float32)
    layer = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": ["y"],
             "pooling_param": {"pool": "MAX", "kernel_size": [3], "stride": [2], "pad": [1]}}
    net = build([inputs_layer({"x": x.shape}), layer])
    out_shape = net.plan.blobs["y"]
    cot = rng.standard_normal(out_shape).astype(np.float32)
    outs, _, gx = run_netc(net, {}, {"x": x}, ["y"], [cot])
    want = np.zeros_like(x)
    for n_, c_, i, j in itertools.product(*[range(d) for d in out_shape]):
        h0, w0 = max(i * 2 - 1, 0), max(j * 2 - 1, 0)
        h1, w1 = min(i * 2 + 2, 5), min(j * 2 + 2, 5)
        win = x[n_, c_, h0:h1, w0:w1]
        assert outs[0][n_, c_, i, j] == win.max()
        a, b = np.unravel_index(np.argmax(win), win.shape)  # argmax: the first maximum
        want[n_, c_, h0 + a, w0 + b] += cot[n_, c_, i, j]
    np.testing.assert_allclose(gx["x"], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel,size", [(2, 6), (3, 9)])
def test_tiling_max_pooling_fast_path_matches_caffe_with_ties(kernel, size):
    """kernel == stride, pad 0, windows tiling the input: the reshape lowering must give Caffe's
    values and route each window's gradient to its first maximum (raster order)."""
    rng = np.random.default_rng(kernel)
    x = rng.integers(0, 2, size=(2, 3, size, size)).astype(np.float32)
    layer = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": ["y"],
             "pooling_param": {"pool": "MAX", "kernel_size": [kernel], "stride": [kernel]}}
    net = build([inputs_layer({"x": x.shape}), layer])
    out_shape = net.plan.blobs["y"]
    cot = rng.standard_normal(out_shape).astype(np.float32)
    outs, _, gx = run_netc(net, {}, {"x": x}, ["y"], [cot])
    want = np.zeros_like(x)
    for n_, c_, i, j in itertools.product(*[range(d) for d in out_shape]):
        win = x[n_, c_, i * kernel:(i + 1) * kernel, j * kernel:(j + 1) * kernel]
        assert outs[0][n_, c_, i, j] == win.max()
        a, b = np.unravel_index(np.argmax(win), win.shape)
        want[n_, c_, i * kernel + a, j * kernel + b] += cot[n_, c_, i, j]
    np.testing.assert_allclose(gx["x"], want, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Input / Data and coverage


def test_input_blobs_pass_through_and_missing_input_is_reported():
    net = build([inputs_layer({"x": (2, 3), "y": (2,)}),
                 {"name": "id", "type": "Split", "bottom": ["x"], "top": ["z"]}])
    x = jnp.arange(6.0).reshape(2, 3)
    blobs, _ = net.apply({}, {}, {"x": x, "y": jnp.zeros(2)})
    np.testing.assert_array_equal(np.asarray(blobs["z"]), np.asarray(x))
    with pytest.raises(LoweringError, match="'y'"):
        net.apply({}, {}, {"x": x})


# The parity tests above, by layer type. A new unit with a lowering must be added here.
COVERED = {
    "Input": test_input_blobs_pass_through_and_missing_input_is_reported,
    "Data": None,  # is_data: Net.apply takes its tops from `inputs` (test_eval_shape plans it)
    "ImageData": None,  # is_data, as Data (tests/test_image_sources.py trains from it)
    "DenseImageData": None,  # is_data, shapes only (tests/test_input_shape.py, test_eval_shape)
    "Convolution": test_convolution, "Deconvolution": test_deconvolution,
    "Pooling": test_pooling, "InnerProduct": test_inner_product, "ReLU": test_activations,
    "Sigmoid": test_activations, "TanH": test_activations,
    "Dropout": test_dropout_train_statistics_and_scale, "Softmax": test_softmax,
    "Flatten": test_flatten, "Reshape": test_reshape, "Concat": test_concat,
    "Eltwise": test_eltwise, "Split": test_split_gradients_add_up,
    "SoftmaxWithLoss": test_softmax_with_loss, "EuclideanLoss": test_euclidean_loss,
    "Accuracy": test_accuracy,
    "GaussianNoise": None,  # tests/test_regularisers.py: TRAIN statistics, TEST identity
}


def _all_covered() -> set[str]:
    """COVERED here plus the COVERED dicts of the per-group files tests/test_parity_<group>.py."""
    import glob
    import importlib.util

    covered = set(COVERED)
    here = os.path.dirname(os.path.abspath(__file__))
    for path in sorted(glob.glob(os.path.join(here, "test_parity_*.py"))):
        spec = importlib.util.spec_from_file_location("_cov_" + os.path.basename(path)[:-3], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        covered |= set(getattr(module, "COVERED", {}))
    return covered


def test_every_lowered_type_has_a_parity_test():
    missing = []
    covered = _all_covered()
    for kind, unit in units().items():
        if kind in covered:
            continue
        if unit.is_data or unit.apply is not Layer.apply:
            missing.append(kind)
    assert not missing, f"layer types with a lowering but no parity test: {missing}"
