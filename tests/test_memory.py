"""The training-memory estimate (compiler/memory.py): a hand-computed LeNet, the check errors for
nets no machine holds, the warning above this machine's memory, and `netc train` refusing before
it allocates anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from netc.cli import main
from netc.compiler import memory
from netc.compiler.report import check_file

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "models" / "lenet.yaml"
MLP = Path(__file__).parent / "specs" / "mlp.yaml"


def _spec(tmp_path: Path, text: str, name: str = "net.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _ip(name: str, bottom: str, n: int) -> str:
    return (f"  - {{name: {name}, type: InnerProduct, bottom: {bottom}, top: {name}, "
            f"inner_product_param: {{num_output: {n}}}}}\n")


def _check(*args):
    return CliRunner().invoke(main, ["check", *args])


# --- the estimate -------------------------------------------------------------------------------

# LeNet's TRAIN net at batch 64, by hand (elements): data 64·1·28·28 = 50,176; label 64;
# conv1 64·20·24·24 = 737,280; pool1 64·20·12·12 = 184,320; conv2 64·50·8·8 = 204,800;
# pool2 64·50·4·4 = 51,200; ip1 64·500 = 32,000 and relu1 in place on it: one more buffer, 32,000;
# ip2 64·10 = 640; loss 1. Kept for the backward: all of these plus twice the largest (conv1).
LENET_PARAMS = 20 * 25 + 20 + 50 * 20 * 25 + 50 + 500 * 800 + 500 + 10 * 500 + 10  # 431,080
LENET_TOPS = 50_176 + 64 + 737_280 + 184_320 + 204_800 + 51_200 + 32_000 + 32_000 + 640 + 1
LENET_ACTS = 4 * (LENET_TOPS + 2 * 737_280)
LENET_INPUTS = 4 * (50_176 + 64)


def _lenet_plan():
    spec, plan = check_file(str(LENET), phase="TRAIN")
    assert not spec.diagnostics.errors
    return spec, plan


def test_lenet_estimate_matches_the_hand_computation():
    _, plan = _lenet_plan()
    assert LENET_PARAMS == 431_080
    sgd = memory.estimate(plan, "SGD")
    assert (sgd.batch, sgd.histories) == (64, 1)
    assert sgd.params == sgd.gradients == sgd.solver_state == 4 * LENET_PARAMS
    assert sgd.layer_state == 0
    assert sgd.activations == LENET_ACTS
    assert sgd.inputs == LENET_INPUTS
    assert sgd.total == 3 * 4 * LENET_PARAMS + LENET_ACTS + LENET_INPUTS == 16_442_084
    assert sgd.activation_layer == ("conv1", 4 * 737_280)
    assert sgd.param_layer == ("ip1", 4 * (500 * 800 + 500))
    # the optimizer state follows the solver registry: Adam keeps two histories per parameter
    adam = memory.estimate(plan, "Adam")
    assert adam.histories == 2 and adam.solver_state == 2 * sgd.solver_state
    assert adam.total - sgd.total == 4 * LENET_PARAMS
    # iter_size 2: a gradient accumulator and two micro-batches of input
    acc = memory.estimate(plan, "SGD", iter_size=2)
    assert acc.gradients == 2 * sgd.gradients and acc.inputs == 2 * LENET_INPUTS


def test_batchnorm_statistics_are_layer_state_and_a_symbolic_batch_is_per_sample(tmp_path):
    path = _spec(tmp_path, "name: bn\nlayers:\n"
                 "  - {name: data, type: Input, top: data, input_param: {shape: {dim: [-1, 3, 8, 8]}}}\n"
                 "  - {name: bn, type: BatchNorm, bottom: data, top: data}\n")
    spec, plan = check_file(path, phase="TRAIN")
    est = memory.estimate(plan, "SGD")
    assert est.batch is None and "per sample" in est.summary()
    assert est.params == 0 and est.layer_state == 4 * (3 + 3 + 1)  # mean, variance, scale factor
    assert est.activations == 4 * (192 + 192 + 2 * 192)  # data, data after bn, 2 × the largest


def test_check_prints_the_estimate_and_reports_it_in_json():
    text = _check(str(LENET))
    assert text.exit_code == 0, text.output
    assert "training memory ≈ 15.7 MiB at batch 64: params 1.6 MiB, solver state 1.6 MiB (SGD)" \
        in text.output
    doc = json.loads(_check("--format", "json", str(LENET)).output)["specs"][0]
    mem = doc["memory"]
    assert mem["total"] == 16_442_084 and mem["batch"] == 64 and mem["per_sample"] is False
    assert mem["activations"] == LENET_ACTS and mem["solver_type"] == "SGD"
    assert mem["largest_activations"] == {"layer": "conv1", "bytes": 4 * 737_280}


# --- errors: what no machine holds ----------------------------------------------------------------

def test_a_trillion_parameter_training_net_is_an_error_in_check(tmp_path):
    path = _spec(tmp_path, "name: huge\nlayers:\n"
                 "  - {name: data, type: Input, top: [data, label], input_param: "
                 "{shape: [{dim: [1, 1000000]}, {dim: [1]}]}}\n"
                 + _ip("ip", "data", 1_000_000)
                 + "  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}\n"
                 "solver: {base_lr: 0.01, lr_policy: fixed, type: Adam}\n")
    res = _check(path)
    assert res.exit_code == 1, res.output
    assert "more than any machine netc runs on holds (4.0 TiB)" in res.output
    assert "training memory ≈ 14.6 TiB at batch 1" in res.output  # 4·10^12 B · (1 + 1 + 2)
    assert "shrink layer 'ip', whose parameters dominate" in res.output
    assert f"{path}:4:5: error" in res.output  # located at the layer that dominates


def test_total_parameters_beyond_max_elements_are_an_error_even_for_a_deploy_net(tmp_path):
    # two 6·10^11 blobs: each under MAX_ELEMENTS (2^40), together over it
    path = _spec(tmp_path, "name: wide\nlayers:\n"
                 "  - {name: data, type: Input, top: data, input_param: {shape: {dim: [1, 600000]}}}\n"
                 + _ip("a", "data", 1_000_000) + _ip("b", "data", 1_000_000))
    res = _check(path)
    assert res.exit_code == 1, res.output
    assert "the net has 1,200,002,000,000 parameters, more than netc allows" in res.output


# --- the warning above this machine's memory ---------------------------------------------------------

def test_warning_above_machine_memory_names_the_batch_and_the_layer(monkeypatch):
    monkeypatch.setattr(memory, "machine_memory", lambda: 10 * 2**20)
    spec, _ = check_file(str(LENET))
    (warning,) = [d for d in spec.diagnostics.warnings if "memory" in d.message]
    assert "training memory ≈ 15.7 MiB at batch 64" in warning.message
    assert "more than this machine's memory (10.0 MiB)" in warning.message
    # (10 MiB - 4·3·431,080 B fixed) / ((LENET_ACTS + LENET_INPUTS) / 64) B per sample = 30.2
    assert "reduce the batch size (64; at most 30 would fit)" in warning.message
    assert "layer 'conv1' holds the largest activations (2.8 MiB)" in warning.message
    line = next(i for i, t in enumerate(LENET.read_text().splitlines(), 1) if "batch_size: 64" in t)
    assert warning.line == line  # at the batch_size to change
    assert not spec.diagnostics.errors
    monkeypatch.setattr(memory, "machine_memory", lambda: 2**30)
    spec, _ = check_file(str(LENET))
    assert not [d for d in spec.diagnostics.warnings if "memory" in d.message]


def test_a_deploy_net_is_held_to_its_inference_memory(monkeypatch, tmp_path):
    path = _spec(tmp_path, "name: d\nlayers:\n"
                 "  - {name: data, type: Input, top: data, input_param: {shape: {dim: [1, 1000]}}}\n"
                 + _ip("fc", "data", 1000))
    monkeypatch.setattr(memory, "machine_memory", lambda: 2**20)  # 1 MiB; fc holds 3.8 MiB
    spec, _ = check_file(path)
    (warning,) = spec.diagnostics.warnings
    assert warning.message.startswith("inference memory ≈ 3.8 MiB at batch 1: params 3.8 MiB, "
                                      "activations 7.8 KiB, inputs 3.9 KiB; more than this machine's")
    assert "shrink layer 'fc'" in warning.message and warning.line == 4


def test_a_three_billion_element_blob_is_warned_about(monkeypatch, tmp_path):
    # 3·10^9 floats in the input alone: 11.2 GiB, again after the ReLU and as the fed batch
    path = _spec(tmp_path, "name: wide\nlayers:\n"
                 "  - {name: data, type: Input, top: data, input_param: "
                 "{shape: {dim: [3, 1000000000]}}}\n"
                 "  - {name: relu, type: ReLU, bottom: data, top: data}\n")
    monkeypatch.setattr(memory, "machine_memory", lambda: 16 * 2**30)
    res = _check(path)
    assert res.exit_code == 0
    assert f"{path}:3:5: warning: inference memory ≈ 33.5 GiB at batch 3" in res.output
    assert "reduce the batch size (3; at most 1 would fit); layer 'data' holds the largest " \
        "activations (11.2 GiB)" in res.output


# --- netc train refuses before allocating -----------------------------------------------------------

def test_train_refuses_before_allocating(monkeypatch, tmp_path):
    from netc.runtime.errors import RunError
    from netc.runtime.trainer import Solver, TrainConfig, train

    def allocate(self):
        raise AssertionError("the trainer allocated the net before refusing it")

    monkeypatch.setattr(Solver, "_build_nets", allocate)
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 400 * 2**10)
    out = tmp_path / "run"
    with pytest.raises(RunError) as e:
        train(TrainConfig(spec=str(MLP), out=str(out), max_iter=5, progress=False))
    message = str(e.value)
    # params 25,450·4 B, ×3 with gradients and SGD's history; tops data 32·784, label 32, ip1 32·32
    # (+ one more buffer for relu1/drop1 in place), ip2 32·10, loss 1, + 2 × data; inputs again
    acts, inputs = 32 * 784 + 32 + 2 * 32 * 32 + 320 + 1 + 2 * 32 * 784, 32 * 784 + 32
    assert 3 * 4 * 25_450 + 4 * (acts + inputs) == 716_540  # 699.7 KiB
    assert message.startswith(f"{MLP}: training memory ≈ 699.7 KiB at batch 32")
    assert "more than the 400.0 KiB this run can use" in message
    assert "reduce the batch size (32; at most" in message and "layer 'digits'" in message
    assert not out.exists() or not any(out.iterdir())


def test_train_cli_prints_the_refusal(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 2**10)
    res = CliRunner().invoke(main, ["train", str(MLP), "--out", str(tmp_path / "r"), "--max-iter", "1"])
    assert res.exit_code == 1
    assert "this run can use, so training would run out of memory" in res.output
    assert "Traceback" not in res.output
