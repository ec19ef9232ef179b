"""`netc check` as a new user meets it (issue 7 §5): what `netc train` would reject is warned
about, each problem is printed once, errors do not cascade into warnings, suggestions survive a
failed layer, Caffe types and Caffe files are recognised, and `netc import-caffe` converts them."""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ROOT, errors_of, warnings_of

from netc.cli import main

CAFFE = ROOT.parent / "shared" / "data" / "caffe"
NO_SOLVER = ("warning: netc train needs a solver: add a `solver:` section or pass --solver FILE "
             "(warned because the net has a loss layer; a deploy net with no loss and no solver "
             "gets no warning)")
NO_LOSS = ("warning: the TRAIN net has no loss (no layer with a loss weight), so netc train has "
           "nothing to minimise: add a loss layer such as SoftmaxWithLoss, or a loss_weight")


def cli(*args: object):
    """`netc ARGS` in this process: (exit status, stdout, stderr)."""
    res = CliRunner().invoke(main, [str(a) for a in args], prog_name="netc")
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


INPUTS = """
name: t
layers:
  - name: data
    type: Data
    top: [data, label]
    data_param: {source: "netc:digits/train", batch_size: 2}
  - name: ip
    type: InnerProduct
    bottom: data
    top: ip
    inner_product_param: {num_output: 3, weight_filler: {type: xavier}}
"""
LOSS = """
  - name: loss
    type: SoftmaxWithLoss
    bottom: [ip, label]
    top: loss
"""
OLD_IN = '  - name: data\n    type: Input\n    top: [data, label]\n    input_param: {shape: [{dim: [2, 1, 8, 8]}, {dim: [2]}]}\n'
NEW_IN = '  - name: data\n    type: Data\n    top: [data, label]\n    data_param: {source: "netc:digits/train", batch_size: 2}\n'
SOLVER = "solver: {base_lr: 0.1, lr_policy: fixed, max_iter: 10}\n"


# --- 1. plan(): one method per check -------------------------------------------------------------


@pytest.mark.parametrize("module", ["compiler/plan.py", "compiler/catalogue.py"])
def test_no_function_in_the_planner_is_longer_than_60_lines(module):
    tree = ast.parse((ROOT / module).read_text())
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > 60]
    assert long == []


def test_unused_output_warning_reads_the_is_metric_fact(check_spec, monkeypatch):
    """A metric's top is a net output by design; which layers are metrics is the unit's fact, not
    a comparison with the string "Accuracy"."""
    from netc.compiler.catalogue import units

    text = INPUTS + LOSS + """
  - name: best
    type: ArgMax
    bottom: ip
    top: best
"""
    warning = ("spec.yaml:21:5: warning: layer 'best' (ArgMax): top: blob 'best' is not used by any "
               "layer (it is computed only to be a net output)")
    assert warnings_of(check_spec, text) == [warning]
    monkeypatch.setattr(units()["ArgMax"], "is_metric", True)
    assert warnings_of(check_spec, text) == []


# --- 2. what `netc train` would reject -----------------------------------------------------------


def test_check_warns_a_net_with_a_loss_but_no_solver(tmp_path):
    path = write(tmp_path, INPUTS + LOSS)
    code, out, err = cli("check", path)
    assert code == 0 and out.startswith(f"{path}: t — TRAIN phase")
    assert err.splitlines() == [f"{path}:1:1: {NO_SOLVER}"]
    # with a solver the spec is ready to train: nothing to say
    assert cli("check", write(tmp_path, INPUTS + LOSS + SOLVER, "ok.yaml"))[2] == ""


def test_check_warns_a_train_net_without_a_loss(tmp_path):
    path = write(tmp_path, INPUTS + SOLVER)
    assert cli("check", path)[2].splitlines() == [f"{path}:2:1: {NO_LOSS}"]
    # a loss in the TEST net only is still no loss for training (and no solver: both warnings)
    test_only = write(tmp_path, INPUTS + LOSS + "    include: {phase: TEST}\n", "test_only.yaml")
    assert cli("check", test_only)[2].splitlines() == [
        f"{test_only}:1:1: {NO_SOLVER}", f"{test_only}:2:1: {NO_LOSS}"]


def test_no_loss_warning_is_not_a_cascade_of_a_failed_loss_layer(tmp_path):
    path = write(tmp_path, INPUTS + LOSS.replace("bottom: [ip, label]", "bottom: [ip, label]\n"
                                                  "    loss_param: {ignore_lable: 0}") + SOLVER)
    code, _, err = cli("check", path)
    assert code == 1 and len(err.splitlines()) == 1
    assert "loss_param.ignore_lable: unknown field (did you mean 'ignore_label'?)" in err


def test_check_warns_a_train_net_fed_only_by_input_layers(tmp_path):
    """netc train refuses a TRAIN net whose data layers hold no data: check says so first."""
    path = write(tmp_path, INPUTS.replace(NEW_IN, OLD_IN) + LOSS + SOLVER)
    code, _, err = cli("check", path)
    assert code == 0 and err.splitlines() == [
        f"{path}:2:1: warning: the TRAIN net is fed only by Input layers, which hold no data: "
        "netc train needs a Data layer with data_param.source (a .npz file or "
        "netc:digits/train)"]


def test_deploy_nets_get_no_training_warnings(tmp_path):
    """No loss and no solver: a net for predict and export, not for training."""
    code, out, err = cli("check", write(tmp_path, INPUTS))
    assert (code, err) == (0, "")
    for model in ("xor_mlp.yaml", "lenet5_1998.yaml", "bvlc_alexnet.yaml"):
        code, _, err = cli("check", "-q", ROOT / "models" / model)
        assert (code, err) == (0, ""), model
    # a training spec that is ready gets none either
    assert cli("check", "-q", ROOT / "models" / "lenet.yaml") == (0, "", "")


def test_json_report_carries_the_training_warnings(tmp_path):
    path = write(tmp_path, INPUTS + LOSS)
    doc = json.loads(cli("check", path, "--format", "json")[1])["specs"][0]
    assert doc["ok"] is True
    assert [w["message"] for w in doc["warnings"]] == [NO_SOLVER.removeprefix("warning: ")]


# --- 3. one message per problem, phases named ----------------------------------------------------

PHASED = """
name: t
layers:
  - name: train_data
    type: Input
    top: data
    include: {phase: TRAIN}
    input_param: {shape: {dim: [64, 1, 28, 28]}}
  - name: test_data
    type: Input
    top: data
    include: {phase: TEST}
    input_param: {shape: {dim: [100, 1, 28, 28]}}
"""


def test_the_same_error_in_both_phases_prints_once_naming_both(check_spec):
    text = PHASED + """
  - name: conv1
    type: Convolution
    bottom: data
    top: conv1
    convolution_param: {num_output: 4, kernel_size: 50}
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:18:40: error: layer 'conv1' (Convolution): convolution_param.kernel_size: output "
        "would be empty: input 64×1×28×28, on axis H the padded input 28 + 2·0 = 28 is smaller than "
        "the kernel extent 50 (TRAIN and TEST; in TEST: 100×1×28×28)"]
    # one phase alone: its own numbers, no phase named
    assert errors_of(check_spec, text, phase="TEST") == [
        "spec.yaml:18:40: error: layer 'conv1' (Convolution): convolution_param.kernel_size: output "
        "would be empty: input 100×1×28×28, on axis H the padded input 28 + 2·0 = 28 is smaller "
        "than the kernel extent 50"]


def test_an_error_of_one_phase_names_it(check_spec):
    """The layer runs in both phases but only TEST's batch is too big: say which."""
    text = """
name: t
layers:
  - name: train_data
    type: Input
    top: data
    include: {phase: TRAIN}
    input_param: {shape: {dim: [1, 1, 524288, 1048576]}}
  - name: test_data
    type: Input
    top: data
    include: {phase: TEST}
    input_param: {shape: {dim: [2, 1, 524288, 1048576]}}
  - name: both
    type: Concat
    bottom: [data, data]
    top: both
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:13:5: error: layer 'both' (Concat): output 2×2×524288×1048576 would hold "
        "2,199,023,255,552 elements, more than netc allows (1,099,511,627,776) (TEST)"]


def test_messages_of_one_phase_only_layers_are_not_tagged(check_spec):
    text = PHASED + """
  - name: relu
    type: ReLU
    bottom: dta
    top: relu
    include: {phase: TEST}
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:16:5: error: layer 'relu' (ReLU): bottom: unknown blob 'dta' (did you mean 'data'?)"]


# --- 4. no cascading "not used" warnings after an error ------------------------------------------

BRANCH = INPUTS.replace("name: ip\n", "name: aux\n").replace("top: ip\n", "top: aux\n").replace(
    "num_output: 3", "num_output: 10") + """
  - name: auxloss
    type: SoftmaxWithLoss
    bottom: [aux, label]
    top: auxloss
  - name: conv
    type: Convolution
    bottom: data
    top: conv
    convolution_param: {num_output: 2, kernel_size: 3, weight_filler: {type: xavier}}
  - name: relu
    type: ReLU
    bottom: data
    top: side
"""


@pytest.mark.parametrize("consumer, error", [
    # fails shape inference: planned, then skipped
    ("inner_product_param: {num_output: 3, axis: 7, weight_filler: {type: xavier}}",
     "spec.yaml:31:42: error: layer 'ip' (InnerProduct): inner_product_param.axis: axis 7 is out "
     "of range for a 4-axis blob"),
    # fails validation: never reaches the planner
    ("inner_product_param: {num_output: 3, weight_filer: {type: xavier}}",
     "spec.yaml:31:42: error: layer 'ip' (InnerProduct): inner_product_param.weight_filer: "
     "unknown field (did you mean 'weight_filler'?)"),
])
def test_the_input_of_a_failed_layer_is_not_reported_unused(check_spec, consumer, error):
    text = BRANCH + f"""
  - name: ip
    type: InnerProduct
    bottom: conv
    top: ip
    {consumer}
  - name: loss
    type: SoftmaxWithLoss
    bottom: [ip, label]
    top: loss
"""
    _, _, diags = check_spec(text)
    assert diags == [
        # the real unused output is still reported; 'conv' (read by the failed layer) is not
        "spec.yaml:25:5: warning: layer 'relu' (ReLU): top: blob 'side' is not used by any layer "
        "(it is computed only to be a net output)",
        error,
    ]


# --- 5. a failed layer's tops are still suggestions ----------------------------------------------

TYPO_NEXT = """
  - name: relu
    type: ReLU
    bottom: conv9
    top: relu
  - name: relu_ok
    type: ReLU
    bottom: conv1
    top: relu_ok
"""


@pytest.mark.parametrize("params, error", [
    ("{num_output: 4, kernal_size: 3}",  # validation
     "spec.yaml:12:40: error: layer 'conv1' (Convolution): convolution_param.kernal_size: "
     "unknown field (did you mean 'kernel_size'?)"),
    ("{num_output: 4, kernel_size: 50}",  # shape inference
     "spec.yaml:12:40: error: layer 'conv1' (Convolution): convolution_param.kernel_size: output "
     "would be empty: input 2×1×28×28, on axis H the padded input 28 + 2·0 = 28 is smaller than the "
     "kernel extent 50"),
])
def test_a_failed_layer_still_declares_its_tops_for_suggestions(check_spec, params, error):
    text = INPUTS.split("  - name: ip")[0] + f"""
  - name: conv1
    type: Convolution
    bottom: data
    top: conv1
    convolution_param: {params}
""" + TYPO_NEXT
    assert errors_of(check_spec, text) == [
        error,
        # relu_ok reads conv1 itself: skipped quietly, no second error
        "spec.yaml:16:5: error: layer 'relu' (ReLU): bottom: unknown blob 'conv9' "
        "(did you mean 'conv1'?)",
    ]


# --- 6. Caffe layer types netc lacks --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["LSTMUnit", "Filter", "BatchReindex", "Python", "HDF5Data",
                                  "HDF5Output", "WindowData", "MemoryData",
                                  "DummyData"])
def test_a_caffe_type_netc_lacks_is_named_as_such(check_spec, kind):
    text = INPUTS.split("  - name: ip")[0] + f"""
  - name: x
    type: {kind}
    bottom: data
    top: x
"""
    assert errors_of(check_spec, text) == [
        f"spec.yaml:9:5: error: layer 'x' ({kind}): type: layer type '{kind}' is a Caffe layer "
        f"type that netc does not support yet (`netc layers` lists the supported types)"]


def test_caffe_type_list_is_bvlc_caffe_and_misspellings_still_get_suggestions(check_spec):
    from netc.compiler.catalogue import units
    from netc.spec.net import CAFFE_LAYER_TYPES

    # every Caffe type netc has is in the list (the list is Caffe's, not a copy of netc's)
    assert {"Convolution", "Pooling", "SoftmaxWithLoss", "Data", "Input"} <= CAFFE_LAYER_TYPES
    assert {"GELU", "ReLU6", "Upsample", "Maxout"}.isdisjoint(CAFFE_LAYER_TYPES)  # netc's own
    assert "LSTMUnit" not in units()
    text = INPUTS.split("  - name: ip")[0] + """
  - name: x
    type: Poolin
    bottom: data
    top: x
"""
    assert errors_of(check_spec, text) == [
        "spec.yaml:9:5: error: layer 'x' (Poolin): type: unknown layer type 'Poolin' (did you mean "
        "'Pooling'?)"]


# --- 7. Caffe text format: recognised, and `netc import-caffe` ------------------------------------


def test_check_of_a_prototxt_says_how_to_convert_it(tmp_path):
    src = tmp_path / "lenet_train_test.prototxt"
    src.write_bytes((CAFFE / "lenet_train_test.prototxt").read_bytes())
    code, out, err = cli("check", src)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"{src}:2:1: error: this is Caffe's protobuf text format (.prototxt), not netc YAML; convert "
        f"it with: netc import-caffe {src} -o {tmp_path / 'lenet_train_test.yaml'}"]


def test_caffe_text_under_another_name_is_recognised_by_its_blocks(tmp_path):
    path = write(tmp_path, 'name: "x"\ninput: "data"\nlayer {\n  name: "r"\n  type: "ReLU"\n}\n',
                 "net.yaml")
    assert cli("check", path)[2].splitlines() == [
        f"{path}:3:1: error: this is Caffe's protobuf text format (.prototxt), not netc YAML; "
        f"convert it with: netc import-caffe {path} -o {tmp_path / 'net.netc.yaml'}"]
    # PyTorch's binary .pt is not Caffe text
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04\x00\x00layer {")
    assert cli("check", binary)[2] == (f"{binary}:1:3: error: invalid YAML: character #x0003 is "
                                       f"not allowed (is this a binary file?)\n")
    # a YAML mistake is still YAML's to report
    bad = write(tmp_path, "name: x\nlayers: [\n", "bad.yaml")
    assert "Caffe" not in cli("check", bad)[2]


def test_import_caffe_lenet_then_check(tmp_path):
    out = tmp_path / "lenet.yaml"
    code, stdout, err = cli("import-caffe", CAFFE / "lenet_train_test.prototxt", "-o", out)
    assert (code, stdout, err) == (0, "", f"wrote {out}\n")
    text = out.read_text()
    assert text.startswith("# Translated from ")
    # Caffe's LMDBs are not readable by netc: read the built-in digits, as models/lenet.yaml does
    text = text.replace("examples/mnist/mnist_train_lmdb", "netc:digits/train")
    out.write_text(text.replace("examples/mnist/mnist_test_lmdb", "netc:digits/test"))
    code, stdout, err = cli("check", out, "--format", "json")
    doc = json.loads(stdout)["specs"][0]
    assert code == 0 and doc["ok"] is True, err
    assert doc["params"] == {"trainable": 431080, "non_trainable": 0}
    assert doc["macs"] == 2293000
    assert [w["message"] for w in doc["warnings"]] == [NO_SOLVER.removeprefix("warning: ")]


def test_import_caffe_writes_to_stdout_and_the_result_checks(tmp_path):
    code, stdout, err = cli("import-caffe", CAFFE / "bvlc_alexnet" / "deploy.prototxt")
    assert (code, err) == (0, "")
    path = write(tmp_path, stdout, "alexnet.yaml")
    doc = json.loads(cli("check", path, "--format", "json")[1])["specs"][0]
    assert doc["ok"] is True and doc["params"]["trainable"] == 60_965_224


def test_import_caffe_errors_are_file_line_col(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "r"\n  type: "ReLU"\n')
    code, stdout, err = cli("import-caffe", bad, "-o", tmp_path / "bad.yaml")
    assert (code, stdout) == (1, "")
    assert len(err.splitlines()) == 1 and err.startswith(f"{bad}:5:1: error: ")
    assert not (tmp_path / "bad.yaml").exists()
    code, _, err = cli("import-caffe", tmp_path / "missing.prototxt")
    assert code == 1 and err.startswith(f"{tmp_path / 'missing.prototxt'}: error: cannot read file")
