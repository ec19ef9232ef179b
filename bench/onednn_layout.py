"""How activations meet oneDNN, in one process. "channels_last" (netc's default,
compiler/kernels/onednn.py channels_last): XLA hands every kernel N×spatial×C memory and keeps
that layout between them. With N×C×spatial memory (NETC_ONEDNN_LAYOUT=channels_first) oneDNN
reorders each call's operands inside, its forward to "any" (oneDNN's own choice, channels-last
on AVX2), "blocked" (channel-blocked nChw8c) or "auto" (blocked for 1×1 and depthwise
convolutions only, onednn._blocked_forward); "channels_first" is "auto". Each variant's step is
traced with its environment set, then the two are timed in alternating windows (medians; CPU
seconds per step beside them, as the host drifts).

Run: python bench/onednn_layout.py [mobilenet|resnet|lenet] [WINDOWS] [VARIANT VARIANT]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import harness  # noqa: E402  (re-executes under the allocator setting)


def workload(name: str):
    from resnet18_cifar import cifar_spec
    from run import with_loss

    if name == "mobilenet":
        return with_loss("mobilenet_v2_torchvision.yaml", 64, 96, 1000), 64, (3, 96, 96), 1000
    if name == "resnet":
        return cifar_spec(128), 128, (3, 32, 32), 10
    return str(ROOT / "models" / "lenet.yaml"), 64, (1, 28, 28), 10


def main() -> None:
    import numpy as np

    name = sys.argv[1] if len(sys.argv) > 1 else "mobilenet"
    windows = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    variants = sys.argv[3:5] if len(sys.argv) > 4 else ["channels_first", "channels_last"]
    spec, batch, shape, classes = workload(name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, classes, batch).astype(np.int32)
    runs = {}
    for v in variants:
        os.environ["NETC_ONEDNN_LAYOUT"] = "channels_last" if v == "channels_last" else "channels_first"
        os.environ["NETC_ONEDNN_FORWARD_LAYOUT"] = v if v in ("any", "blocked") else ""
        runs[v] = harness.netc_train_run(spec, batch)
        for _ in range(2):
            harness.block(runs[v](x, y))
    steps = 100 if name == "lenet" else 2
    res = {v: [] for v in runs}
    for _ in range(windows):
        for v, run in runs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(steps):
                out = run(x, y)
            harness.block(out)
            res[v].append((steps * batch / (time.perf_counter() - t0),
                           (time.process_time() - c0) / steps))
    for v, got in res.items():
        rates = sorted(r for r, _ in got)
        cpu = sorted(c for _, c in got)
        print(f"{name} {v}: median {rates[len(rates) // 2]:.1f} samples/s, "
              f"{cpu[len(cpu) // 2]:.3f} CPU s/step | windows "
              + " ".join(f"{r:.1f}" for r, _ in got))


if __name__ == "__main__":
    main()
