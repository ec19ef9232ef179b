"""Run directories: where a run lives, finding the one to resume, and its metrics.jsonl."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from netc.runtime.errors import RunError

__all__ = ["slug", "resolve_run_dir", "new_run_dir", "read_metrics", "trim_metrics",
           "newest_checkpoint", "foreign_files", "RunLock", "open_append", "LOCK_FILE",
           "BEST_DIR", "TB_DIR", "run_result", "prune_best"]

# Early stopping keeps the best test's parameters here (runtime/callbacks.py's EarlyStopping).
BEST_DIR = "best"
# TensorBoard's event files (runtime/tensorboard.py).
TB_DIR = "tensorboard"


def newest_checkpoint(run_dir, warn=None) -> Path | None:
    """The run's newest checkpoint that verifies. Falling back past damaged ones is right;
    doing it silently is not: each damaged newer checkpoint is reported through `warn(message)`
    (naming the file, why, and which checkpoint is used instead)."""
    from netc.runtime.checkpoint import latest_checkpoint

    skipped: list = []
    found = latest_checkpoint(run_dir, skipped=skipped)
    if warn is not None:
        used = found.name if found is not None else "none (no checkpoint verifies)"
        for path, why in skipped:
            warn(f"checkpoint {path} is damaged ({why}); using {used} instead")
    return found


def run_result(run_dir, warn=None) -> Path | None:
    """The checkpoint that is a run's result, which `--weights RUN_DIR` loads (test, predict,
    export, fine-tuning): the best test's parameters where early stopping kept them
    (RUN_DIR/best/), else the newest checkpoint. Resuming uses `newest_checkpoint`."""
    best = newest_checkpoint(Path(run_dir) / BEST_DIR, warn)
    return best if best is not None else newest_checkpoint(run_dir, warn)


def prune_best(run_dir, *, keep_from: int | None = None, keep_until: int | None = None) -> None:
    """Remove the checkpoints of RUN_DIR/best/ of iterations before `keep_from` (superseded
    by a better one that a checkpoint now records) or after `keep_until` (written by an
    interrupted run after the checkpoint it resumes from)."""
    from netc.runtime.checkpoint import list_checkpoints, read_checkpoint_meta, remove_checkpoint

    for path in list_checkpoints(Path(run_dir) / BEST_DIR):
        it = read_checkpoint_meta(path)["iteration"]
        if (keep_from is not None and it < keep_from) or (keep_until is not None
                                                           and it > keep_until):
            remove_checkpoint(path)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "net"


def _newest_run(spec_slug: str, root: Path) -> Path | None:
    from netc.runtime.checkpoint import latest_checkpoint

    best = None
    if root.is_dir():
        for d in root.iterdir():
            if not d.is_dir() or not d.name.startswith(spec_slug + "-"):
                continue
            ck = latest_checkpoint(d)
            if ck is None:
                continue
            mtime = ck.stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, d)
    return best[1] if best else None


def resolve_run_dir(resume: str, spec_slug: str, runs_root: str = "runs") -> Path:
    """`--resume` argument -> run directory. "last": the run under runs_root for this spec whose
    newest checkpoint is the most recent."""
    if resume != "last":
        p = Path(resume)
        if p.is_file() or p.suffix == ".json" and p.parent.is_dir():
            p = p.parent
        if not p.is_dir():
            raise RunError(f"--resume {resume}: no such run directory")
        return p
    found = _newest_run(spec_slug, Path(runs_root))
    if found is None:
        raise RunError(f"--resume last: no run of '{spec_slug}' with a checkpoint under "
                       f"{runs_root}/")
    return found


def new_run_dir(spec_slug: str, runs_root: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(runs_root) / f"{spec_slug}-{stamp}"
    p, n = base, 1
    while p.exists():
        n += 1
        p = base.with_name(f"{base.name}-{n}")
    return p


def read_metrics(path: Path) -> list[dict]:
    out = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(rec, dict):
            out.append(rec)
    return out


def trim_metrics(path: Path, iteration: int, checkpoint: Path | None = None) -> list[dict]:
    """On resume: drop the events the interrupted run logged after its last checkpoint (they are
    logged again), keep the rest. A kill between writing the checkpoint and logging it leaves
    no "snapshot" event for the checkpoint resumed from: it is logged here, where the
    uninterrupted run logged it (last: it is written after everything up to its iteration)."""
    from netc.runtime.checkpoint import write_bytes_atomic

    kept = []
    for rec in read_metrics(path):
        it = rec.get("iter", 0)
        if rec.get("event") == "train" and it >= iteration:
            continue
        if rec.get("event") in ("test", "snapshot") and it > iteration:
            continue
        if rec.get("event") in ("stop", "done"):
            continue
        kept.append(rec)
    if checkpoint is not None and not any(
            r.get("event") == "snapshot" and r.get("iter") == iteration for r in kept):
        kept.append({"event": "snapshot", "iter": iteration, "path": checkpoint.name})
    text = "".join(json.dumps(r) + "\n" for r in kept)
    write_bytes_atomic(path, text.encode("utf-8"))
    return kept


# --- owning a run directory -------------------------------------------------------------------

LOCK_FILE = ".netc.lock"
_OWN_NAMES = ("spec.yaml", "solver.yaml", "solver.json", "metrics.jsonl", "vocab.json", BEST_DIR,
              TB_DIR)


def foreign_files(run_dir: Path) -> list[str]:
    """Files in `run_dir` a fresh run would write over: netc's own names (spec.yaml, solver.json,
    metrics.jsonl, checkpoints) that are already there. Other files are left alone."""
    if not run_dir.exists():
        return []
    if not run_dir.is_dir():
        raise RunError(f"--out {run_dir}: not a directory")
    found = []
    for entry in sorted(os.listdir(run_dir)):
        if entry in _OWN_NAMES or re.fullmatch(r".+_iter_\d+\.(json|safetensors)", entry):
            found.append(entry)
    return found


class RunLock:
    """An exclusive lock on a run directory for as long as one trainer uses it: a second
    `netc train` on the same directory is refused. It is an flock on `.netc.lock`, which the
    kernel drops when the process ends however it ends (SIGKILL included), so a killed run never
    leaves the directory stuck."""

    def __init__(self, run_dir: Path):
        import fcntl

        path = run_dir / LOCK_FILE
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise RunError(f"{path}: cannot create the run lock: {e.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(self.fd, 64).decode("ascii", "replace").strip() or "?"
            os.close(self.fd)
            self.fd = None
            raise RunError(f"{run_dir}: another netc train (pid {holder}) is using this run "
                           "directory; wait for it to finish or choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def open_append(path: Path):
    """Open a file of the run for appending without following a symbolic link out of the run
    directory (a link there is an error, not a redirection)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        why = "it is a symbolic link" if os.path.islink(path) else e.strerror
        raise RunError(f"{path}: cannot write the run's log: {why}") from None
    return os.fdopen(fd, "a", encoding="utf-8")
