"""TensorBoard event files for a run: a Solver callback writing RUN_DIR/tensorboard/.

`netc train` adds it by default (`--no-tensorboard` opts out; `TrainConfig.tensorboard`); only
process 0 of a multi-host run writes, as for metrics.jsonl. What it shows is what metrics.jsonl
logs, built by the same functions (callbacks.train_record / test_record), step = the record's
`iter`:

    train/loss             the displayed loss (averaged over `average_loss` iterations)
    train/lr               the learning rate
    train/samples_per_s    throughput over the display interval (it_per_s × the global batch)
    train/teacher_prob     scheduled sampling's teacher-forcing probability, when there is one
    test/<output>          each scalar output of the TEST net (accuracy, loss...) after a test
    weights/<layer>/<role> histograms every N iterations (`--histograms N`), step = iterations
                           done (N, 2N, ...; 0 too, the initial weights)

Resume: the interrupted run may have written steps past the checkpoint the run resumes from
(iteration T). The new event file starts with TensorBoard's purge marker at T (a SessionLog
START: TensorBoard drops every value of step >= T read before it), then writes again what
metrics.jsonl keeps at T or later (the test at T), so each step shows once. A run trained
without TensorBoard gets its whole metrics.jsonl history written when it resumes with it.

The writer is tensorboardX (pure Python; numpy and protobuf). tensorboardX imports torch when
it is installed, only to accept torch tensors, which costs ~3 s and hundreds of MiB at every
start: `_summary_writer` keeps torch out of that import when nothing has imported it yet.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from netc.runtime.callbacks import Callback, Event, test_record, train_record
from netc.runtime.errors import RunError
from netc.runtime.rundir import TB_DIR

__all__ = ["TensorBoard"]


def _summary_writer():
    """tensorboardX's SummaryWriter class, imported without torch unless torch is loaded."""
    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # `import torch` raises ImportError; tensorboardX allows it
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise RunError(
            f"TensorBoard logging needs the tensorboardX package ({e}); install it "
            "(pip install tensorboardX) or train with --no-tensorboard"
        ) from None
    finally:
        if block and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


def _event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []


class TensorBoard(Callback):
    """Writes the run's scalars (and optional weight histograms) as TensorBoard event files."""

    def __init__(self, run_dir: Path, histograms: int = 0):
        self.dir = Path(run_dir) / TB_DIR
        self.histograms = int(histograms)
        self.writer: Any = None
        self.batch = 0

    def _open(self, solver) -> Any:
        """The writer, created at the first event that writes (a failure then stops the run
        cleanly): purge marker and history replay on resume, initial histograms."""
        if self.writer is not None:
            return self.writer
        if self.dir.is_symlink() or (self.dir.exists() and not self.dir.is_dir()):
            raise RunError(
                f"{self.dir}: cannot write the TensorBoard events: it is "
                f"{'a symbolic link' if self.dir.is_symlink() else 'not a directory'}"
            )
        writer_cls = _summary_writer()
        start, earlier = solver.iter, _event_files(self.dir)
        self.batch = solver.batch_size
        # an absolute path: tensorboardX reads a "gs:" or "s3:" prefix as cloud storage; the
        # suffix orders this session's file after the earlier ones written in the same second
        self.writer = writer_cls(
            str(self.dir.resolve()),
            purge_step=start if earlier else None,
            flush_secs=10,
            filename_suffix=f".{len(earlier)}",
        )
        since = start if earlier else 0
        for rec in getattr(solver, "history", ()):
            if rec.get("iter", 0) >= since and rec.get("event") in ("train", "test"):
                self._write(rec["event"], rec)
        if self.histograms and start % self.histograms == 0:
            self._histograms(solver, start)
        return self.writer

    def _write(self, kind: str, rec: dict) -> None:
        it = rec["iter"]
        if kind == "test":
            for name, v in rec["metrics"].items():
                self.writer.add_scalar(f"test/{name}", math.nan if v is None else v, it)
            return
        self.writer.add_scalar("train/loss", rec["loss"], it)
        self.writer.add_scalar("train/lr", rec["lr"], it)
        self.writer.add_scalar("train/samples_per_s", rec["it_per_s"] * self.batch, it)
        if "teacher_prob" in rec:
            self.writer.add_scalar("train/teacher_prob", rec["teacher_prob"], it)

    def _histograms(self, solver, step: int) -> None:
        for layer, roles in solver.host_params().items():
            for role, v in roles.items():
                self.writer.add_histogram(f"weights/{layer}/{role}", v.reshape(-1), step)

    def on_start(self, solver, e: Event) -> None:
        self._open(solver)

    def on_iteration(self, solver, e: Event) -> None:
        done = e.iter + 1
        if self.histograms and done % self.histograms == 0:
            self._open(solver)
            self._histograms(solver, done)

    def on_train(self, solver, e: Event) -> None:
        self._open(solver)
        self._write("train", train_record(e))

    def on_test(self, solver, e: Event) -> None:
        self._open(solver)
        self._write("test", test_record(e))
        self.writer.flush()

    def _flush(self, solver, e: Event) -> None:
        if self.writer is not None:
            self.writer.flush()

    on_snapshot = on_stop = on_done = _flush

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
