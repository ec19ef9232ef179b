"""TensorBoard event files (runtime/tensorboard.py), read back with TensorBoard's own reader
(its EventAccumulator: what `tensorboard --logdir` shows, resume purging included) and compared
with metrics.jsonl and the checkpoints. One module fixture: a short run with weight
histograms, "killed" after its last iteration (its final checkpoint removed), then resumed."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import MLP, mlp_solver, netc

from netc.runtime.callbacks import Event
from netc.runtime.checkpoint import load_checkpoint
from netc.runtime.errors import RunError
from netc.runtime.tensorboard import TensorBoard
from netc.runtime.trainer import TrainConfig, train

SOLVER = mlp_solver(20)  # mlp.yaml's update rule, short intervals (batch 32)
BATCH = 32


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    solver = root / "solver.yaml"
    solver.write_text(SOLVER)
    run = root / "run"
    cfg = {"spec": str(MLP), "solver": str(solver), "histograms": 10}
    assert train(TrainConfig(out=str(run), **cfg), out=io.StringIO(), err=io.StringIO()) == 0
    first = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    for p in run.glob("mlp_iter_20.*"):  # as if killed before the last checkpoint was written
        p.unlink()
    assert train(TrainConfig(resume=str(run), **cfg), out=io.StringIO(), err=io.StringIO()) == 0
    return run, first


def accumulator(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import (
        HISTOGRAMS,
        SCALARS,
        EventAccumulator,
    )

    acc = EventAccumulator(str(path), size_guidance={SCALARS: 0, HISTOGRAMS: 0})  # 0: keep all
    acc.Reload()
    return acc


def scalars(acc) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """What metrics.jsonl says, as the tags the callback writes."""
    out: dict[str, list] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["event"] == "train":
            for tag, v in (
                ("loss", r["loss"]),
                ("lr", r["lr"]),
                ("samples_per_s", r["it_per_s"] * BATCH),
            ):
                out.setdefault(f"train/{tag}", []).append((r["iter"], v))
        elif r["event"] == "test":
            for k, v in r["metrics"].items():
                out.setdefault(f"test/{k}", []).append((r["iter"], v))
    return out


def test_scalars_equal_metrics_jsonl_across_a_resume(board):
    run, first = board
    files = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(first) == 1 and len(files) == 2 and files[0] == first[0]  # appended, not rewritten
    want = expected_scalars(run)
    assert [s for s, _ in want["train/loss"]] == [0, 5, 10, 15]
    assert [s for s, _ in want["test/accuracy"]] == [0, 10, 20]
    got = scalars(accumulator(run / "tensorboard"))
    assert (
        sorted(got)
        == sorted(want)
        == ["test/accuracy", "test/loss", "train/loss", "train/lr", "train/samples_per_s"]
    )
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag  # each step once
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    # the interrupted session's file alone holds the steps the resume purged and wrote again
    old = scalars(accumulator(first[0]))
    assert [s for s, _ in old["train/loss"]] == [0, 5, 10, 15]
    assert [s for s, _ in old["test/accuracy"]] == [0, 10, 20]


def test_weight_histograms(board):
    run, _ = board
    acc = accumulator(run / "tensorboard")
    tags = sorted(acc.Tags()["histograms"])
    assert tags == [
        "weights/ip1/bias",
        "weights/ip1/weight",
        "weights/ip2/bias",
        "weights/ip2/weight",
    ]
    ckpt = {it: load_checkpoint(run / f"mlp_iter_{it}.json")[0]["params"] for it in (10, 20)}
    for tag in tags:
        _, layer, role = tag.split("/")
        events = acc.Histograms(tag)
        assert [e.step for e in events] == [0, 10, 20], tag  # every 10 iterations, once each
        for e in events:
            h = e.histogram_value
            assert h.num == ckpt[10][layer][role].size
            if e.step in ckpt:  # the parameters after that many iterations
                v = np.asarray(ckpt[e.step][layer][role], dtype=np.float64)
                assert (h.min, h.max) == pytest.approx((v.min(), v.max()), rel=1e-6)
                assert h.sum == pytest.approx(v.sum(), rel=1e-4, abs=1e-5)


def test_no_tensorboard_flag(board, tmp_path):
    run, _ = board
    out = tmp_path / "quiet"
    r = netc(
        "train",
        MLP,
        "--solver",
        run / "solver.yaml",
        "--max-iter",
        1,
        "--out",
        out,
        "--no-tensorboard",
    )
    assert r.returncode == 0, r.stderr
    assert (out / "metrics.jsonl").exists() and not (out / "tensorboard").exists()


def test_refuses_a_linked_folder(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "tensorboard")
    tb = TensorBoard(tmp_path)
    with pytest.raises(
        RunError, match="tensorboard: cannot write the TensorBoard events: it is a symbolic link"
    ):
        tb.on_start(None, Event("start", 0, {}))
    assert not os.listdir(tmp_path / "elsewhere")


def test_a_fresh_run_refuses_leftover_events(tmp_path):
    (tmp_path / "tensorboard").mkdir()  # events of some earlier run would mix with the new one's
    r = netc("train", MLP, "--max-iter", 1, "--out", tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"--out {tmp_path}: the directory already holds tensorboard" in r.stderr
