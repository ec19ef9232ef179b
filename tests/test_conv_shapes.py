"""Shape rules of the convolutional catalogue: Convolution's padding modes (SAME / VALID / CAUSAL /
per-side), receptive fields of causal dilated stacks, Pooling's mask top, SPP, Upsample and Crop
sizes; and every error a user can make in their parameters, with its exact text and line:column."""

import json

import pytest
from conftest import run_netc

import netc.compiler.layers.crop  # noqa: F401 - registers Crop until the catalogue imports it
import netc.compiler.layers.upsample  # noqa: F401 - registers Upsample until the catalogue imports it


def planned(check_spec, text, phase="TRAIN"):
    spec, plans, diags = check_spec(text, phase=phase)
    assert not spec.diagnostics.errors, diags
    return plans[phase]


def diagnostics(check_spec, text):
    return check_spec(text)[2]


def net(inputs: dict[str, list[int]], *layers: str) -> str:
    tops = ", ".join(inputs)
    shapes = ", ".join(f"{{dim: {dims}}}" for dims in inputs.values())
    return (f"name: t\nlayers:\n  - {{name: data, type: Input, top: [{tops}], "
            f"input_param: {{shape: [{shapes}]}}}}\n" + "".join(f"  - {layer}\n" for layer in layers))


# --- Convolution padding modes ------------------------------------------------------------------


@pytest.mark.parametrize("size,k,s,d", [(7, 3, 2, 1), (8, 3, 2, 1), (5, 4, 1, 1), (9, 3, 3, 2),
                                        (1, 5, 2, 1), (10, 2, 4, 3)])
def test_same_keeps_ceil_in_over_stride(check_spec, size, k, s, d):
    layer = (f"{{name: c, type: Convolution, bottom: x, top: y, convolution_param: {{num_output: 2, "
             f"kernel_size: {k}, stride: {s}, dilation: {d}, pad_mode: SAME}}}}")
    p = planned(check_spec, net({"x": [1, 1, size, size + 1]}, layer))
    assert p.blobs["y"] == (1, 2, -(-size // s), -(-(size + 1) // s))


@pytest.mark.parametrize("size,k,s,d,out", [(7, 3, 2, 1, 3), (8, 3, 1, 2, 4), (5, 5, 1, 1, 1),
                                            (10, 2, 3, 1, 3)])
def test_valid_pads_nothing(check_spec, size, k, s, d, out):
    layer = (f"{{name: c, type: Convolution, bottom: x, top: y, convolution_param: {{num_output: 2, "
             f"kernel_size: {k}, stride: {s}, dilation: {d}, pad_mode: VALID}}}}")
    assert planned(check_spec, net({"x": [1, 1, size]}, layer)).blobs["y"] == (1, 2, out)


@pytest.mark.parametrize("size,k,s,d,out", [(16, 2, 1, 1, 16), (16, 3, 1, 4, 16), (16, 3, 2, 1, 8),
                                            (5, 4, 3, 2, 2)])
def test_causal_pads_only_the_start(check_spec, size, k, s, d, out):
    """out = floor((in + d·(k−1) − extent) / s) + 1 = floor((in − 1) / s) + 1."""
    layer = (f"{{name: c, type: Convolution, bottom: x, top: y, convolution_param: {{num_output: 2, "
             f"kernel_size: {k}, stride: {s}, dilation: {d}, pad_mode: CAUSAL}}}}")
    assert planned(check_spec, net({"x": [1, 1, size]}, layer)).blobs["y"] == (1, 2, out)


def test_explicit_per_side_pads(check_spec):
    layers = [
        "{name: a, type: Convolution, bottom: x, top: a, convolution_param: "
        "{num_output: 2, kernel_size: 3, pad_begin: [2, 0], pad_end: [0, 1]}}",
        "{name: b, type: Convolution, bottom: x, top: b, convolution_param: "
        "{num_output: 2, kernel_size: 3, stride: 2, pad_begin: 1}}",  # pad_end unset: 0
        "{name: c, type: Convolution, bottom: v, top: c, convolution_param: "
        "{num_output: 2, kernel_size: 2, pad_begin: [0, 1, 2], pad_end: 1}}",
    ]
    p = planned(check_spec, net({"x": [1, 1, 9, 8], "v": [1, 1, 4, 4, 4]}, *layers))
    assert p.blobs["a"] == (1, 2, 9 + 2 - 2, 8 + 1 - 2)
    assert p.blobs["b"] == (1, 2, (9 + 1 - 3) // 2 + 1, (8 + 1 - 3) // 2 + 1)
    assert p.blobs["c"] == (1, 2, 4, 5, 6)


def test_describe_names_the_padding(check_spec):
    layers = [
        "{name: a, type: Convolution, bottom: x, top: a, convolution_param: "
        "{num_output: 2, kernel_size: 3, pad_mode: SAME, group: 2}}",
        "{name: b, type: Convolution, bottom: x, top: b, convolution_param: "
        "{num_output: 2, kernel_size: 3, pad_begin: [1, 0], pad_end: 2}}",
        "{name: c, type: Convolution, bottom: x, top: c, convolution_param: "
        "{num_output: 2, kernel_size: 3, pad: 1}}",
    ]
    p = planned(check_spec, net({"x": [1, 2, 9, 8]}, *layers))
    assert [pl.unit.describe() for pl in p.layers[1:]] == [
        "group 2, pad_mode SAME", "pad_begin 1,0 pad_end 2", ""]


def wavenet(blocks: int) -> str:
    layers, bottom = [], "x"
    for b in range(blocks):
        for i in range(10):
            top = f"h{b}_{i}"
            layers.append(f"{{name: {top}, type: Convolution, bottom: {bottom}, top: {top}, "
                          f"convolution_param: {{num_output: 4, kernel_size: 2, dilation: {2**i}, "
                          f"pad_mode: CAUSAL}}}}")
            bottom = top
    return net({"x": [1, 1, 4096]}, *layers)


@pytest.mark.parametrize("blocks", [1, 3])
def test_wavenet_causal_stack_receptive_field(check_spec, blocks):
    """REFERENCE §2: kernel 2, dilations 1, 2, …, 512 → 1 + Σ(k−1)·d = 1024; B blocks 1 + 1023·B.
    Causal padding keeps the length."""
    p = planned(check_spec, wavenet(blocks))
    last = p.layers[-1]
    assert last.rf == [(1 + 1023 * blocks, 1)]
    assert last.top_shapes[0] == (1, 4, 4096)
    assert p.layers[10].rf == [(1024, 1)]  # layers[0] is the Input
    if blocks > 1:
        assert p.layers[20].rf == [(2047, 1)]


def test_netc_check_reports_the_wavenet_receptive_field(write_spec):
    r = run_netc("check", "--format", "json", write_spec(wavenet(1)))
    assert r.returncode == 0, r.stderr
    layers = json.loads(r.stdout)["specs"][0]["layers"]
    assert layers[-1]["receptive_field"] == [1024] and layers[-1]["jump"] == [1]
    assert layers[-1]["detail"] == "pad_mode CAUSAL"


# --- Pooling, SPP, Upsample, Crop ---------------------------------------------------------------


def test_pooling_mask_top_has_the_pooled_shape(check_spec):
    layer = ("{name: p, type: Pooling, bottom: x, top: [y, m], "
             "pooling_param: {pool: MAX, kernel_size: 3, stride: 2}}")
    p = planned(check_spec, net({"x": [2, 3, 9, 8]}, layer))
    assert p.blobs["y"] == p.blobs["m"] == (2, 3, 4, 4)


@pytest.mark.parametrize("h,w,height,want", [
    (13, 13, 3, 256 * 21), (13, 7, 3, 256 * 21), (6, 6, 2, 256 * 5), (9, 5, 2, 256 * 5),
    (224, 224, 4, 256 * 85)])
def test_spp_sizes(check_spec, h, w, height, want):
    layer = f"{{name: s, type: SPP, bottom: x, top: y, spp_param: {{pyramid_height: {height}}}}}"
    p = planned(check_spec, net({"x": [2, 256, h, w]}, layer))
    assert p.blobs["y"] == (2, want)


def test_spp_levels_follow_caffe(check_spec):
    """SPPLayer::GetPoolingParam: kernel = ceil(H / bins), pad = (kernel·bins − H + 1) / 2,
    stride = kernel; pyramid_height 1 is that one pooling, unflattened."""
    from netc.compiler.layers.pooling import SPP

    layer = "{name: s, type: SPP, bottom: x, top: y, spp_param: {pyramid_height: 1}}"
    assert planned(check_spec, net({"x": [2, 5, 13, 7]}, layer)).blobs["y"] == (2, 5, 1, 1)
    layer = "{name: s, type: SPP, bottom: x, top: y, spp_param: {pyramid_height: 3}}"
    pl = planned(check_spec, net({"x": [2, 5, 13, 7]}, layer)).layers[-1]
    assert isinstance(pl.unit, SPP)
    got = [(g.window.kernel, g.window.pad, g.window.stride, g.out) for g in pl.resolved]
    assert got == [((13, 7), (0, 0), (13, 7), (1, 1)), ((7, 4), (1, 1), (7, 4), (2, 2)),
                   ((4, 2), (2, 1), (4, 2), (4, 4))]


@pytest.mark.parametrize("param,want", [
    ("{scale: 2}", (10, 14)),
    ("{scale: 2, pad_out_h: true}", (9, 14)),
    ("{scale_h: 3, scale_w: 2, mode: BILINEAR}", (15, 14)),
    ("{upsample_h: 11, upsample_w: 13}", (11, 13)),
    ("{scale: 2, upsample_h: 9, upsample_w: 13}", (9, 13)),  # SegNet writes both: these win
])
def test_upsample_one_bottom_sizes(check_spec, param, want):
    layer = f"{{name: u, type: Upsample, bottom: x, top: y, upsample_param: {param}}}"
    assert planned(check_spec, net({"x": [2, 3, 5, 7]}, layer)).blobs["y"] == (2, 3, *want)


def test_upsample_segnet_pair(check_spec):
    """SegNet: pool (2×2/2, CEIL) of 45×60 → 23×30 with a mask; Upsample back to 45×60."""
    layers = [
        "{name: pool, type: Pooling, bottom: x, top: [p, m], "
        "pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}",
        "{name: up, type: Upsample, bottom: [p, m], top: u, "
        "upsample_param: {scale: 2, upsample_h: 45, upsample_w: 60}}",
        "{name: up2, type: Upsample, bottom: [p, m], top: u2, "
        "upsample_param: {scale: 2, pad_out_h: true}}",
    ]
    p = planned(check_spec, net({"x": [1, 64, 45, 60]}, *layers))
    assert p.blobs["p"] == (1, 64, 23, 30)
    assert p.blobs["u"] == p.blobs["u2"] == (1, 64, 45, 60)


def test_upsample_nd_scale(check_spec):
    layers = ["{name: a, type: Upsample, bottom: x, top: a, upsample_param: {scale: 3}}",
              "{name: b, type: Upsample, bottom: v, top: b, upsample_param: {scale: 2, mode: BILINEAR}}"]
    p = planned(check_spec, net({"x": [1, 2, 5], "v": [1, 2, 2, 3, 4]}, *layers))
    assert p.blobs["a"] == (1, 2, 15)
    assert p.blobs["b"] == (1, 2, 4, 6, 8)


def test_crop_offsets(check_spec):
    """FCN-32s: upscore 1×21×(H+38)… cropped to the data at offset 19; U-Net: a centre crop of
    the 64×136×136 skip to 64×104×104 (offset 16); one offset per axis; axis 1 crops channels."""
    layers = [
        "{name: fcn, type: Crop, bottom: [upscore, data], top: score, crop_param: {axis: 2, offset: 19}}",
        "{name: unet, type: Crop, bottom: [skip, up], top: skip_c, crop_param: {axis: 2, offset: 16}}",
        "{name: per, type: Crop, bottom: [skip, data], top: per, crop_param: {offset: [0, 92]}}",
        "{name: ch, type: Crop, bottom: [skip, data], top: ch, crop_param: {axis: 1, offset: [1, 2, 3]}}",
        "{name: last, type: Crop, bottom: [skip, up], top: last, crop_param: {axis: -1, offset: 5}}",
    ]
    p = planned(check_spec, net({"data": [1, 3, 44, 44], "upscore": [1, 21, 82, 82],
                                 "skip": [1, 64, 136, 136], "up": [1, 64, 104, 104]}, *layers))
    assert p.blobs["score"] == (1, 21, 44, 44)
    assert p.blobs["skip_c"] == (1, 64, 104, 104)
    assert p.blobs["per"] == (1, 64, 44, 44)
    assert p.blobs["ch"] == (1, 3, 44, 44)
    assert p.blobs["last"] == (1, 64, 136, 104)


# --- every error, with its exact text and line:column -----------------------------------------

HEADER = """
name: t
layers:
  - name: data
    type: Input
    top: [img, seq, vol, odd, big]
    input_param:
      shape: [{dim: [1, 3, 8, 8]}, {dim: [1, 4, 16]}, {dim: [1, 2, 4, 4, 4]}, {dim: [1, 3, 7, 6]},
              {dim: [1, 3, 10, 10]}]
"""


def test_convolution_padding_errors(check_spec):
    """Convolution: pad_mode / pad_begin / pad_end misuse, empty outputs, the tiling warning with per-side
    pads, Deconvolution's refusal of the extensions."""
    text = HEADER + """
  - {name: c1, type: Convolution, bottom: img, top: c1,
     convolution_param: {num_output: 2, kernel_size: 3, pad: 1, pad_mode: SAME}}
  - {name: c2, type: Convolution, bottom: img, top: c2,
     convolution_param: {num_output: 2, kernel_size: 3, pad_mode: VALID, pad_begin: 1}}
  - {name: c3, type: Convolution, bottom: img, top: c3,
     convolution_param: {num_output: 2, kernel_size: 3, pad: 1, pad_end: [0, 1]}}
  - {name: c4, type: Convolution, bottom: img, top: c4,
     convolution_param: {num_output: 2, kernel_size: 3, pad_w: 1, pad_begin: 1}}
  - {name: c5, type: Convolution, bottom: img, top: c5,
     convolution_param: {num_output: 2, kernel_size: 3, pad_begin: [1, 1, 1]}}
  - {name: c6, type: Convolution, bottom: img, top: c6,
     convolution_param: {num_output: 2, kernel_size: 2, pad_mode: CAUSAL}}
  - {name: c7, type: Convolution, bottom: img, top: c7,
     convolution_param: {num_output: 2, kernel_size: 9, pad_mode: VALID}}
  - {name: c8, type: Convolution, bottom: seq, top: c8,
     convolution_param: {num_output: 2, kernel_size: 20, pad_begin: 3}}
  - {name: d1, type: Deconvolution, bottom: img, top: d1,
     convolution_param: {num_output: 2, kernel_size: 2, pad_mode: SAME}}
  - {name: d2, type: Deconvolution, bottom: img, top: d2,
     convolution_param: {num_output: 2, kernel_size: 2, pad_end: 1}}
  - {name: c9, type: Convolution, bottom: seq, top: c9,
     convolution_param: {num_output: 2, kernel_size: 4, stride: 2, pad_begin: 2, pad_end: 1}}
  - {name: c10, type: Convolution, bottom: seq, top: c10,
     convolution_param: {num_output: 2, kernel_size: 2, pad_mode: BOTH}}
  - {name: c11, type: Convolution, bottom: seq, top: c11,
     convolution_param: {num_output: 2, kernel_size: 1, stride: 2, pad_begin: 1, pad_end: 0}}
"""
    # (whether unused outputs are reported next to errors is plan.py's business, not tested here)
    assert [d for d in diagnostics(check_spec, text) if "not used by any layer" not in d] == [
        "spec.yaml:11:57: error: layer 'c1' (Convolution): convolution_param.pad: pad_mode "
        'SAME computes the padding itself; remove pad',
        "spec.yaml:13:74: error: layer 'c2' (Convolution): convolution_param.pad_begin: "
        'pad_begin is explicit padding, which needs pad_mode CAFFE (the default), not VALID',
        "spec.yaml:15:57: error: layer 'c3' (Convolution): convolution_param.pad: give either "
        'pad or pad_begin/pad_end, not both',
        "spec.yaml:17:57: error: layer 'c4' (Convolution): convolution_param.pad_w: give "
        'either pad_w or pad_begin/pad_end, not both',
        "spec.yaml:19:57: error: layer 'c5' (Convolution): convolution_param.pad_begin: "
        'pad_begin has 3 values, but the input has 2 spatial axes (give 1 or 2)',
        "spec.yaml:21:57: error: layer 'c6' (Convolution): convolution_param.pad_mode: "
        'pad_mode CAUSAL is for 1-D inputs (N×C×L); this input 1×3×8×8 has 2 spatial axes '
        '(use pad_begin/pad_end for other layouts)',
        "spec.yaml:23:41: error: layer 'c7' (Convolution): convolution_param.kernel_size: "
        'output would be empty: input 1×3×8×8, on axis H the padded input 8 + 2·0 = 8 is '
        'smaller than the kernel extent 9',
        "spec.yaml:25:41: error: layer 'c8' (Convolution): convolution_param.kernel_size: "
        'output would be empty: input 1×4×16, on axis L the padded input 16 + 3 + 0 = 19 is '
        'smaller than the kernel extent 20',
        "spec.yaml:27:57: error: layer 'd1' (Deconvolution): convolution_param.pad_mode: "
        "pad_mode SAME is a Convolution extension; Deconvolution takes Caffe's symmetric pad "
        'only (its output is cropped by 2·pad)',
        "spec.yaml:29:57: error: layer 'd2' (Deconvolution): convolution_param.pad_end: "
        "pad_end is a Convolution extension; Deconvolution takes Caffe's symmetric pad only "
        '(its output is cropped by 2·pad)',
        # c9 (16 + 2 + 1 − 4 is odd) reads every input: only padding is skipped, no warning
        "spec.yaml:33:57: error: layer 'c10' (Convolution): convolution_param.pad_mode: "
        "'BOTH' is not one of CAFFE, SAME, VALID, CAUSAL",
        "spec.yaml:35:57: warning: layer 'c11' (Convolution): convolution_param.stride: "
        "8 of 16 input positions on axis L are never read by any window (between windows)",
    ]


def test_pooling_errors(check_spec):
    """The mask top only for MAX, at most two tops, STOCHASTIC takes no pad."""
    text = HEADER + """
  - {name: p1, type: Pooling, bottom: img, top: [p1, m1],
     pooling_param: {pool: AVE, kernel_size: 2}}
  - {name: p2, type: Pooling, bottom: img, top: [p2, m2, x2],
     pooling_param: {pool: MAX, kernel_size: 2}}
  - {name: p3, type: Pooling, bottom: img, top: p3,
     pooling_param: {pool: STOCHASTIC, kernel_size: 3, pad: 1}}
  - {name: p4, type: Pooling, bottom: img, top: p4,
     pooling_param: {pool: STOCHASTIC, kernel_h: 3, kernel_w: 3, pad_w: 1}}
"""
    assert diagnostics(check_spec, text) == [
        "spec.yaml:10:44: error: layer 'p1' (Pooling): top: a second top (the argmax mask) "
        'comes only from MAX pooling, not AVE',
        "spec.yaml:12:44: error: layer 'p2' (Pooling): top: produces 1 to 2 outputs, got 3",
        "spec.yaml:15:56: error: layer 'p3' (Pooling): pooling_param.pad: STOCHASTIC pooling "
        'takes no pad (Caffe pads only MAX and AVE pooling)',
        "spec.yaml:17:66: error: layer 'p4' (Pooling): pooling_param.pad_w: STOCHASTIC "
        'pooling takes no pad (Caffe pads only MAX and AVE pooling)',
    ]


def test_spp_errors(check_spec):
    """Input rank, an input too small for the pyramid, STOCHASTIC needs divisible sizes, the
    required and bounded field."""
    text = HEADER + """
  - {name: s1, type: SPP, bottom: seq, top: s1,
     spp_param: {pyramid_height: 2}}
  - {name: s2, type: SPP, bottom: img, top: s2,
     spp_param: {pyramid_height: 5}}
  - {name: s3, type: SPP, bottom: odd, top: s3,
     spp_param: {pyramid_height: 2, pool: STOCHASTIC}}
  - {name: s4, type: SPP, bottom: img, top: s4}
  - {name: s5, type: SPP, bottom: img, top: s5,
     spp_param: {pyramid_height: 0}}
"""
    assert diagnostics(check_spec, text) == [
        "spec.yaml:10:5: error: layer 's1' (SPP): needs N×C×H×W input; input is 1×4×16",
        "spec.yaml:13:18: error: layer 's2' (SPP): spp_param.pyramid_height: the input "
        '1×3×8×8 is too small for pyramid level 4 (16×16 bins): on axis H Caffe would pool 8 '
        'with kernel 1 and pad 4, and the pad must be smaller than the kernel',
        "spec.yaml:15:37: error: layer 's3' (SPP): spp_param.pool: pool STOCHASTIC needs H "
        'and W divisible by the 2 bins of level 1: on axis H Caffe would pad 7 by 1, and it '
        'pads only MAX and AVE pooling (input 1×3×7×6)',
        "spec.yaml:16:5: error: layer 's4' (SPP): spp_param: missing required field",
        "spec.yaml:18:18: error: layer 's5' (SPP): spp_param.pyramid_height: must be ≥ 1, got "
        '0',
    ]


def test_upsample_errors(check_spec):
    """Output-size fields, the two-bottom (mask) form, arity, the mode enum."""
    text = HEADER + """
  - {name: u1, type: Upsample, bottom: img, top: u1}
  - {name: u2, type: Upsample, bottom: img, top: u2,
     upsample_param: {upsample_h: 16}}
  - {name: u3, type: Upsample, bottom: img, top: u3,
     upsample_param: {scale: 2, scale_h: 2}}
  - {name: u4, type: Upsample, bottom: img, top: u4,
     upsample_param: {scale_w: 2}}
  - {name: u5, type: Upsample, bottom: img, top: u5,
     upsample_param: {scale: 3, pad_out_w: true}}
  - {name: u6, type: Upsample, bottom: seq, top: u6,
     upsample_param: {scale_h: 2, scale_w: 2}}
  - {name: u7, type: Upsample, bottom: img, top: u7,
     upsample_param: {upsample_h: 16, upsample_w: 4}}
  - {name: u8, type: Upsample, bottom: [img, odd], top: u8,
     upsample_param: {scale: 2}}
  - {name: u9, type: Upsample, bottom: [img, img], top: u9,
     upsample_param: {scale: 2, mode: BILINEAR}}
  - {name: u10, type: Upsample, bottom: [seq, seq], top: u10,
     upsample_param: {scale: 2}}
  - {name: u11, type: Upsample, bottom: [img, img, img], top: u11,
     upsample_param: {scale: 2}}
  - {name: u12, type: Upsample, bottom: img, top: u12,
     upsample_param: {scale: 2, mode: BICUBIC}}
"""
    assert diagnostics(check_spec, text) == [
        "spec.yaml:10:5: error: layer 'u1' (Upsample): upsample_param: needs the output size: "
        'give upsample_h and upsample_w, or scale (or scale_h and scale_w)',
        "spec.yaml:12:6: error: layer 'u2' (Upsample): upsample_param.upsample_w: upsample_h "
        'and upsample_w go together: upsample_w is missing',
        "spec.yaml:14:23: error: layer 'u3' (Upsample): upsample_param.scale: give either "
        'scale or scale_h/scale_w, not both',
        "spec.yaml:16:6: error: layer 'u4' (Upsample): upsample_param.scale_h: scale_h and "
        'scale_w go together: scale_h is missing',
        "spec.yaml:18:33: error: layer 'u5' (Upsample): upsample_param.pad_out_w: pad_out_w "
        'needs scale 2 on axis W, not 3 (otherwise the output size is ill-defined)',
        "spec.yaml:20:23: error: layer 'u6' (Upsample): upsample_param.scale_h: scale_h is "
        'for 2-D inputs; this input 1×4×16 has 1 spatial axis (use scale)',
        "spec.yaml:22:39: error: layer 'u7' (Upsample): upsample_param.upsample_w: the output "
        'would be smaller than the input on axis W: 4 < 8 (input 1×3×8×8); Upsample does not '
        'shrink',
        "spec.yaml:23:46: error: layer 'u8' (Upsample): bottom: the mask 1×3×7×6 must have "
        'the shape of the values 1×3×8×8',
        "spec.yaml:26:33: error: layer 'u9' (Upsample): upsample_param.mode: mode BILINEAR is "
        'for the one-bottom form; with a mask (the second bottom) the values go back to their '
        'argmax positions',
        "spec.yaml:27:42: error: layer 'u10' (Upsample): bottom: unpooling with a mask needs "
        'N×C×H×W values; input is 1×4×16',
        "spec.yaml:29:33: error: layer 'u11' (Upsample): bottom: takes 1 to 2 inputs, got 3",
        "spec.yaml:32:33: error: layer 'u12' (Upsample): upsample_param.mode: 'BICUBIC' is "
        'not one of NEAREST, BILINEAR',
    ]


def test_crop_errors(check_spec):
    """Ranks, offset counts, crops that do not fit (with and without offsets), axis range,
    arity."""
    text = HEADER + """
  - {name: k1, type: Crop, bottom: [img, seq], top: k1}
  - {name: k2, type: Crop, bottom: [big, img], top: k2,
     crop_param: {offset: [0, 1, 2]}}
  - {name: k3, type: Crop, bottom: [vol, vol], top: k3,
     crop_param: {axis: 2, offset: [0, 1, 0]}}
  - {name: k4, type: Crop, bottom: [img, big], top: k4}
  - {name: k5, type: Crop, bottom: [big, img], top: k5,
     crop_param: {axis: 4}}
  - {name: k6, type: Crop, bottom: img, top: k6}
  - {name: k7, type: Crop, bottom: [big, img], top: k7,
     crop_param: {offset: [3]}}
"""
    assert diagnostics(check_spec, text) == [
        "spec.yaml:10:28: error: layer 'k1' (Crop): bottom: the input 1×3×8×8 and the "
        'reference 1×4×16 must have the same number of axes (4 vs 3)',
        "spec.yaml:12:19: error: layer 'k2' (Crop): crop_param.offset: offset has 3 values, "
        'but 2 axes are cropped (axis 2 on, of a 4-axis input; give 1 or 2)',
        "spec.yaml:14:28: error: layer 'k3' (Crop): crop_param.offset: the crop does not fit "
        'on axis 3: input 1×2×4×4×4, reference 1×2×4×4×4, offsets 0,1,0 from axis 2: 1 + 4 > '
        '4',
        "spec.yaml:15:28: error: layer 'k4' (Crop): bottom: the crop does not fit on axis 2: "
        'input 1×3×8×8, reference 1×3×10×10, offsets 0,0 from axis 2: 0 + 10 > 8',
        "spec.yaml:17:19: error: layer 'k5' (Crop): crop_param.axis: axis 4 is out of range "
        'for a 4-axis blob',
        "spec.yaml:18:28: error: layer 'k6' (Crop): bottom: takes 2 inputs (input, "
        'reference), got 1',
        "spec.yaml:20:19: error: layer 'k7' (Crop): crop_param.offset: the crop does not fit "
        'on axis 2: input 1×3×10×10, reference 1×3×8×8, offsets 3,3 from axis 2: 3 + 8 > 10',
    ]
