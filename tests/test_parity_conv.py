"""Numerical parity of the convolutional catalogue's additions with independent implementations:
Convolution's padding modes (SAME / VALID / CAUSAL / explicit per-side), Pooling's L2, STOCHASTIC,
argmax-mask top and windows wholly outside the input, SPP, Upsample (SegNet unpooling and
NEAREST / BILINEAR resizing) and Crop.

The harness is tests/test_parity.py's (YAML → parse_spec → plan → lower → Net.apply, float32
under `jax.default_matmul_precision("highest")` vs a float64 reference, 1e-5 relative with an
absolute floor of 1e-5 × the array's largest reference magnitude). References: PyTorch functions
where PyTorch has the operation (conv after F.pad, max_pool2d indices, max_unpool2d, lp_pool,
adaptive pooling, interpolate) and otherwise direct transcriptions of Caffe's loops
(pooling_layer.cpp / .cu, spp_layer.cpp, SegNet's upsample_layer.cpp), written here in torch so
that autograd gives the reference gradients.
"""

from __future__ import annotations

import itertools
import math

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np
import pytest
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import jit_fast
from test_parity import (  # noqa: E402
    build,
    close,
    compare,
    compare_many,
    inputs_layer,
    per_axis,
    random_params,
    run_netc,
    run_torch,
    spatial_list,
)

import netc.compiler.layers.crop  # noqa: E402, F401 - registers Crop
import netc.compiler.layers.upsample  # noqa: E402, F401 - registers Upsample

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)

# --------------------------------------------------------------------------------------------
# Convolution padding modes: the reference pads explicitly with F.pad, then convolves unpadded.


def tf_same(size, k, s, d):
    """TensorFlow's SAME rule: out = ceil(in / s); total pad as needed, the odd one at the end."""
    out = -(-size // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def test_tf_same_rule_known_values():
    assert tf_same(5, 3, 2, 1) == (1, 1)
    assert tf_same(6, 3, 2, 1) == (0, 1)
    assert tf_same(7, 1, 3, 1) == (0, 0)
    assert tf_same(4, 2, 1, 3) == (1, 2)


def padded_conv(x, weight, bias, pads, stride, dilation, group):
    n = len(pads)
    flat = [v for lo_hi in reversed(pads) for v in lo_hi]  # F.pad: last axis first
    conv = [F.conv1d, F.conv2d, F.conv3d][n - 1]
    return conv(F.pad(x, flat), weight, bias, stride=stride, dilation=dilation, groups=group)


def pad_config(seed):
    rng = np.random.default_rng(5000 + seed)
    mode = ["SAME", "VALID", "CAUSAL", "EXPLICIT"][seed % 4]
    n = 1 if mode == "CAUSAL" else (seed // 4) % 3 + 1
    group = int(rng.choice([1, 1, 2]))
    cin, cout = group * int(rng.integers(1, 3)), group * int(rng.integers(1, 4))
    kernel = spatial_list(rng, n, 1, 3 if n == 3 else 4)
    stride = spatial_list(rng, n, 1, 1 if mode == "CAUSAL" else 3)
    dilation = spatial_list(rng, n, 1, 3 if mode == "CAUSAL" else 2)
    K, S, D = (per_axis(v, n) for v in (kernel, stride, dilation))
    extent = [d * (k - 1) + 1 for k, d in zip(K, D)]
    param = {"num_output": cout, "group": group, "kernel_size": kernel, "stride": stride,
             "dilation": dilation, "bias_term": bool(rng.random() < 0.7)}
    if mode == "EXPLICIT":
        begin, end = spatial_list(rng, n, 0, 2), spatial_list(rng, n, 0, 2)
        param.update(pad_begin=begin, pad_end=end)
        lo, hi = per_axis(begin, n), per_axis(end, n)
    else:
        param["pad_mode"] = mode
    sizes = []
    for i in range(n):
        least = extent[i] - (lo[i] + hi[i] if mode == "EXPLICIT" else 0) if mode != "SAME" else 1
        least = 1 if mode == "CAUSAL" else least
        sizes.append(int(rng.integers(max(1, least), max(1, least) + 5)))
    if mode == "SAME":
        pads = [tf_same(sz, k, s, d) for sz, k, s, d in zip(sizes, K, S, D)]
    elif mode == "VALID":
        pads = [(0, 0)] * n
    elif mode == "CAUSAL":
        pads = [(extent[0] - 1, 0)]
    else:
        pads = list(zip(lo, hi))
    return rng, param, (int(rng.integers(1, 3)), cin, *sizes), pads, (S, D)


def test_convolution_padding_modes():
    cases = [_padding_case(seed) for seed in range(12)]
    _, outs = compare_many(cases, np.random.default_rng(1))
    for (_, layer, shapes, _), out in zip(cases, outs):
        param, x_shape = layer["convolution_param"], shapes["x"]
        S = per_axis(param["stride"], len(x_shape) - 2)
        if param.get("pad_mode") == "SAME":  # Keras/TF: the output is ceil(in / stride)
            assert out["y"].shape[2:] == tuple(-(-sz // s) for sz, s in zip(x_shape[2:], S))
        if param.get("pad_mode") == "CAUSAL":  # stride 1: the length is kept
            assert out["y"].shape[2] == x_shape[2]


def _padding_case(seed):
    rng, param, x_shape, pads, (S, D) = pad_config(seed)
    layer = {"name": "conv", "type": "Convolution", "bottom": ["x"], "top": ["y"],
             "convolution_param": param}

    def ref(p, x):
        return [padded_conv(x["x"], p["weight"], p.get("bias"), pads, S, D, param["group"])]

    return f"Convolution {param} on {x_shape}", layer, {"x": x_shape}, ref


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_convolution_same_stride_1_matches_torch_same():
    """A library reference for SAME: PyTorch's padding='same' (stride 1; an odd total pad puts
    the extra on the right, as TF does)."""
    rng = np.random.default_rng(41)
    cases = []
    for k, d in [(3, 1), (4, 1), (2, 3), (5, 2)]:
        layer = {"name": "conv", "type": "Convolution", "bottom": ["x"], "top": ["y"],
                 "convolution_param": {"num_output": 3, "kernel_size": k, "dilation": d,
                                       "pad_mode": "SAME"}}
        cases.append((f"SAME k{k} d{d}", layer, {"x": (2, 2, 7, 6)},
                      lambda p, x, d=d: [F.conv2d(x["x"], p["weight"], p["bias"], padding="same",
                                                  dilation=d)]))
    compare_many(cases, rng)


def test_causal_output_never_sees_the_future():
    """Changing the input at t changes no output before t (WaveNet's causality)."""
    layers = [{"name": f"c{i}", "type": "Convolution", "bottom": [f"h{i}"], "top": [f"h{i + 1}"],
               "convolution_param": {"num_output": 2, "kernel_size": 2, "dilation": 2**i,
                                     "pad_mode": "CAUSAL"}} for i in range(4)]
    layers[0]["bottom"] = ["x"]
    net = build([inputs_layer({"x": (1, 2, 20)}), *layers])
    params = {k: {r: jnp.asarray(np.random.default_rng(1).standard_normal(v.shape), jnp.float32)
                  for r, v in d.items()} for k, d in random_params(net, np.random.default_rng(0)).items()}
    forward = jit_fast(lambda x: net.apply(params, {}, {"x": x})[0]["h4"])
    x = np.random.default_rng(2).standard_normal((1, 2, 20)).astype(np.float32)
    y0 = np.asarray(forward(jnp.asarray(x)))
    x[0, :, 12] += 1.0
    y1 = np.asarray(forward(jnp.asarray(x)))
    assert y0.shape == (1, 2, 20)
    np.testing.assert_array_equal(y0[..., :12], y1[..., :12])
    assert np.all(np.abs(y0[..., 12] - y1[..., 12]) > 0)


# --------------------------------------------------------------------------------------------
# Pooling: Caffe's loops, including windows wholly outside the input


def caffe_pooled(size, k, s, p, mode):
    out = (math.ceil if mode == "CEIL" else math.floor)((size + 2 * p - k) / s) + 1
    return out - 1 if p and (out - 1) * s >= size + p else out


def caffe_pool(x, pool, K, S, P, mode):
    """PoolingLayer::Forward_cpu for MAX / AVE, and L2 (netc: sqrt of Σx² over the same clipped
    window): an empty MAX window gives −FLT_MAX (mask −1), an empty AVE/L2 window 0. Returns
    (pooled, mask) in torch; the mask is Caffe's flat h·W + w index of the first maximum."""
    n, sizes = len(K), x.shape[2:]
    outs = [caffe_pooled(sz, k, s, p, mode) for sz, k, s, p in zip(sizes, K, S, P)]
    strides = np.cumprod((1,) + tuple(sizes[::-1]))[:-1][::-1]
    vals, masks = [], []
    for pos in itertools.product(*[range(o) for o in outs]):
        sl, count, empty = [], 1, False
        for i in range(n):
            start = pos[i] * S[i] - P[i]
            end = min(start + K[i], sizes[i] + P[i])
            count *= end - start
            sl.append(slice(max(start, 0), min(end, sizes[i])))
            empty |= sl[-1].start >= sl[-1].stop
        if empty:
            fill = -FLT_MAX if pool == "MAX" else 0.0
            vals.append(torch.full(x.shape[:2], fill, dtype=x.dtype))
            if pool == "MAX":
                masks.append(torch.full(x.shape[:2], -1.0, dtype=x.dtype))
            continue
        win = x[(slice(None), slice(None), *sl)].reshape(x.shape[0], x.shape[1], -1)
        if pool == "MAX":
            v, a = win.max(-1)  # ties: none in random data
            local = np.unravel_index(a.numpy(), [s.stop - s.start for s in sl])
            flat = sum((loc + s.start) * st for loc, s, st in zip(local, sl, strides))
            vals.append(v)
            masks.append(torch.tensor(np.asarray(flat, np.float64)))
        elif pool == "AVE":
            vals.append(win.sum(-1) / count)
        else:
            vals.append(win.pow(2).sum(-1).sqrt())
    shape = (x.shape[0], x.shape[1], *outs)
    out = torch.stack(vals, -1).reshape(shape)
    return out, (torch.stack(masks, -1).reshape(shape) if masks else None)


def pool_config(seed, pool):
    rng = np.random.default_rng(6000 + seed)
    n = int(rng.choice([1, 2, 2, 3])) if seed >= 3 else seed + 1
    mode = "FLOOR" if seed % 3 == 2 else "CEIL"
    K = [int(v) for v in rng.integers(1, 4, size=n)]
    S = [int(v) for v in rng.integers(1, 4, size=n)]
    P = [int(rng.integers(0, k)) if rng.random() < 0.6 else 0 for k in K]
    sizes = [int(rng.integers(max(1, k - 2 * p), max(1, k - 2 * p) + 5)) for k, p in zip(K, P)]
    param = {"pool": pool, "round_mode": mode, "kernel_size": K, "stride": S, "pad": P}
    return rng, param, (int(rng.integers(1, 3)), int(rng.integers(1, 4)), *sizes), (K, S, P, mode)


def test_pooling_l2_and_max_mask():
    """L2 values and gradients; MAX with the argmax-mask second top (values, gradients, and the
    mask itself, which carries no gradient)."""
    cases = [_l2_max_case(seed, pool) for pool in ("L2", "MAX") for seed in range(8)]
    compare_many(cases, np.random.default_rng(2))


def _l2_max_case(seed, pool):
    rng, param, x_shape, (K, S, P, mode) = pool_config(seed, pool)
    tops = ["y", "mask"] if pool == "MAX" else ["y"]
    layer = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": tops, "pooling_param": param}

    def ref(_, x):
        y, m = caffe_pool(x["x"], pool, K, S, P, mode)
        return [y] if m is None else [y, m.detach()]

    return f"Pooling {param} on {x_shape}", layer, {"x": x_shape}, ref


def test_max_mask_matches_torch_indices():
    """A library reference for the mask: PyTorch's max_pool2d indices are the same flat h·W + w
    index into each input plane (they agree with Caffe's CEIL rule when pad > 0)."""
    rng = np.random.default_rng(43)
    cases = []
    for size, k, s, p in [(7, 3, 2, 1), (8, 2, 2, 0), (9, 3, 3, 1)]:
        layer = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": ["y", "m"],
                 "pooling_param": {"pool": "MAX", "kernel_size": k, "stride": s, "pad": p}}

        def ref(_, x, k=k, s=s, p=p):
            y, idx = F.max_pool2d(x["x"], k, s, p, ceil_mode=True, return_indices=True)
            return [y, idx.double()]

        cases.append((f"MAX mask {size}/{k}/{s}/{p}", layer, {"x": (2, 3, size, size + 1)}, ref))
    compare_many(cases, rng)


def test_l2_matches_torch_lp_pool():
    """A library reference for L2 without padding: PyTorch's lp_pool2d with norm 2 (FLOOR)."""
    rng = np.random.default_rng(44)
    layer = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": ["y"],
             "pooling_param": {"pool": "L2", "kernel_size": [3, 2], "stride": [2, 1],
                               "round_mode": "FLOOR"}}
    compare("L2 vs lp_pool2d", layer, {"x": (2, 3, 7, 6)},
            lambda _, x: [F.lp_pool2d(x["x"], 2, (3, 2), (2, 1))], rng)


@pytest.mark.parametrize("pool", ["MAX", "AVE", "L2"])
def test_windows_wholly_outside_the_input(pool):
    """CEIL, pad 0, stride > kernel: the last window along H starts at or past the input's end.
    Caffe gives −FLT_MAX there for MAX (mask −1) and 0 for AVE; L2 gives 0; such a window sends
    no gradient back."""
    rng = np.random.default_rng(45)
    cases = []
    for size, k, s in [(6, 1, 3), (8, 2, 4), (10, 3, 5)]:
        K, S, P = [k, k], [s, s], [0, 0]
        tops = ["y", "m"] if pool == "MAX" else ["y"]
        layer = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": tops,
                 "pooling_param": {"pool": pool, "kernel_size": [k], "stride": [s]}}

        def ref(_, x, K=K, S=S, P=P):
            y, m = caffe_pool(x["x"], pool, K, S, P, "CEIL")
            return [y] if m is None else [y, m]

        cases.append((f"{pool} {size}/{k}/{s} outside", layer, {"x": (2, 2, size, size + 1)},
                      ref))
    for out in compare_many(cases, rng)[1]:
        assert np.all(out["y"][:, :, -1] == (-FLT_MAX if pool == "MAX" else 0.0))
        assert np.all(out["y"][:, :, :-1] != -FLT_MAX)
        if pool == "MAX":
            assert np.all(out["m"][:, :, -1] == -1)


def test_pooling_apply_adds_no_warnings():
    """Tracing a Pooling layer must not repeat the plan's warnings (apply used to re-run infer)."""
    layer = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": ["y"],
             "pooling_param": {"pool": "MAX", "kernel_size": 2, "stride": 3}}
    net = build([inputs_layer({"x": (1, 1, 9, 9)}), layer])
    unit = net.plan.layers[-1].unit
    before = list(unit.warnings)
    assert [m for m, _ in before] == [  # 2×2 windows every 3: positions 2, 5, 8 are skipped
        "3 of 9 input positions on axis H and 3 of 9 on axis W are never read by any window "
        "(2 between windows, 1 past the last one)"]
    for _ in range(3):  # traced only
        jax.make_jaxpr(lambda x: net.apply({}, {}, {"x": x}))(jnp.zeros((1, 1, 9, 9)))
    assert unit.warnings == before


# --- STOCHASTIC (Caffe's GPU kernels; TEST is deterministic, TRAIN samples) ---------------------


def stochastic_config(seed):
    rng = np.random.default_rng(7000 + seed)
    n = [1, 2, 2, 3][seed % 4]
    K = [int(v) for v in rng.integers(1, 4, size=n)]
    S = [int(v) for v in rng.integers(1, 4, size=n)]
    sizes = [int(rng.integers(k, k + 5)) for k in K]
    param = {"pool": "STOCHASTIC", "kernel_size": K, "stride": S}
    if seed % 3 == 1:
        param["round_mode"] = "FLOOR"
    return rng, param, (2, 2, *sizes), (K, S, param.get("round_mode", "CEIL"))


def caffe_sto_windows(x, K, S, mode):
    """StoPoolForward*: windows start at j·stride (no pad), clipped to the input."""
    sizes = x.shape[2:]
    outs = [caffe_pooled(sz, k, s, 0, mode) for sz, k, s in zip(sizes, K, S)]
    wins = []
    for pos in itertools.product(*[range(o) for o in outs]):
        sl = tuple(slice(p * s, min(p * s + k, sz)) for p, s, k, sz in zip(pos, S, K, sizes))
        wins.append(x[(slice(None), slice(None), *sl)].reshape(x.shape[0], x.shape[1], -1))
    return wins, outs


@pytest.mark.parametrize("seed", range(4))
def test_stochastic_pooling_test_phase_is_the_weighted_average(seed):
    """TEST: Σx² / (FLT_MIN + Σx) over each window (StoPoolForwardTest), on non-negative input;
    the gradient is that formula's."""
    rng, param, x_shape, (K, S, mode) = stochastic_config(seed)
    layer = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": ["y"], "pooling_param": param}
    net = build([inputs_layer({"x": x_shape}), layer], phase="TEST")
    x = np.abs(rng.standard_normal(x_shape)).astype(np.float32)
    x[0, 0] = 0.0  # all-zero windows: 0 / FLT_MIN = 0
    cot = [rng.standard_normal(net.plan.blobs["y"]).astype(np.float32)]
    outs, _, gx = run_netc(net, {}, {"x": x}, ["y"], cot)

    def ref(_, t):
        wins, outs = caffe_sto_windows(t["x"], K, S, mode)
        vals = [(w * w).sum(-1) / (FLT_MIN + w.sum(-1)) for w in wins]
        return [torch.stack(vals, -1).reshape(*x_shape[:2], *outs)]

    routs, _, rgx = run_torch(ref, {}, {"x": x}, cot)
    close(outs[0], routs[0], f"STOCHASTIC TEST {param} forward")
    close(gx["x"], rgx["x"], f"STOCHASTIC TEST {param} d/dx")


@pytest.mark.parametrize("seed", range(3))
def test_stochastic_pooling_train_picks_window_elements(seed):
    """TRAIN: every output is an element of its window, and the gradient goes to that element."""
    rng, param, x_shape, (K, S, mode) = stochastic_config(seed)
    layer = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": ["y"], "pooling_param": param}
    net = build([inputs_layer({"x": x_shape}), layer])
    x = (rng.permutation(math.prod(x_shape)) + 1).reshape(x_shape).astype(np.float32)  # distinct

    def f(x):
        y = net.apply({}, {}, {"x": x}, rng=jax.random.PRNGKey(seed))[0]["y"]
        return jnp.sum(y), y

    (_, y), g = jit_fast(jax.value_and_grad(f, has_aux=True))(jnp.asarray(x))
    y, g = np.asarray(y), np.asarray(g)
    wins, outs = caffe_sto_windows(torch.tensor(x), K, S, mode)
    flat_y = y.reshape(*x_shape[:2], -1)
    for j, w in enumerate(wins):
        assert np.all((w.numpy() == flat_y[:, :, j, None]).any(-1)), "output not in its window"
    # gradient: 1 at every picked position, counted once per window that picked it
    picked = np.zeros_like(x)
    for v in y.reshape(-1):
        picked[x == v] += 1
    np.testing.assert_array_equal(g, picked)


def test_stochastic_pooling_train_samples_proportionally():
    """P(pick x_i) = x_i / Σx: the window [1, 2, 3, 4] replicated over 40,000 channels."""
    n = 40_000
    layer = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": ["y"],
             "pooling_param": {"pool": "STOCHASTIC", "kernel_size": 4, "stride": 4}}
    net = build([inputs_layer({"x": (1, n, 4)}), layer])
    x = jnp.broadcast_to(jnp.arange(1.0, 5.0), (1, n, 4))
    train = jit_fast(lambda x, k: net.apply({}, {}, {"x": x}, rng=k)[0]["y"])
    y = np.asarray(train(x, jax.random.PRNGKey(0))).reshape(-1)
    for v in (1, 2, 3, 4):
        p = v / 10
        assert abs(np.mean(y == v) - p) < 5 * math.sqrt(p * (1 - p) / n), v
    other = np.asarray(train(x, jax.random.PRNGKey(1))).reshape(-1)
    assert np.any(other != y)


# --------------------------------------------------------------------------------------------
# SPP: Caffe's SPPLayer (pooling per level with Caffe's kernel/pad, flatten, concat)


def spp_reference(x, height, pool):
    H, W = x.shape[2:]
    levels = []
    for level in range(height):
        bins = 2**level
        K = [-(-H // bins), -(-W // bins)]
        P = [(K[0] * bins - H + 1) // 2, (K[1] * bins - W + 1) // 2]
        levels.append(caffe_pool(x, pool, K, K, P, "CEIL")[0])
    if height == 1:
        return levels[0]
    return torch.cat([y.flatten(1) for y in levels], 1)


def test_spp():
    cases = [_spp_case(seed) for seed in range(6)]
    _, outs = compare_many(cases, np.random.default_rng(3))
    for (_, layer, shapes, _), out in zip(cases, outs):
        height, x_shape = layer["spp_param"]["pyramid_height"], shapes["x"]
        if height > 1:
            want = (x_shape[0], x_shape[1] * sum(4**level for level in range(height)))
        else:
            want = x_shape[:2] + (1, 1)
        assert out["y"].shape == want


def _spp_case(seed):
    rng = np.random.default_rng(8000 + seed)
    height = int(rng.integers(1, 4))
    pool = ["MAX", "AVE"][seed % 2]
    least = 2 ** (height - 1) * 2  # big enough that Caffe's pad stays below the kernel
    x_shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)),
               int(rng.integers(least, least + 9)), int(rng.integers(least, least + 9)))
    layer = {"name": "spp", "type": "SPP", "bottom": ["x"], "top": ["y"],
             "spp_param": {"pyramid_height": height, "pool": pool}}
    return (f"SPP {height} {pool} on {x_shape}", layer, {"x": x_shape},
            lambda _, x: [spp_reference(x["x"], height, pool)])


def test_spp_matches_adaptive_pooling_when_bins_divide():
    """A library reference: when 2^l divides H and W, level l is PyTorch's adaptive pooling."""
    rng = np.random.default_rng(46)
    cases = []
    for pool, adaptive in (("MAX", F.adaptive_max_pool2d), ("AVE", F.adaptive_avg_pool2d)):
        layer = {"name": "spp", "type": "SPP", "bottom": ["x"], "top": ["y"],
                 "spp_param": {"pyramid_height": 3, "pool": pool}}
        cases.append((f"SPP adaptive {pool}", layer, {"x": (2, 3, 8, 12)},
                      lambda _, x, a=adaptive: [torch.cat([a(x["x"], 2**lv).flatten(1)
                                                           for lv in range(3)], 1)]))
    compare_many(cases, rng)


def test_spp_stochastic_test_phase():
    rng = np.random.default_rng(47)
    layer = {"name": "spp", "type": "SPP", "bottom": ["x"], "top": ["y"],
             "spp_param": {"pyramid_height": 2, "pool": "STOCHASTIC"}}
    net = build([inputs_layer({"x": (2, 3, 4, 6)}), layer], phase="TEST")
    x = np.abs(rng.standard_normal((2, 3, 4, 6))).astype(np.float32)
    y = np.asarray(jit_fast(lambda x: net.apply({}, {}, {"x": x})[0]["y"])(jnp.asarray(x)))
    parts = []
    for bins in (1, 2):
        w = x.reshape(2, 3, bins, 4 // bins, bins, 6 // bins).transpose(0, 1, 2, 4, 3, 5)
        w = w.reshape(2, 3, bins, bins, -1).astype(np.float64)
        parts.append(((w * w).sum(-1) / (FLT_MIN + w.sum(-1))).reshape(2, -1))
    close(y, np.concatenate(parts, 1), "SPP STOCHASTIC TEST")


# --------------------------------------------------------------------------------------------
# Upsample


def test_upsample_unpools_a_max_pooling():
    """Pooling (MAX, mask top) → Upsample (values, mask): torch's max_pool2d indices + max_unpool2d
    (whose backward is the gather, as in SegNet's UpsampleLayer), values and input gradients."""
    compare_many([_unpool_case(case) for case in range(6)], np.random.default_rng(4))


def _unpool_case(case):
    size_h, size_w, k, s, p, up = [
        (8, 6, 2, 2, 0, {"scale": 2}),
        (7, 9, 2, 2, 0, {"scale": 2, "pad_out_h": True, "pad_out_w": True}),
        (7, 6, 2, 2, 0, {"upsample_h": 7, "upsample_w": 6}),
        (9, 7, 3, 2, 1, {"upsample_h": 9, "upsample_w": 7}),  # overlapping windows: shared argmaxes
        (6, 9, 2, 2, 0, {"scale_h": 2, "scale_w": 2, "pad_out_w": True}),
        (5, 5, 3, 1, 1, {"upsample_h": 5, "upsample_w": 5}),
    ][case]
    pool = {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": ["p", "m"],
            "pooling_param": {"pool": "MAX", "kernel_size": k, "stride": s, "pad": p}}
    unpool = {"name": "up", "type": "Upsample", "bottom": ["p", "m"], "top": ["y"],
              "upsample_param": up}

    def ref(_, x):
        y, idx = F.max_pool2d(x["x"], k, s, p, ceil_mode=True, return_indices=True)
        return [F.max_unpool2d(y, idx, k, s, p, output_size=(size_h, size_w))]

    return (f"Upsample {up} after pool {k}/{s}/{p} on {size_h}×{size_w}", pool,
            {"x": (2, 3, size_h, size_w)}, ref, {"tops": ["y"], "after": [unpool]})


def test_upsample_duplicate_and_invalid_indices():
    """SegNet's loops on a hand-made mask: in-order writes (the last duplicate wins), indices
    outside the plane (−1 from an empty pooling window) dropped; backward is the gather, so every
    duplicate gets the gradient of its position."""
    layer = {"name": "up", "type": "Upsample", "bottom": ["v", "m"], "top": ["y"],
             "upsample_param": {"upsample_h": 2, "upsample_w": 2}}
    net = build([inputs_layer({"v": (1, 1, 2, 2), "m": (1, 1, 2, 2)}), layer])
    v = jnp.asarray([[[[1.0, 2.0], [3.0, 4.0]]]])
    m = jnp.asarray([[[[3.0, 0.0], [3.0, -1.0]]]])

    def f(v, m):
        y = net.apply({}, {}, {"v": v, "m": m})[0]["y"]
        return jnp.sum(y * jnp.asarray([[[[10.0, 20.0], [30.0, 40.0]]]])), y

    (_, y), (gv, gm) = jit_fast(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(v, m)
    np.testing.assert_array_equal(np.asarray(y)[0, 0], [[2.0, 0.0], [0.0, 3.0]])
    np.testing.assert_array_equal(np.asarray(gv)[0, 0], [[40.0, 10.0], [40.0, 0.0]])
    assert not np.any(np.asarray(gm))


def resize_config(seed):
    rng = np.random.default_rng(9500 + seed)
    mode = ["NEAREST", "BILINEAR"][seed % 2]
    n = [1, 2, 2, 3][(seed // 2) % 4]
    sizes = [int(v) for v in rng.integers(1, 6, size=n)]
    if n == 2 and seed % 3 == 0:
        sh, sw = (int(v) for v in rng.integers(1, 4, size=2))
        param, out = {"scale_h": sh, "scale_w": sw}, [sizes[0] * sh, sizes[1] * sw]
    elif n == 2 and mode == "BILINEAR" and seed % 3 == 1:  # any output size: the in/out ratio
        out = [sizes[0] + int(rng.integers(0, 7)), sizes[1] + int(rng.integers(0, 7))]
        param = {"upsample_h": out[0], "upsample_w": out[1]}
    elif n == 2 and seed % 3 == 2:
        param, out = {"scale": 2, "pad_out_h": True}, [2 * sizes[0] - 1, 2 * sizes[1]]
    else:
        s = int(rng.integers(1, 4))
        param, out = {"scale": s}, [v * s for v in sizes]
    param["mode"] = mode
    return rng, param, (int(rng.integers(1, 3)), int(rng.integers(1, 4)), *sizes), out


def test_upsample_resize_matches_torch_interpolate():
    compare_many([_resize_case(seed) for seed in range(12)], np.random.default_rng(5))


def _resize_case(seed):
    rng, param, x_shape, out = resize_config(seed)
    layer = {"name": "up", "type": "Upsample", "bottom": ["x"], "top": ["y"], "upsample_param": param}
    n = len(out)
    mode = "nearest" if param["mode"] == "NEAREST" else ["linear", "bilinear", "trilinear"][n - 1]
    kw = {} if mode == "nearest" else {"align_corners": False}
    return (f"Upsample {param} on {x_shape}", layer, {"x": x_shape},
            lambda _, x: [F.interpolate(x["x"], size=tuple(out), mode=mode, **kw)])


# --------------------------------------------------------------------------------------------
# Crop


def test_crop():
    compare_many([_crop_case(seed) for seed in range(6)], np.random.default_rng(6))


def _crop_case(seed):
    rng = np.random.default_rng(9800 + seed)
    ndim = int(rng.integers(2, 5))
    x_shape = tuple(int(v) for v in rng.integers(1, 7, size=ndim))
    axis = int(rng.integers(1, ndim))
    m = ndim - axis
    ref_shape = list(x_shape[:axis]) + [int(rng.integers(1, d + 1)) for d in x_shape[axis:]]
    ref_shape[0] = int(rng.integers(1, 4))  # axes before `axis` are the input's, whatever these are
    room = [d - r for d, r in zip(x_shape[axis:], ref_shape[axis:])]
    if seed % 3 == 0:
        offsets = [int(rng.integers(0, min(room) + 1))]
    else:
        offsets = [int(rng.integers(0, r + 1)) for r in room]
    param = {"axis": axis - ndim if seed % 2 else axis, "offset": offsets}
    layer = {"name": "crop", "type": "Crop", "bottom": ["x", "r"], "top": ["y"], "crop_param": param}
    start = [0] * axis + (offsets * m if len(offsets) == 1 else offsets)

    def ref(_, t):
        stop = list(x_shape[:axis]) + ref_shape[axis:]
        return [t["x"][tuple(slice(a, a + d) for a, d in zip(start, stop))]]

    return (f"Crop {param} of {x_shape} to {ref_shape}", layer,
            {"x": x_shape, "r": tuple(ref_shape)}, ref, {"zero_grad": ("r",)})


COVERED = {
    "Convolution": test_convolution_padding_modes,
    "Pooling": test_pooling_l2_and_max_mask,
    "SPP": test_spp,
    "Upsample": test_upsample_unpools_a_max_pooling,
    "Crop": test_crop,
}


def test_im2col_lowering_equals_lax_conv_on_random_geometries():
    """The im2col + matmul path (chosen by shape for small 2-D convolutions) against lax.conv,
    forward and gradients, over strides, dilations and asymmetric pads. The choice is made once
    at plan time (ctx.layer.resolved.im2col); flipping it there switches the lowering, which
    shows that apply reads the resolved geometry instead of deciding again."""
    import dataclasses

    rng, prng = np.random.default_rng(7), np.random.default_rng(8)
    for _ in range(4):
        k = [int(v) for v in rng.integers(1, 4, 2)]
        s = [int(v) for v in rng.integers(1, 3, 2)]
        d = [int(v) for v in rng.integers(1, 3, 2)]
        pads = rng.integers(0, 3, (2, 2))
        layer = {"name": "c", "type": "Convolution", "bottom": ["x"], "top": ["y"],
                 "convolution_param": {"num_output": 4, "kernel_size": k, "stride": s,
                                       "dilation": d, "pad_begin": [int(v) for v in pads[:, 0]],
                                       "pad_end": [int(v) for v in pads[:, 1]],
                                       "weight_filler": {"type": "gaussian", "std": 1.0}}}
        net = build([inputs_layer({"x": (2, 3, 9, 8)}), layer])
        pl = net.plan.layers[-1]
        assert pl.resolved.im2col  # small: chosen at plan time
        params = random_params(net, prng)  # its own stream: the geometries stay rng's
        x = jnp.asarray(rng.standard_normal((2, 3, 9, 8)), jnp.float32)

        def objective(p, xx, net=net):  # Σ y², with y itself as the auxiliary output
            y = net.apply(p, {}, {"x": xx})[0]["y"]
            return jnp.sum(y ** 2), y

        def forward_and_grads(params=params, x=x, objective=objective):
            # traced anew: reads pl.resolved as it is now
            (_, y), g = jit_fast(jax.value_and_grad(objective, (0, 1), has_aux=True))(params, x)
            return y, g

        with jax.default_matmul_precision("highest"):
            a, ga = forward_and_grads()
            pl.resolved = dataclasses.replace(pl.resolved, im2col=False)
            b, gb = forward_and_grads()
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
        for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
            np.testing.assert_allclose(v, u, rtol=1e-4, atol=1e-4 * float(jnp.abs(u).max()))


def test_weight_gradient_as_matmul_equals_xla_on_random_geometries():
    """The backward pass with the weight gradient as matmuls per kernel offset (ConvGeometry.grad_matmul,
    a custom VJP; the input gradient stays lax.conv's) against JAX's own VJP, under both forward
    lowerings, over strides, dilations and asymmetric pads — values and gradients."""
    import dataclasses

    rng, prng = np.random.default_rng(17), np.random.default_rng(18)
    for _ in range(4):
        k = [int(v) for v in rng.integers(1, 4, 2)]
        s = [int(v) for v in rng.integers(1, 3, 2)]
        d = [int(v) for v in rng.integers(1, 3, 2)]
        pads = rng.integers(0, 3, (2, 2))
        layer = {"name": "c", "type": "Convolution", "bottom": ["x"], "top": ["y"],
                 "convolution_param": {"num_output": 5, "kernel_size": k, "stride": s,
                                       "dilation": d, "pad_begin": [int(v) for v in pads[:, 0]],
                                       "pad_end": [int(v) for v in pads[:, 1]],
                                       "weight_filler": {"type": "gaussian", "std": 1.0}}}
        net = build([inputs_layer({"x": (3, 4, 10, 9)}), layer])
        pl = net.plan.layers[-1]
        params = random_params(net, prng)
        x = jnp.asarray(rng.standard_normal((3, 4, 10, 9)), jnp.float32)
        dy = jnp.asarray(rng.standard_normal((3, 5) + pl.resolved.out), jnp.float32)

        def objective(p, xx, net=net, dy=dy):  # ⟨y, dy⟩: the VJP of dy
            y = net.apply(p, {}, {"x": xx})[0]["y"]
            return jnp.vdot(y, dy), y

        def run(im2col, grad_matmul, params=params, x=x, objective=objective, pl=pl):
            pl.resolved = dataclasses.replace(pl.resolved, im2col=im2col, grad_matmul=grad_matmul)
            (_, y), g = jit_fast(jax.value_and_grad(objective, (0, 1), has_aux=True))(params, x)
            return y, g

        with jax.default_matmul_precision("highest"):
            ref_y, ref_g = run(False, False)
            for im2col in (False, True):
                y, g = run(im2col, True)
                np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
                for u, v in zip(jax.tree.leaves(ref_g), jax.tree.leaves(g)):
                    np.testing.assert_allclose(v, u, rtol=1e-4, atol=1e-4 * float(jnp.abs(u).max()))


def test_weight_gradient_lowering_is_chosen_by_shape():
    """grad_matmul for 2-D ungrouped convolutions lowered through lax.conv, of bounded size; not
    the im2col path (its own VJP is faster), grouped ones (depthwise), N-D ones or huge ones."""
    def resolved(c, *hw, group=1):
        layer = {"name": "c", "type": "Convolution", "bottom": ["x"], "top": ["y"],
                 "convolution_param": {"num_output": 64, "kernel_size": 3, "pad": 1,
                                       "group": group}}
        return build([inputs_layer({"x": (2, c) + hw}), layer]).plan.layers[-1].resolved

    assert resolved(64, 32, 32).grad_matmul and not resolved(64, 32, 32).im2col
    assert resolved(128, 16, 16).grad_matmul
    assert resolved(3, 32, 32).im2col and not resolved(3, 32, 32).grad_matmul  # im2col's own VJP
    assert not resolved(64, 32, 32, group=64).grad_matmul
    assert not resolved(4, 8, 8, 8).grad_matmul  # 3-D
    assert not resolved(256, 128, 128).grad_matmul  # 37.7 M patch elements per sample
