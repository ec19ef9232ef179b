"""Window geometry resolved once at plan time, and the warning about input positions no window
reads.

- `unread_positions` (interval arithmetic over residue classes) against brute-force enumeration
  of every (window, tap) pair, on random configurations;
- the warning as `netc check` reports it, for random Convolution and Pooling layers (CEIL and
  FLOOR, pads, Caffe's clip of a last window starting in the padding, dilation, per-side pads),
  against a transcription of Caffe's forward loops over the planned output size;
- the cases issue 7 names (ResNet/MobileNet stride-2 layers read every input; 1×1/2 reads half);
- the zoo: the only nets warned about are those that genuinely skip input;
- `resolved` does not depend on the batch.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from netc.compiler.catalogue import layer_models
from netc.compiler.layers.geometry import unread_positions
from netc.compiler.layers.pooling import pooled_size
from netc.compiler.plan import plan, plan_all_phases
from netc.spec.messages import NetState
from netc.spec.net import parse_spec

MODELS = Path(__file__).resolve().parents[1] / "models"


def brute(size: int, k: int, s: int, d: int, lo: int, out: int) -> tuple[int, int]:
    """Every position every tap of every window reads; (unread, unread after the last read)."""
    read = {j * s - lo + t * d for j in range(out) for t in range(k)} & set(range(size))
    return size - len(read), size - 1 - max(read, default=-1)


@settings(max_examples=400, deadline=None)
@given(size=st.integers(1, 40), k=st.integers(1, 6), s=st.integers(1, 7), d=st.integers(1, 3),
       lo=st.integers(0, 6), hi=st.integers(0, 6), ceil=st.booleans())
def test_unread_positions_equals_brute_force(size, k, s, d, lo, hi, ceil):
    extent = d * (k - 1) + 1
    span = size + lo + hi - extent
    if span < 0:
        return
    out = (-(-span // s) if ceil else span // s) + 1  # CEIL may add a window past the input
    assert unread_positions(size, extent, s, lo, out, d) == brute(size, k, s, d, lo, out)


@pytest.mark.parametrize("size,k,s,pad,want", [
    (56, 3, 2, 1, 0),  # ResNet / MobileNet 3×3/2 pad 1: the skipped positions are padding
    (224, 7, 2, 3, 0),  # ResNet's conv1 7×7/2 pad 3
    (112, 3, 2, 1, 0),  # MobileNet v2's stride-2 depthwise 3×3
    (56, 1, 2, 0, 28),  # ResNet's 1×1/2 downsampling shortcut reads every other position
    (57, 1, 2, 0, 28),
    (7, 3, 3, 0, 1),  # Caffe floors: the last position lies past the last window
])
def test_conv_cases_from_the_issue(size, k, s, pad, want):
    out = (size + 2 * pad - k) // s + 1
    assert unread_positions(size, k, s, pad, out)[0] == want


def _plan_layers(layers: list[tuple], tmp_path):
    """The plan of a net made of the given (input shape, layer) pairs, and its unread-input
    warnings."""
    spec_layers = []
    for i, (shape, layer) in enumerate(layers):
        spec_layers.append({"name": f"in{i}", "type": "Input", "top": [f"x{i}"],
                            "input_param": {"shape": {"dim": list(shape)}}})
        spec_layers.append({**layer, "name": f"l{i}", "bottom": [f"x{i}"], "top": [f"y{i}"]})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "layers": spec_layers}, sort_keys=False))
    spec = parse_spec(str(path), layer_models())
    assert not spec.diagnostics.errors, [d.format() for d in spec.diagnostics.errors]
    p = plan(spec, NetState(phase="TEST"))
    assert p.ok, [d.format() for d in p.diagnostics.errors]
    return p, [d.format() for d in p.diagnostics.items if "never read" in d.format()]


def _caffe_pool_reads(size: int, k: int, s: int, pad: int, out: int) -> set[int]:
    """pooling_layer.cpp: hstart = ph·stride − pad, hend = min(hstart + k, H + pad), then both
    clipped to [0, H)."""
    read = set()
    for j in range(out):
        start = j * s - pad
        end = min(start + k, size + pad)
        read.update(range(max(start, 0), min(end, size)))
    return read


def _caffe_conv_reads(size: int, k: int, s: int, d: int, lo: int, out: int) -> set[int]:
    """im2col.cpp: output j reads input j·stride − pad + t·dilation where it lies in [0, H)."""
    return {j * s - lo + t * d for j in range(out) for t in range(k)
            if 0 <= j * s - lo + t * d < size}


def _reported(warnings: list[str], layer: str) -> dict[str, int]:
    """{axis: count} from the warning of `layer`, {} when it has none."""
    mine = [w for w in warnings if f"layer '{layer}'" in w]
    assert len(mine) <= 1, mine
    if not mine:
        return {}
    return {axis: int(n) for n, axis in re.findall(r"(\d+) of \d+ (?:input positions )?on axis (\w+)",
                                                    mine[0])}


def test_warning_counts_match_caffe_loops_on_random_layers(tmp_path):
    rng = random.Random(11)
    cases = []
    while len(cases) < 60:
        size = [rng.randint(1, 30), rng.randint(1, 30)]
        k = [rng.randint(1, 5), rng.randint(1, 5)]
        s = [rng.randint(1, 5), rng.randint(1, 5)]
        if len(cases) % 2 == 0:  # Pooling: CEIL or FLOOR, pad < kernel, Caffe's clip
            pad = [rng.randint(0, kk - 1) for kk in k]
            mode = rng.choice(["CEIL", "FLOOR"])
            if any(n + 2 * p < kk for n, p, kk in zip(size, pad, k)):
                continue
            out = [pooled_size(n, kk, ss, p, mode) for n, kk, ss, p in zip(size, k, s, pad)]
            if min(out) <= 0:
                continue
            layer = {"type": "Pooling", "pooling_param": {
                "pool": "MAX", "kernel_h": k[0], "kernel_w": k[1], "stride_h": s[0],
                "stride_w": s[1], "pad_h": pad[0], "pad_w": pad[1], "round_mode": mode}}
            reads = [_caffe_pool_reads(n, kk, ss, p, o) for n, kk, ss, p, o in zip(size, k, s, pad, out)]
        else:  # Convolution: dilation and per-side pads
            dil = [rng.randint(1, 3), rng.randint(1, 3)]
            lo = [rng.randint(0, 4), rng.randint(0, 4)]
            hi = [rng.randint(0, 4), rng.randint(0, 4)]
            span = [n + a + b - (dd * (kk - 1) + 1) for n, a, b, dd, kk in zip(size, lo, hi, dil, k)]
            if min(span) < 0:
                continue
            out = [sp // ss + 1 for sp, ss in zip(span, s)]
            layer = {"type": "Convolution", "convolution_param": {
                "num_output": 1, "kernel_size": k, "stride": s, "dilation": dil,
                "pad_begin": lo, "pad_end": hi}}
            reads = [_caffe_conv_reads(n, kk, ss, dd, a, o)
                     for n, kk, ss, dd, a, o in zip(size, k, s, dil, lo, out)]
        want = {axis: n - len(r) for axis, n, r in zip("HW", size, reads) if n - len(r)}
        cases.append(((1, 1, *size), layer, want))
    p, warnings = _plan_layers([(shape, layer) for shape, layer, _ in cases], tmp_path)
    for i, (_, layer, want) in enumerate(cases):
        assert _reported(warnings, f"l{i}") == want, (layer, warnings)
    # the sample exercises the warning for both layer types, and silence for both
    for kind in ("Pooling", "Convolution"):
        flags = [bool(w) for _, layer, w in cases if layer["type"] == kind]
        assert sum(flags) >= 5 and not all(flags), kind


def test_global_and_spp_pooling_read_everything(tmp_path):
    layers = [((1, 2, 13, 7), {"type": "Pooling", "pooling_param": {"pool": "AVE",
                                                                      "global_pooling": True}}),
              ((1, 2, 13, 7), {"type": "SPP", "spp_param": {"pyramid_height": 3}})]
    _, warnings = _plan_layers(layers, tmp_path)
    assert warnings == []


# Zoo nets whose layers genuinely leave input unread: ResNet's 1×1 stride-2 convolutions (the
# downsampling shortcut, and in Caffe's original ResNet-50 also the first 1×1 of each stage's first
# block) read one position in two per axis: a known property of those architectures (ResNet-D
# moved the stride for this reason), not a spec mistake.
GENUINE = {
    "resnet18_torchvision.yaml": {"layer2_0_downsample", "layer3_0_downsample", "layer4_0_downsample"},
    "resnet50_torchvision.yaml": {"layer2_0_downsample", "layer3_0_downsample", "layer4_0_downsample"},
    "resnet50_caffe.yaml": {f"res{s}a_branch{b}" for s in (3, 4, 5) for b in ("1", "2a")},
}


@pytest.mark.parametrize("name", sorted(p.name for p in MODELS.glob("*.yaml")))
def test_zoo_warns_only_where_input_is_skipped(name):
    spec = parse_spec(str(MODELS / name), layer_models())
    plan_all_phases(spec)
    warned = {re.search(r"layer '([^']+)'", d.format()).group(1)
              for d in spec.diagnostics.items if "never read by any window" in d.format()}
    assert warned == GENUINE.get(name, set())
    for d in spec.diagnostics.items:
        if "never read by any window" in d.format():
            n, size = map(int, re.search(r"(\d+) of (\d+) input positions", d.format()).groups())
            assert n == size // 2  # 1×1/2: every other position


def test_resolved_geometry_does_not_depend_on_the_batch():
    spec = parse_spec(str(MODELS / "lenet.yaml"), layer_models())
    resolved = {}
    for batch in (None, 1, 64):
        p = plan(spec, NetState(phase="TRAIN"), batch=batch)
        resolved[batch] = {pl.name: pl.resolved for pl in p.layers if pl.resolved is not None}
    assert set(resolved[None]) == {"conv1", "pool1", "conv2", "pool2"}
    assert resolved[None] == resolved[1] == resolved[64]
    assert resolved[None]["conv1"].im2col and resolved[None]["conv1"].out == (24, 24)
    assert resolved[None]["pool1"].tiles
