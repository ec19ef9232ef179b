"""Data-parallel `netc train` (runtime/distributed.py): the batch split over many devices, and one
job across processes.

JAX fixes its device count when it starts, so the multi-device runs are `netc train` commands in
ONE process started with XLA_FLAGS=--xla_force_host_platform_device_count=8 (eight CPU devices;
the commands run there one after another through click, as `netc` would: one interpreter start and
JAX import for all of them); the 1-device references run in this process (one CPU device). Two
processes on loopback talk through JAX's coordinator and gloo, the CPU collectives. Every
comparison is of the final checkpoint's tensors (params, state, optimizer state) read back with
netc's own checkpoint reader."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import netc

from netc.runtime.checkpoint import flatten, latest_checkpoint, load_checkpoint

# batch 64 (8 per device on 8), BatchNorm + Scale + ReLU (the batch's statistics are the global
# batch's; in TRAIN the three are one function, compiler/layers/norm.py batch_norm_affine),
# dropout (the step's randomness must not depend on the split), momentum (optimizer state), a
# test pass (the TEST net reads the replicated parameters and BatchNorm's running sums)
SPEC = """\
name: dp
layers:
  - name: digits
    type: Data
    top: [data, label]
    include: {phase: TRAIN}
    transform_param: {scale: 0.00390625}
    data_param: {source: "netc:digits/train", batch_size: 64, shuffle: true}
  - name: digits
    type: Data
    top: [data, label]
    include: {phase: TEST}
    transform_param: {scale: 0.00390625}
    data_param: {source: "netc:digits/test", batch_size: 50}
  - {name: ip1, type: InnerProduct, bottom: data, top: ip1,
     inner_product_param: {num_output: 16, weight_filler: {type: xavier}}}
  - {name: bn1, type: BatchNorm, bottom: ip1, top: ip1}
  - {name: scale1, type: Scale, bottom: ip1, top: ip1, scale_param: {bias_term: true}}
  - {name: relu1, type: ReLU, bottom: ip1, top: ip1}
  - {name: drop1, type: Dropout, bottom: ip1, top: ip1, dropout_param: {dropout_ratio: 0.2}}
  - {name: ip2, type: InnerProduct, bottom: ip1, top: ip2,
     inner_product_param: {num_output: 10, weight_filler: {type: xavier}}}
  - {name: accuracy, type: Accuracy, bottom: [ip2, label], top: accuracy, include: {phase: TEST}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip2, label], top: loss}
solver:
  base_lr: 0.1
  momentum: 0.9
  lr_policy: fixed
  test_iter: 1
  test_interval: 4
  display: 2
  max_iter: 8
  snapshot: 4
  random_seed: 3
"""

TOL = 1e-5


def forced(n: int) -> dict:
    return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def final(run_dir: Path, iteration: int = 8) -> dict[str, np.ndarray]:
    tree, meta = load_checkpoint(latest_checkpoint(run_dir))
    assert meta["iteration"] == iteration
    return flatten(tree)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    assert any(k.startswith("params/") for k in a)
    return max(float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max())
               for k in a)


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("spec") / "dp.yaml"
    p.write_text(SPEC)
    return p


# Runs `netc ARGS…` for each list of arguments in argv[1] (JSON) in this one process; prints
# [{rc, stdout, stderr}…] as JSON. An exception escaping a command is a traceback in its stderr.
DRIVER = """\
import json, sys, traceback
from click.testing import CliRunner
from netc.cli import main
results = []
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(main, args, prog_name="netc")
    err = r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        err += "Traceback (most recent call last):\\n" + "".join(
            traceback.format_exception(*r.exc_info))
    results.append({"rc": r.exit_code, "stdout": r.stdout, "stderr": err})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def eight(spec, tmp_path_factory) -> tuple[Path, dict]:
    """Every multi-device `netc train` of this file, in one process with eight CPU devices:
    {name: CompletedProcess} and the folder holding their run directories."""
    root = tmp_path_factory.mktemp("eight")
    lstm = root / "lstm.yaml"
    lstm.write_text(LSTM_SPEC)
    runs = {
        "d8": ["train", spec, "--out", root / "d8"],
        "d2": ["train", spec, "--out", root / "d2", "--devices", 2],
        "resume": ["train", spec, "--out", root / "resume", "--devices", 2, "--max-iter", 4],
        "split3": ["train", spec, "--out", root / "split3", "--devices", 3],
        "many": ["train", spec, "--out", root / "many", "--devices", 16],
        "lstm4": ["train", lstm, "--out", root / "lstm4", "--devices", 4],
    }
    argv = json.dumps([[str(a) for a in args] for args in runs.values()])
    r = subprocess.run([sys.executable, "-c", DRIVER, argv], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, **forced(8)))
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout.splitlines()[-1])
    return root, {name: subprocess.CompletedProcess(runs[name], d["rc"], d["stdout"], d["stderr"])
                  for name, d in zip(runs, done)}


@pytest.fixture(scope="module")
def one_device(spec, tmp_path_factory) -> Path:
    """The reference: 8 iterations on this process's single CPU device."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = netc("train", spec, "--out", out, "--devices", "1")
    assert r.returncode == 0, r.stderr
    assert "cpu (1 device)" in r.stdout and "per device" not in r.stdout
    return out


def test_eight_devices_equal_one(eight, one_device):
    """--devices 2 and all 8 devices give the 1-device parameters for the same global batch;
    the log says the global and per-device batch."""
    root, runs = eight
    ref = final(one_device)
    for name, n, per in (("d8", 8, 8), ("d2", 2, 32)):
        r = runs[name]
        assert r.returncode == 0, r.stderr
        assert f"cpu ({n} devices), batch 64 global = {per} per device" in r.stdout, r.stdout
        assert max_diff(final(root / name), ref) <= TOL
        doc = json.loads((root / name / "solver.json").read_text())
        assert doc["devices"] == n and doc["batch_per_device"] == per


def test_resume_on_another_device_count(spec, eight, one_device):
    """4 iterations on 2 devices, resumed to 8 on 1 device == 8 on 1 device straight."""
    root, runs = eight
    out = root / "resume"
    assert runs["resume"].returncode == 0, runs["resume"].stderr
    assert final(out, 4)
    r = netc("train", spec, "--resume", out, "--max-iter", 8)
    assert r.returncode == 0, r.stderr
    assert "trained on 2 devices, this run uses 1" in r.stderr
    assert max_diff(final(out), final(one_device)) <= TOL


def test_device_errors(eight):
    """A batch that does not split evenly, and more devices than there are: exit 1, a message
    saying what to do, nothing written."""
    root, runs = eight
    r = runs["split3"]
    assert r.returncode == 1, r.stderr
    assert "batch 64 does not divide over 3 devices" in r.stderr, r.stderr
    assert "--devices 4" in r.stderr and "Traceback" not in r.stderr
    r = runs["many"]
    assert r.returncode == 1, r.stderr
    assert "--devices 16: only 8 cpu devices available" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (root / "split3").exists() and not (root / "many").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_loopback(spec, one_device, tmp_path):
    """One job in two processes of 2 CPU devices each (4 devices, 16 samples per device):
    the same parameters as one process on one device; only process 0 writes and prints."""
    out = tmp_path / "run"
    port = _free_port()
    exe = Path(sys.executable).with_name("netc")
    env = dict(os.environ, **forced(2), NETC_DISTRIBUTED_TIMEOUT="120")
    # each process's output goes to files: a pipe read only after the other process finished
    # could fill, stall its writer, and with it the collectives both wait on
    logs = [(tmp_path / f"p{i}.out", tmp_path / f"p{i}.err") for i in (0, 1)]
    procs = []
    for i, (so, se) in enumerate(logs):
        with open(so, "w") as o, open(se, "w") as e:
            procs.append(subprocess.Popen(
                [str(exe), "train", str(spec), "--out", str(out), "--coordinator",
                 f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                stdin=subprocess.DEVNULL, stdout=o, stderr=e, env=env))
    try:
        for p in procs:
            p.wait(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = [(p.returncode, so.read_text(), se.read_text()) for p, (so, se) in zip(procs, logs)]
    for i, (rc, _so, se) in enumerate(results):
        assert rc == 0, f"process {i}: {se}"
    assert "cpu (4 devices in 2 processes), batch 64 global = 16 per device" in results[0][1]
    assert "Training" not in results[1][1] and "Iteration" not in results[1][1]
    assert max_diff(final(out), final(one_device)) <= TOL
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # not the lock
    assert names == ["dp_iter_4.json", "dp_iter_4.safetensors", "dp_iter_8.json",
                     "dp_iter_8.safetensors", "metrics.jsonl", "solver.json", "spec.yaml",
                     "tensorboard"], names
    assert len(list((out / "tensorboard").iterdir())) == 1  # one event file: process 0's


LSTM_SPEC = """\
name: lstm
layers:
  - name: text
    type: Data
    top: [data, label, cont]
    data_param: {source: "netc:hamlet", batch_size: 8, seq_len: 12, split: [0.0, 0.9]}
  - name: embed
    type: Embed
    bottom: data
    top: emb
    embed_param: {input_dim: 66, num_output: 8, bias_term: false,
                  weight_filler: {type: gaussian, std: 0.1}}
  - name: lstm
    type: LSTM
    bottom: [emb, cont]
    top: h
    recurrent_param: {num_output: 16, weight_filler: {type: xavier},
                      recurrent_weight_filler: {type: orthogonal}, bias_filler: {type: constant}}
  - {name: ip, type: InnerProduct, bottom: h, top: logits,
     inner_product_param: {num_output: 66, axis: 2, weight_filler: {type: xavier}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [logits, label], top: loss,
     softmax_param: {axis: 2}}
solver: {base_lr: 0.5, lr_policy: fixed, momentum: 0.9, display: 2, max_iter: 6, random_seed: 5}
"""


def test_time_major_inputs_and_carried_state(eight, tmp_path):
    """A time-major (T×N) text net whose LSTM carries its state from batch to batch: the batch is
    split on axis 1, the carry (N×H, replicated) is threaded exactly as on one device."""
    root, runs = eight
    r = netc("train", root / "lstm.yaml", "--out", tmp_path / "one")
    assert r.returncode == 0, r.stderr
    r = runs["lstm4"]
    assert r.returncode == 0, r.stderr
    assert "cpu (4 devices), batch 8 global = 2 per device" in r.stdout
    a, b = final(tmp_path / "one", 6), final(root / "lstm4", 6)
    assert {"state/lstm/carry_h", "state/lstm/carry_c"} <= a.keys()
    assert max_diff(a, b) <= TOL
