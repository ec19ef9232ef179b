"""Time to first step of `netc train SPEC`, from process start, with an empty compile cache (cold)
and again with the cache the cold run filled (warm); the milestones in between (imports, the
Solver built, Net.init, the iteration-0 test, the first train step done).

Run: python bench/first_step.py [SPEC] [--repeats 2]
Each repeat: one cold run in a fresh NETC_CACHE_DIR, then two warm runs on it. Prints seconds
since process start per milestone, then medians. Not a test. The iteration-0 test is Caffe's
test_initialization (on by default): it compiles the TEST net before the first step.

Measured on 2 shared CPU cores under heavy load (load average 6-10): LeNet cold 24.1 / 25.4 s
to the first step done (of which the iteration-0 test 9.1 / 9.5 s, Net.init 2.7 s, the train
step's compile most of the rest); warm 4.0-4.5 s (test 0.7-0.9 s, Net.init 0.4 s; importing JAX,
tracing and lowering ~2 s remain). At load average 10.5: cold 47.7 s, warm 9.0 / 7.7 s.

2026-11-30, load average ~1-2: 16.85 s cold / 4.54 s warm before that day's changes (gathered
im2col patches in the test pass, the train step compiled in a thread during the iteration-0
test, fewer filler and optimizer-init programs); 8.47 s cold / 2.75 s warm after (--repeats 2).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import os, sys, time
T0 = float(os.environ["FS_T0"])
def mark(what):
    print(f"FS {what} {time.time() - T0:.3f}", file=sys.stderr, flush=True)
mark("python_up")
import netc.cli
from netc.runtime import trainer
from netc.compiler import lower as L
mark("imports")
_init = L.Net.init
def init(self, rng):
    import jax
    t = time.time(); r = jax.block_until_ready(_init(self, rng))
    mark(f"init_{self.plan.state.phase}_took={time.time() - t:.3f}")
    return r
L.Net.init = init
_test = trainer.Solver.test
def test(self):
    t = time.time(); r = _test(self); mark(f"test_took={time.time() - t:.3f}"); return r
trainer.Solver.test = test
_sd = trainer.Timer.step_done
def sd(self):
    _sd(self)
    if self.steady_iters == 0:
        mark("first_step_done")
trainer.Timer.step_done = sd
try:
    netc.cli.main(sys.argv[1:])
except SystemExit as e:
    mark(f"exit={e.code}")
'''


def one(spec: str, cache: Path, out: Path) -> dict[str, float]:
    env = dict(os.environ, NETC_CACHE_DIR=str(cache), FS_T0=repr(time.time()))
    env.pop("NETC_NO_COMPILE_CACHE", None)
    r = subprocess.run([sys.executable, "-c", CHILD, "train", spec, "--max-iter", "1", "--out",
                        str(out), "--no-progress"], env=env, capture_output=True, text=True,
                       cwd=ROOT)
    marks = {}
    for m in re.finditer(r"^FS (\S+) ([\d.]+)$", r.stderr, re.M):
        marks[m.group(1)] = float(m.group(2))
    if "first_step_done" not in marks:
        sys.exit(f"the run failed:\n{r.stderr[-2000:]}")
    return marks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", nargs="?", default="models/lenet.yaml")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            cache = Path(tmp) / f"cache{i}"
            for k, kind in enumerate(("cold", "warm", "warm")):
                marks = one(a.spec, cache, Path(tmp) / f"run{i}-{k}")
                (cold if kind == "cold" else warm).append(marks["first_step_done"])
                print(f"{kind}: " + ", ".join(f"{n} {v:.2f}" for n, v in marks.items()))
    print(f"time to first step, median: cold {statistics.median(cold):.2f} s, warm "
          f"{statistics.median(warm):.2f} s (the machine's load inflates both)")


if __name__ == "__main__":
    main()
