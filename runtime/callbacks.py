"""The Solver's events and the callbacks that consume them.

Every metric and event of a run flows through `Solver.emit(kind, iter, **data)`, which hands an
`Event` to each callback in order. A callback is any object with `__call__(solver, event)`;
subclass `Callback` to get one `on_<kind>(solver, event)` method per event kind. The kinds:

    start       the run begins (data: resumed, checkpoint, batch, backend, devices, run_dir;
                batch_per_device and processes when the run is data parallel)
    iteration   one step is done (data: loss, smoothed, lr); every iteration
    train       a display interval is done (data: loss (smoothed), lr, it_per_s)
    test        a test pass is done (data: metrics)
    checkpoint  a snapshot is about to be taken (data: params, host arrays); a callback may veto
                it by raising Diverged
    snapshot    a checkpoint was written (data: path)
    warning     something the user should know (data: message), e.g. a damaged checkpoint skipped
    stop        the run stops early (data: reason, detail, path; final and best when early
                stopping ended it as a finished run, whose "done" follows)
    done        the run finished (data: the summary)

To stop a run, a callback calls `solver.request_stop(reason)` (the current step finishes and a
snapshot is written, as for SIGINT; with `finish=True` the run ends as a finished one, with its
final test and summary), or raises `Diverged` (no snapshot of the bad state).
The progress display, metrics.jsonl, the NaN policy and early stopping are callbacks;
TensorBoard or sampling are one more.

A callback whose own state must survive a resume names it `state_key` and implements
`state_dict()` / `load_state_dict(d)` (JSON values): the state is stored in every checkpoint as
it is when the checkpoint is written, and given back when a run resumes from it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from netc.runtime.rundir import BEST_DIR, prune_best

__all__ = ["Event", "Callback", "CallbackProtocol", "Diverged", "MetricsLog", "Progress",
           "NanGuard", "EarlyStopping", "fmt_metrics", "fmt_time", "lower_is_better",
           "train_record", "test_record"]


@dataclass(frozen=True)
class Event:
    kind: str
    iter: int
    data: dict[str, Any] = field(default_factory=dict)


class CallbackProtocol(Protocol):
    def __call__(self, solver: Any, event: Event) -> None: ...


class Diverged(Exception):
    """A non-finite loss or parameter: stop without snapshotting the bad state."""


class Callback:
    """Dispatches each event to `on_<kind>(solver, event)` when the subclass defines it."""

    state_key: str | None = None  # set, with state_dict / load_state_dict, to be checkpointed

    def __call__(self, solver: Any, event: Event) -> None:
        handler = getattr(self, "on_" + event.kind, None)
        if handler is not None:
            handler(solver, event)

    def close(self) -> None:
        """Called once when the run ends, whatever the outcome."""


def fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def fmt_metrics(m: dict[str, float]) -> str:
    return ", ".join(f"{k} = {v:.6g}" for k, v in m.items())


def _finite(v: float) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def lower_is_better(metric: str) -> bool:
    """The direction of a test metric when nothing says otherwise: a loss is better lower,
    anything else (accuracy...) higher. The Solver's best test and `netc runs` use it."""
    return "loss" in metric.lower()


def train_record(e: Event) -> dict[str, Any]:
    """A "train" event as metrics.jsonl logs it (MetricsLog writes it, TensorBoard shows it)."""
    extra = {"teacher_prob": e.data["teacher_prob"]} if "teacher_prob" in e.data else {}
    return {"iter": e.iter, "loss": e.data["loss"], "lr": e.data["lr"],
            "it_per_s": round(e.data["it_per_s"], 3), **extra}


def test_record(e: Event) -> dict[str, Any]:
    """A "test" event as metrics.jsonl logs it (non-finite values as null)."""
    return {"iter": e.iter, "metrics": {k: _finite(v) for k, v in e.data["metrics"].items()}}


class MetricsLog(Callback):
    """metrics.jsonl: one flushed JSON object per train / test / snapshot / stop / done event."""

    def __init__(self, path: Path):
        self.path = path
        from netc.runtime.rundir import open_append

        self.f = open_append(path)  # never through a link out of the run directory

    def write(self, event: str, **fields: Any) -> None:
        rec = {"event": event, **fields, "time": round(time.time(), 3)}
        self.f.write(json.dumps(rec, sort_keys=False) + "\n")
        self.f.flush()

    def on_train(self, solver, e: Event) -> None:
        self.write("train", **train_record(e))

    def on_test(self, solver, e: Event) -> None:
        self.write("test", **test_record(e))

    def on_snapshot(self, solver, e: Event) -> None:
        self.write("snapshot", iter=e.iter, path=Path(e.data["path"]).name)

    def on_warning(self, solver, e: Event) -> None:
        self.write("warning", iter=e.iter, message=e.data["message"])

    def on_stop(self, solver, e: Event) -> None:
        extra = {k: e.data[k] for k in ("detail", "best") if e.data.get(k)}
        self.write("stop", iter=e.iter, reason=e.data["reason"], **extra)

    def on_done(self, solver, e: Event) -> None:
        # the checkpoint is in its own "snapshot" event; the path would tie the log to a folder
        self.write("done", iter=e.iter, **{k: v for k, v in e.data.items()
                                           if k not in ("snapshot", "result")})

    def close(self) -> None:
        self.f.close()


class NanGuard(Callback):
    """The NaN policy: a non-finite loss, or a non-finite parameter about to be snapshotted,
    stops the run without a snapshot of the bad state (exit 3; the last good checkpoint stays)."""

    def on_iteration(self, solver, e: Event) -> None:
        loss = e.data["loss"]
        if not math.isfinite(loss):
            raise Diverged(f"the loss is {loss} at iteration {e.iter}")

    def on_checkpoint(self, solver, e: Event) -> None:
        import numpy as np

        for layer, roles in e.data["params"].items():
            for role, v in roles.items():
                if not np.isfinite(v).all():
                    raise Diverged(f"parameter {layer}/{role} is not finite after iteration "
                                   f"{e.iter}")


class Progress(Callback):
    """What a person watching sees: the run header, a live one-line bar on a terminal (plain
    display lines otherwise), test results, why a run stopped, and the summary."""

    def __init__(self, out: TextIO, err: TextIO, live: bool, max_iter: int):
        self.out, self.err, self.live, self.max_iter = out, err, live, max_iter
        self.last_draw = 0.0
        self.shown = False

    def _bar(self, it: int, loss: float, lr: float, rate: float | None) -> None:
        now = time.monotonic()
        if now - self.last_draw < 0.1:
            return
        self.last_draw = now
        width = 24
        frac = it / self.max_iter if self.max_iter else 1.0
        filled = int(round(frac * width))
        eta = (self.max_iter - it) / rate if rate else float("nan")
        speed = f"{rate:.1f} it/s" if rate else "compiling"
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {it}/{self.max_iter} "
                f"loss {loss:.4g} lr {lr:.3g} {speed} ETA {fmt_time(eta)}")
        self.out.write("\r\x1b[2K" + line)
        self.out.flush()
        self.shown = True

    def clear(self) -> None:
        if self.live and self.shown:
            self.out.write("\r\x1b[2K")
            self.out.flush()
            self.shown = False

    def echo(self, text: str) -> None:
        self.clear()
        self.out.write(text + "\n")
        self.out.flush()

    def on_start(self, solver, e: Event) -> None:
        d = e.data
        procs = d.get("processes", 1)
        backend = (f"{d['backend']} ({d['devices']} device{'s' if d['devices'] != 1 else ''}"
                   f"{f' in {procs} processes' if procs > 1 else ''})")
        if d.get("kernels"):
            backend += f", {d['kernels']}"
        batch = f"batch {d['batch']}"
        if "batch_per_device" in d:  # data parallel: the spec's batch is the global batch
            batch += f" global = {d['batch_per_device']} per device"
            backend += f", {batch}"
        if d["resumed"]:
            self.echo(f"Resuming {d['label']} from {d['checkpoint']} at iteration {e.iter} "
                      f"(max_iter {self.max_iter}, seed {d['seed']}, {backend})")
        else:
            self.echo(f"Training {d['label']}: {d['solver_type']}, max_iter {self.max_iter}, "
                      f"seed {d['seed']}, {backend}, run directory {d['run_dir']}"
                      if "batch_per_device" in d else
                      f"Training {d['label']}: {d['solver_type']}, max_iter {self.max_iter}, "
                      f"batch {d['batch']}, seed {d['seed']}, {backend}, run directory "
                      f"{d['run_dir']}")
        if d["resumed"] and e.iter >= self.max_iter:
            self.echo(f"Nothing to do: the run is at iteration {e.iter} and max_iter is "
                      f"{self.max_iter} (pass --max-iter to train longer)")

    def on_warning(self, solver, e: Event) -> None:
        self.clear()
        self.err.write(f"warning: {e.data['message']}\n")
        self.err.flush()

    def on_iteration(self, solver, e: Event) -> None:
        if self.live:
            self._bar(e.iter + 1, e.data["smoothed"], e.data["lr"], solver.timer.steady_rate())

    def on_train(self, solver, e: Event) -> None:
        if not self.live:
            tp = (f", teacher forcing p = {e.data['teacher_prob']:.3g}"
                  if "teacher_prob" in e.data else "")
            self.out.write(f"Iteration {e.iter} ({e.data['it_per_s']:.2f} iter/s), loss = "
                           f"{e.data['loss']:.6g}, lr = {e.data['lr']:.6g}{tp}\n")
            self.out.flush()

    def on_test(self, solver, e: Event) -> None:
        self.echo(f"Iteration {e.iter}, Testing net: {fmt_metrics(e.data['metrics'])}")

    def on_stop(self, solver, e: Event) -> None:
        d = e.data
        self.clear()
        if d["reason"] == "diverged":
            good = d.get("path")
            where = f"; the last good checkpoint is {good}" if good else "; no checkpoint was written"
            self.err.write(f"error: {d['detail']}: training diverged and stopped without a "
                           f"snapshot{where}. Lower base_lr or check the data.\n")
            self.err.flush()
            return
        if d.get("final"):  # the run ends as a finished one: the summary follows
            self.echo(f"{d['reason']}: stopped at iteration {e.iter}: {d['detail']}")
            return
        self.echo(f"{d['reason']}: stopped at iteration {e.iter}; snapshot {d.get('path')}")
        if d.get("resume_hint"):
            self.echo(f"resume with: {d['resume_hint']}")

    def on_done(self, solver, e: Event) -> None:
        d = e.data
        sps = d["samples_per_s"]
        rate = f"{sps:,.0f} samples/s steady" if sps is not None else "too few steps to time"
        self.echo(f"Done: {d['trained']} iterations in {d['wall_s']:.1f} s (first step "
                  f"{d['first_step_s']:.1f} s incl. compilation; then {rate}; testing "
                  f"{d['eval_s']:.1f} s)")
        if d["last_test"]:
            self.echo(f"  last test (iteration {e.iter}): {fmt_metrics(d['last_test'])}")
            self.echo("  best test: " + ", ".join(
                f"{k} = {b['value']:.6g} (iteration {b['iter']})" for k, b in d["best_test"].items()))
        if d.get("snapshot"):
            self.echo(f"  snapshot: {d['snapshot']}")
        if d.get("result") and d["result"] != d.get("snapshot"):
            self.echo(f"  result: {d['result']} (iteration {d['result_iter']}; --weights "
                      f"{solver.settings.run_dir} loads it)")


class EarlyStopping(Callback):
    """The solver's `early_stopping` (spec/solver.py's EARLY_STOPPING_RULE): after each test
    pass, a `metric` better than the best by more than `min_delta` becomes the best and its
    parameters are kept (`solver.save_weights(BEST_DIR)`, one checkpoint in RUN_DIR/best/);
    `patience` passes in a row without one stop the run as a finished one. Its state (best value,
    best iteration, passes without improvement) is checkpointed, so a resumed run stops where the
    uninterrupted one would."""

    state_key = "early_stopping"

    def __init__(self, es: Any):
        self.es, self.mode = es, es.resolved_mode
        self.best: float | None = None
        self.best_iter: int | None = None
        self.bad = 0

    def state_dict(self) -> dict:
        return {"best": self.best, "best_iter": self.best_iter, "bad": self.bad}

    def load_state_dict(self, d: dict) -> None:
        self.best, self.best_iter, self.bad = d.get("best"), d.get("best_iter"), int(d["bad"])

    def improves(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.best is None:
            return True
        d = self.es.min_delta
        return v > self.best + d if self.mode == "max" else v < self.best - d

    def on_test(self, solver, e: Event) -> None:
        v = e.data["metrics"][self.es.metric]
        if self.improves(v):
            self.best, self.best_iter, self.bad = v, e.iter, 0
            solver.save_weights(BEST_DIR, early_stopping={"metric": self.es.metric, "value": v,
                                                          "mode": self.mode})
            return
        self.bad += 1
        if self.bad >= self.es.patience:
            solver.request_stop("early stopping", self._why(), finish=True,
                                best={"metric": self.es.metric, "value": self.best,
                                      "iter": self.best_iter})

    def _why(self) -> str:
        es = self.es
        by = f" by more than {es.min_delta:g}" if es.min_delta else ""
        best = (f"its best, {self.best:.6g} at iteration {self.best_iter}," if self.best is not None
                else "a finite value")
        return (f"{es.metric} has not {'risen' if self.mode == 'max' else 'fallen'}{by} from {best} "
                f"in {self.bad} test{'s' if self.bad != 1 else ''} (patience {es.patience})")

    def on_snapshot(self, solver, e: Event) -> None:
        # a checkpoint now records best_iter: older best parameters are not needed to resume
        if self.best_iter is not None:
            prune_best(solver.settings.run_dir, keep_from=self.best_iter)

    def on_start(self, solver, e: Event) -> None:
        # a resumed run recomputes what the interrupted one did after its checkpoint
        if e.data["resumed"] and solver.primary:
            prune_best(solver.settings.run_dir, keep_until=e.iter)
