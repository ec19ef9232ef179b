"""Shape rules and user errors of the normalisation, affine and extra activation layers: every
error a user can make in their parameters, with its exact message and line:column."""

from conftest import errors_of

import netc.compiler.layers.norm  # noqa: F401 - registers the units

HEADER = """
name: t
layers:
  - name: data
    type: Input
    top: data
    input_param: {shape: {dim: [2, 3, 8, 6]}}
"""



def layer(body: str) -> str:
    return HEADER + body


def test_maxout_must_divide_and_axis_in_range(check_spec):
    text = layer("""
  - name: mo
    type: Maxout
    bottom: data
    top: mo
    maxout_param: {num_pieces: 4}
  - name: mo2
    type: Maxout
    bottom: data
    top: mo2
    maxout_param:
      axis: 4
""")
    assert errors_of(check_spec, text) == [
        "spec.yaml:12:20: error: layer 'mo' (Maxout): maxout_param.num_pieces: num_pieces 4 does "
        "not divide the 3 channels of axis 1 (input 2×3×8×6)",
        "spec.yaml:18:7: error: layer 'mo2' (Maxout): maxout_param.axis: axis 4 is out of range "
        "for a 4-axis blob",
    ]


def test_scale_axis_num_axes_and_second_bottom(check_spec):
    text = layer("""
  - name: s1
    type: Scale
    bottom: data
    top: s1
    scale_param: {axis: -5}
  - name: s2
    type: Scale
    bottom: data
    top: s2
    scale_param: {axis: 2, num_axes: 3}
  - name: sin
    type: Input
    top: sv
    input_param: {shape: {dim: [3, 6]}}
  - name: s3
    type: Scale
    bottom: [data, sv]
    top: s3
  - name: b1
    type: Bias
    bottom: data
    top: b1
    bias_param: {axis: 3, num_axes: 2}
  - name: b2
    type: Bias
    bottom: [data, sv]
    top: b2
    bias_param: {axis: 3}
""")
    assert errors_of(check_spec, text) == [
        "spec.yaml:12:19: error: layer 's1' (Scale): scale_param.axis: axis -5 is out of range "
        "for a 4-axis blob",
        "spec.yaml:17:28: error: layer 's2' (Scale): scale_param.num_axes: num_axes 3 from axis "
        "2 extends past the input's 4 axes (2×3×8×6)",
        "spec.yaml:24:20: error: layer 's3' (Scale): bottom: the scale input 3×6 must equal the "
        "input's axes 1..2 (3×8) of 2×3×8×6",
        "spec.yaml:30:27: error: layer 'b1' (Bias): bias_param.num_axes: num_axes 2 from axis 3 "
        "extends past the input's 4 axes (2×3×8×6)",
        "spec.yaml:33:20: error: layer 'b2' (Bias): bottom: the bias input 3×6 must equal the "
        "input's axes 3..4 (past its end) of 2×3×8×6",
    ]


def test_clip_min_above_max_and_exp_log_bases(check_spec):
    text = layer("""
  - name: clip
    type: Clip
    bottom: data
    top: c
    clip_param: {min: 2, max: 1}
  - name: exp
    type: Exp
    bottom: data
    top: e
    exp_param: {base: -2}
  - name: log
    type: Log
    bottom: data
    top: l
    log_param: {base: 1}
  - name: clip2
    type: Clip
    bottom: data
    top: c2
""")
    assert errors_of(check_spec, text) == [
        "spec.yaml:12:18: error: layer 'clip' (Clip): clip_param.min: min 2 is greater than max 1",
        "spec.yaml:17:17: error: layer 'exp' (Exp): exp_param.base: base must be positive (or -1 "
        "for e), got -2",
        "spec.yaml:22:17: error: layer 'log' (Log): log_param.base: base must be positive and "
        "not 1 (or -1 for e), got 1",
        "spec.yaml:23:5: error: layer 'clip2' (Clip): clip_param: missing required field",
    ]


def test_prelu_channels(check_spec):
    text = layer("""
  - name: pr1
    type: PReLU
    bottom: data
    top: p1
    param: {name: slope}
  - name: ip
    type: InnerProduct
    bottom: data
    top: ip
    inner_product_param: {num_output: 5}
  - name: pr2
    type: PReLU
    bottom: ip
    top: p2
    param: {name: slope}
  - name: flat
    type: Input
    top: v
    input_param: {shape: {dim: [7]}}
  - name: pr3
    type: PReLU
    bottom: v
    top: p3
    prelu_param: {channel_shared: true}
""")
    assert errors_of(check_spec, text) == [
        "spec.yaml:22:5: error: layer 'pr2' (PReLU): param[0].name: shares 'slope' with layer "
        "'pr1', but its weight is 5 and theirs is 3",
        "spec.yaml:29:5: error: layer 'pr3' (PReLU): bottom: needs an input with at least 2 axes "
        "(N×C×…), got 7",
    ]


def test_lrn_window_and_axes(check_spec):
    text = layer("""
  - name: lrn
    type: LRN
    bottom: data
    top: n1
    lrn_param: {local_size: 4}
  - name: flat
    type: Input
    top: v
    input_param: {shape: {dim: [2, 7]}}
  - name: lrn2
    type: LRN
    bottom: v
    top: n2
    lrn_param: {norm_region: WITHIN_CHANNEL}
  - name: lrn3
    type: LRN
    bottom: v
    top: n3
""")
    assert errors_of(check_spec, text) == [
        "spec.yaml:12:17: error: layer 'lrn' (LRN): lrn_param.local_size: local_size must be odd "
        "(the window is centred), got 4",
        "spec.yaml:19:5: error: layer 'lrn2' (LRN): bottom: WITHIN_CHANNEL needs an input with "
        "at least 3 axes (N×C×spatial), got 2×7",
    ]


def test_batch_norm_statistics_cannot_be_learned(check_spec):
    text = layer("""
  - name: bn
    type: BatchNorm
    bottom: data
    top: data
    param: [{lr_mult: 0}, {lr_mult: 1}, {lr_mult: 0}]
  - name: bn2
    type: BatchNorm
    bottom: data
    top: data
    param: [{lr_mult: 0}, {lr_mult: 0}, {lr_mult: 0}]
""")
    assert errors_of(check_spec, text) == [
        "spec.yaml:12:28: error: layer 'bn' (BatchNorm): param.lr_mult: blob 1 (variance) is a "
        "running statistic, not learned: lr_mult must be 0, got 1 (or leave `param` out)",
    ]


def test_counts_and_shapes(check_spec):
    """BatchNorm: 2C + 1 non-trainable blobs; Scale with bias_term: 2C trainable; Maxout: C/k."""
    text = layer("""
  - {name: bn, type: BatchNorm, bottom: data, top: data}
  - {name: sc, type: Scale, bottom: data, top: data, scale_param: {bias_term: true}}
  - {name: pr, type: PReLU, bottom: data, top: data}
  - {name: lrn, type: LRN, bottom: data, top: n, lrn_param: {norm_region: WITHIN_CHANNEL, local_size: 3}}
  - {name: mo, type: Maxout, bottom: n, top: m, maxout_param: {num_pieces: 3}}
  - {name: mvn, type: MVN, bottom: m, top: out}
""")
    spec, plans, diags = check_spec(text)
    assert not [d for d in diags if ": error: " in d], diags
    p = plans["TRAIN"]
    assert p.param_counts() == (2 * 3 + 3, 2 * 3 + 1)
    assert p.blobs["m"] == (2, 1, 8, 6) and p.blobs["out"] == (2, 1, 8, 6)
    assert p.macs == 0  # Caffe's published MACs count convolutions and inner products only
    lrn = next(pl for pl in p.layers if pl.name == "lrn")
    assert lrn.rf == [(3, 1), (3, 1)]
    assert not [d for d in diags if "filler" in d]  # Scale/PReLU have non-zero default fillers
