"""Shape rules and every user error of Slice, Tile, Reduction, ArgMax, Silence and the losses
SigmoidCrossEntropy, Hinge, Infogain, MultinomialLogistic, Contrastive: full message and
line:column (the style of tests/test_check_errors.py)."""

from __future__ import annotations

import numpy as np
import pytest

import netc.compiler.layers.slicing  # noqa: F401 - registers Slice, Tile, Reduction, ArgMax, Silence

HEADER = """
name: t
layers:
  - name: inputs
    type: Input
    top: [x, v, label, xn, h]
    input_param:
      shape:
        - dim: [2, 3, 8, 8]
        - dim: [2, 10]
        - dim: [2]
        - dim: [-1, 3, 8, 8]
        - dim: [10, 10]
"""


def diagnostics(check_spec, body: str, severity: str = "error") -> list[str]:
    _, _, diags = check_spec(HEADER + body.lstrip("\n"))
    return [d for d in diags if f": {severity}: " in d]


def test_slice_errors(check_spec):
    body = """
  - {name: s1, type: Slice, bottom: x, top: [a, b], slice_param: {axis: 1, slice_dim: 1}}
  - {name: s2, type: Slice, bottom: x, top: [a2, b2], slice_param: {axis: 4}}
  - {name: s3, type: Slice, bottom: x, top: [a3, b3], slice_param: {slice_dim: 4}}
  - {name: s4, type: Slice, bottom: x, top: [a4, b4], slice_param: {slice_point: [1, 2]}}
  - {name: s5, type: Slice, bottom: x, top: [a5, b5, c5], slice_param: {slice_point: [2, 2]}}
  - {name: s6, type: Slice, bottom: x, top: [a6, b6], slice_param: {slice_point: [3]}}
  - {name: s7, type: Slice, bottom: x, top: [a7, b7], slice_param: {axis: 2, slice_point: 0}}
  - {name: s8, type: Slice, bottom: v, top: [a8, b8, c8]}
  - {name: s9, type: Slice, bottom: xn, top: [a9, b9], slice_param: {axis: 0}}
"""
    e = "spec.yaml:{}: error: layer '{}' (Slice): {}"
    assert diagnostics(check_spec, body) == [
        e.format("13:76", "s1", "slice_param.slice_dim: give axis or slice_dim (its deprecated "
                                "spelling), not both"),
        e.format("14:69", "s2", "slice_param.axis: axis 4 is out of range for a 4-axis blob"),
        e.format("15:69", "s3", "slice_param.slice_dim: axis 4 is out of range for a 4-axis blob"),
        e.format("16:69", "s4", "slice_param.slice_point: 2 slice_point value(s) cut axis 1 into "
                                "3 pieces, but the layer has 2 top(s)"),
        e.format("17:90", "s5", "slice_param.slice_point: slice_point must be strictly "
                                "increasing: 2 follows 2"),
        e.format("18:83", "s6", "slice_param.slice_point: slice_point 3 is not inside axis 1 of "
                                "size 3 (input 2×3×8×8); every piece must be non-empty"),
        e.format("19:78", "s7", "slice_param.slice_point: must be ≥ 1, got 0"),
        e.format("20:40", "s8", "top: 3 tops cannot split axis 1 of size 10 (input 2×10) into "
                                "equal pieces; give slice_point"),
        e.format("21:70", "s9", "slice_param.axis: cannot slice axis 0: it is the batch axis, of "
                                "symbolic size N here (give the Input a batch, or use --batch N)"),
    ]


def test_tile_and_reduction_errors(check_spec):
    body = """
  - {name: t1, type: Tile, bottom: x, top: t1}
  - {name: t2, type: Tile, bottom: x, top: t2, tile_param: {tiles: 0}}
  - {name: t3, type: Tile, bottom: x, top: t3, tile_param: {axis: -5, tiles: 2}}
  - {name: t4, type: Tile, bottom: xn, top: t4, tile_param: {axis: 0, tiles: 2}}
  - {name: r1, type: Reduction, bottom: x, top: r1, reduction_param: {axis: 4}}
  - {name: r2, type: Reduction, bottom: x, top: r2, reduction_param: {operation: MAX}}
"""
    assert diagnostics(check_spec, body) == [
        "spec.yaml:13:5: error: layer 't1' (Tile): tile_param: missing required field",
        "spec.yaml:14:61: error: layer 't2' (Tile): tile_param.tiles: must be ≥ 1, got 0",
        "spec.yaml:15:61: error: layer 't3' (Tile): tile_param.axis: axis -5 is out of range for a "
        "4-axis blob",
        "spec.yaml:16:62: error: layer 't4' (Tile): tile_param.axis: cannot tile axis 0: it is the "
        "batch axis, of symbolic size N here (give the Input a batch, or use --batch N)",
        "spec.yaml:17:71: error: layer 'r1' (Reduction): reduction_param.axis: axis 4 is out of "
        "range for a 4-axis blob",
        "spec.yaml:18:71: error: layer 'r2' (Reduction): reduction_param.operation: 'MAX' is not "
        "one of SUM, ASUM, SUMSQ, MEAN",
    ]


def test_argmax_errors(check_spec):
    body = """
  - {name: m1, type: ArgMax, bottom: v, top: m1, argmax_param: {top_k: 11}}
  - {name: m2, type: ArgMax, bottom: x, top: m2, argmax_param: {axis: 1, top_k: 4}}
  - {name: m3, type: ArgMax, bottom: x, top: m3, argmax_param: {axis: -5}}
  - {name: m4, type: ArgMax, bottom: xn, top: m4, argmax_param: {axis: 0}}
  - {name: m5, type: ArgMax, bottom: x, top: m5, argmax_param: {top_k: 0}}
  - name: big
    type: Input
    top: big
    input_param: {shape: {dim: [1, 16777217]}}
  - {name: m6, type: ArgMax, bottom: big, top: m6}
  - {name: m7, type: ArgMax, bottom: big, top: m7, argmax_param: {axis: 1, out_max_val: true}}
"""
    e = "spec.yaml:{}: error: layer '{}' (ArgMax): {}"
    assert diagnostics(check_spec, body) == [
        e.format("13:65", "m1", "argmax_param.top_k: top_k 11 is more than the 10 values per "
                                "sample (without axis, ArgMax ranks each sample of the 2×10 input "
                                "flattened)"),
        e.format("14:74", "m2", "argmax_param.top_k: top_k 4 is more than the 3 values along "
                                "axis 1 (input 2×3×8×8)"),
        e.format("15:65", "m3", "argmax_param.axis: axis -5 is out of range for a 4-axis blob"),
        e.format("16:66", "m4", "argmax_param.axis: cannot rank along axis 0: it is the batch "
                                "axis, of symbolic size N here (give the Input a batch, or use "
                                "--batch N)"),
        e.format("17:65", "m5", "argmax_param.top_k: must be ≥ 1, got 0"),
        # values only (axis + out_max_val, m7) are fine: no index is written
        e.format("22:5", "m6", "argmax_param: ranks 16777217 values, but indices above 2^24 = "
                               "16777216 are not exact in a float32 blob"),
    ]


def test_silence_errors(check_spec):
    body = """
  - {name: q1, type: Silence, bottom: x, top: q1}
  - {name: q2, type: Silence}
  - {name: q3, type: Silence, bottom: nope}
"""
    assert diagnostics(check_spec, body) == [
        "spec.yaml:13:42: error: layer 'q1' (Silence): top: produces 0 outputs, got 1",
        "spec.yaml:14:5: error: layer 'q2' (Silence): bottom: takes at least 1 input, got 0",
        "spec.yaml:15:31: error: layer 'q3' (Silence): bottom: unknown blob 'nope'",
    ]


def test_loss_shape_errors(check_spec):
    body = """
  - {name: l1, type: SigmoidCrossEntropyLoss, bottom: [x, v], top: l1}
  - {name: l2, type: SigmoidCrossEntropyLoss, bottom: [v, v, v], top: l2}
  - {name: l3, type: HingeLoss, bottom: [x, v], top: l3}
  - {name: l4, type: HingeLoss, bottom: [v, label], top: l4, hinge_loss_param: {norm: L3}}
  - {name: l5, type: MultinomialLogisticLoss, bottom: [x, v], top: l5}
  - {name: c1, type: ContrastiveLoss, bottom: [v, x, label], top: c1}
  - {name: c2, type: ContrastiveLoss, bottom: [x, x, label], top: c2}
  - {name: c3, type: ContrastiveLoss, bottom: [v, v, v], top: c3}
  - {name: c4, type: ContrastiveLoss, bottom: [v, v], top: c4}
  - {name: c5, type: ContrastiveLoss, bottom: [v, v, label], top: c5, contrastive_loss_param: {margin: .inf}}
  - {name: a1, type: Accuracy, bottom: [xn, label], top: a1, accuracy_param: {axis: 0}}
"""
    per_sample = ("must hold one label per sample: predictions x are 2×3×8×8 (every value of a "
                  "sample is a class), so the label needs 2 elements")
    assert diagnostics(check_spec, body) == [
        "spec.yaml:13:47: error: layer 'l1' (SigmoidCrossEntropyLoss): bottom: scores and targets "
        "must have the same count: x is 2×3×8×8, v is 2×10",
        "spec.yaml:14:47: error: layer 'l2' (SigmoidCrossEntropyLoss): bottom: takes 2 inputs "
        "(scores, targets), got 3",
        f"spec.yaml:15:33: error: layer 'l3' (HingeLoss): bottom: label v (2×10) {per_sample}",
        "spec.yaml:16:81: error: layer 'l4' (HingeLoss): hinge_loss_param.norm: 'L3' is not one "
        "of L1, L2",
        f"spec.yaml:17:47: error: layer 'l5' (MultinomialLogisticLoss): bottom: label v (2×10) "
        f"{per_sample}",
        "spec.yaml:18:39: error: layer 'c1' (ContrastiveLoss): bottom: the two feature inputs must "
        "have one shape: v is 2×10, x is 2×3×8×8",
        "spec.yaml:19:39: error: layer 'c2' (ContrastiveLoss): bottom: features must be N×C "
        "vectors (Caffe's rule: height and width 1): x is 2×3×8×8; Flatten them first",
        "spec.yaml:20:39: error: layer 'c3' (ContrastiveLoss): bottom: similarity label v (2×10) "
        "must hold one value per pair: the features are 2×10, so it needs 2 elements",
        "spec.yaml:21:39: error: layer 'c4' (ContrastiveLoss): bottom: takes 3 inputs (features a, "
        "features b, similar), got 2",
        "spec.yaml:22:96: error: layer 'c5' (ContrastiveLoss): contrastive_loss_param.margin: must "
        "be a finite number, got inf",
        "spec.yaml:23:5: error: layer 'a1' (Accuracy): the class axis cannot be the batch axis 0",
    ]


def test_infogain_errors(check_spec, tmp_path):
    np.savez(tmp_path / "h_ok.npz", H=np.eye(10))
    np.savez(tmp_path / "h_bad.npz", H=np.eye(3))
    np.savez(tmp_path / "h_none.npz", G=np.eye(10), F=np.eye(2))
    np.savez(tmp_path / "h_obj.npz", H=np.full((10, 10), None, dtype=object))
    (tmp_path / "h_junk.npz").write_text("not a zip")
    body = """
  - {name: l6, type: InfogainLoss, bottom: [v, x], top: l6}
  - {name: l7, type: InfogainLoss, bottom: [v, label, x], top: l7}
  - {name: l8, type: InfogainLoss, bottom: [v, label], top: l8, infogain_loss_param: {source: missing.npz}}
  - {name: l9, type: InfogainLoss, bottom: [v, label], top: l9, infogain_loss_param: {source: h_bad.npz}}
  - {name: l10, type: InfogainLoss, bottom: [v, label], top: l10, infogain_loss_param: {source: h_none.npz}}
  - {name: l11, type: InfogainLoss, bottom: [v, label], top: l11, infogain_loss_param: {source: h_obj.npz}}
  - {name: l12, type: InfogainLoss, bottom: [v, label], top: l12, infogain_loss_param: {source: h_junk.npz}}
  - {name: l13, type: InfogainLoss, bottom: [v, label], top: l13, infogain_loss_param: {source: h_ok.npz}}
  - {name: l14, type: InfogainLoss, bottom: [x, label], top: l14, infogain_loss_param: {axis: 4}}
  - {name: l15, type: InfogainLoss, bottom: [v, label, h], top: l15, infogain_loss_param: {source: h_ok.npz}}
"""
    e = "spec.yaml:{}: error: layer '{}' (InfogainLoss): {}"
    src = "infogain_loss_param.source: "
    assert diagnostics(check_spec, body) == [
        e.format("13:36", "l6", "bottom: label x (2×3×8×8) must hold one label per prediction: "
                                "predictions v are 2×10 with classes on axis 1, so the label "
                                "needs 2 elements"),
        e.format("14:36", "l7", "bottom: H input x (2×3×8×8) must hold C×C = 100 elements for the "
                                "10 classes of v (axis 1)"),
        e.format("15:87", "l8", f"{src}no such file 'missing.npz' (looked in {tmp_path})"),
        e.format("16:87", "l9", f"{src}H in 'h_bad.npz' is 3×3; it must be 10×10 for the 10 "
                                f"classes of v (axis 1)"),
        e.format("17:89", "l10", f"{src}'h_none.npz' has no array 'H' (it holds: F, G)"),
        e.format("18:89", "l11", f"{src}H in 'h_obj.npz' has dtype object; it must be a numeric "
                                 f"array"),
        e.format("19:89", "l12", f"{src}cannot read 'h_junk.npz' as an .npz: File is not a zip "
                                 f"file"),
        # l13: a source relative to the spec's folder is found
        e.format("21:89", "l14", "infogain_loss_param.axis: axis 4 is out of range for a 4-axis "
                                 "blob"),
    ]
    assert diagnostics(check_spec, body, "warning") == [
        "spec.yaml:22:92: warning: layer 'l15' (InfogainLoss): infogain_loss_param.source: "
        "ignored: the third input gives H",
    ]


@pytest.mark.parametrize(("layer", "shape"), [
    # ArgMax: Caffe's Reshape — without axis N×(1|2)×top_k padded to at least 3 axes
    ("{type: ArgMax, bottom: v}", ("N", 1, 1)),
    ("{type: ArgMax, bottom: x, argmax_param: {top_k: 5, out_max_val: true}}", ("N", 2, 5, 1)),
    ("{type: ArgMax, bottom: x, argmax_param: {axis: 3, top_k: 2, out_max_val: true}}",
     ("N", 3, 8, 2)),
    ("{type: ArgMax, bottom: label}", ("N", 1, 1)),
    # Reduction keeps the axes before `axis`: the default 0 gives a scalar, even for a symbolic N
    ("{type: Reduction, bottom: x}", ()),
    ("{type: Reduction, bottom: x, reduction_param: {axis: -2}}", ("N", 3)),
    ("{type: Tile, bottom: x, tile_param: {axis: 2, tiles: 3}}", ("N", 3, 24, 8)),
    ("{type: Slice, bottom: x, top: [y, rest], slice_param: {axis: -1, slice_point: 5}}",
     ("N", 3, 8, 5)),
])
def test_shape_rules_with_a_symbolic_batch(check_spec, layer, shape):
    if "top:" not in layer:
        layer = layer.replace("{", "{top: y, ", 1)
    text = f"""
name: t
layers:
  - {{name: in, type: Input, top: [x, v, label],
     input_param: {{shape: [{{dim: [-1, 3, 8, 8]}}, {{dim: [-1, 10]}}, {{dim: [-1]}}]}}}}
  - {layer.replace("{", "{name: l, ", 1)}
"""
    _, plans, diags = check_spec(text)
    assert not [d for d in diags if ": error: " in d], diags
    assert plans["TRAIN"].blobs["y"] == shape
