"""Whole-net check of the oneDNN lowering choices (compiler/layers/conv.py, _use_kernel): a layer
measured alone is not the whole story (XLA fuses and lays out around each custom call), so the
rule is checked on whole train steps, side by side in one process (alternating repeats):

    netc            the rule as it stands (every 2-D/3-D convolution through oneDNN)
    netc-1x1-xla    1×1 convolutions through netc's pure-XLA lowering (a matmul) instead
    netc-xla        no oneDNN at all

Run: python bench/onednn_choices.py [--workloads mobilenet,resnet18] [--steps 3] [--repeats 3]
Workloads: MobileNet v2 at 96×96 (batch 64) and CIFAR ResNet-18 (batch 128), random data. Not a
test.

2026-12-01, 2-core VM at load ~3.7-4.1 (other jobs running), with the rule then in force where
depthwise layers took XLA's shifted multiply-add forward: MobileNet v2 22.8 samples/s vs 29.9 with
its 1×1 layers through oneDNN; ResNet-18 14.8 vs 14.4 (noise), its step compiling in 15 s instead
of 23 s. With 1×1 through oneDNN, the depthwise forward through oneDNN too: 27.0 vs 27.7 samples/s
(noise) and a 21 s instead of 36 s first step (compile), so the rule now sends every 2-D/3-D
convolution to oneDNN.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from harness import compare, netc_train_run, report  # noqa: E402


def without_1x1(spec: str, batch: int):
    """netc's step with 1×1 convolutions lowered by XLA (the rule patched while it is planned)."""
    from netc.compiler.layers import conv as C

    rule = C.Convolution._use_kernel

    def patched(self, w):
        return "" if math.prod(w.kernel) == 1 else rule(self, w)

    C.Convolution._use_kernel = patched
    try:
        return netc_train_run(spec, batch)
    finally:
        C.Convolution._use_kernel = rule


def workload(name: str):
    import resnet18_cifar
    import run

    if name == "mobilenet":
        return run.with_loss("mobilenet_v2_torchvision.yaml", 64, 96, 1000), 64, (3, 96, 96), 1000
    return resnet18_cifar.cifar_spec(128), 128, (3, 32, 32), 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="mobilenet,resnet18")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for name in args.workloads.split(","):
        spec, batch, shape, classes = workload(name)
        x = rng.random((batch, *shape), dtype=np.float32)
        y = rng.integers(0, classes, batch).astype(np.int32)
        makers = {"netc": lambda s=spec, b=batch: netc_train_run(s, b),
                  "netc-1x1-xla": lambda s=spec, b=batch: without_1x1(s, b),
                  "netc-xla": lambda s=spec, b=batch: netc_train_run(s, b, kernels=False)}
        results = compare(makers, (x, y), batch, args.steps, args.repeats)
        report(f"{name}, batch {batch}: oneDNN lowering choices", results)


if __name__ == "__main__":
    main()
