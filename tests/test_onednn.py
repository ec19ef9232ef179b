"""oneDNN's convolution kernels in netc's XLA programs (compiler/kernels/onednn.py): they build and
load here (the test extra installs oneDNN; CI has a C++ compiler), give lax.conv's values and
gradients on random legal geometries (kernel, stride, dilation, asymmetric pads, groups,
depthwise with multipliers 1 and 2), a whole net's loss and gradients are the same with the
kernels as without, and they stay out of what must run anywhere: exported programs, float64,
NETC_ONEDNN=0, a build that fails."""

from __future__ import annotations

import functools
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jit_fast
from test_conv_lowering import _geometries as conv_geometries
from test_parity import build, inputs_layer

from netc.compiler.kernels import onednn
from netc.compiler.layers import conv as C
from netc.compiler.lower import Net, lower
from netc.compiler.report import check_file


def test_the_kernels_build_and_load():
    st = onednn.status()
    assert st.ok, st.detail


def _geometries(n: int, seed: int = 0):
    """(input size, channels, outputs, groups, geometry): test_conv_lowering's random legal
    geometries, with groups (every 4th depthwise, channel multiplier 1 or 2)."""
    rng = np.random.default_rng(seed + 100)
    out = []
    for i, (size, g) in enumerate(conv_geometries(n, seed)):
        groups = int(rng.choice([1, 1, 2, 3]))
        cin, cout = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
        if i % 4 == 3:
            groups = cin = int(rng.integers(2, 6))
            cout = cin * int(rng.integers(1, 3))
        out.append((size, cin, cout, groups, g))
    return out


def _value_and_grads(fn, x, wt):
    return jax.value_and_grad(lambda a, b: jnp.sum(fn(a, b) * jnp.cos(fn(a, b))), (0, 1))(x, wt)


@pytest.mark.parametrize("layout", ["channels_last", "auto", "any", "blocked"])
def test_kernels_match_lax_conv_on_random_geometries(layout, monkeypatch):
    """Every activation layout gives lax.conv's values and gradients: channels-last memory
    (the default, onednn.channels_last), and N×C×spatial memory reordered inside oneDNN to each
    forward layout (NETC_ONEDNN_FORWARD_LAYOUT; auto: blocked for stride-1 1×1 and depthwise
    layers, onednn._blocked_forward)."""
    if layout != "channels_last":
        monkeypatch.setenv("NETC_ONEDNN_LAYOUT", "channels_first")
    if layout in ("any", "blocked"):
        monkeypatch.setenv("NETC_ONEDNN_FORWARD_LAYOUT", layout)
    rng = np.random.default_rng(3)
    cases = []
    for size, cin, cout, groups, g in _geometries(8):
        x = rng.standard_normal((2, cin) + size).astype(np.float32)
        wt = rng.standard_normal((cout, cin // groups) + g.window.kernel).astype(np.float32)
        cases.append((g, groups, x, wt))

    def run(args):
        out = []
        for (g, groups, _, _), (x, wt) in zip(cases, args):
            ref = functools.partial(C._lax_conv, g=g, group=groups)
            out.append((_value_and_grads(ref, x, wt),
                        _value_and_grads(C._onednn_conv(g, groups), x, wt),
                        ref(x, wt), C._onednn_conv(g, groups)(x, wt)))
        return out

    results = jit_fast(run)([(x, w) for _, _, x, w in cases])
    for (g, groups, _, _), (ref, got, y_ref, y) in zip(cases, results):
        np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4, err_msg=f"{g} groups {groups}")
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3, err_msg=f"{g} groups {groups}")


def test_the_forward_layout_rule(monkeypatch):
    blocked = onednn._blocked_forward
    assert blocked((8, 8, 1, 1), 1, [1, 1])  # pointwise
    assert blocked((16, 1, 3, 3), 16, [2, 2])  # depthwise, even strided
    assert not blocked((8, 8, 1, 1), 1, [2, 2])  # a strided 1×1 projection
    assert not blocked((8, 8, 3, 3), 1, [1, 1])  # a dense 3×3
    assert not blocked((8, 4, 3, 3), 2, [1, 1])  # grouped, not depthwise
    monkeypatch.setenv("NETC_ONEDNN_FORWARD_LAYOUT", "blocked")
    assert blocked((8, 8, 3, 3), 1, [1, 1])
    monkeypatch.setenv("NETC_ONEDNN_FORWARD_LAYOUT", "any")
    assert not blocked((8, 8, 1, 1), 1, [1, 1])



def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def test_bfloat16_kernels_match_float32_lax_conv():
    """bfloat16 operands (the solver's `precision: bfloat16`): values and both gradients within
    bfloat16's rounding of float32 lax.conv on the same (bfloat16-exact) inputs, on a CPU with
    bfloat16 units. On one without, this checks why netc keeps bfloat16 in XLA there
    (bf16_enabled false): oneDNN 3.2 has no bfloat16 convolution for it and refuses the call."""
    rng = np.random.default_rng(5)
    cases = []
    for size, cin, cout, groups, g in _geometries(6, seed=1):
        x = jnp.asarray(rng.standard_normal((2, cin) + size), jnp.bfloat16)
        wt = jnp.asarray(rng.standard_normal((cout, cin // groups) + g.window.kernel), jnp.bfloat16)
        cases.append((g, groups, x, wt))

    def run(args):
        out = []
        for (g, groups, _, _), (x, wt) in zip(cases, args):
            ref = functools.partial(C._lax_conv, g=g, group=groups)
            f32 = (x.astype(jnp.float32), wt.astype(jnp.float32))
            out.append((_value_and_grads(ref, *f32), _value_and_grads(C._onednn_conv(g, groups), x, wt)))
        return out

    fn = jax.jit(run)
    args = [(x, w) for _, _, x, w in cases]
    text = fn.lower(args).as_text()
    assert text.count("netc_onednn_conv_backward_weights") == 2 * len(cases)  # fn is called twice
    if not onednn._bf16_native:  # set when the kernels loaded (fn.lower built them)
        with pytest.raises(Exception, match="could not create a primitive descriptor"):
            jax.block_until_ready(fn(args))
        return
    for (g, groups, x, wt), (ref, got) in zip(cases, fn(args)):
        assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(got))
        # bfloat16 keeps 8 bits: 2^-8 = 3.9e-3 per rounding, which the loss's cos amplifies. The
        # loss is a sum of terms of both signs: its error is the terms' rounding, so it is
        # measured against Σ|term| (the sum itself can be much smaller: 11.0 of ±terms)
        y = C._lax_conv(x.astype(jnp.float32), wt.astype(jnp.float32), g=g, group=groups)
        scale = float(jnp.sum(jnp.abs(y * jnp.cos(y))))
        err = abs(float(got[0]) - float(ref[0]))
        assert err < 1e-2 * scale, (g, groups, err, scale)
        for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(ref[1])):  # the gradients
            assert _rel(a, b) < 2e-2, (g, groups, _rel(a, b))


def test_which_dtypes_the_kernels_take(monkeypatch):
    """float32 always; bfloat16 only for the convolutions (bfloat16=True), and only where the
    CPU computes it natively unless NETC_ONEDNN_BF16=0; never float16."""
    assert onednn.status().ok
    ctx = type("Ctx", (), {"kernels": True})()
    f32, bf16, f16 = (jnp.zeros(2, d) for d in (jnp.float32, jnp.bfloat16, jnp.float16))
    assert onednn.usable(ctx, f32) and onednn.usable(ctx, f32, bfloat16=True)
    assert not onednn.usable(ctx, f16, bfloat16=True)
    for native in (False, True):
        monkeypatch.setattr(onednn, "_bf16_native", native)
        monkeypatch.delenv(onednn.BF16_ENV, raising=False)
        assert onednn.bf16_enabled() is native
        assert onednn.usable(ctx, bf16, bfloat16=True) is native
        assert not onednn.usable(ctx, bf16)  # BatchNorm's kernels: float32 only
        monkeypatch.setenv(onednn.BF16_ENV, "1")  # cannot force it onto a CPU without
        assert onednn.usable(ctx, bf16, bfloat16=True) is native
        # the rule conv.py lowers by: bfloat16 natively, but depthwise layers widened to float32
        # (oneDNN 3.2's bfloat16 depthwise backward is several times slower than its float32)
        assert onednn.conv_dtype(bf16.dtype) == ("bfloat16" if native else "float32")
        assert onednn.conv_dtype(bf16.dtype, depthwise=True) == "float32"
        assert onednn.conv_dtype(f32.dtype, depthwise=True) == "float32"
        monkeypatch.setenv(onednn.BF16_ENV, "0")
        assert not onednn.usable(ctx, bf16, bfloat16=True)
        assert onednn.conv_dtype(bf16.dtype, depthwise=True) is None
    ctx.kernels = False
    assert not onednn.usable(ctx, f32)


def test_the_ffi_refuses_mixed_dtypes():
    size, cin, cout, groups, g = _geometries(1)[0]
    x = jnp.zeros((1, cin) + size, jnp.float32)
    wt = jnp.zeros((cout, cin // groups) + g.window.kernel, jnp.bfloat16)
    with pytest.raises(Exception, match="float32 or bfloat16 operands, all alike"):
        jax.block_until_ready(C._onednn_conv(g, groups)(x, wt))


NET = textwrap.dedent("""\
    name: kernels
    layers:
    - {name: data, type: Input, top: [data, label], input_param: {shape: [{dim: [4, 3, 12, 12]}, {dim: [4]}]}}
    - {name: c1, type: Convolution, bottom: data, top: c1,
       convolution_param: {num_output: 8, kernel_size: 3, pad: 1, weight_filler: {type: xavier}}}
    - {name: bn1, type: BatchNorm, bottom: c1, top: c1}
    - {name: r1, type: ReLU, bottom: c1, top: c1}
    - {name: c2, type: Convolution, bottom: c1, top: c2,
       convolution_param: {num_output: 8, kernel_size: 3, stride: 2, group: 2, weight_filler: {type: xavier}}}
    - {name: dw, type: Convolution, bottom: c2, top: dw,
       convolution_param: {num_output: 16, kernel_size: 3, pad: 1, group: 8, weight_filler: {type: xavier}}}
    - {name: pw, type: Convolution, bottom: dw, top: pw,
       convolution_param: {num_output: 6, kernel_size: 1, weight_filler: {type: xavier}}}
    - {name: fc, type: InnerProduct, bottom: pw, top: fc,
       inner_product_param: {num_output: 5, weight_filler: {type: xavier}}}
    - {name: loss, type: SoftmaxWithLoss, bottom: [fc, label], top: loss}
    """)


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    path = tmp_path_factory.mktemp("onednn") / "kernels_net.yaml"
    path.write_text(NET)
    _, p = check_file(str(path), shown="TRAIN")
    assert p.ok, [d.format() for d in p.diagnostics.errors]
    return p


def _step(net, dtype=jnp.float32):
    params, state = net.init(jax.random.PRNGKey(0))
    params, state = jax.tree.map(lambda v: v.astype(dtype), (params, state))
    r = np.random.default_rng(0)
    x = {"data": jnp.asarray(r.standard_normal((4, 3, 12, 12)), dtype),
         "label": jnp.asarray([0, 1, 2, 4], dtype)}

    def objective(p):
        return net.loss(p, state, x, rng=jax.random.PRNGKey(1), train=True)[0]

    fn = jax.jit(jax.value_and_grad(objective))
    return fn, params


def test_a_net_computes_the_same_with_and_without_kernels(plan):
    lowering = {pl.name: pl.resolved.kernel for pl in plan.layers if pl.type == "Convolution"}
    assert lowering == {"c1": "onednn", "c2": "onednn", "dw": "onednn", "pw": "onednn"}
    results = {}
    for kernels in (True, False):
        fn, params = _step(lower(plan, kernels=kernels))
        text = fn.lower(params).as_text()
        assert text.count("netc_onednn_conv_forward") == (4 if kernels else 0)
        assert text.count("netc_onednn_conv_backward_weights") == (4 if kernels else 0)
        results[kernels] = fn(params)
    for a, b in zip(jax.tree.leaves(results[True]), jax.tree.leaves(results[False])):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)



def test_a_bfloat16_net_uses_the_kernels_where_bfloat16_is_enabled(plan, monkeypatch):
    """`precision: bfloat16` casts parameters and inputs to bfloat16: its convolutions go to
    oneDNN, in bfloat16 where the CPU computes it (bf16_enabled), else widened to float32 and
    rounded back (what XLA's CPU convolution does with bfloat16 there); NETC_ONEDNN_BF16=0 keeps
    them in XLA. Against the float32 step, the oneDNN program is as accurate as XLA's bfloat16
    one. (BatchNorm computes in float32 and may take its float32 kernels either way.)"""
    native = onednn.bf16_enabled()
    fn, params = _step(lower(plan, kernels=True))
    exact = fn(params)  # float32
    results = {}
    for env in ("1", "0"):
        monkeypatch.setenv(onednn.BF16_ENV, env)
        fn, params = _step(lower(plan, kernels=True), jnp.bfloat16)
        text = fn.lower(params).as_text()
        calls = [ln for ln in text.splitlines() if "custom_call @netc_onednn_conv_forward" in ln]
        assert len(calls) == (4 if env == "1" else 0)
        # the operands' type: bfloat16 where native, else float32; the depthwise layer (dw)
        # float32 everywhere (onednn.conv_dtype)
        kinds = [("xbf16>" in ln, "xf32>" in ln) for ln in calls]
        assert sorted(kinds) == sorted([(native, not native)] * 3 + [(False, True)]) \
            if env == "1" else kinds == []
        results[env] = fn(params)
    for env in ("1", "0"):
        assert abs(float(results[env][0]) - float(exact[0])) < 5e-3 * abs(float(exact[0]))
    # gradients: each leaf's error against float32 no worse than XLA's bfloat16 step's (a leaf
    # whose float32 gradient is ~0, a bias before BatchNorm, is rounding noise in both)
    for a, b, e in zip(*(jax.tree.leaves(r[1]) for r in (results["1"], results["0"], exact))):
        assert _rel(a, e) <= 1.5 * _rel(b, e) + 2e-2, (_rel(a, e), _rel(b, e))


def test_kernels_stay_out_of_portable_programs(plan, monkeypatch):
    # Net(plan) (what export builds), float64, and NETC_ONEDNN=0 lower with XLA alone
    assert not Net(plan).kernels
    fn, params = _step(Net(plan))
    assert "netc_onednn" not in fn.lower(params).as_text()
    with jax.enable_x64(True):
        fn, params = _step(lower(plan, kernels=True), jnp.float64)
        assert "netc_onednn" not in fn.lower(params).as_text()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # CPU kernels only
    assert not onednn._load().ok and "computes on gpu" in onednn._load().detail
    monkeypatch.setenv(onednn.ENV, "0")
    assert not lower(plan).kernels
    assert not onednn._load().ok and "NETC_ONEDNN=0" in onednn._load().detail


def test_a_failed_build_falls_back_with_the_reason(tmp_path, monkeypatch):
    bad = tmp_path / "onednn"
    (bad / "include" / "oneapi" / "dnnl").mkdir(parents=True)
    (bad / "include" / "oneapi" / "dnnl" / "dnnl.hpp").write_text("#error not a real oneDNN\n")
    (bad / "lib").mkdir()
    (bad / "lib" / "libdnnl.so").write_bytes(b"")
    monkeypatch.setenv("NETC_ONEDNN_ROOT", str(bad))
    monkeypatch.setenv("NETC_KERNEL_DIR", str(tmp_path / "kernels"))
    st = onednn._load()
    assert not st.ok and "could not be built" in st.detail and "not a real oneDNN" in st.detail
    assert not list((tmp_path / "kernels").rglob("*.so"))  # nothing half-built left to load


def test_netc_train_says_the_kernels_run(tmp_path):
    from conftest import MODELS, netc

    r = netc("train", MODELS / "lenet.yaml", "--max-iter", 0, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "cpu (1 device), oneDNN convolutions, run directory" in r.stdout


def test_a_bfloat16_run_says_where_its_convolutions_run(tmp_path):
    """The start line names where a bfloat16 run's convolutions go, and a CPU without bfloat16
    arithmetic gets a warning that bfloat16 is slower than float32 there."""
    import io

    from conftest import MODELS

    from netc.runtime.precision import cpu_bfloat16_units
    from netc.runtime.trainer import Solver, TrainConfig

    out, err = io.StringIO(), io.StringIO()
    cfg = TrainConfig(str(MODELS / "lenet.yaml"), out=str(tmp_path), max_iter=0,
                      precision="bfloat16", progress=False)
    assert Solver(cfg, out=out, err=err).solve() == 0
    start = out.getvalue().splitlines()[0]
    if onednn.bf16_native():
        assert "cpu (1 device), oneDNN convolutions in bfloat16, run directory" in start
    else:
        assert "oneDNN convolutions in float32 (this CPU has no bfloat16 units)" in start
    slow = "warning: precision bfloat16 on a CPU without bfloat16 arithmetic"
    assert (slow in err.getvalue()) is (cpu_bfloat16_units() is False), err.getvalue()


def test_a_bfloat16_run_says_its_depthwise_convolutions_widen(tmp_path):
    """LeNet with conv2 made depthwise (group = channels): on a CPU with bfloat16 units the start
    line says those layers run in float32 (onednn.conv_dtype's depthwise rule)."""
    import io

    from conftest import MODELS

    from netc.runtime.trainer import Solver, TrainConfig

    text = (MODELS / "lenet.yaml").read_text()
    assert "      num_output: 50\n" in text
    spec = tmp_path / "lenet_dw.yaml"
    spec.write_text(text.replace("      num_output: 50\n", "      num_output: 20\n      group: 20\n", 1))
    out = io.StringIO()
    cfg = TrainConfig(str(spec), out=str(tmp_path / "run"), max_iter=0, precision="bfloat16",
                      progress=False)
    assert Solver(cfg, out=out, err=io.StringIO()).solve() == 0
    start = out.getvalue().splitlines()[0]
    if onednn.bf16_native():
        assert "oneDNN convolutions in bfloat16 (depthwise ones widened to float32)" in start
    else:
        assert "oneDNN convolutions in float32 (this CPU has no bfloat16 units)" in start


def test_cpu_bfloat16_units_reads_the_flags(tmp_path):
    from netc.runtime.precision import cpu_bfloat16_units

    info = tmp_path / "cpuinfo"
    for flags, want in (("fpu sse2 avx2 fma", False), ("avx2 avx512f avx512_bf16", True),
                        ("avx2 amx_tile amx_bf16", True), ("avx2 avx_vnni avx_ne_convert", True)):
        info.write_text(f"processor\t: 0\nvendor_id\t: X\nflags\t\t: {flags}\n\n")
        assert cpu_bfloat16_units(str(info)) is want, flags
    assert cpu_bfloat16_units(str(tmp_path / "absent")) is None
    info.write_text("processor\t: 0\n")  # no flags line (another architecture)
    assert cpu_bfloat16_units(str(info)) is None


def _residual_net():
    conv = lambda name, bottom, n, k=3, s=1: {  # noqa: E731
        "name": name, "type": "Convolution", "bottom": [bottom], "top": [name],
        "convolution_param": {"num_output": n, "kernel_size": k, "stride": s, "pad": k // 2,
                              "weight_filler": {"type": "xavier"}}}
    bn = lambda name, bottom: [  # noqa: E731
        {"name": f"{name}_bn", "type": "BatchNorm", "bottom": [bottom], "top": [bottom]},
        {"name": f"{name}_sc", "type": "Scale", "bottom": [bottom], "top": [bottom],
         "scale_param": {"bias_term": True}},
        {"name": f"{name}_relu", "type": "ReLU", "bottom": [bottom], "top": [bottom]}]
    layers = [inputs_layer({"x": (8, 8, 12, 12)}), conv("c1", "x", 16), *bn("c1", "c1"),
              conv("c2", "c1", 16), *bn("c2", "c2"), conv("skip", "x", 16, k=1),
              {"name": "add", "type": "Eltwise", "bottom": ["c2", "skip"], "top": ["add"]},
              {"name": "pool", "type": "Pooling", "bottom": ["add"], "top": ["pool"],
               "pooling_param": {"pool": "MAX", "kernel_size": 2, "stride": 2}},
              conv("c3", "pool", 24, s=2), *bn("c3", "c3"),
              {"name": "gap", "type": "Pooling", "bottom": ["c3"], "top": ["gap"],
               "pooling_param": {"pool": "AVE", "global_pooling": True}}]
    return build(layers)


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_channels_last_activations_stay_channels_last_between_kernels(layout, monkeypatch):
    """A residual net's train gradient with the kernels exchanging channels-last memory (the
    default): XLA keeps N×H×W×C memory between the convolutions (with their bias gradients),
    BatchNorm kernels, ReLUs, the residual add and the max pooling, and values and gradients
    equal those of N×C×H×W memory."""
    import re

    monkeypatch.setenv(onednn.LAYOUT_ENV, layout)
    net = _residual_net()
    assert net.kernels
    params, state = net.init(jax.random.key(0))
    x = np.random.default_rng(0).standard_normal((8, 8, 12, 12)).astype(np.float32)

    def loss(p, x):
        blobs, _ = net.apply(p, state, {"x": x}, train=True)
        return jnp.sum(blobs["gap"] * jnp.arange(24.0).reshape(1, 24, 1, 1))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    hlo = step.lower(params, x).compile().as_text()
    assert hlo.count("netc_onednn_conv_") >= 8 and "netc_batch_norm_backward" in hlo
    # activations (16 or 24 channels; x has 8) the program writes to memory as N×C×H×W
    # (logically N×C×H×W, row-major): none with channels-last kernels; a broken propagation
    # writes them there around every kernel
    entry = hlo[hlo.index("\nENTRY"):]
    nchw = re.findall(r"= ((?:f32|pred)\[8,(?:16|24),\d+,\d+\])\{3,2,1,0\} (?!parameter|bitcast)",
                      entry)
    if layout == "channels_last":
        assert "netc_batch_norm_backward_last" in hlo and not nchw, nchw
    else:
        assert "netc_batch_norm_backward_last" not in hlo and len(nchw) >= 10, nchw
    value, (gp, gx) = step(params, x)
    monkeypatch.setenv(onednn.LAYOUT_ENV, "channels_last" if layout != "channels_last" else
                       "channels_first")
    other = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    np.testing.assert_allclose(value, other[0], rtol=1e-5)
    # to summation order (a bias before a BatchNorm has a zero gradient: rounding noise only)
    scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(other[1]))
    for a, b in zip(jax.tree.leaves((gp, gx)), jax.tree.leaves(other[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_the_bias_gradient_from_onednn_matches_autodiff(layout, dtype, monkeypatch):
    """conv + bias with the bias gradient from oneDNN's backward-weights primitive (oneDNN
    convolutions with a bias, C._onednn_conv_bias; the float32 master bias, its gradient summed
    in float32): values and all three gradients equal lax.conv + bias under autodiff, on random
    geometries (1-3 spatial axes, groups). bfloat16 x and weights (bfloat16-exact values):
    against float32 lax.conv within bfloat16's rounding, on a CPU with bfloat16 units; on one
    without, oneDNN 3.2 refuses the call (as test_bfloat16_kernels_match_float32_lax_conv)."""
    monkeypatch.setenv(onednn.LAYOUT_ENV, layout)
    rng = np.random.default_rng(7)
    cases = []
    for size, cin, cout, groups, g in _geometries(6, seed=5):
        x = jnp.asarray(rng.standard_normal((3, cin) + size), dtype)
        wt = jnp.asarray(rng.standard_normal((cout, cin // groups) + g.window.kernel), dtype)
        b = rng.standard_normal(cout).astype(np.float32)
        cases.append((g, groups, x, wt, b))

    def grads(fn, x, wt, b):
        return jax.value_and_grad(lambda *a: jnp.sum(jnp.sin(fn(*a).astype(jnp.float32))),
                                  (0, 1, 2))(x, wt, b)

    def run(args):
        out = []
        for (g, groups, *_), (x, wt, b) in zip(cases, args):
            def ref(x, wt, b, g=g, groups=groups):
                y = C._lax_conv(x, wt, g=g, group=groups)
                return y + b.reshape((-1,) + (1,) * (y.ndim - 2))
            wide = (x.astype(jnp.float32), wt.astype(jnp.float32), b)
            out.append((grads(ref, *wide), grads(C._onednn_conv_bias(g, groups), x, wt, b)))
        return out

    fn = jit_fast(run)
    args = [(x, w, b) for *_, x, w, b in cases]
    if dtype == "bfloat16" and not onednn._bf16_native:
        with pytest.raises(Exception, match="could not create a primitive descriptor"):
            jax.block_until_ready(fn(args))
        return
    results = fn(args)
    for (g, groups, *_), (ref, got) in zip(cases, results):
        if dtype == "float32":
            for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
                np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-3, err_msg=f"{g} groups {groups}")
        else:  # bfloat16's 8 bits (see test_bfloat16_kernels_match_float32_lax_conv)
            assert got[1][2].dtype == jnp.float32  # the master bias's gradient
            for a, r in zip(jax.tree.leaves(got[1]), jax.tree.leaves(ref[1])):
                assert _rel(a, r) < 2e-2, (g, groups, _rel(a, r))
