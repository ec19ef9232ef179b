"""Run directories: where a run lives, finding the one to resume, and its metrics.jsonl."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from netc.runtime.errors import RunError

__all__ = ["slug", "resolve_run_dir", "new_run_dir", "read_metrics", "trim_metrics"]


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
