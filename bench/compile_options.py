"""netc's XLA compile options (compiler/xla.py) against XLA's defaults, on bench/run.py's
workloads, in one process: for each workload, netc's own train step built twice — with
`compiler_options()` and with none — then

- first call (build + init + trace + lower + XLA compile + one step) and the XLA compile seconds
  within it (JAX's own "Finished XLA compilation" log records, summed), without the persistent
  compile cache, twice per variant in alternating order (A B B A; means of each variant's two),
- samples/s in alternating windows (bench/harness.py's compare: medians of `repeats`).

    python bench/compile_options.py [--workloads lenet,resnet18_cifar,...] [--quick]

Prints one line per workload; not a test.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
os.environ["NETC_NO_COMPILE_CACHE"] = "1"
import run as bench  # noqa: E402
from harness import block, measure  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="lenet,resnet18_cifar,mobilenet_v2_96,char_lstm")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()

    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    compiled: list[float] = []

    class Log(logging.Handler):
        def emit(self, record):
            m = re.match(r"Finished XLA compilation of .* in ([\d.]+) sec", record.getMessage())
            if m:
                compiled.append(float(m.group(1)))

    logging.getLogger("jax").addHandler(Log(logging.DEBUG))
    jax.config.update("jax_log_compiles", True)
    from netc.compiler import xla

    netc_options = dict(xla.CPU_OPTIONS)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPU(s); "
          f"netc's options here: {xla.compiler_options() or 'none'}")
    every = bench.workloads(a.quick)
    for name in a.workloads.split(","):
        w = every[name]
        x, y = w.inputs(np.random.default_rng(0))
        make = w.makers["netc"]
        runs, first = {}, {"netc": [], "xla-default": []}
        xla_s = {"netc": [], "xla-default": []}
        for variant in ("netc", "xla-default", "xla-default", "netc"):
            jax.clear_caches()
            xla.CPU_OPTIONS.clear()
            if variant == "netc":
                xla.CPU_OPTIONS.update(netc_options)
            compiled.clear()
            t0 = time.perf_counter()
            runs[variant] = make()
            block(runs[variant](x, y))
            first[variant].append(time.perf_counter() - t0)
            xla_s[variant].append(sum(compiled))
        xla.CPU_OPTIONS.update(netc_options)
        for run in runs.values():
            measure(run, (x, y), max(3, w.steps // 10), w.batch)
        rates = {v: [] for v in runs}
        for _ in range(max(w.repeats, 5)):
            for v, run in runs.items():
                rates[v].append(measure(run, (x, y), w.steps, w.batch))
        med = {v: statistics.median(r) for v, r in rates.items()}
        f = {v: statistics.mean(t) for v, t in first.items()}
        c = {v: statistics.mean(t) for v, t in xla_s.items()}
        print(f"{name}: first call {f['netc']:.2f} s with netc's options vs {f['xla-default']:.2f} "
              f"s XLA's defaults, of which XLA compiling {c['netc']:.2f} vs "
              f"{c['xla-default']:.2f} s (runs {xla_s['netc']} / {xla_s['xla-default']}); {w.unit} {med['netc']:.1f} vs {med['xla-default']:.1f} "
              f"({med['netc'] / med['xla-default']:.2f}x; windows "
              f"{', '.join(f'{r:.0f}' for r in rates['netc'])} / "
              f"{', '.join(f'{r:.0f}' for r in rates['xla-default'])})", flush=True)


if __name__ == "__main__":
    main()
