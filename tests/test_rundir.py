"""The run directory is the user's (issue 8 §4, §5): one trainer at a time, nothing of the user's
overwritten, no link followed out of it, I/O failures reported with path and cause, and a damaged
newest checkpoint never skipped silently."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import MLP, netc

from netc.runtime.rundir import RunLock


def events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == kind]


def clean(r, code: int = 1) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    return r.stderr


def test_a_second_trainer_on_the_same_run_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lock = RunLock(run)  # as a running `netc train` holds it
    try:
        err = clean(netc("train", MLP, "--out", run, "--max-iter", 1))
        assert f"{run}: another netc train (pid {os.getpid()}) is using this run directory" in err
        assert not (run / "metrics.jsonl").exists()
    finally:
        lock.release()
    clean(netc("train", MLP, "--out", run, "--max-iter", 1), code=0)


def test_a_killed_trainer_leaves_no_stuck_lock(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from netc.runtime.rundir import RunLock
        RunLock(Path({str(tmp_path)!r}))
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(Exception, match="another netc train"):
        RunLock(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    RunLock(tmp_path).release()  # the kernel dropped the dead process's lock


def test_files_the_user_had_are_never_overwritten(tmp_path):
    # --out is the spec's own folder, the spec is called spec.yaml: refused, nothing touched
    folder = tmp_path / "exp"
    folder.mkdir()
    spec = folder / "spec.yaml"
    shutil.copyfile(MLP, spec)
    before = spec.read_bytes()
    err = clean(netc("train", spec, "--out", folder, "--max-iter", 1))
    assert f"--out {folder}: the directory already holds spec.yaml, which a new run would " \
           "overwrite" in err
    assert spec.read_bytes() == before
    # a user's own metrics.jsonl and solver.json: the same
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text("mine\n")
    (other / "notes.txt").write_text("mine too\n")
    err = clean(netc("train", MLP, "--out", other, "--max-iter", 1))
    assert "already holds metrics.jsonl" in err and (other / "metrics.jsonl").read_text() == "mine\n"


def test_no_link_out_of_the_run_directory_is_followed(tmp_path, trained_mlp_run):
    run = tmp_path / "run"
    shutil.copytree(trained_mlp_run, run)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(outside)
    r = netc("train", MLP, "--resume", run, "--max-iter", 210)
    clean(r, code=0)
    assert outside.read_text() == "precious\n"  # the link was replaced, not written through
    assert not (run / "metrics.jsonl").is_symlink()


def test_a_failed_checkpoint_write_reports_path_and_cause_and_keeps_the_last(tmp_path, monkeypatch):
    import errno

    from netc.runtime import checkpoint as ckpt

    real = ckpt.save_checkpoint
    calls = []

    def full_disk(run_dir, stem, *args, **kw):
        calls.append(stem)
        if len(calls) > 1:  # the first snapshot is written; the disk is full for the second
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(run_dir, stem, *args, **kw)

    monkeypatch.setattr(ckpt, "save_checkpoint", full_disk)
    run = tmp_path / "run"
    err = clean(netc("train", MLP, "--out", run, "--max-iter", 250))
    assert f"cannot write checkpoint mlp_iter_200 in {run}: No space left on device; the " \
           f"previous checkpoint is kept: {run / 'mlp_iter_100.json'}" in err
    assert [e["iter"] for e in events(run, "snapshot")] == [100]  # no save that did not happen


def test_a_damaged_newest_checkpoint_is_reported_not_skipped_silently(tmp_path, trained_mlp_run):
    run = tmp_path / "run"
    shutil.copytree(trained_mlp_run, run)
    newest = run / "mlp_iter_200.safetensors"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    newest.write_bytes(bytes(data))
    want = f"warning: checkpoint {run / 'mlp_iter_200.json'} is damaged"
    r = netc("test", MLP, "--weights", run, "--iterations", 1)
    assert want in clean(r, code=0) and "using mlp_iter_100.json instead" in r.stderr
    r = netc("train", MLP, "--resume", run, "--max-iter", 110)
    assert want in clean(r, code=0) and "at iteration 100" in r.stdout
    warned = events(run, "warning")
    assert warned and "mlp_iter_200.json is damaged" in warned[0]["message"]


def test_checkpoints_record_the_software_that_wrote_them(tmp_path, trained_mlp_run):
    import jax

    from netc.runtime.checkpoint import latest_checkpoint, load_checkpoint

    meta = load_checkpoint(latest_checkpoint(trained_mlp_run))[1]
    assert meta["versions"]["jax"] == jax.__version__ and meta["versions"]["backend"] == "cpu"
    run = tmp_path / "run"
    shutil.copytree(trained_mlp_run, run)
    record = json.loads((run / "mlp_iter_200.json").read_text())
    record["meta"]["versions"]["jax"] = "0.0.1"
    (run / "mlp_iter_200.json").write_text(json.dumps(record))
    r = netc("train", MLP, "--resume", run, "--max-iter", 201)
    err = clean(r, code=0)
    assert f"jax 0.0.1 -> {jax.__version__}" in err and "not promised to be bitwise equal" in err


def test_warnings_of_a_separate_solver_file_are_shown(tmp_path):
    solver = tmp_path / "solver.yaml"
    solver.write_text("base_lr: 0.01\nlr_policy: fixed\nmax_iter: 1\ndebug_info: true\n")
    r = netc("train", MLP, "--solver", solver, "--out", tmp_path / "run")
    err = clean(r, code=0)
    assert f"{solver}:4:1: warning: debug_info: has no effect in netc" in err
