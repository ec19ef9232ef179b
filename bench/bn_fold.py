"""BatchNorm + Scale (+ ReLU / ReLU6) folded, and BatchNorm's native kernels: whole train steps
and one chain, before and after, in one process (alternating windows, so that the host's drift
hits both alike).

"before" lowers each layer apart with XLA's statistics (what netc did until the fold); "after" is
the default: BatchNorm's statistics by the native kernel, each Scale(BatchNorm) chain and the
ReLU/ReLU6 after it as one function whose backward is the native kernel
(compiler/layers/norm.py batch_norm_affine, compiler/kernels/batch_norm.cc). "after, XLA" is the
fold with its backward in XLA (what runs without the kernels).

Run: python bench/bn_fold.py [--workloads mobilenet_v2_96,resnet18_cifar,chain] [--repeats 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import harness  # noqa: E402  (re-executes under the allocator setting)

VARIANTS = ("before", "after, XLA", "after")


def _variant(name: str):
    """Patch the lowering for `name` (it is read at trace time, the first call)."""
    import netc.compiler.layers.norm as norm

    real_chain, real_native = _variant.real
    norm.bn_scale_input = (lambda ctx, s: None) if name == "before" else real_chain
    norm._native_for = (lambda ctx, x: False) if name != "after" else real_native


def _alternate(runs: dict, args: tuple, samples: int, steps: int, repeats: int) -> dict:
    rates = {n: [] for n in runs}
    cpu = {n: [] for n in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(steps):
                out = run(*args)
            harness.block(out)
            rates[name].append(steps * samples / (time.perf_counter() - t0))
            cpu[name].append((time.process_time() - c0) / steps)
    return {n: {"median": statistics.median(rates[n]), "cpu_s_per_step": statistics.median(cpu[n]),
                "runs": rates[n]} for n in runs}


def whole_step(workload: str, repeats: int) -> dict:
    import numpy as np
    from resnet18_cifar import cifar_spec
    from run import with_loss

    if workload == "mobilenet_v2_96":
        spec, batch, shape, classes = (with_loss("mobilenet_v2_torchvision.yaml", 64, 96, 1000),
                                       64, (3, 96, 96), 1000)
    else:
        spec, batch, shape, classes = cifar_spec(128), 128, (3, 32, 32), 10
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, classes, batch).astype(np.int32)
    runs = {}
    for name in VARIANTS:
        _variant(name)
        runs[name] = harness.netc_train_run(spec, batch)
        harness.block(runs[name](x, y))  # traced (under this variant) and compiled
    _variant("after")
    return _alternate(runs, (x, y), batch, 2, repeats)


def chain(repeats: int) -> dict:
    """One BatchNorm + Scale + ReLU6 forward and backward on MobileNet v2's largest BatchNorm
    input (64×96×48×48), as the three variants lower it."""
    import jax
    import jax.numpy as jnp

    from netc.compiler.layers import norm

    n, c, h, w = 64, 96, 48, 48
    bshape, axes, eps = (1, c, 1, 1), (0, 2, 3), 1e-5

    def make(name):
        kernel = name == "after"

        def f(x, g, b):
            y, mean, var = norm._batch_statistics_norm(axes, bshape, eps, kernel)(x)
            if name == "before":
                z = y * g.reshape(bshape) + b.reshape(bshape)
                return jnp.where(z > 0, jnp.where(z < 6, z, 6.0), 0.0)
            return norm.batch_norm_affine(x, mean, var, eps, g, b, 0.0, 6.0, kernel=kernel)

        return jax.jit(jax.grad(lambda x, g, b, r: jnp.sum(f(x, g, b) * r), argnums=(0, 1, 2)))

    k = jax.random.split(jax.random.PRNGKey(0), 4)
    args = (jax.random.normal(k[0], (n, c, h, w)) * 2 + 0.5, jax.random.normal(k[1], (c,)) + 1,
            jax.random.normal(k[2], (c,)), jax.random.normal(k[3], (n, c, h, w)))
    runs = {name: make(name) for name in VARIANTS}
    for run in runs.values():
        harness.block(run(*args))
    return _alternate(runs, args, 1, 5, repeats)


def main() -> None:
    import netc.compiler.layers.norm as norm
    from netc.compiler.kernels import onednn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="mobilenet_v2_96,resnet18_cifar,chain")
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()
    _variant.real = (norm.bn_scale_input, norm._native_for)
    print(f"native kernels: {onednn.status().detail}")
    for workload in args.workloads.split(","):
        if workload == "chain":
            res, unit = chain(args.repeats), "calls/s"
        else:
            res, unit = whole_step(workload, args.repeats), "samples/s"
        print(f"{workload} ({args.repeats} alternating windows, medians):")
        for name, r in res.items():
            print(f"  {name:11s} {r['median']:8.1f} {unit}  {r['cpu_s_per_step']:.3f} CPU s per "
                  f"call  (windows {', '.join(f'{v:.1f}' for v in r['runs'])})")
        base = res["before"]["median"]
        print("  " + ", ".join(f"{n} / before: {r['median'] / base:.2f}x" for n, r in res.items()
                               if n != "before"))


if __name__ == "__main__":
    main()
