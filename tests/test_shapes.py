"""Shape inference: published figures, REFERENCE §3's worked examples, Caffe's rounding rules."""

import math

import pytest
from conftest import MODELS

from netc.compiler.layers.pooling import pooled_size


def single(check_spec, text, **kw):
    spec, plans, diags = check_spec(text, **kw)
    assert not spec.diagnostics.errors, diags
    return plans[kw.get("phase") or "TRAIN"], diags


def test_lenet_published_figures():
    from netc.compiler.catalogue import layer_models
    from netc.compiler.plan import plan_all_phases
    from netc.spec.net import parse_spec

    spec = parse_spec(str(MODELS / "lenet.yaml"), layer_models())
    plans = plan_all_phases(spec)
    assert spec.diagnostics.items == []
    for phase, batch in (("TRAIN", 64), ("TEST", 100)):
        p = plans[phase]
        assert p.param_counts() == (431_080, 0)
        assert p.macs == 2_293_000
        tops = {pl.name: pl.top_shapes[0][1:] for pl in p.layers}
        assert [tops[n] for n in ("conv1", "pool1", "conv2", "pool2", "ip1", "ip2")] == [
            (20, 24, 24), (20, 12, 12), (50, 8, 8), (50, 4, 4), (500,), (10,)]
        assert p.blobs["data"] == (batch, 1, 28, 28)
    assert "accuracy" in {pl.name for pl in plans["TEST"].layers}
    assert "accuracy" not in {pl.name for pl in plans["TRAIN"].layers}


CONV = """
name: t
layers:
  - name: data
    type: Input
    top: data
    input_param: {{shape: {{dim: [1, {c}, {h}, {w}]}}}}
  - name: conv
    type: Convolution
    bottom: data
    top: conv
    convolution_param: {{num_output: {n}, kernel_size: {k}, stride: {s}, pad: {p}}}
"""


def test_reference_32x32x3_ten_5x5_pad2(check_spec):
    plan, _ = single(check_spec, CONV.format(c=3, h=32, w=32, n=10, k=5, s=1, p=2))
    assert plan.blobs["conv"] == (1, 10, 32, 32)
    assert plan.param_counts() == (760, 0)


@pytest.mark.parametrize("stride,out,tiles", [(1, 5, True), (2, 3, True), (3, 2, False)])
def test_reference_7x7_strides(check_spec, stride, out, tiles):
    plan, diags = single(check_spec, CONV.format(c=1, h=7, w=7, n=1, k=3, s=stride, p=0))
    assert plan.blobs["conv"] == (1, 1, out, out)
    warned = [d for d in diags if "never read by any window" in d]
    assert (not warned) == tiles
    if not tiles:  # windows at 0 and 3 read 0..5: position 6 is never read
        assert "1 of 7 input positions on axis H and 1 of 7 on axis W are never read" in warned[0]


def brute_pool(size, k, s, p, ceil):
    """Caffe's pooling rule written out literally (pooling_layer.cpp)."""
    f = math.ceil if ceil else math.floor
    out = int(f((size + 2 * p - k) / s)) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1
    return out


@pytest.mark.parametrize("size", range(1, 20))
@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 0), (3, 2, 1), (3, 1, 1), (5, 3, 2), (2, 1, 1), (3, 3, 2)])
def test_pooling_rounding_matches_caffe(size, k, s, p):
    if size + 2 * p < k:
        return
    assert pooled_size(size, k, s, p, "CEIL") == brute_pool(size, k, s, p, True)
    assert pooled_size(size, k, s, p, "FLOOR") == brute_pool(size, k, s, p, False)


def test_googlenet_ceil_pools_and_clip(check_spec):
    text = """
name: t
layers:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [1, 64, 112, 112]}}}
  - {name: p1, type: Pooling, bottom: data, top: p1, pooling_param: {pool: MAX, kernel_size: 3, stride: 2}}
  - {name: p2, type: Pooling, bottom: data, top: p2, pooling_param: {pool: MAX, kernel_size: 3, stride: 2, round_mode: FLOOR}}
  - {name: p3, type: Pooling, bottom: data, top: p3, pooling_param: {pool: AVE, kernel_size: 2, stride: 2, pad: 1}}
  - {name: g, type: Pooling, bottom: data, top: g, pooling_param: {pool: AVE, global_pooling: true}}
"""
    plan, diags = single(check_spec, text)
    assert plan.blobs["p1"][2:] == (56, 56)
    assert plan.blobs["p2"][2:] == (55, 55)
    # ceil((112 + 2 − 2)/2) + 1 = 57, and the 57th window would start at 112 ≥ 112 + 1? no: 56·2=112 ≥ 113 is false
    assert plan.blobs["p3"][2:] == (57, 57)
    assert plan.blobs["g"] == (1, 64, 1, 1)
    # CEIL's last window overhangs into nothing but reads 110, 111: every input is read
    assert not any("'p1'" in d for d in diags if "never read" in d)
    assert any("1 of 112 input positions on axis H and 1 of 112 on axis W are never read by any "
               "window (past the last window)" in d and "'p2'" in d for d in diags)
    assert [pl.unit.describe() for pl in plan.layers[1:]] == [
        "MAX CEIL", "MAX FLOOR", "AVE CEIL", "AVE global"]


def test_pooling_clip_of_window_starting_in_padding():
    # size 4, k 2, s 2, pad 1: ceil(4/2)+1 = 3 windows start at −1, 1, 3 → all inside image+pad.
    assert pooled_size(4, 2, 2, 1, "CEIL") == 3
    # size 5, k 2, s 3, pad 1: ceil(5/3)+1 = 3, third window starts at 6−1 = 5 ≥ 5 → clipped to 2.
    assert pooled_size(5, 2, 3, 1, "CEIL") == 2


def test_dilation_group_1d_and_deconvolution(check_spec):
    text = """
name: t
layers:
  - {name: data, type: Input, top: [img, seq], input_param: {shape: [{dim: [2, 8, 17, 17]}, {dim: [2, 4, 100]}]}}
  - name: dil
    type: Convolution
    bottom: img
    top: dil
    convolution_param: {num_output: 16, kernel_size: 3, dilation: 2, group: 4, pad: [1, 2]}
  - name: tdnn
    type: Convolution
    bottom: seq
    top: tdnn
    convolution_param: {num_output: 16, kernel_size: 15}
  - name: up
    type: Deconvolution
    bottom: img
    top: up
    convolution_param: {num_output: 4, kernel_size: 4, stride: 2, pad: 1, bias_term: false}
  - name: hw
    type: Convolution
    bottom: img
    top: hw
    convolution_param: {num_output: 2, kernel_h: 3, kernel_w: 1, stride_h: 2}
"""
    plan, _ = single(check_spec, text)
    # (17 + 2·1 − 5)/1 + 1 = 15 on H; (17 + 2·2 − 5) + 1 = 17 on W
    assert plan.blobs["dil"] == (2, 16, 15, 17)
    assert plan.blobs["tdnn"] == (2, 16, 86)
    assert plan.blobs["up"] == (2, 4, 34, 34)  # 2·16 + 4 − 2
    assert plan.blobs["hw"] == (2, 2, 8, 17)
    layers = {pl.name: pl for pl in plan.layers}
    assert layers["dil"].params["weight"].shape == (16, 2, 3, 3)
    assert layers["up"].params["weight"].shape == (8, 4, 4, 4)
    assert "bias" not in layers["up"].params
    assert layers["tdnn"].macs == 86 * 16 * 4 * 15
    assert layers["dil"].rf == [(5, 1), (5, 1)]
    assert layers["tdnn"].rf == [(15, 1)]


def test_inner_product_axis_flatten_reshape_concat_split(check_spec):
    text = """
name: t
layers:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [2, 3, 4, 5]}}}
  - {name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {num_output: 7, axis: 2}}
  - {name: flat, type: Flatten, bottom: data, top: flat}
  - {name: flat2, type: Flatten, bottom: data, top: flat2, flatten_param: {axis: 2}}
  - {name: r, type: Reshape, bottom: data, top: r, reshape_param: {shape: {dim: [0, -1, 10]}}}
  - {name: r2, type: Reshape, bottom: data, top: r2, reshape_param: {shape: {dim: [1, 4]}, axis: 2, num_axes: 1}}
  - {name: cat, type: Concat, bottom: [data, data], top: cat, concat_param: {axis: -1}}
  - {name: sp, type: Split, bottom: data, top: [a, b]}
  - {name: sm, type: Softmax, bottom: data, top: sm}
"""
    plan, _ = single(check_spec, text)
    assert plan.blobs["ip"] == (2, 3, 7)
    assert plan.blobs["flat"] == (2, 60)
    assert plan.blobs["flat2"] == (2, 3, 20)
    assert plan.blobs["r"] == (2, 6, 10)
    assert plan.blobs["r2"] == (2, 3, 1, 4, 5)
    assert plan.blobs["cat"] == (2, 3, 4, 10)
    assert plan.blobs["a"] == plan.blobs["b"] == (2, 3, 4, 5)
    ip = plan.layers[1]
    assert ip.params["weight"].shape == (7, 20) and ip.macs == 3 * 20 * 7


def test_legacy_input_header_and_batch_override(check_spec):
    text = """
name: t
input: data
input_dim: [10, 3, 8, 8]
layers:
  - {name: c, type: Convolution, bottom: data, top: c, convolution_param: {num_output: 2, kernel_size: 3}}
"""
    plan, _ = single(check_spec, text)
    assert plan.blobs["c"] == (10, 2, 6, 6)
    plan, _ = single(check_spec, text, batch=3)
    assert plan.blobs["data"] == (3, 3, 8, 8) and plan.blobs["c"] == (3, 2, 6, 6)


def test_symbolic_batch(check_spec):
    text = """
name: t
layers:
  - {name: d, type: Input, top: data, input_param: {shape: {dim: [-1, 3, 8, 8]}}}
  - {name: c, type: Convolution, bottom: data, top: c, convolution_param: {num_output: 2, kernel_size: 3}}
  - {name: ip, type: InnerProduct, bottom: c, top: ip, inner_product_param: {num_output: 5}}
  - {name: r, type: Reshape, bottom: ip, top: r, reshape_param: {shape: {dim: [0, 5, 1]}}}
"""
    plan, _ = single(check_spec, text)
    assert plan.blobs["c"] == ("N", 2, 6, 6)
    assert plan.blobs["r"] == ("N", 5, 1)
    assert plan.macs == 6 * 6 * 2 * 27 + 72 * 5


def test_stages_levels_and_frozen_params(check_spec):
    text = """
name: t
layers:
  - {name: d, type: Input, top: data, input_param: {shape: {dim: [1, 10]}}}
  - name: a
    type: InnerProduct
    bottom: data
    top: a
    param: [{lr_mult: 0}, {lr_mult: 0}]
    inner_product_param: {num_output: 4}
  - {name: b, type: InnerProduct, bottom: a, top: b, inner_product_param: {num_output: 3}, include: {stage: deploy}}
  - {name: c, type: InnerProduct, bottom: a, top: c, inner_product_param: {num_output: 2}, include: {min_level: 2}}
"""
    spec, plans, _ = check_spec(text)
    plan = plans["TRAIN"]
    assert [pl.name for pl in plan.layers] == ["d", "a"]
    assert plan.param_counts() == (0, 44)
    from netc.compiler.plan import plan_all_phases

    plan = plan_all_phases(spec, stages=("deploy",), level=2, phase="TEST")["TEST"]
    assert [pl.name for pl in plan.layers] == ["d", "a", "b", "c"]
    assert plan.param_counts() == (15 + 10, 44)


def test_weight_sharing_counts_once(check_spec):
    text = """
name: t
layers:
  - {name: d, type: Input, top: [x1, x2], input_param: {shape: {dim: [1, 10]}}}
  - {name: a, type: InnerProduct, bottom: x1, top: a, param: [{name: w}, {name: b}], inner_product_param: {num_output: 4}}
  - {name: b, type: InnerProduct, bottom: x2, top: b, param: [{name: w}, {name: b}], inner_product_param: {num_output: 4}}
"""
    plan, _ = single(check_spec, text)
    assert plan.param_counts() == (44, 0)
    assert plan.layers[2].param_owner == {"weight": ("a", "weight"), "bias": ("a", "bias")}


def test_data_layer_reads_npz_header_for_its_shape(check_spec, tmp_path):
    import numpy as np

    np.savez(tmp_path / "d.npz", data=np.zeros((5, 3, 6, 7), np.uint8), label=np.zeros(5, np.int32))
    text = """
name: t
layers:
  - name: d
    type: Data
    top: [data, label]
    data_param: {source: d.npz, batch_size: 4}
    transform_param: {crop_size: 5}
"""
    plan, _ = single(check_spec, text)
    assert plan.blobs["data"] == (4, 3, 5, 5) and plan.blobs["label"] == (4,)
    _, _, diags = check_spec(text.replace("d.npz", "missing.npz"))
    assert diags == ["spec.yaml:6:18: error: layer 'd' (Data): data_param.source: cannot read the "
                     "sample shape of source 'missing.npz' (no such .npz file)"]
