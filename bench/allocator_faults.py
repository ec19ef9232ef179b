"""Page faults, system CPU time and wall time per CIFAR ResNet-18 train step (batch 128), with and
without netc's allocator setting (runtime/allocator.py): the measurement behind it.

Run: python bench/allocator_faults.py [--steps 3]
Runs this script twice in fresh processes, once with NETC_MALLOC=0 and GLIBC_TUNABLES unset (the
system's malloc) and once under the setting, and prints per step: wall ms, minor page faults,
user and system CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(steps: int) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import jax
    import numpy as np
    import resnet18_cifar
    from harness import netc_train_run  # re-executes under the setting unless NETC_MALLOC=0

    batch = 128
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 10, batch).astype(np.int32)
    run = netc_train_run(resnet18_cifar.cifar_spec(batch), batch, kernels=True)
    for _ in range(2):
        jax.block_until_ready(run(x, y))
    label = os.environ.get("GLIBC_TUNABLES") and "allocator setting" or "system malloc"
    for _ in range(steps):
        u, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        jax.block_until_ready(run(x, y))
        v = resource.getrusage(resource.RUSAGE_SELF)
        print(f"{label:18s} step {1e3 * (time.perf_counter() - t):7.0f} ms  minor faults "
              f"{v.ru_minflt - u.ru_minflt:7d}  user {v.ru_utime - u.ru_utime:5.2f} s  "
              f"sys {v.ru_stime - u.ru_stime:5.2f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.steps)
    base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    for malloc in ("0", "1"):
        subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps)],
                       env={**base, "NETC_MALLOC": malloc}, check=True)


if __name__ == "__main__":
    main()
