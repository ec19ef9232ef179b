"""ONNX export (runtime/onnx_export.py): every zoo net's deploy graph (models/*.yaml) and small
nets exercising each converter's Caffe corner (CEIL pooling and its clipped last window, AVE's
divisor over the padded extent, LRN in both regions, BatchNorm's scale factor in TEST, grouped /
depthwise / dilated convolution, Deconvolution, Crop, Upsample with the argmax mask, Eltwise,
Softmax on an axis, InnerProduct on axis 2, ...) are exported with random weights, pass
onnx.checker, and onnxruntime's outputs equal netc's forward (Net.apply, jitted) within 1e-5 of
the output's largest magnitude, at batch 2 and — the same graph, symbolic batch — at batch 1
(equal to netc's first sample). Layers without a faithful ONNX form are refused by name.

Big zoo nets run at a smaller legal input (the Input shape overridden as tests/test_zoo.py does)
and slimmed: every Convolution, Deconvolution and InnerProduct of 64 outputs or more gets 16
(SLIM; the layers, their order, kernels, strides, pads, groups, poolings and crops are the zoo's,
only the channel counts shrink), so that drawing, serialising and compiling their weights
(VGG-11's classifier alone holds 120 M) does not dominate the file on a 2-core machine.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import jax  # noqa: E402
from conftest import fast_xla_options  # noqa: E402
from test_zoo import OPTIMISED_COMPILE  # noqa: E402

from netc.compiler.catalogue import layer_models  # noqa: E402
from netc.compiler.lower import Net  # noqa: E402
from netc.compiler.plan import plan as make_plan  # noqa: E402
from netc.runtime.export import ExportError, deploy_graph  # noqa: E402
from netc.runtime.onnx_export import build_onnx  # noqa: E402
from netc.spec.messages import NetState  # noqa: E402
from netc.spec.net import parse_spec  # noqa: E402
from netc.spec.prototxt import dump_yaml  # noqa: E402
from netc.spec.yaml_io import read_yaml  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "models"

# Input (N, C, spatial...) per zoo net; None: as the file has it. Batch 2 is used regardless.
ZOO_INPUT: dict[str, list[int] | None] = {
    "lenet.yaml": None,
    "lenet5_1998.yaml": None,
    "xor_mlp.yaml": None,
    "tdnn.yaml": None,
    "small_resnet_digits.yaml": None,
    "bvlc_alexnet.yaml": [1, 3, 99, 99],  # CEIL pooling, LRN across channels
    "bvlc_googlenet.yaml": None,  # its 7×7 pool5 needs the 224×224 input
    "resnet50_caffe.yaml": None,  # likewise (7×7 AVE pool5)
    "alexnet_torchvision.yaml": [1, 3, 127, 127],
    "vgg16.yaml": [1, 3, 32, 32],
    "vgg11_torchvision.yaml": [1, 3, 32, 32],  # adaptive AVE pooling 1×1 → 7×7
    "vgg16_torchvision.yaml": [1, 3, 32, 32],
    "resnet18_torchvision.yaml": [1, 3, 64, 64],
    "resnet50_torchvision.yaml": [1, 3, 64, 64],
    "mobilenet_v1_keras.yaml": [1, 3, 32, 32],
    "mobilenet_v2_torchvision.yaml": [1, 3, 32, 32],
    "densenet121_torchvision.yaml": [1, 3, 32, 32],
    "unet.yaml": [1, 1, 188, 188],
    "fcn8s.yaml": [1, 3, 16, 16],
    "segnet.yaml": [1, 3, 32, 32],
    "wavenet_stack.yaml": [1, 1, 512],
}
SLIM = {"alexnet_torchvision.yaml", "bvlc_alexnet.yaml", "bvlc_googlenet.yaml",
        "resnet50_caffe.yaml", "vgg16.yaml", "vgg11_torchvision.yaml", "vgg16_torchvision.yaml",
        "resnet18_torchvision.yaml",
        "resnet50_torchvision.yaml", "densenet121_torchvision.yaml", "unet.yaml", "fcn8s.yaml",
        "segnet.yaml"}
SLIM_WIDTH = 16
# zoo nets whose TEST net reads a data file the repository does not ship (prepared by a script)
NEEDS_DATA = {"caption_digits.yaml", "sentiment_rotten_tomatoes.yaml", "seq2seq_reverse.yaml"}


def _spec_file(name: str, tmp_path: Path) -> Path:
    dims, slim = ZOO_INPUT.get(name), name in SLIM
    if dims is None and not slim:
        return MODELS / name
    data = copy.deepcopy(read_yaml((MODELS / name).read_text()).data)
    if dims is not None:
        if "input_dim" in data:
            data["input_dim"] = dims
        else:
            (first,) = [x for x in data["layers"] if x["type"] == "Input"]
            first["input_param"]["shape"] = {"dim": dims}
    for layer in data["layers"]:
        if layer["type"] == "Upsample":  # SegNet: sizes for 360×480; smaller, the scale suffices
            layer["upsample_param"] = {"scale": layer["upsample_param"]["scale"]}
        for field in ("convolution_param", "inner_product_param"):
            p = layer.get(field)
            if slim and isinstance(p, dict) and p.get("num_output", 0) >= 64:
                p["num_output"] = SLIM_WIDTH
    path = tmp_path / name
    path.write_text(dump_yaml(data))
    return path


def _random_weights(net: Net, rng):
    """init's structure (eval_shape: nothing compiled) filled from NumPy: weights N(0, 1/fan_in);
    vectors (biases, γ, BatchNorm mean/variance/scale factor) uniform in [0.5, 1.5], so that
    BatchNorm's division by its scale factor matters."""
    import jax

    def fill(s):
        if len(s.shape) >= 2:
            w = rng.standard_normal(s.shape, dtype=np.float32)
            w *= np.float32(1 / math.sqrt(math.prod(s.shape[1:])))
            return w
        return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)

    return jax.tree_util.tree_map(fill, jax.eval_shape(net.init, jax.random.PRNGKey(0)))


def _graph(path: Path):
    spec = parse_spec(str(path), layer_models())
    plan = make_plan(spec, NetState(phase="TEST"))
    assert plan.ok, [d.format() for d in spec.diagnostics.sorted() if d.severity == "error"]
    return deploy_graph(plan)


def _inputs(graph, batch: int, rng) -> dict:
    out = {}
    for name in graph.inputs:
        full = graph.input_shape(name, batch)
        if name in _ID_INPUTS:  # token ids, sequence lengths: integers in [lo, hi)
            lo, hi = _ID_INPUTS[name]
            out[name] = rng.integers(lo, hi, full).astype(np.float32)
        else:
            out[name] = rng.standard_normal(full).astype(np.float32)
    return out


_ID_INPUTS: dict[str, int] = {}


def check_parity(path: Path, *, seed: int = 0, ids: dict | None = None, xla: dict | None = None):
    """Export `path`'s deploy net with random weights; onnx.checker; onnxruntime == netc at
    batch 2 and at batch 1 (the symbolic batch), netc's forward compiled with the XLA options
    `xla` (default FAST_XLA). Returns the worst relative error."""
    _ID_INPUTS.clear()
    _ID_INPUTS.update(ids or {})
    graph = _graph(path)
    rng = np.random.default_rng(seed)
    params, state = _random_weights(Net(graph.plan), rng)
    model = build_onnx(graph, params, state)
    onnx.checker.check_model(model, full_check=True)
    for sig in model.graph.input:  # the batch axis is symbolic
        dims = [d.dim_param or d.dim_value for d in sig.type.tensor_type.shape.dim]
        assert "N" in dims, (sig.name, dims)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert sorted(names) == sorted(graph.outputs)
    feeds = _inputs(graph, 2, rng)
    # the weights are arguments, not constants folded into the program (MobileNet v2: 3.5 → 2.5 s)
    forward = jax.jit(graph.forward).lower(params, state, feeds)
    ref = forward.compile(compiler_options=fast_xla_options(xla))(params, state, feeds)
    got = dict(zip(names, sess.run(None, feeds)))
    one = dict(zip(names, sess.run(None, {k: v[:1] if graph.batch_axes[k] == 0 else v[:, :1]
                                          for k, v in feeds.items()})))
    worst = 0.0
    for name in graph.outputs:
        a = np.asarray(ref[name])
        scale = max(float(np.abs(a).max()), 1e-30)
        assert np.isfinite(a).all(), name
        np.testing.assert_allclose(got[name], a, rtol=0, atol=1e-5 * scale, err_msg=name)
        a1 = a[:1] if graph.plan.batch_axis(name) in (0, None) else a[:, :1]
        np.testing.assert_allclose(one[name], a1, rtol=0, atol=1e-5 * scale, err_msg=name)
        worst = max(worst, float(np.abs(got[name] - a).max()) / scale)
    return worst


def test_zoo_list_is_complete():
    on_disk = {p.name for p in MODELS.glob("*.yaml")}
    assert on_disk - NEEDS_DATA - set(REFUSED) - set(ZOO_INPUT) - set(IDS) == set()


# zoo nets fed token ids: (input, [lo, hi)) of each id input
IDS = {"imdb_lstm_keras.yaml": {"data": (0, 20000)}}
# zoo nets whose deploy graph has no faithful ONNX form: the refusal names the layer
REFUSED = {"char_lstm_hamlet.yaml": "layer 'lstm' (LSTM) has no faithful ONNX form: "
                                    "sequence_input CONT"}


# Zoo nets whose netc forward runs far longer than it compiles under FAST_XLA: compiled with the
# backend optimisations on (tests/test_zoo.py's OPTIMISED_COMPILE). FCN-8s (pad 100: 214×214
# maps): compile + run 0.8 + 8.1 s of CPU with FAST_XLA, 2.6 + 0.2 s optimised; every other zoo net
# measured runs in under 0.2 s either way and compiles 2-7× faster with FAST_XLA.
RUN_BOUND = {"fcn8s.yaml"}


@pytest.mark.parametrize("name", sorted(ZOO_INPUT) + sorted(IDS))
def test_zoo_parity(name, tmp_path):
    xla = OPTIMISED_COMPILE if name in RUN_BOUND else None
    worst = check_parity(_spec_file(name, tmp_path), ids=IDS.get(name), xla=xla)
    print(f"{name}: max error {worst:.2e} of the output's magnitude")


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_zoo_refused(name):
    graph = _graph(MODELS / name)
    params, state = _random_weights(Net(graph.plan), np.random.default_rng(0))
    with pytest.raises(ExportError, match=re.escape(REFUSED[name])):
        build_onnx(graph, params, state)


# --- the converters' corners, on small nets -----------------------------------------------------

HEAD = """name: t
layers:
  - {{name: in, type: Input, top: data, input_param: {{shape: {{dim: {dims}}}}}}}
"""


def _net(tmp_path, dims, body: str) -> Path:
    path = tmp_path / "net.yaml"
    path.write_text(HEAD.format(dims=list(dims)) + body)
    return path


def test_pooling_caffe_rules(tmp_path):
    # CEIL with pad (p9/p10 on 7 rows: CEIL gives 4 windows, Caffe clips the last, which would
    # start in the right padding, to 3), AVE's divisor over the
    # padded extent, FLOOR dropping rows, overlapping windows, global pooling, the argmax mask
    body = """
  - {name: p1, type: Pooling, bottom: data, top: p1, pooling_param: {pool: MAX, kernel_size: 3, stride: 2, pad: 1}}
  - {name: p2, type: Pooling, bottom: data, top: p2, pooling_param: {pool: AVE, kernel_size: 3, stride: 2, pad: 1}}
  - {name: p3, type: Pooling, bottom: data, top: p3, pooling_param: {pool: AVE, kernel_size: 3, stride: 2}}
  - {name: p4, type: Pooling, bottom: data, top: p4, pooling_param: {pool: MAX, kernel_size: 2, stride: 3, round_mode: FLOOR}}
  - {name: p5, type: Pooling, bottom: data, top: p5, pooling_param: {pool: AVE, kernel_h: 2, kernel_w: 4, stride_h: 2, stride_w: 3, pad_h: 1, pad_w: 2}}
  - {name: p6, type: Pooling, bottom: data, top: p6, pooling_param: {pool: AVE, global_pooling: true}}
  - {name: p7, type: Pooling, bottom: data, top: [p7, m7], pooling_param: {pool: MAX, kernel_size: 3, stride: 2}}
  - {name: a1, type: Pooling, bottom: data, top: a1, pooling_param: {pool: AVE, output_size: [3, 4]}}
  - {name: a2, type: Pooling, bottom: data, top: a2, pooling_param: {pool: MAX, output_size: [4, 2]}}
  - {name: p9, type: Pooling, bottom: data, top: p9, pooling_param: {pool: MAX, kernel_size: 3, stride: 3, pad: 2}}
  - {name: p10, type: Pooling, bottom: data, top: p10, pooling_param: {pool: AVE, kernel_size: 3, stride: 3, pad: 2}}
  - {name: p11, type: Pooling, bottom: data, top: [p11, m11], pooling_param: {pool: MAX, kernel_size: 3, stride: 2, pad: 1}}
  - {name: p8, type: Pooling, bottom: data, top: p8, pooling_param: {pool: AVE, kernel_size: 2, stride: 2, pad: 1, round_mode: FLOOR}}
"""
    for dims in ([1, 3, 10, 11], [1, 2, 7, 6]):
        assert check_parity(_net(tmp_path, dims, body)) < 1e-5


def test_conv_family_and_norms(tmp_path):
    body = """
  - {name: c1, type: Convolution, bottom: data, top: c1, convolution_param: {num_output: 8, kernel_size: 3, pad: 2, dilation: 2, group: 2}}
  - {name: dw, type: Convolution, bottom: c1, top: dw, convolution_param: {num_output: 8, kernel_size: 3, stride: 2, group: 8, pad_mode: SAME}}
  - {name: c2, type: Convolution, bottom: dw, top: c2, convolution_param: {num_output: 6, kernel_h: 1, kernel_w: 3, pad_begin: [0, 2], pad_end: [1, 0], bias_term: false}}
  - {name: bn, type: BatchNorm, bottom: c2, top: c2, batch_norm_param: {eps: 0.001}}
  - {name: sc, type: Scale, bottom: c2, top: c2, scale_param: {bias_term: true}}
  - {name: l1, type: LRN, bottom: c2, top: l1, lrn_param: {local_size: 3, alpha: 0.5, beta: 0.75, k: 2}}
  - {name: l2, type: LRN, bottom: l1, top: l2, lrn_param: {local_size: 3, alpha: 0.5, beta: 0.75, norm_region: WITHIN_CHANNEL}}
  - {name: up, type: Deconvolution, bottom: l2, top: up, convolution_param: {num_output: 4, kernel_size: 4, stride: 2, pad: 1, group: 2}}
  - {name: r, type: ReLU, bottom: up, top: up, relu_param: {negative_slope: 0.1}}
  - {name: r6, type: ReLU6, bottom: up, top: r6}
  - {name: cr, type: Crop, bottom: [r6, data], top: cr, crop_param: {axis: 2, offset: [1, 0]}}
  - {name: e1, type: Eltwise, bottom: [cr, data], top: e1, eltwise_param: {operation: SUM, coeff: [0.5, -2]}}
  - {name: e2, type: Eltwise, bottom: [e1, cr, data], top: e2, eltwise_param: {operation: MAX}}
  - {name: e3, type: Eltwise, bottom: [e2, cr], top: e3, eltwise_param: {operation: PROD}}
  - {name: cat, type: Concat, bottom: [e3, data], top: cat}
  - {name: sm, type: Softmax, bottom: cat, top: sm, softmax_param: {axis: 2}}
  - {name: ip, type: InnerProduct, bottom: sm, top: ip, inner_product_param: {num_output: 5, axis: 2}}
  - {name: ipt, type: InnerProduct, bottom: sm, top: ipt, inner_product_param: {num_output: 3, transpose: true}}
  - {name: fl, type: Flatten, bottom: ip, top: fl}
  - {name: sg, type: Sigmoid, bottom: fl, top: sg}
  - {name: th, type: TanH, bottom: ipt, top: th}
  - {name: dr, type: Dropout, bottom: th, top: th, dropout_param: {dropout_ratio: 0.3}}
"""
    assert check_parity(_net(tmp_path, [1, 4, 9, 8], body)) < 1e-5


def test_neuron_layers(tmp_path):
    body = """
  - {name: a, type: AbsVal, bottom: data, top: a}
  - {name: e, type: ELU, bottom: data, top: e, elu_param: {alpha: 0.7}}
  - {name: s, type: BNLL, bottom: data, top: s}
  - {name: pr, type: PReLU, bottom: data, top: pr}
  - {name: prs, type: PReLU, bottom: data, top: prs, prelu_param: {channel_shared: true}}
  - {name: p2, type: Power, bottom: data, top: p2, power_param: {power: 2, scale: 0.5, shift: -1}}
  - {name: p3, type: Power, bottom: a, top: p3, power_param: {power: 0.5, shift: 1}}
  - {name: p0, type: Power, bottom: data, top: p0, power_param: {power: 3, scale: 0, shift: 2}}
  - {name: ex, type: Exp, bottom: data, top: ex, exp_param: {base: 2, scale: 0.5, shift: 1}}
  - {name: exe, type: Exp, bottom: data, top: exe}
  - {name: lg, type: Log, bottom: a, top: lg, log_param: {base: 10, scale: 2, shift: 1}}
  - {name: th, type: Threshold, bottom: data, top: th, threshold_param: {threshold: 0.3}}
  - {name: bi, type: Bias, bottom: data, top: bi}
  - {name: gp, type: Pooling, bottom: data, top: gp, pooling_param: {pool: AVE, global_pooling: true}}
  - {name: fl, type: Flatten, bottom: gp, top: fl}
  - {name: sc2, type: Scale, bottom: [data, fl], top: sc2, scale_param: {axis: 0}}
  - {name: bi2, type: Bias, bottom: [sc2, fl], top: bi2, bias_param: {axis: 0}}
  - {name: sl, type: Slice, bottom: data, top: [s1, s2, s3], slice_param: {axis: 3, slice_point: [1, 3]}}
  - {name: sl2, type: Slice, bottom: data, top: [h1, h2], slice_param: {axis: 2}}
  - {name: ti, type: Tile, bottom: s2, top: ti, tile_param: {axis: 1, tiles: 3}}
  - {name: rs, type: Reshape, bottom: ti, top: rs, reshape_param: {shape: {dim: [0, -1, 3]}}}
  - {name: rs2, type: Reshape, bottom: h1, top: rs2, reshape_param: {shape: {dim: [6]}, axis: 1, num_axes: 2}}
"""
    assert check_parity(_net(tmp_path, [1, 3, 4, 5], body)) < 1e-5


def test_upsample_with_mask_and_resize(tmp_path):
    body = """
  - {name: c, type: Convolution, bottom: data, top: c, convolution_param: {num_output: 3, kernel_size: 3, pad: 1}}
  - {name: p, type: Pooling, bottom: c, top: [p, m], pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}
  - {name: u, type: Upsample, bottom: [p, m], top: u, upsample_param: {upsample_h: 9, upsample_w: 8}}
  - {name: n, type: Upsample, bottom: p, top: n, upsample_param: {scale: 3, mode: NEAREST}}
  - {name: b, type: Upsample, bottom: p, top: b, upsample_param: {scale_h: 2, scale_w: 3, mode: BILINEAR}}
"""
    assert check_parity(_net(tmp_path, [1, 2, 9, 8], body)) < 1e-5


def test_refused_by_name(tmp_path):
    body = """
  - {name: c, type: Convolution, bottom: data, top: c, convolution_param: {num_output: 3, kernel_size: 3}}
  - {name: odd_pool, type: Pooling, bottom: c, top: p, pooling_param: {pool: L2, kernel_size: 2}}
"""
    graph = _graph(_net(tmp_path, [1, 2, 6, 6], body))
    params, state = _random_weights(Net(graph.plan), np.random.default_rng(0))
    with pytest.raises(ExportError, match=r"layer 'odd_pool' \(Pooling\).*pool L2"):
        build_onnx(graph, params, state)
    body = """
  - {name: mvn1, type: MVN, bottom: data, top: m}
"""
    graph = _graph(_net(tmp_path, [1, 2, 6, 6], body))
    with pytest.raises(ExportError, match=r"layer 'mvn1' \(MVN\) has no ONNX converter"):
        build_onnx(graph, {}, {})


# --- recurrent layers ------------------------------------------------------------------------------

RNN_HEAD = """name: r
layers:
  - {name: in, type: Input, top: [x, lengths], input_param: {shape: [{dim: [5, -1, 2, 2]}, {dim: [-1]}]}}
"""


@pytest.mark.parametrize("kind,extra", [
    ("LSTM", "num_layers: 2, bidirectional: true"),
    ("LSTM", "output: LAST, bidirectional: true, merge_mode: SUM"),
    ("GRU", "reset_after: true, bidirectional: true"),
    ("GRU", "reset_after: false, num_layers: 2"),
    ("RNN", "output_layer: true, bidirectional: true, num_layers: 2"),
    ("RNN", "output_layer: false, output: LAST"),
])
def test_recurrent_parity(tmp_path, kind, extra):
    """Time-major x (T×N×2×2 flattened to 4 features) with LENGTHS (ONNX sequence_lens)."""
    path = tmp_path / "r.yaml"
    path.write_text(RNN_HEAD + f"""
  - {{name: rec, type: {kind}, bottom: [x, lengths], top: y,
     recurrent_param: {{num_output: 3, sequence_input: LENGTHS, {extra}}}}}
""")
    assert check_parity(path, ids={"lengths": (1, 6)}) < 1e-5


def test_recurrent_batch_first_expose_hidden(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("""name: r
layers:
  - {name: in, type: Input, top: [x, h0, c0],
     input_param: {shape: [{dim: [-1, 4, 5]}, {dim: [2, -1, 6]}, {dim: [2, -1, 6]}]}}
  - {name: rec, type: LSTM, bottom: [x, h0, c0], top: [y, hT, cT],
     recurrent_param: {num_output: 6, sequence_input: NONE, batch_first: true, expose_hidden: true,
                       num_layers: 2}}
""")
    # h0/c0 are (layers·directions)×N×H: their batch is axis 1
    assert check_parity(path) < 1e-5


def test_recurrent_refusals(tmp_path):
    for bottoms, seq, why in ((["x", "m"], "MASK", "sequence_input MASK"),
                              (["x", "m", "s"], "NONE", "x_static")):
        seq_part = "" if seq == "NONE" else f", sequence_input: {seq}"
        bottoms = bottoms if seq != "NONE" else ["x", "s"]
        path = tmp_path / "r.yaml"
        path.write_text(f"""name: r
layers:
  - {{name: in, type: Input, top: [x, m, s], input_param: {{shape: [{{dim: [5, 3, 4]}}, {{dim: [5, 3]}}, {{dim: [3, 2]}}]}}}}
  - {{name: gru7, type: GRU, bottom: {bottoms}, top: y, recurrent_param: {{num_output: 3{seq_part}{", sequence_input: NONE" if seq == "NONE" else ""}}}}}
""")
        graph = _graph(path)
        params, state = _random_weights(Net(graph.plan), np.random.default_rng(0))
        with pytest.raises(ExportError, match=rf"layer 'gru7' \(GRU\).*{why}"):
            build_onnx(graph, params, state)
