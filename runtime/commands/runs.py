"""`netc runs [DIR]`: the run directories under DIR (default runs/, where `netc train` puts
them), one line each, oldest first; and the reader `netc plot` shares (`read_run`).

Everything comes from what a run leaves behind: metrics.jsonl (its events), solver.json (the
effective max_iter), spec.yaml (the spec's name), its checkpoints, and its lock (a run being
trained holds an flock on RUN_DIR/.netc.lock, seen read-only in /proc/locks). No JAX.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from netc.files import FileRefused, read_regular
from netc.runtime.callbacks import fmt_time, lower_is_better
from netc.runtime.errors import EXIT_OK, RunError
from netc.runtime.rundir import LOCK_FILE, read_metrics

__all__ = ["Run", "read_run", "find_runs", "summarize", "run"]

_MAX_SIDE_FILE = 16 << 20  # solver.json / spec.yaml larger than this are not read


@dataclass
class Run:
    """One run directory and its metrics.jsonl records."""

    path: Path
    records: list[dict] = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def events(self, kind: str) -> list[dict]:
        return [
            r for r in self.records if r.get("event") == kind and isinstance(r.get("iter"), int)
        ]

    def test_metrics(self) -> list[str]:
        """The TEST-net outputs the run logged, in the order first seen."""
        names: dict[str, None] = {}
        for r in self.events("test"):
            names.update(dict.fromkeys(r.get("metrics") or {}))
        return list(names)


def is_run(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file()


def read_run(path: str | os.PathLike[str]) -> Run:
    """The run in `path`; a RunError when it is not one (no metrics.jsonl)."""
    p = Path(path)
    if not p.is_dir():
        raise RunError(f"{path}: no such run directory")
    if not is_run(p):
        raise RunError(
            f"{path}: not a run directory (no metrics.jsonl; `netc train` writes one "
            "in each run directory)"
        )
    return Run(p, read_metrics(p / "metrics.jsonl"))


def find_runs(root: str | os.PathLike[str]) -> list[Run]:
    """The runs directly under `root` (or `root` itself when it is one), oldest first."""
    p = Path(root)
    if not p.is_dir():
        raise RunError(
            f"{root}: no such directory (netc train puts its runs under ./runs/ "
            "unless --out says otherwise)"
        )
    dirs = [p] if is_run(p) else sorted(d for d in p.iterdir() if d.is_dir() and is_run(d))
    runs = [read_run(d) for d in dirs]
    return sorted(runs, key=lambda r: (_started(r), r.name))


def _started(run: Run) -> float:
    times = [r["time"] for r in run.records if isinstance(r.get("time"), (int, float))]
    if times:
        return min(times)
    spec = run.path / "spec.yaml"
    return spec.stat().st_mtime if spec.exists() else run.path.stat().st_mtime


def _side_json(path: Path) -> dict:
    try:
        doc = json.loads(read_regular(path, _MAX_SIDE_FILE))
    except (OSError, ValueError, FileRefused):  # absent, unreadable, not JSON: nothing known
        return {}
    return doc if isinstance(doc, dict) else {}


def _spec_name(run: Run) -> str:
    from netc.spec.yaml_io import YamlError, read_yaml

    try:
        data = read_yaml(read_regular(run.path / "spec.yaml", _MAX_SIDE_FILE)).data
    except (OSError, FileRefused, YamlError):  # no spec.yaml, or not YAML: the spec is unknown
        return "?"
    name = data.get("name") if isinstance(data, dict) else None
    return str(name) if name else "?"


def _lock_held(run_dir: Path) -> bool:
    """Whether a process holds the run's lock (a `netc train` using it now), read from
    /proc/locks without taking the lock (taking it, even for an instant, could refuse a
    trainer starting at that moment). False where /proc/locks does not exist."""
    try:
        st = os.stat(run_dir / LOCK_FILE)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].count(":") == 2:
            major, minor, ino = parts[5].split(":")
            try:
                ident = (int(major, 16), int(minor, 16), int(ino))
            except ValueError:
                continue
            if ident == (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino):
                return True
    return False


def _status(run: Run) -> str:
    """running, finished, early-stopped, diverged, or interrupted (resumable or not): what the
    last session's events (a resume drops the earlier sessions' stop / done events) say."""
    from netc.runtime.checkpoint import list_checkpoints

    if _lock_held(run.path):
        return "running"
    reasons = [r.get("reason") for r in run.events("stop")]
    if "diverged" in reasons:
        return "diverged"
    if "early stopping" in reasons:
        return "early-stopped"
    if run.events("done"):
        return "finished"
    resumable = bool(list_checkpoints(run.path))
    why = f"interrupted ({reasons[-1]})" if reasons else "interrupted"
    return f"{why}, resumable" if resumable else f"{why}, no checkpoint"


def _iterations(run: Run) -> int:
    """Iterations done: a test / snapshot / stop / done at iteration T follows T iterations, a
    display line at iteration index i follows i + 1."""
    done = [
        r["iter"] + (r["event"] == "train")
        for r in run.records
        if r.get("event") in ("train", "test", "snapshot", "stop", "done")
        and isinstance(r.get("iter"), int)
    ]
    return max(done, default=0)


def _best(run: Run) -> dict[str, dict]:
    """Each test metric's best value and iteration: the Solver's own answer where the run
    finished (its "done" event), else from the test events by the same rule."""
    done = run.events("done")
    if done and isinstance(done[-1].get("best_test"), dict):
        return done[-1]["best_test"]
    best: dict[str, dict] = {}
    for r in run.events("test"):
        for k, v in (r.get("metrics") or {}).items():
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            b = best.get(k)
            if b is None or (v < b["value"] if lower_is_better(k) else v > b["value"]):
                best[k] = {"value": v, "iter": r["iter"]}
    return best


def _primary_metric(best: dict, solver: dict) -> str | None:
    """The metric a run is judged by: early stopping's, else the first that is not a loss."""
    es = solver.get("early_stopping")
    if isinstance(es, dict) and es.get("metric") in best:
        return es["metric"]
    return next((k for k in best if not lower_is_better(k)), next(iter(best), None))


def _wall(run: Run) -> float | None:
    """The run's wall time: the "done" event's when one session trained it all, else the time
    from its first event to its last (pauses between sessions included)."""
    done = run.events("done")
    if done and done[-1].get("trained") == done[-1]["iter"] and "wall_s" in done[-1]:
        return float(done[-1]["wall_s"])
    times = [r["time"] for r in run.records if isinstance(r.get("time"), (int, float))]
    return max(times) - min(times) if len(times) > 1 else None


def summarize(run: Run) -> dict:
    """One run as a JSON-able dict (`netc runs --json`)."""
    solver = _side_json(run.path / "solver.json")
    best = _best(run)
    metric = _primary_metric(best, solver)
    train = run.events("train")
    return {
        "name": run.name,
        "path": str(run.path),
        "spec": _spec_name(run),
        "started": round(_started(run), 3),
        "iterations": _iterations(run),
        "max_iter": solver.get("max_iter"),
        "best": {"metric": metric, **best[metric]} if metric else None,
        "best_test": best,
        "last_loss": train[-1].get("loss") if train else None,
        "status": _status(run),
        "wall_s": _wall(run),
    }


def _row(s: dict) -> tuple[str, ...]:
    b = s["best"]
    best = f"{b['metric']} {b['value']:.4g} @{b['iter']}" if b else "-"
    loss = f"{s['last_loss']:.4g}" if isinstance(s["last_loss"], (int, float)) else "-"
    wall = fmt_time(s["wall_s"]) if s["wall_s"] is not None else "-"
    its = f"{s['iterations']}/{s['max_iter'] if s['max_iter'] is not None else '?'}"
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["started"]))
    return (s["name"], s["spec"], started, its, best, loss, s["status"], wall)


def run(root: str, as_json: bool, out: TextIO) -> int:
    summaries = [summarize(r) for r in find_runs(root)]
    if as_json:
        out.write(json.dumps({"runs": summaries}, indent=2) + "\n")
        return EXIT_OK
    if not summaries:
        out.write(f"no runs under {root}\n")
        return EXIT_OK
    rows = [
        ("run", "spec", "started", "iter", "best test", "loss", "status", "wall"),
        *(_row(s) for s in summaries),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    return EXIT_OK
