"""The side-by-side timing loop the bench/ scripts share: build each contender's step, warm it up
(timing the first call, compilation included), then time alternating repeats so that drift hits
every contender alike, and report medians and ratios against netc.

Every contender runs under the C allocator setting `netc train` runs under (runtime/allocator.py:
glibc keeps freed memory instead of unmapping it, so large buffers are not faulted in again each
step; PyTorch gains from it too): importing this module re-executes the script once with it set,
before anything is timed. NETC_MALLOC=0 measures with the system's default instead."""

from __future__ import annotations

import os
import statistics
import sys
import time

from netc.runtime.allocator import reexec

reexec()


def block(out):
    try:
        import jax

        jax.block_until_ready(out)
    except Exception:  # noqa: BLE001 - torch results are already computed
        pass


def measure(run, args, steps: int, samples: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        out = run(*args)
    block(out)
    return steps * samples / (time.perf_counter() - start)


def compare(makers: dict, args: tuple, samples: int, steps: int, repeats: int) -> dict:
    """{name: {"median": samples/s, "runs": [...], "first_s": s}} for each maker(): a function
    `run(*args)` doing one train step on `samples` samples."""
    runs, first = {}, {}
    for name, make in makers.items():
        t0 = time.perf_counter()
        runs[name] = make()
        block(runs[name](*args))  # compile / warm up
        first[name] = time.perf_counter() - t0
    for run in runs.values():
        measure(run, args, max(3, steps // 10), samples)
    results = {n: [] for n in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            results[name].append(measure(run, args, steps, samples))
    return {n: {"median": statistics.median(v), "runs": v, "first_s": first[n]}
            for n, v in results.items()}


def report(title: str, results: dict, unit: str = "samples/s") -> None:
    import jax

    print(f"{title}; {os.cpu_count()} CPU(s), jax {jax.__version__}, "
          f"python {sys.version.split()[0]}")
    for n, r in results.items():
        print(f"  {n:14s} {r['median']:8.1f} {unit}   (first step incl. compile "
              f"{r['first_s']:.2f} s; runs {', '.join(f'{v:.1f}' for v in r['runs'])})")
    if "netc" in results:
        for n, r in results.items():
            if n != "netc":
                print(f"  netc / {n}: {results['netc']['median'] / r['median']:.2f}×")


def netc_train_run(spec, batch: int | None = None, precision: str = "float32",
                   kernels: bool | None = None):
    """`run(x, y)`: one step of netc's own train step (what `netc train` runs, through the public
    API) on {"data": x, "label": y}, for SPEC (a path, or YAML text written to a temporary file).
    `kernels` False: without the native kernels (compiler/kernels/; netc's pure-XLA lowering)."""
    import tempfile
    from pathlib import Path

    import jax
    import numpy as np

    import netc

    if "\n" in str(spec):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            fh.write(spec)
        spec = fh.name
    model = netc.load(str(Path(spec)), phase="TRAIN", batch=batch)
    if kernels is not None:
        model.net.kernels = kernels
    params, state = model.init(jax.random.key(0))
    opt_state, step = model.train_step(precision=precision)
    carry = [params, state, opt_state, 0]

    def run(x, y):
        carry[0], carry[1], carry[2], _ = step(carry[0], carry[1], carry[2],
                                               {"data": x, "label": y}, np.int32(carry[3]))
        carry[3] += 1
        return carry[0]

    return run


def torch_threads():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch
