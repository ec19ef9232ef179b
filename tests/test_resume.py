"""Interrupting `netc train` — SIGKILL mid-run, SIGKILL while a checkpoint is being written,
SIGINT / SIGTERM, a diverging loss — and resuming it bit-identically. The runs that are
interrupted are real processes; the reference run, the resumes and the error cases run the command
in-process (so a resume is also checked across processes: killed there, finished here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MLP, ROOT, netc

from netc.runtime.checkpoint import (
    flatten,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    verify_checkpoint,
)

NETC = Path(sys.executable).with_name("netc")
# tests/specs/mlp.yaml (snapshot every 100, test every 500) cut to 500 of its 1,500 iterations:
# checkpoints at 100..400 to kill after and resume from, a test pass at 0 and 500
ITERS = 500


def final_tensors(run_dir: Path) -> dict[str, np.ndarray]:
    tree, meta = load_checkpoint(latest_checkpoint(run_dir))
    assert meta["iteration"] == ITERS
    return flatten(tree)


def events(run_dir: Path) -> list[dict]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("time", None)
        for k in (
            "it_per_s",
            "wall_s",
            "train_s",
            "eval_s",
            "samples_per_s",
            "path",
            "first_step_s",
            "steady_s",
            "steady_iters",
            "trained",
        ):  # timings of this process
            r.pop(k, None)
    return recs


def assert_identical(a: Path, b: Path) -> None:
    ta, tb = final_tensors(a), final_tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not np.array_equal(ta[k], tb[k])]
    assert not different, f"tensors differ after resume: {different}"
    assert {k for k in ta if k.startswith("params/")} == {
        "params/ip1/weight",
        "params/ip1/bias",
        "params/ip2/weight",
        "params/ip2/bias",
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run (seed 7 from the spec's random_seed)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = netc("train", MLP, "--out", out, "--max-iter", ITERS)
    assert r.returncode == 0, r.stderr
    return out


def wait_for(predicate, proc, timeout=120.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"netc exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def start(*args, env=None):
    cmd = [str(NETC), *map(str, args)]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **(env or {})),
    )


def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path, reference):
    out = tmp_path / "run"
    proc = start("train", MLP, "--out", out, "--max-iter", ITERS)
    wait_for(lambda: list_checkpoints(out), proc, what="the first checkpoint")
    proc.kill()  # SIGKILL
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(latest_checkpoint(out))[1]["iteration"]
    assert 100 <= killed_at < ITERS
    r = netc("train", MLP, "--resume", out)  # the run's max_iter (ITERS) is kept
    assert r.returncode == 0, r.stderr
    assert f"at iteration {killed_at}" in r.stdout
    assert_identical(out, reference)
    # the metrics log reads as if the run had never stopped
    assert events(out) == events(reference)


KILL_WHILE_WRITING = """
import os, signal, sys
import netc.runtime.checkpoint as ck
real = ck.write_bytes_atomic
def write(path, data):
    if str(path).endswith("mlp_iter_300.safetensors"):
        tmp = ck._tmp_name(ck.Path(path))
        with open(tmp, "wb") as f:
            f.write(bytes(data)[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, data)
ck.write_bytes_atomic = write
from netc.cli import main
sys.argv = ["netc"] + sys.argv[1:]
main()
"""


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, reference):
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL_WHILE_WRITING,
            "train",
            str(MLP),
            "--out",
            str(out),
            "--max-iter",
            str(ITERS),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert any(p.name.startswith(".mlp_iter_300.safetensors.tmp-") for p in out.iterdir())
    assert not (out / "mlp_iter_300.json").exists()
    last = latest_checkpoint(out)
    assert last.name == "mlp_iter_200.json" and verify_checkpoint(last)
    r = netc("train", MLP, "--resume", out)
    assert r.returncode == 0, r.stderr
    assert "at iteration 200" in r.stdout
    assert_identical(out, reference)


def test_resume_refuses_a_changed_architecture(tmp_path, reference):
    spec = tmp_path / "wider.yaml"
    spec.write_text(MLP.read_text().replace("num_output: 32", "num_output: 48"))
    before = sorted(p.name for p in reference.iterdir())
    r = netc("train", spec, "--resume", reference)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot resume from" in r.stderr
    assert "layer 'ip1': weight is 32×784 in the checkpoint, 48×784 in the spec" in r.stderr
    assert "layer 'ip2': weight is 10×32 in the checkpoint, 10×48 in the spec" in r.stderr
    # a new layer and another solver type
    solver = tmp_path / "adam.yaml"
    solver.write_text("type: Adam\nbase_lr: 0.001\nlr_policy: fixed\nmax_iter: 10\n")
    r = netc("train", MLP, "--resume", reference, "--solver", solver)
    assert r.returncode == 1
    assert "solver type: SGD in the checkpoint, Adam in the spec" in r.stderr
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        MLP.read_text().replace(
            "  - {name: relu1,",
            "  - {name: sig, type: Sigmoid, bottom: ip1, top: ip1}\n  - {name: relu1,",
        )
    )
    r = netc("train", extra, "--resume", reference)
    assert r.returncode == 1
    assert "layer 'sig' (Sigmoid) is new in the spec" in r.stderr
    assert sorted(p.name for p in reference.iterdir()) == before  # nothing touched


def test_resume_last_extends_a_finished_run(tmp_path):
    r = netc("train", MLP, "--max-iter", 20, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("mlp-")
    r = netc("train", MLP, "--resume", "last", cwd=tmp_path)
    assert r.returncode == 0 and "Nothing to do" in r.stdout  # its max_iter (20) is kept
    r = netc("train", MLP, "--resume", "last", "--max-iter", 30, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "at iteration 20" in r.stdout
    assert load_checkpoint(latest_checkpoint(runs[0]))[1]["iteration"] == 30
    r = netc("train", MLP, "--resume", "last", "--weights", "x.json", cwd=tmp_path)
    assert r.returncode == 1 and "exclude each other" in r.stderr
    r = netc("train", MLP, "--resume", tmp_path / "nowhere", cwd=tmp_path)
    assert r.returncode == 1 and "no such run directory" in r.stderr


def test_nonfinite_loss_stops_cleanly_without_a_snapshot(tmp_path):
    out = tmp_path / "run"
    r = netc("train", MLP, "--solver", ROOT / "tests/specs/solvers/nan.yaml", "--out", out)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert "error: the loss is nan at iteration 1: training diverged" in r.stderr
    assert "no checkpoint was written" in r.stderr
    # snapshot: 1 in that solver, but the state after iteration 1 already gives NaN: not saved
    assert list_checkpoints(out) == []
    stop = [e for e in events(out) if e["event"] == "stop"]
    assert stop and stop[0]["iter"] == 1 and stop[0]["reason"] == "diverged"


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    """A learning rate that diverges after a few good steps: every checkpoint left is finite."""
    solver = tmp_path / "late.yaml"
    solver.write_text(
        "base_lr: 1.0\nlr_policy: exp\ngamma: 20.0\nmax_iter: 100\nsnapshot: 1\ndisplay: 1\n"
    )
    out = tmp_path / "run"
    r = netc("train", MLP, "--solver", solver, "--out", out)
    assert r.returncode == 3, (r.stdout, r.stderr)
    stop = [e for e in events(out) if e["event"] == "stop"][0]
    # Either the loss or (SoftmaxWithLoss caps each term at −log FLT_MIN) a parameter goes
    # non-finite first; both messages name the iteration.
    assert (
        f"at iteration {stop['iter']}" in r.stderr
        or f"not finite after iteration {stop['iter']}" in r.stderr
    ), r.stderr
    cks = list_checkpoints(out)
    assert cks, "the first steps were fine and should have been snapshotted"
    assert "the last good checkpoint is" in r.stderr
    for ck in cks:
        tree, meta = load_checkpoint(ck)
        assert meta["iteration"] < stop["iter"]
        assert all(np.isfinite(v).all() for v in flatten(tree).values())


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_the_step_snapshots_and_exits(tmp_path, sig, code):
    out = tmp_path / "run"
    proc = start("train", MLP, "--out", out, "--max-iter", 10_000_000)
    metrics = out / "metrics.jsonl"
    wait_for(
        lambda: metrics.exists() and '"train"' in metrics.read_text(),
        proc,
        what="the first display",
    )
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, (stdout, stderr)
    assert "Traceback" not in stderr
    stop = [e for e in events(out) if e["event"] == "stop"][-1]
    assert stop["reason"] == signal.Signals(sig).name
    last = latest_checkpoint(out)
    assert last is not None and load_checkpoint(last)[1]["iteration"] == stop["iter"] > 0
    assert f"resume with: netc train {MLP} --resume {out}" in stdout
