"""`netc import-caffe`: V1 nets, input headers, forks' fields, warnings with line:col, comments, the
shared Caffe files and their published counts, the prototxt round trip, and .caffemodel weights.

The caffemodels here are written through the protobuf library from message classes this file
builds itself (a FileDescriptorProto with caffe.proto's field numbers), independently of netc's
own wire-format reader in runtime/caffemodel.py; the imported net's outputs are compared with a
NumPy forward pass of the same arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from netc.cli import main
from netc.spec.prototxt import (
    NotCaffeError,
    PrototxtError,
    data_to_prototxt,
    prototxt_to_data,
    prototxt_to_yaml,
)
from netc.spec.yaml_io import read_yaml

CAFFE = Path(__file__).parents[2] / "shared" / "data" / "caffe"
needs_shared = pytest.mark.skipif(not CAFFE.is_dir(), reason="needs ../shared/data/caffe")


def cli(*args: object):
    res = CliRunner().invoke(main, [str(a) for a in args], prog_name="netc")
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def check_json(path) -> dict:
    code, out, err = cli("check", path, "--format", "json")
    doc = json.loads(out)["specs"][0]
    return doc


def warnings_of(text: str, source: str = "n.prototxt") -> tuple[dict, list[str]]:
    w: list = []
    data = prototxt_to_data(text, net_source=source, warnings=w)
    return data, [str(x) for x in w]


# --- V1 nets --------------------------------------------------------------------------------------

V1_LENET = """\
name: "LeNet"
input: "data"
input_dim: 64
input_dim: 1
input_dim: 28
input_dim: 28
layers {
  name: "conv1"
  type: CONVOLUTION
  bottom: "data"
  top: "conv1"
  blobs_lr: 1
  blobs_lr: 2
  weight_decay: 1
  weight_decay: 0
  convolution_param {
    num_output: 20
    kernel_size: 5
    stride: 1
    weight_filler { type: "xavier" }
    bias_filler { type: "constant" }
  }
}
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "conv2" type: CONVOLUTION bottom: "pool1" top: "conv2" blobs_lr: 1 blobs_lr: 2
  param: "w2" param: "b2"
  convolution_param { num_output: 50 kernel_size: 5 stride: 1 } }
layers { name: "pool2" type: POOLING bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool2" top: "ip1"
  inner_product_param { num_output: 500 } }
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
layers { name: "ip2" type: INNER_PRODUCT bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 10 } }
layers { name: "prob" type: SOFTMAX bottom: "ip2" top: "prob" }
"""


def test_v1_net_is_upgraded_like_caffe():
    data, warns = warnings_of(V1_LENET)
    assert warns == []
    layers = data["layers"]
    assert [x["type"] for x in layers] == ["Convolution", "Pooling", "Convolution", "Pooling",
                                           "InnerProduct", "ReLU", "InnerProduct", "Softmax"]
    assert layers[0]["param"] == [{"lr_mult": 1, "decay_mult": 1}, {"lr_mult": 2, "decay_mult": 0}]
    assert layers[2]["param"] == [{"name": "w2", "lr_mult": 1}, {"name": "b2", "lr_mult": 2}]
    assert list(layers[0])[:5] == ["name", "type", "bottom", "top", "param"]
    assert "blobs_lr" not in layers[0] and "weight_decay" not in layers[0]
    assert layers[1]["pooling_param"] == {"pool": "MAX", "kernel_size": 2, "stride": 2}
    assert data["input_dim"] == [64, 1, 28, 28]


def test_v1_enum_names_and_include(tmp_path):
    text = """layers { name: "d" type: DATA top: "data" top: "label" include { phase: TRAIN }
                data_param { source: "x" batch_size: 4 } }
              layers { name: "l" type: SOFTMAX_LOSS bottom: "data" bottom: "label" }
              layers { name: "a" type: ABSVAL } layers { name: "t" type: TANH }"""
    data, _ = warnings_of(text)
    assert [x["type"] for x in data["layers"]] == ["Data", "SoftmaxWithLoss", "AbsVal", "TanH"]
    assert data["layers"][0]["include"] == {"phase": "TRAIN"}


def test_v1_lenet_checks_with_the_published_count(tmp_path):
    src = tmp_path / "lenet_v1.prototxt"
    src.write_text(V1_LENET)
    out = tmp_path / "lenet_v1.yaml"
    code, _, err = cli("import-caffe", src, "-o", out)
    assert code == 0, err
    doc = check_json(out)
    assert doc["ok"], doc["errors"]
    assert doc["params"] == {"trainable": 431_080, "non_trainable": 0}
    assert doc["macs"] == 2_293_000


def test_v1_errors():
    with pytest.raises(PrototxtError, match="V1LayerParameter.LayerType") as info:
        prototxt_to_data('layers {\n  type: CONVOLUTON\n}')
    assert (info.value.line, info.value.col) == (2, 9)
    with pytest.raises(PrototxtError, match="V0 layer"):
        prototxt_to_data('layers { layer { name: "c" type: "conv" } }')


# --- input headers -----------------------------------------------------------------------------------

HEADERS = {
    "input_dim": 'input: "data"\ninput_dim: 2\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n',
    "input_shape": 'input: "data"\ninput_shape { dim: 2 dim: 3 dim: 8 dim: 8 }\n',
    "input_layer": 'layer { name: "data" type: "Input" top: "data"\n'
                   '  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }\n',
}
BODY = ('layer { name: "c" type: "Convolution" bottom: "data" top: "c"\n'
        '  convolution_param { num_output: 4 kernel_size: 3 } }\n')


@pytest.mark.parametrize("form", sorted(HEADERS))
def test_input_headers_all_three_forms(tmp_path, form):
    src = tmp_path / "n.prototxt"
    src.write_text('name: "h"\n' + HEADERS[form] + BODY)
    out = tmp_path / "n.yaml"
    assert cli("import-caffe", src, "-o", out)[0] == 0
    doc = check_json(out)
    assert doc["ok"], doc["errors"]
    shapes = {t: s for layer in doc["layers"] for t, s in layer["tops"].items()}
    assert shapes == {"data": [2, 3, 8, 8], "c": [2, 4, 6, 6]}
    assert doc["params"]["trainable"] == 4 * 3 * 9 + 4


def test_two_inputs_with_input_shape(tmp_path):
    src = tmp_path / "n.prototxt"
    src.write_text('input: "a"\ninput_shape { dim: 1 dim: 5 }\ninput: "b"\n'
                   'input_shape { dim: 1 dim: 5 }\n'
                   'layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }\n')
    out = tmp_path / "n.yaml"
    assert cli("import-caffe", src, "-o", out)[0] == 0
    doc = check_json(out)
    assert doc["ok"] and doc["layers"][-1]["tops"] == {"s": [1, 5]}


# --- forks, stray blocks, unsupported types ----------------------------------------------------------

def test_ceil_mode_becomes_round_mode():
    text = ('layer { name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 '
            'ceil_mode: %s } }')
    assert warnings_of(text % "false")[0]["layers"][0]["pooling_param"]["round_mode"] == "FLOOR"
    assert warnings_of(text % "true")[0]["layers"][0]["pooling_param"]["round_mode"] == "CEIL"
    assert "ceil_mode" not in warnings_of(text % "true")[0]["layers"][0]["pooling_param"]
    with pytest.raises(PrototxtError, match="contradicts"):
        prototxt_to_data('layer { name: "p" type: "Pooling" pooling_param { round_mode: CEIL '
                         'ceil_mode: false } }')


SEGNET = """\
name: "segnet-bit"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "conv1_bn" type: "BN" bottom: "conv1" top: "conv1"
  bn_param { scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" value: 0.001 } %s} }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" top: "pool1_mask"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "upsample1" type: "Upsample" bottom: "pool1" bottom: "pool1_mask" top: "up1"
  upsample_param { scale: 2 upsample_h: 8 upsample_w: 8 } }
"""


@pytest.mark.parametrize("mode", ["", "bn_mode: INFERENCE "])
def test_segnet_bn_and_upsample(tmp_path, mode):
    data, warns = warnings_of(SEGNET % mode)
    assert warns == []
    kinds = [(x["name"], x["type"]) for x in data["layers"]]
    if mode:
        assert kinds[1] == ("conv1_bn", "Scale")
    else:
        assert kinds[1:3] == [("conv1_bn_bn", "BatchNorm"), ("conv1_bn", "Scale")]
        assert data["layers"][1]["batch_norm_param"] == {"use_global_stats": False}
    scale = next(x for x in data["layers"] if x["type"] == "Scale")
    assert scale["scale_param"] == {"filler": {"type": "constant", "value": 1}, "bias_term": True,
                                    "bias_filler": {"type": "constant", "value": 0.001}}
    src = tmp_path / "s.prototxt"
    src.write_text(SEGNET % mode)
    out = tmp_path / "s.yaml"
    assert cli("import-caffe", src, "-o", out)[0] == 0
    doc = check_json(out)
    assert doc["ok"], doc["errors"]
    assert doc["layers"][-1]["tops"] == {"up1": [1, 4, 8, 8]}
    assert doc["params"]["trainable"] == 4 * 27 + 4 + 8


STRAY = """\
name: "stray"
input: "data"
input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }
layer { name: "r" type: "ReLU" bottom: "data" top: "r"
  convolution_param { num_output: 3 } }
layer {
  name: "p"
  type: "Pooling"
  bottom: "r"
  top: "p"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 pad_type: 1 }
}
"""


def test_stray_param_block_is_a_warning_and_dropped(tmp_path):
    data, warns = warnings_of(STRAY)
    assert "convolution_param" not in data["layers"][0]
    assert warns == [
        "n.prototxt:5:3: warning: layer 'r' (ReLU): convolution_param is not read by a ReLU "
        "layer (Caffe ignores it); dropped",
        "n.prototxt:11:64: warning: layer 'p' (Pooling): pooling_param.pad_type is not a field "
        "netc knows (a Caffe fork's?); kept (netc check will refuse it)"]
    src = tmp_path / "stray.prototxt"
    src.write_text(STRAY)
    code, stdout, err = cli("import-caffe", src)
    assert code == 0
    assert err.splitlines()[0].startswith(f"{src}:5:3: warning: layer 'r' (ReLU): "
                                          "convolution_param")
    assert "convolution_param" not in stdout and "pad_type: 1" in stdout


UNSUPPORTED = """\
name: "odd"
layer {
  name: "py"
  type: "Python"
  top: "data"
  python_param { module: "m" layer: "L" }
}
layer { name: "win" type: "WindowData" top: "w" }
layer { name: "h5" type: "HDF5Output" bottom: "data" }
layer { name: "roi" type: "ROIPooling" bottom: "data" top: "roi" }
"""


def test_unsupported_types_are_reported_by_name_and_line_and_kept(tmp_path):
    data, warns = warnings_of(UNSUPPORTED)
    assert [x["name"] for x in data["layers"]] == ["py", "win", "h5", "roi"]
    assert warns == [
        "n.prototxt:4:9: warning: layer 'py': type Python is a Caffe layer type netc does not "
        "support; kept in the YAML (netc check will refuse it)",
        "n.prototxt:8:27: warning: layer 'win': type WindowData is a Caffe layer type netc does "
        "not support; kept in the YAML (netc check will refuse it)",
        "n.prototxt:9:26: warning: layer 'h5': type HDF5Output is a Caffe layer type netc does "
        "not support; kept in the YAML (netc check will refuse it)",
        "n.prototxt:10:27: warning: layer 'roi': type ROIPooling is not a layer type netc knows "
        "(a Caffe fork's?); kept in the YAML (netc check will refuse it)"]
    src = tmp_path / "odd.prototxt"
    src.write_text(UNSUPPORTED)
    out = tmp_path / "odd.yaml"
    assert cli("import-caffe", src, "-o", out)[0] == 0
    code, _, err = cli("check", out)
    assert code == 1
    for name in ("Python", "WindowData", "HDF5Output"):
        assert f"layer type '{name}' is a Caffe layer type that netc does not support" in err
    assert "unknown layer type 'ROIPooling'" in err


# --- comments -------------------------------------------------------------------------------------

COMMENTED = """\
# LeNet-ish, for the comment test
name: "c"  # the name
input: "data"
input_shape { dim: 1 dim: 1 dim: 8 dim: 8 }
# the first convolution
layer {
  name: "conv1"
  type: "Convolution"  # 3x3
  bottom: "data"
  top: "conv1"
  convolution_param { num_output: 2 kernel_size: 3 }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
# the end
"""


def test_comments_are_kept():
    text = prototxt_to_yaml(COMMENTED, comment="header")
    lines = text.splitlines()
    assert lines[:3] == ["# header", "# LeNet-ish, for the comment test", "# the name"]
    i = lines.index("  # the first convolution")
    assert lines[i + 1] == "  # 3x3" and lines[i + 2].startswith("  - name: conv1")
    assert lines[-1] == "# the end"
    assert read_yaml(text).data == read_yaml(prototxt_to_yaml(COMMENTED, keep_comments=False)).data


@needs_shared
def test_solver_comments_kept_and_solver_section(tmp_path):
    out = tmp_path / "lenet.yaml"
    code, _, err = cli("import-caffe", CAFFE / "lenet_train_test.prototxt", "--solver",
                       CAFFE / "lenet_solver.prototxt", "-o", out)
    assert code == 0, err
    text = out.read_text()
    assert "  # The base learning rate, momentum and the weight decay of the network." in text
    solver = read_yaml(text).data["solver"]
    assert solver["base_lr"] == 0.01 and solver["max_iter"] == 10000 and "net" not in solver


# --- the shared Caffe files: import, check, published counts, round trip ----------------------------

SHARED = {  # file → (trainable, non-trainable)
    "lenet_train_test.prototxt": (431_080, 0),
    "bvlc_alexnet/deploy.prototxt": (60_965_224, 0),
    "bvlc_googlenet/deploy.prototxt": (6_998_552, 0),
    "ResNet-50-deploy.prototxt": (25_557_096, 53_173),
}


@needs_shared
@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_files_import_and_check_with_the_published_counts(tmp_path, name):
    out = tmp_path / "net.yaml"
    code, _, err = cli("import-caffe", CAFFE / name, "-o", out)
    assert (code, err) == (0, f"wrote {out}\n")
    if name.startswith("lenet"):  # Caffe's LMDBs are not here: netc's built-in digits instead
        text = out.read_text().replace("examples/mnist/mnist_train_lmdb", "netc:digits/train")
        out.write_text(text.replace("examples/mnist/mnist_test_lmdb", "netc:digits/test"))
    doc = check_json(out)
    assert doc["ok"], doc["errors"]
    trainable, frozen = SHARED[name]
    assert doc["params"] == {"trainable": trainable, "non_trainable": frozen}
    if "googlenet" in name:
        tops = {t: s for layer in doc["layers"] for t, s in layer["tops"].items()}
        assert [tops[f"pool{i}/{k}"][2] for i, k in ((1, "3x3_s2"), (2, "3x3_s2"), (3, "3x3_s2"),
                                                      (4, "3x3_s2"))] == [56, 28, 14, 7]
    if "ResNet" in name:
        assert doc["macs"] == 3_857_973_248


@needs_shared
@pytest.mark.parametrize("name", sorted(SHARED))
def test_round_trip_yaml_prototxt_import(name):
    text = (CAFFE / name).read_text()
    data = read_yaml(prototxt_to_yaml(text)).data  # as netc reads the written YAML
    again = prototxt_to_data(data_to_prototxt(data))
    assert again == data
    assert read_yaml(prototxt_to_yaml(data_to_prototxt(data))).data == data


def test_round_trip_of_v1_and_forks():
    for text in (V1_LENET, SEGNET % "", STRAY.replace("pad_type: 1 ", "")):
        data = read_yaml(prototxt_to_yaml(text)).data
        assert prototxt_to_data(data_to_prototxt(data)) == data


@pytest.mark.parametrize(("layer", "words"), [
    ({"name": "g", "type": "GELU"}, "type GELU is a netc extension"),
    ({"name": "c", "type": "Convolution",
      "convolution_param": {"num_output": 2, "kernel_size": 3, "pad_mode": "SAME"}},
     "convolution_param.pad_mode"),
    ({"name": "p", "type": "Pooling", "pooling_param": {"pool": "L2"}}, "pooling_param.pool"),
    ({"name": "c", "type": "InnerProduct",
      "inner_product_param": {"num_output": 2, "weight_filler": {"type": "orthogonal"}}},
     "weight_filler.type"),
])
def test_writer_refuses_netc_extensions_by_name(layer, words):
    with pytest.raises(NotCaffeError, match=words.replace(".", r"\.")):
        data_to_prototxt({"name": "x", "layers": [layer]})


def test_writer_spells_enums_and_strings():
    text = data_to_prototxt({"name": "x", "layers": [
        {"name": "p", "type": "Pooling", "include": {"phase": "TEST"},
         "pooling_param": {"pool": "MAX", "kernel_size": 2, "round_mode": "FLOOR"}},
        {"name": "c", "type": "Convolution", "convolution_param": {
            "num_output": 2, "kernel_size": 3, "weight_filler": {"type": "xavier"}}}]})
    assert "phase: TEST" in text and "pool: MAX" in text and "round_mode: FLOOR" in text
    assert 'type: "xavier"' in text and 'name: "p"' in text


# --- .caffemodel weights ------------------------------------------------------------------------------

def caffe_classes(packed: bool = True):
    """NetParameter, LayerParameter, V1LayerParameter, BlobProto, BlobShape built with protobuf's
    own descriptor machinery from caffe.proto's field numbers (BVLC caffe.proto)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name=f"caffe_test_{packed}.proto",
                                             package=f"caffetest{int(packed)}", syntax="proto2")
    pkg = f".caffetest{int(packed)}."

    def message(name, fields):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name, is_packed in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = pkg + type_name
            if is_packed:
                f.options.packed = True
        return m

    OPT, REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("BlobShape", [("dim", 1, F.TYPE_INT64, REP, None, True)])
    message("BlobProto", [
        ("shape", 7, F.TYPE_MESSAGE, OPT, "BlobShape", False),
        ("data", 5, F.TYPE_FLOAT, REP, None, packed),
        ("diff", 6, F.TYPE_FLOAT, REP, None, packed),
        ("double_data", 8, F.TYPE_DOUBLE, REP, None, packed),
        ("double_diff", 9, F.TYPE_DOUBLE, REP, None, packed),
        ("num", 1, F.TYPE_INT32, OPT, None, False),
        ("channels", 2, F.TYPE_INT32, OPT, None, False),
        ("height", 3, F.TYPE_INT32, OPT, None, False),
        ("width", 4, F.TYPE_INT32, OPT, None, False)])
    message("LayerParameter", [
        ("name", 1, F.TYPE_STRING, OPT, None, False),
        ("type", 2, F.TYPE_STRING, OPT, None, False),
        ("bottom", 3, F.TYPE_STRING, REP, None, False),
        ("top", 4, F.TYPE_STRING, REP, None, False),
        ("blobs", 7, F.TYPE_MESSAGE, REP, "BlobProto", False)])
    v1 = message("V1LayerParameter", [
        ("bottom", 2, F.TYPE_STRING, REP, None, False),
        ("top", 3, F.TYPE_STRING, REP, None, False),
        ("name", 4, F.TYPE_STRING, OPT, None, False),
        ("type", 5, F.TYPE_ENUM, OPT, "V1LayerParameter.LayerType", False),
        ("blobs", 6, F.TYPE_MESSAGE, REP, "BlobProto", False),
        ("blobs_lr", 7, F.TYPE_FLOAT, REP, None, False)])
    enum = v1.enum_type.add(name="LayerType")
    for name, number in (("NONE", 0), ("CONVOLUTION", 4), ("INNER_PRODUCT", 14), ("RELU", 18)):
        enum.value.add(name=name, number=number)
    message("NetParameter", [
        ("name", 1, F.TYPE_STRING, OPT, None, False),
        ("layers", 2, F.TYPE_MESSAGE, REP, "V1LayerParameter", False),
        ("input", 3, F.TYPE_STRING, REP, None, False),
        ("layer", 100, F.TYPE_MESSAGE, REP, "LayerParameter", False)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(pkg[1:] + n))
            for n in ("NetParameter", "LayerParameter", "V1LayerParameter", "BlobProto")}


SMALL = """\
name: "small"
input: "data"
input_shape { dim: 2 dim: 3 dim: 6 dim: 6 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
  batch_norm_param { use_global_stats: true } }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
  inner_product_param { num_output: 5 } }
"""


def small_arrays(scale_factor: float) -> dict:
    rng = np.random.default_rng(7)
    return {
        "conv1": [rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)],
        "bn1": [rng.normal(size=4), rng.uniform(0.5, 2.0, size=4), np.array([scale_factor])],
        "sc1": [rng.normal(size=4), rng.normal(size=4)],
        "ip1": [rng.normal(size=(5, 36)) * 0.3, rng.normal(size=5)],
    }


def reference_forward(x: np.ndarray, a: dict) -> np.ndarray:
    """NumPy: Caffe's cross-correlation conv (pad 1, stride 2), BatchNorm with global statistics
    divided by the scale factor (0 → 0), Scale + bias, ReLU, InnerProduct."""
    w, b = a["conv1"]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    y = np.einsum("nchwij,ocij->nohw", win, w) + b[None, :, None, None]
    mean, var, sf = a["bn1"]
    inv = 0.0 if sf[0] == 0 else 1.0 / sf[0]
    y = (y - (mean * inv)[None, :, None, None]) / np.sqrt((var * inv)[None, :, None, None] + 1e-5)
    g, beta = a["sc1"]
    y = np.maximum(y * g[None, :, None, None] + beta[None, :, None, None], 0)
    wi, bi = a["ip1"]
    return y.reshape(len(y), -1) @ wi.T + bi


def blob(cls, array, how: str):
    a = np.asarray(array)
    msg = cls["BlobProto"]()
    if how == "legacy":  # V1: num/channels/height/width, the shape padded with leading 1s
        dims = (1,) * (4 - a.ndim) + a.shape
        msg.num, msg.channels, msg.height, msg.width = dims
    else:
        msg.shape.dim.extend(a.shape)
    if how == "double":
        msg.double_data.extend(a.ravel().tolist())
    else:
        msg.data.extend(a.astype(np.float32).ravel().tolist())
    return msg


def write_caffemodel(path: Path, arrays: dict, how: str, v1: bool = False, packed: bool = True,
                     extra: dict | None = None) -> None:
    cls = caffe_classes(packed)
    net = cls["NetParameter"](name="small")
    types = {"conv1": "Convolution", "bn1": "BatchNorm", "sc1": "Scale", "ip1": "InnerProduct"}
    for name, blobs in {**arrays, **(extra or {})}.items():
        if v1 and name in ("conv1", "ip1"):
            layer = net.layers.add(name=name, type="CONVOLUTION" if name == "conv1"
                                   else "INNER_PRODUCT")
        else:
            layer = net.layer.add(name=name, type=types.get(name, "Python"))
        for a in blobs:
            layer.blobs.append(blob(cls, a, how))
    path.write_bytes(net.SerializeToString())


def run_imported(tmp_path: Path, caffemodel: Path, x: np.ndarray) -> np.ndarray:
    src = tmp_path / "small.prototxt"
    src.write_text(SMALL)
    out = tmp_path / "small.yaml"
    code, _, err = cli("import-caffe", src, "--weights", caffemodel, "-o", out)
    assert code == 0, err
    ckpt = tmp_path / "small.weights.json"
    assert f"wrote {ckpt}" in err
    inp = tmp_path / "in.npz"
    np.savez(inp, data=x.astype(np.float32))
    result = tmp_path / "out.npz"
    code, _, err = cli("predict", out, inp, "--weights", ckpt, "-o", result)
    assert code == 0, err
    assert "loaded 9 blob(s), skipped 0" in err
    with np.load(result) as z:
        return z["ip1"]


@pytest.mark.parametrize(("how", "v1", "packed", "sf"), [
    ("shape", False, True, 1.0),     # V2 blob shapes, packed float data
    ("legacy", True, False, 2.5),    # V1 layers, legacy 4-D num/channels/height/width, unpacked
    ("double", False, True, 0.5),    # double_data
    ("shape", False, True, 0.0),     # BatchNorm scale factor 0: statistics 0
])
def test_caffemodel_outputs_match_a_numpy_reference(tmp_path, how, v1, packed, sf):
    arrays = small_arrays(sf)
    model = tmp_path / "small.caffemodel"
    write_caffemodel(model, arrays, how, v1=v1, packed=packed)
    x = np.random.default_rng(3).normal(size=(2, 3, 6, 6))
    got = run_imported(tmp_path, model, x)
    want = reference_forward(x, arrays)
    assert got.shape == (2, 5)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    # the scale factor matters: without dividing, the outputs would differ
    if sf not in (1.0,):
        plain = reference_forward(x, {**arrays, "bn1": arrays["bn1"][:2] + [np.array([1.0])]})
        assert not np.allclose(got, plain, rtol=1e-3, atol=1e-3)


def test_caffemodel_checkpoint_format(tmp_path):
    from netc.runtime.checkpoint import load_checkpoint
    from netc.runtime.weights import read_weights

    arrays = small_arrays(3.0)
    model = tmp_path / "small.caffemodel"
    write_caffemodel(model, arrays, "shape", extra={"loss_py": [np.zeros(3)]})
    src = tmp_path / "small.prototxt"
    src.write_text(SMALL)
    code, _, err = cli("import-caffe", src, "--weights", model, "-o", tmp_path / "n.yaml",
                       "--weights-out", tmp_path / "w")
    assert code == 0, err
    assert ("warning: layer 'loss_py' (Python, 1 blob(s)) has no layer of that name in the net; "
            "not imported") in err
    tree, meta = load_checkpoint(tmp_path / "w.json")
    assert meta["source"] == "caffemodel" and set(tree) == {"params", "state"}
    params, state = read_weights(str(tmp_path / "w.json"))
    assert set(params) == {"conv1", "sc1", "ip1"} and set(state) == {"bn1"}
    np.testing.assert_array_equal(state["bn1"]["scale_factor"], np.float32([3.0]))
    np.testing.assert_array_equal(state["bn1"]["mean"], arrays["bn1"][0].astype(np.float32))
    np.testing.assert_array_equal(params["ip1"]["weight"], arrays["ip1"][0].astype(np.float32))


def test_mis_shaped_and_extra_blobs_are_errors_by_layer_and_index(tmp_path):
    arrays = small_arrays(1.0)
    arrays["ip1"] = [np.zeros((5, 35)), np.zeros(5)]
    arrays["sc1"] = arrays["sc1"] + [np.zeros(4)]
    model = tmp_path / "bad.caffemodel"
    write_caffemodel(model, arrays, "shape")
    src = tmp_path / "small.prototxt"
    src.write_text(SMALL)
    code, _, err = cli("import-caffe", src, "--weights", model, "-o", tmp_path / "n.yaml")
    assert code == 1
    assert "layer 'ip1' blob 0 (weight): shape 5×35 in the caffemodel, 5×36 in the net" in err
    assert "layer 'sc1' blob 2 (4): the net's layer has only 2 blob(s)" in err
    assert not (tmp_path / "n.weights.json").exists()
    # a legacy 4-D shape must be the net's shape padded with leading 1s, nothing looser
    arrays = small_arrays(1.0)
    model2 = tmp_path / "legacy.caffemodel"
    write_caffemodel(model2, {**arrays, "ip1": [np.zeros((5, 36, 1)), np.zeros(5)]}, "legacy")
    code, _, err = cli("import-caffe", src, "--weights", model2, "-o", tmp_path / "n2.yaml")
    assert code == 1 and "layer 'ip1' blob 0 (weight): shape 1×5×36×1 in the caffemodel" in err


def test_pickles_and_garbage_are_refused(tmp_path):
    import pickle

    from netc.runtime.caffemodel import CaffemodelError, read_caffemodel

    with pytest.raises(CaffemodelError, match="pickle"):
        read_caffemodel(pickle.dumps({"a": 1}, protocol=2), "x.pkl")
    with pytest.raises(CaffemodelError, match="zip"):
        read_caffemodel(b"PK\x03\x04rest", "m.pt")
    with pytest.raises(CaffemodelError, match="not a readable .caffemodel"):
        read_caffemodel(b"\x0a\xff\xff\xff\xff\x0f", "t.caffemodel")  # length past the end
    src = tmp_path / "small.prototxt"
    src.write_text(SMALL)
    bad = tmp_path / "x.caffemodel"
    bad.write_bytes(pickle.dumps([1, 2], protocol=4))
    code, _, err = cli("import-caffe", src, "--weights", bad, "-o", tmp_path / "n.yaml")
    assert code == 1 and "never unpickles" in err


@needs_shared
def test_lenet_caffemodel_runs_under_netc_test(tmp_path):
    """Caffe's LeNet with V1-style legacy blobs (InnerProduct weights 1×1×500×800): the checkpoint
    loads into `netc test` with every blob matched."""
    from netc.runtime.caffemodel import import_caffemodel

    out = tmp_path / "lenet.yaml"
    assert cli("import-caffe", CAFFE / "lenet_train_test.prototxt", "--solver",
               CAFFE / "lenet_solver.prototxt", "-o", out)[0] == 0
    text = out.read_text().replace("examples/mnist/mnist_train_lmdb", "netc:digits/train")
    out.write_text(text.replace("examples/mnist/mnist_test_lmdb", "netc:digits/test"))
    rng = np.random.default_rng(0)
    arrays = {"conv1": [rng.normal(size=(20, 1, 5, 5)) * 0.2, np.zeros(20)],
              "conv2": [rng.normal(size=(50, 20, 5, 5)) * 0.05, np.zeros(50)],
              "ip1": [rng.normal(size=(500, 800)) * 0.03, np.zeros(500)],
              "ip2": [rng.normal(size=(10, 500)) * 0.05, np.zeros(10)]}
    cls = caffe_classes(True)
    net = cls["NetParameter"](name="LeNet")
    for name, blobs in arrays.items():
        layer = net.layers.add(name=name, type="CONVOLUTION" if "conv" in name else "INNER_PRODUCT")
        for a in blobs:
            layer.blobs.append(blob(cls, a, "legacy"))
    model = tmp_path / "lenet.caffemodel"
    model.write_bytes(net.SerializeToString())
    ckpt, report = import_caffemodel(str(model), str(out), str(tmp_path / "lenet.weights"))
    assert len(report.loaded) == 8 and not report.errors and not report.missing
    code, stdout, err = cli("test", out, "--weights", ckpt, "--iterations", "1")
    assert code == 0, err
    assert "loaded 8 blob(s), skipped 0" in err
    assert "accuracy" in stdout and "loss" in stdout
