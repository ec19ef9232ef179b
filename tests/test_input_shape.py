"""`--input-shape BLOB=N,C,H,W` (compiler/input_shapes.py): the shapes of data layers whose sizes
live outside the spec. Caffe's own LeNet (../shared/data/caffe/lenet_train_test.prototxt, two LMDB
Data layers whose databases are not here) imports, fails `netc check` with the way out named, and
checks clean with its figures once the shape is declared. Every bad declaration is a clear error:
a malformed value (usage, exit 2), an unknown blob (with did-you-mean), a blob no data layer makes,
a data layer's label top, a shape the layer does not give; `netc train` refuses the same at load,
and `netc check --input-shape` imports no JAX.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, netc

from netc.compiler.input_shapes import InputShapeError, parse_input_shape

LENET_PROTOTXT = ROOT.parent / "shared" / "data" / "caffe" / "lenet_train_test.prototxt"


@pytest.fixture(scope="module")
def lenet(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lenet") / "lenet.yaml"
    r = netc("import-caffe", LENET_PROTOTXT, "-o", out)
    assert r.returncode == 0, r.stderr
    return out


def test_parse():
    assert parse_input_shape("data=N,1,28,28") == ("data", ("N", 1, 28, 28))
    assert parse_input_shape(" img = 64, 3,32,32") == ("img", (64, 3, 32, 32))
    assert parse_input_shape("x=-1,5") == ("x", ("N", 5))
    for text, why in [
        ("data", "'data': expected BLOB=N,C,H,W"),
        ("=1,2", "'=1,2': expected BLOB=N,C,H,W"),
        ("data=", "'data=': no dimensions after '='"),
        ("data=1,x,3", "'data=1,x,3': dimension 2 is 'x'"),
        ("data=1,0,3", "'data=1,0,3': dimension 2 is '0'"),
        ("data=1,N,3", "'data=1,N,3': dimension 2 is 'N'"),
        ("data=1,,3", "'data=1,,3': an empty dimension"),
    ]:
        with pytest.raises(InputShapeError) as e:
            parse_input_shape(text)
        assert str(e.value).startswith(why), (text, str(e.value))


def test_lenet_needs_its_shape_then_checks_with_its_figures(lenet):
    r = netc("check", lenet)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (
        f"{lenet}:9:18: error: layer 'mnist' (Data): data_param.source: no LMDB database at "
        "'examples/mnist/mnist_train_lmdb' (looked in "
    ) in r.stderr
    assert (
        "declare it to check the net without the database, e.g. --input-shape "
        "data=N,C,H,W" in r.stderr
    )
    r = netc("check", lenet, "--input-shape", "data=N,1,28,28")
    assert r.returncode == 0, r.stderr
    assert "trainable parameters 431,080" in r.stdout and "64×1×28×28" in r.stdout
    r = netc("check", lenet, "--input-shape", "data=N,1,28,28", "--phase", "test")
    assert r.returncode == 0 and "100×1×28×28" in r.stdout, r.stderr


def test_a_concrete_batch_must_be_the_layers(lenet):
    r = netc("check", lenet, "--input-shape", "data=64,1,28,28")
    assert r.returncode == 1
    assert (
        f"{lenet}:12:11: error: layer 'mnist' (Data): --input-shape data=64,1,28,28: the layer "
        "gives 100×1×28×28 (the first dimension is the batch: the layer's batch_size, or N "
        "for any)"
    ) in r.stderr
    assert r.stderr.count("error:") == 1  # TRAIN's batch is 64: only TEST's layer differs


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["data=1,x,3"],
            "Error: Invalid value for '--input-shape': 'data=1,x,3': dimension 2 is 'x'",
        ),
        (
            ["data=N,1,28,28", "data=N,1,28,28"],
            "Error: Invalid value for '--input-shape': 'data' is declared twice",
        ),
    ],
)
def test_malformed_values_are_usage_errors(lenet, args, message):
    r = netc("check", lenet, *[a for v in args for a in ("--input-shape", v)])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert message in r.stderr


def test_blobs_that_cannot_be_declared(lenet):
    r = netc(
        "check",
        lenet,
        "--input-shape",
        "dat=N,1,28,28",
        "--input-shape",
        "conv1=N,20",
        "--input-shape",
        "label=N",
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if "error: --input-shape" in x]
    assert lines == [
        f"{lenet}:3:1: error: --input-shape dat=N,1,28,28: no blob 'dat' in this net (did you "
        "mean 'data'?)",
        f"{lenet}:6:17: error: --input-shape label=N: 'label' is top 1 of data layer 'mnist'; "
        "declare its first top 'data' (the others follow from it)",
        f"{lenet}:19:5: error: --input-shape conv1=N,20: 'conv1' is made by layer 'conv1' "
        "(Convolution), not by a data layer; --input-shape declares the tops of data layers "
        "(Data, Input, ...)",
    ], r.stderr


def test_an_input_layer_must_agree(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text(
        "layers:\n  - {name: data, type: Input, top: data, input_param: {shape: {dim: [2, 3]}}}\n"
    )
    assert netc("check", spec, "--input-shape", "data=2,3").returncode == 0
    r = netc("check", spec, "--input-shape", "data=N,4")
    assert r.returncode == 1
    assert (
        f"{spec}:2:31: error: layer 'data' (Input): --input-shape data=N,4: the layer gives 2×3"
    ) in r.stderr


def test_train_refuses_a_bad_declaration_at_load(lenet, tmp_path):
    r = netc("train", lenet, "--input-shape", "dta=N,1,28,28", "--out", tmp_path / "run")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (
        "error: --input-shape dta=N,1,28,28: no blob 'dta' in this net (did you mean "
        "'data'?)" in r.stderr
    )


def test_check_with_input_shape_imports_no_jax(lenet):
    code = (
        "import sys; from netc.cli import main; from click.testing import CliRunner; "
        f"r = CliRunner().invoke(main, ['check', {str(lenet)!r}, '--input-shape', "
        "'data=N,1,28,28']); assert r.exit_code == 0, r.output; "
        "assert 'jax' not in sys.modules, 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


SEGNET_TRAIN = """\
name: "SegNet-like"
layer {
  name: "data"
  type: "DenseImageData"
  top: "data"
  top: "label"
  dense_image_data_param { source: "/SegNet/CamVid/train.txt" batch_size: 4 shuffle: true }
}
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 11 kernel_size: 3 pad: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv1" bottom: "label" top: "loss"
        loss_param { ignore_label: 11 } }
"""


def test_segnet_dense_image_data(tmp_path):
    """SegNet's train prototxts read CamVid through their fork's DenseImageData, which has no
    image size: declared, the images and their label maps get it."""
    proto = tmp_path / "segnet_train.prototxt"
    proto.write_text(SEGNET_TRAIN)
    spec = tmp_path / "segnet.yaml"
    r = netc("import-caffe", proto, "-o", spec)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    r = netc("check", spec)
    assert r.returncode == 1
    assert (
        f"{spec}:7:5: error: layer 'data' (DenseImageData): dense_image_data_param: the "
        "images' size lives in the image files (no new_height / new_width): declare it to "
        "check the net, e.g. --input-shape data=N,3,H,W"
    ) in r.stderr
    r = netc("check", spec, "--input-shape", "data=N,3,360,480")
    assert r.returncode == 0, r.stderr
    assert "4×3×360×480" in r.stdout and "4×1×360×480" in r.stdout  # images, label maps


def test_image_data_without_a_size(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text(
        "layers:\n  - {name: data, type: ImageData, top: [data, label], "
        "image_data_param: {source: list.txt, batch_size: 2}}\n"
    )
    r = netc("check", spec)
    assert r.returncode == 1 and "--input-shape data=N,3,H,W" in r.stderr
    r = netc("check", spec, "--input-shape", "data=N,3,20,24")
    assert r.returncode == 0 and "2×3×20×24" in r.stdout, r.stderr
