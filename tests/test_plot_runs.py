"""`netc plot` and `netc runs` on run directories made by short in-process training runs (one
module fixture: a finished run, one stopped by a signal-like request, one that diverged)."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import MLP, mlp_solver, netc

from netc.runtime.callbacks import Callback, Diverged
from netc.runtime.commands.plot import DPI, LEGEND_H, PANEL_SIZE
from netc.runtime.rundir import RunLock
from netc.runtime.trainer import TrainConfig, train

SOLVER = mlp_solver(30)  # mlp.yaml's update rule, short intervals
BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # tab10's first two colours: run 1, run 2


class At(Callback):
    """Calls `act(solver)` after iteration `it` (0-based)."""

    def __init__(self, it, act):
        self.it, self.act = it, act

    def on_iteration(self, solver, e):
        if e.iter == self.it:
            self.act(solver)


def _diverge(solver):
    raise Diverged("made to diverge by the test")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    solver, patient = root.parent / "solver.yaml", root.parent / "early.yaml"
    solver.write_text(SOLVER)
    # stops at the test at 10: accuracy has not risen by 0.9 over the test at 0
    patient.write_text(SOLVER + "early_stopping: {metric: accuracy, patience: 1, min_delta: 0.9}\n")
    made = {}
    for name, cbs, extra in [
        ("a", [], {}),
        ("b", [At(14, lambda s: s.request_stop("SIGINT"))], {}),
        ("c", [At(3, _diverge)], {"tensorboard": False}),
        ("d", [], {"solver": str(patient)}),
    ]:
        cfg = {"spec": str(MLP), "solver": str(solver), "out": str(root / name), **extra}
        made[name] = train(TrainConfig(**cfg), out=io.StringIO(), err=io.StringIO(), callbacks=cbs)
    assert made == {"a": 0, "b": 130, "c": 3, "d": 0}
    return root


def records(run_dir: Path, kind: str) -> list[dict]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["event"] == kind]


def png(path: Path) -> tuple[int, int, np.ndarray]:
    """(width, height, RGB pixels) of a PNG, checking its signature and IHDR by hand."""
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape == (height, width, 3)
    return width, height, pixels


def has_colour(pixels: np.ndarray, rgb, tol=8, at_least=200) -> bool:
    close = np.abs(pixels.astype(int) - np.array(rgb)).max(axis=-1) <= tol
    return int(close.sum()) >= at_least


def expected_size(panels: int) -> tuple[int, int]:
    cols = 1 if panels == 1 else 2
    rows = -(-panels // cols)
    return (round(PANEL_SIZE[0] * cols * DPI), round((PANEL_SIZE[1] * rows + LEGEND_H) * DPI))


def test_plot_one_run(runs, tmp_path):
    out = tmp_path / "curves.png"
    r = netc("plot", runs / "a", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "3 panels, 1 run" in r.stderr  # loss, accuracy, lr
    w, h, pixels = png(out)
    assert (w, h) == expected_size(3)
    assert has_colour(pixels, BLUE) and not has_colour(pixels, ORANGE)


def test_plot_two_runs_chosen_metrics_log_y(runs, tmp_path):
    out = tmp_path / "loss.png"
    r = netc(
        "plot",
        runs / "a",
        runs / "b",
        "-o",
        out,
        "--metric",
        "loss",
        "--metric",
        "accuracy",
        "--log-y",
    )
    assert r.returncode == 0, r.stderr
    assert "2 panels, 2 runs" in r.stderr
    w, h, pixels = png(out)
    assert (w, h) == expected_size(2)
    assert has_colour(pixels, BLUE) and has_colour(pixels, ORANGE)


def test_plot_errors(runs, tmp_path):
    out = tmp_path / "x.png"
    r = netc("plot", runs / "a", "-o", out, "--metric", "acuracy")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (
        "error: --metric acuracy: no such quantity in this run (did you mean 'accuracy'?); "
        "choose from loss, accuracy, lr" in r.stderr
    )
    r = netc("plot", runs / "a", runs, "-o", out)  # the folder of runs is not itself a run
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"error: {runs}: not a run directory (no metrics.jsonl" in r.stderr
    r = netc("plot", runs / "nope", "-o", out)
    assert r.returncode == 1 and f"error: {runs / 'nope'}: no such run directory" in r.stderr
    assert not out.exists()


def test_runs_json(runs):
    r = netc("runs", runs, "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)["runs"]
    assert [x["name"] for x in listed] == ["a", "b", "c", "d"]  # by start time
    a, b, c, d = listed
    assert [x["status"] for x in listed] == [
        "finished",
        "interrupted (SIGINT), resumable",
        "diverged",
        "early-stopped",
    ]
    its = [(x["iterations"], x["max_iter"]) for x in listed]
    assert its == [(30, 30), (15, 30), (3, 30), (10, 30)]
    assert {x["spec"] for x in listed} == {"mlp"}
    for x in listed:  # the best accuracy and the last loss, as metrics.jsonl has them
        tests = records(runs / x["name"], "test")
        top = max(tests, key=lambda t: (t["metrics"]["accuracy"], -t["iter"]))
        assert x["best"] == {
            "metric": "accuracy",
            "value": top["metrics"]["accuracy"],
            "iter": top["iter"],
        }
        assert x["last_loss"] == records(runs / x["name"], "train")[-1]["loss"]
    assert a["wall_s"] == records(runs / "a", "done")[0]["wall_s"]
    assert not (runs / "c" / "tensorboard").exists() and (runs / "a" / "tensorboard").is_dir()


def test_runs_table_and_running(runs, tmp_path):
    lock = RunLock(runs / "a")  # a trainer using run a now
    try:
        r = netc("runs", runs)
    finally:
        lock.release()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == [
        "run",
        "spec",
        "started",
        "iter",
        "best",
        "test",
        "loss",
        "status",
        "wall",
    ]
    assert [ln.split()[0] for ln in lines[1:]] == ["a", "b", "c", "d"]
    assert "30/30" in lines[1] and lines[1].split()[-2] == "running"
    assert "15/30" in lines[2] and "interrupted (SIGINT), resumable" in lines[2]
    assert "diverged" in lines[3] and "early-stopped" in lines[4]
    assert " running " not in netc("runs", runs).stdout  # the lock is released
    r = netc("runs", tmp_path)
    assert r.returncode == 0 and r.stdout == f"no runs under {tmp_path}\n"
    r = netc("runs", tmp_path / "nope")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"error: {tmp_path / 'nope'}: no such directory" in r.stderr
