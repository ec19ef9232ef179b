"""`netc time` (Caffe's `caffe time`): per-layer forward / backward milliseconds, their share,
the lowering's algorithm, and the whole jitted forward and train step."""

import json

import pytest
from conftest import netc

TINY = """
name: tiny
layers:
  - name: input
    type: Input
    top: [data, label]
    input_param: {shape: [{dim: [-1, 2, 12, 12]}, {dim: [-1]}]}
  - name: conv1
    type: Convolution
    bottom: data
    top: conv1
    convolution_param: {num_output: 4, kernel_size: 3, weight_filler: {type: xavier}}
  - {name: pool1, type: Pooling, bottom: conv1, top: pool1,
     pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}
  - {name: relu1, type: ReLU, bottom: pool1, top: pool1}
  - name: ip1
    type: InnerProduct
    bottom: pool1
    top: ip1
    inner_product_param: {num_output: 5, weight_filler: {type: xavier}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip1, label], top: loss}
solver: {base_lr: 0.1, momentum: 0.9, lr_policy: fixed}
"""

LAYERS = [("conv1", "Convolution"), ("pool1", "Pooling"), ("relu1", "ReLU"),
          ("ip1", "InnerProduct"), ("loss", "SoftmaxWithLoss")]


@pytest.fixture
def tiny(write_spec):
    return write_spec(TINY, "tiny.yaml")


def _ms(cell: str) -> float:
    return float(cell)


def test_table_has_every_layer_and_the_totals(tiny):
    r = netc("time", tiny, "--iterations", 2, "--batch", 3)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    assert "TRAIN phase, batch 3" in lines[0]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:] if ln.strip() and ln.split()[0] in
            dict(LAYERS)}
    assert list(rows) == [name for name, _ in LAYERS]  # plan order, data layer not timed
    shares = 0.0
    for name, typ in LAYERS:
        cells = rows[name]
        assert cells[1] == typ
        assert _ms(cells[2]) > 0  # forward ms
        assert _ms(cells[3]) > 0  # backward ms: each layer has a float bottom or weights
        shares += float(cells[4].rstrip("%"))
    assert abs(shares - 100) < 0.6  # rounded to 0.1% each
    assert "im2col+matmul" in " ".join(rows["conv1"][5:])  # a 12×12 conv: the small-conv path
    # ... when the oneDNN kernels do not run; here they do (tests/test_onednn.py builds them)
    assert " ".join(rows["conv1"][5:]).startswith("oneDNN forward+backward (float32; else")
    assert "MAX: tiled reshape" in " ".join(rows["pool1"][5:])
    assert "sum of layers: forward" in r.stdout
    assert "whole net forward" in r.stdout
    assert "whole train step (forward+backward+update" in r.stdout
    assert _ms(r.stdout.split("one jitted program): ")[2].split()[0]) > 0
    assert "the whole step is the real cost" in r.stdout
    assert "programs take and give them so too" in r.stdout  # the kernels' channels-last memory


def test_json_keys_and_test_phase(tiny):
    r = netc("time", tiny, "--iterations", 2, "--batch", 3, "--phase", "TEST", "--json",
             "--precision", "bfloat16")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["precision"] == "bfloat16"
    for k in ("spec", "phase", "batch", "iterations", "backend", "layers", "layers_forward_ms",
              "layers_backward_ms", "net_forward_ms", "train_step_ms", "train_step_first_call_s"):
        assert k in doc, k
    assert doc["phase"] == "TEST" and doc["batch"] == 3 and doc["iterations"] == 2
    assert [(t["name"], t["type"]) for t in doc["layers"]] == LAYERS
    for t in doc["layers"]:
        assert set(t) >= {"name", "type", "lowering", "forward_ms", "backward_ms", "share"}
        assert t["forward_ms"] > 0
    assert doc["layers_forward_ms"] == pytest.approx(sum(t["forward_ms"] for t in doc["layers"]))
    assert sum(t["share"] for t in doc["layers"]) == pytest.approx(1.0)
    assert doc["net_forward_ms"] > 0
    assert doc["train_step_ms"] is None and "not trained" in doc["train_step_note"]
    assert doc["kernel_layout"] == "channels_last"


def test_symbolic_batch_needs_batch(tiny):
    r = netc("time", tiny, "--iterations", 1)
    assert r.returncode == 1
    assert "give --batch N" in r.stderr and "Traceback" not in r.stderr


def test_bad_spec_reports_like_check(write_spec):
    bad = write_spec(TINY.replace("bottom: pool1\n    top: ip1", "bottom: pool9\n    top: ip1"),
                     "bad.yaml")
    r = netc("time", bad, "--iterations", 1, "--batch", 2)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    check = netc("check", bad)
    assert check.returncode == 1
    errors = [ln for ln in check.stderr.splitlines() if ": error: " in ln]
    assert errors and all(e in r.stderr for e in errors)
    assert errors[0].startswith(f"{bad}:") and "pool9" in errors[0]


FOLDED = """
name: folded
layers:
  - name: input
    type: Input
    top: [data, label]
    input_param: {shape: [{dim: [4, 2, 6, 6]}, {dim: [4]}]}
  - {name: conv1, type: Convolution, bottom: data, top: conv1,
     convolution_param: {num_output: 3, kernel_size: 3, weight_filler: {type: xavier}}}
  - {name: bn1, type: BatchNorm, bottom: conv1, top: conv1}
  - {name: sc1, type: Scale, bottom: conv1, top: conv1, scale_param: {bias_term: true}}
  - {name: relu1, type: ReLU6, bottom: conv1, top: conv1}
  - {name: ip1, type: InnerProduct, bottom: conv1, top: ip1,
     inner_product_param: {num_output: 5, weight_filler: {type: xavier}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip1, label], top: loss}
solver: {base_lr: 0.1, lr_policy: fixed}
"""


def test_layers_computed_as_one_are_marked(write_spec):
    """TRAIN: BatchNorm + Scale + ReLU6 run as one function in the whole programs (the rows time
    them apart); TEST: BatchNorm uses its stored statistics and nothing is folded."""
    spec = write_spec(FOLDED, "folded.yaml")
    # in a narrower compute dtype too: BatchNorm normalises in float32, and the chain with it
    # (the Scale's affine, its backward) then runs in float32, rounded once
    for precision in ("float32", "bfloat16", "float16"):
        r = netc("time", spec, "--iterations", 1, "--json", "--precision", precision)
        assert r.returncode == 0, r.stderr
        lowering = {t["name"]: t["lowering"] for t in json.loads(r.stdout)["layers"]}
        mark = "in the whole programs: bn1 + sc1 + relu1 as one (backward by the native kernel)"
        assert all(mark in lowering[n] for n in ("bn1", "sc1", "relu1")), (precision, lowering)
        assert not any("whole programs" in lowering[n] for n in ("conv1", "ip1", "loss")), lowering
    r = netc("time", spec, "--iterations", 1, "--json", "--phase", "TEST")
    assert r.returncode == 0, r.stderr
    assert not any("whole programs" in t["lowering"] for t in json.loads(r.stdout)["layers"])


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_precision_times_the_net_in_that_dtype(tiny, precision):
    """--precision: the rows and the whole programs in the compute dtype, the train step with
    float32 master weights (float16: with its loss scale); the lowering column names what runs
    in that dtype (oneDNN's convolutions take bfloat16, natively or widened to float32; never
    float16)."""
    from netc.compiler.kernels import onednn
    from netc.runtime.commands.time import measure

    t = measure(str(tiny), batch=3, iterations=1, precision=precision)
    assert t.precision == precision
    assert [(r.name, r.type) for r in t.layers] == LAYERS
    assert all(r.forward_ms > 0 for r in t.layers)
    assert t.net_forward_ms > 0 and t.train_step_ms > 0
    conv1 = next(r for r in t.layers if r.name == "conv1").lowering
    kernels = precision == "bfloat16" and onednn.available()  # bfloat16, or widened
    assert conv1.startswith("oneDNN") is kernels, conv1
    if kernels:  # the dtype oneDNN computes it in: bfloat16 natively, else widened
        dt = "(bfloat16;" if onednn.bf16_enabled() else "(bfloat16 widened to float32;"
        assert dt in conv1, conv1
    if not kernels:
        assert conv1 == "im2col+matmul"


def test_precision_must_be_a_compute_dtype(tiny):
    from netc.runtime.commands.time import measure
    from netc.runtime.errors import RunError

    with pytest.raises(RunError, match="--precision: 'float64' is not one of"):
        measure(str(tiny), batch=3, iterations=1, precision="float64")


def test_layer_programs_keep_activations_channels_last():
    """With the kernels keeping activations channels-last (the default), a layer's own programs
    take and give them so (runtime/commands/time.py _jit/_place): a oneDNN convolution's timed
    forward and backward move no activation to another layout (without it, XLA would transpose
    its input, output and gradients in every timed call)."""
    import re

    import jax
    import jax.numpy as jnp
    import numpy as np
    from test_conv_lowering import _geometries

    from netc.compiler.kernels import onednn
    from netc.compiler.layers import conv as C
    from netc.runtime.commands import time as T

    assert onednn.status().ok
    size, g = _geometries(1, 0)[0]
    f = C._onednn_conv(g, 1)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 3) + size), jnp.float32)
    wt = jnp.asarray(rng.standard_normal((5, 3) + g.window.kernel), jnp.float32)
    x = T._place(x, True)
    assert x.format.layout.major_to_minor == (0, 2, 3, 1)
    for fn, args in ((lambda x, wt: f(x, wt), (x, wt)),
                     (lambda x, wt: jax.grad(lambda a, b: jnp.sum(jnp.sin(f(a, b))), (0, 1))(x, wt),
                      (x, wt))):
        hlo = T._jit(fn, args, True).lower(*args).compile().as_text()
        assert "netc_onednn_conv_" in hlo
        moved = re.findall(r"= f32\[4,\d+,\d+,\d+\]\{[\d,]+\} (?:copy|transpose)\(", hlo)
        assert not moved, moved
