"""Time to first step of `netc train SPEC`, from process start, with an empty compile cache (cold)
and again with the cache the cold run filled (warm); the milestones in between (imports, the
Solver built, Net.init, the iteration-0 test, the first train step done).

Run: python bench/first_step.py [SPEC] [--repeats 2]
Each repeat: one cold run in a fresh NETC_CACHE_DIR, then two warm runs on it. Prints seconds
since process start per milestone, then medians (wall seconds, and CPU seconds of the netc
process: on this shared machine wall time swings with the other jobs' load, CPU time much less).
Not a test. The iteration-0 test is Caffe's test_initialization (on by default): it compiles the
TEST net before the first step.

The child starts as the `netc` program does (netc.__main__.run): it re-executes itself once
under netc's allocator setting (runtime/allocator.py) before importing anything heavy;
`python_up` is the first interpreter, `reexec_up` the second, and the CPU seconds of both are
counted. "Cold" means an empty JAX compilation cache; the oneDNN kernel library
(compiler/kernels/, ~/.cache/netc/kernels or NETC_KERNEL_DIR) stays built, as it is after a
user's first ever run: it is built once per installation, not per net, and a run that built it
is flagged `kernel_build`.

Measured on 2 shared CPU cores under heavy load (load average 6-10): LeNet cold 24.1 / 25.4 s
to the first step done (of which the iteration-0 test 9.1 / 9.5 s, Net.init 2.7 s, the train
step's compile most of the rest); warm 4.0-4.5 s (test 0.7-0.9 s, Net.init 0.4 s; importing JAX,
tracing and lowering ~2 s remain). At load average 10.5: cold 47.7 s, warm 9.0 / 7.7 s.

2026-11-30, load average ~1-2: 16.85 s cold / 4.54 s warm before that day's changes (gathered
im2col patches in the test pass, the train step compiled in a thread during the iteration-0
test, fewer filler and optimizer-init programs); 8.47 s cold / 2.75 s warm after (--repeats 2).

2026-11-30 late, load average 4.5-5.3 (other jobs on both cores: wall seconds swing 2x, so CPU
seconds of the netc process are the measure), alternating runs of three checkouts: b6e9a45
(before), fa04132 (+ weights, keys and optimizer state made in NumPy, lazy pydantic models, the
step lowered before the test's trace) and a7fc6d2.. (+ oneDNN convolutions):
    cold, 3 runs each: first step 15.6 / 11.0 / 4.9 s wall, 11.6 / 9.5 / 4.4 CPU s (medians)
    warm, 6 runs each: 3.9 / 3.6 / 3.2 s wall, 2.79 / 2.31 / 2.05 CPU s (medians)
Before the first step a cold run now compiles two programs (the TEST forward, the train step:
~1.3 s and ~3 s of compile with oneDNN); warm, of ~2 CPU s: importing JAX ~0.7, optax ~0.15,
netc with pydantic and NumPy ~0.35, tracing + lowering the step ~0.25 and the TEST net ~0.4,
running the 10 test batches ~0.2.

2026-12-01 ~02:00-02:15, load average 6-8 throughout (no quiet window; CPU seconds inflate too,
so compare only runs alternated in the same window):
    99f1f1c (re-exec under the allocator setting) vs f9cffd2.. (+ no optax on the train path),
    alternating, 4 rounds: warm 2.06 -> 1.97 CPU s (4.22 -> 4.00 s wall, n=8); cold 4.51 / 4.90
    CPU s (n=4: noise, cold is the two XLA compiles). The same code with `import optax` added
    before the run: +0.13 CPU s (8 alternating warm pairs).
    The re-exec (NETC_MALLOC=0 vs default, 8 alternating warm pairs): the second interpreter is
    up 0.05 s wall / 0.06 CPU s after the first; the first step 2.57 -> 2.65 s wall, 1.71 ->
    1.81 CPU s.
Warm, where the ~1.7 CPU s go (each piece timed alone, same load): interpreter(s) 0.04 + 0.06,
import jax 0.55-0.65 (of which ~0.05 its scan of every installed distribution's METADATA for a
ROCm plugin), numpy/pydantic/yaml/click and netc's modules ~0.36, spec + plans 0.08, tracing the
train step 0.14 and lowering it 0.10, tracing + lowering the TEST net 0.09, the two cache loads
0.05, the 10 test batches 0.14 (compute, one thread), Net.init 0.03, oneDNN load 0.025,
tensorboardX 0.03, the first step 0.07. Tried and dropped: importing JAX in a thread while
click and the spec load run (+0.4 CPU s, no wall gain: both are Python under one GIL); letting
the TEST net trace while the step traces (the step's compile then starts later; no gain
measurable at this load); inlining the 13 nested jitted jnp.where of the step's trace (JAX
traces each as its own function) changed neither its tracing (0.12-0.18 CPU s) nor its lowering
(0.07-0.09) measurably: the tracing is JAX's per-primitive cost, not netc's Python.
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
# as the `netc` program (netc.__main__.run) starts: re-executed once under netc's allocator
# setting before anything heavy is imported. CPU seconds restart in the new process: the first
# process's are carried over in FS_CPU0
EXECED = "FS_CPU0" in os.environ
CPU0 = float(os.environ.get("FS_CPU0", "0"))
def mark(what):
    print(f"FS {what} {time.time() - T0:.3f} {time.process_time() + CPU0:.3f}", file=sys.stderr,
          flush=True)
if not EXECED:
    mark("python_up")
    os.environ["FS_CPU0"] = repr(time.process_time())
    from netc.runtime.allocator import reexec
    reexec()
    del os.environ["FS_CPU0"]  # not re-executed (NETC_MALLOC=0, or not glibc)
else:
    mark("reexec_up")
import netc.cli
from netc.runtime import trainer
from netc.compiler import lower as L
mark("imports")
_init = L.Net.init
def init(self, rng, *given):
    import jax
    t = time.time(); r = jax.block_until_ready(_init(self, rng, *given))
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
    import netc.__main__
    netc.__main__.run()
except SystemExit as e:
    mark(f"exit={e.code}")
'''


def child_env(python: str) -> dict[str, str]:
    """The runs' environment: netc's bytecode cached, as it is after `pip install`, even where
    PYTHONDONTWRITEBYTECODE is set (compiling netc's sources at every start adds ~0.3 s that a
    user does not pay). The .pyc files go to netc's __pycache__ folders, compiled once here."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("NETC_NO_COMPILE_CACHE", None)
    env.pop("FS_CPU0", None)
    # the child re-executes itself as `netc` does: not when this process (bench/run.py, run
    # under bench/harness.py's setting) hands it GLIBC_TUNABLES already set
    from netc.runtime.allocator import TUNABLES

    own = env.get("GLIBC_TUNABLES", "").removesuffix(TUNABLES).rstrip(":")
    if own:
        env["GLIBC_TUNABLES"] = own
    else:
        env.pop("GLIBC_TUNABLES", None)
    where = subprocess.run([python, "-c", "import netc, os; print(os.path.dirname(netc.__file__))"],
                           env=env, check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([python, "-m", "compileall", "-q", "-x", r"[/\\](tests|bench)[/\\]", where],
                   env=env, check=True, capture_output=True)
    return env


def one(spec: str, cache: Path, out: Path, env: dict[str, str], python: str = sys.executable
        ) -> dict[str, tuple[float, float]]:
    """One run: {milestone: (seconds since start, process CPU seconds)}."""
    env = dict(env, NETC_CACHE_DIR=str(cache), FS_T0=repr(time.time()))
    r = subprocess.run([python, "-c", CHILD, "train", spec, "--max-iter", "1", "--out",
                        str(out), "--no-progress"], env=env, capture_output=True, text=True,
                       cwd=ROOT)
    marks = {}
    for m in re.finditer(r"^FS (\S+) ([\d.]+) ([\d.]+)$", r.stderr, re.M):
        marks[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    if "first_step_done" not in marks:
        sys.exit(f"the run failed:\n{r.stderr[-2000:]}")
    if "building the oneDNN convolution kernels" in r.stderr:  # once per installation
        marks["kernel_build"] = marks["first_step_done"]
    return marks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", nargs="?", default="models/lenet.yaml")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter of the netc install to time (default: this one); e.g. "
                         "a virtualenv made by README command (1), without the test extras, some "
                         "of which JAX imports when present (grain brings etils: +0.1 s)")
    a = ap.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        env = child_env(a.python)
        for i in range(a.repeats):
            cache = Path(tmp) / f"cache{i}"
            for k, kind in enumerate(("cold", "warm", "warm")):
                load = os.getloadavg()[0]
                marks = one(a.spec, cache, Path(tmp) / f"run{i}-{k}", env, a.python)
                runs[kind].append(marks["first_step_done"])
                print(f"{kind} (load {load:.2f}): " + ", ".join(
                    f"{n} {w:.2f}" for n, (w, _) in marks.items())
                      + f"; CPU s at the first step {marks['first_step_done'][1]:.2f}")
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
           for k, v in runs.items()}
    print(f"time to first step, median: cold {med['cold'][0]:.2f} s ({med['cold'][1]:.2f} CPU s), "
          f"warm {med['warm'][0]:.2f} s ({med['warm'][1]:.2f} CPU s); load average now "
          f"{os.getloadavg()[0]:.2f} (the machine's load inflates the seconds)")


if __name__ == "__main__":
    main()
