"""ResNet-50 training throughput on one accelerator: netc's compiled train step (the one `netc
train` runs, through the Python API) on random data already on the device, in float32 and mixed
precision, with the fraction of a matmul peak measured in the same run.

The net is models/resnet50_torchvision.yaml (25.6 M parameters, 4.09 GMACs per 224×224 sample)
with an Input of [batch, 3, size, size] images and [batch] labels and a SoftmaxWithLoss on `fc`;
the solver is SGD with momentum 0.9 and weight decay 1e-4 (BatchNorm in training mode). A train
step costs about 3× the forward's FLOPs, i.e. 6 × MACs per sample (the plan's MAC count, scaled
by (size / 224)² through the planner). The peak is a jitted jnp.dot of two N×N matrices (N =
8192 on an accelerator, 1024 on a CPU) in float32 and in bfloat16, timed the same way; each
precision's achieved FLOP/s is divided by the matmul peak of its compute dtype (float32 under
JAX's default matmul precision, which may use TF32 on NVIDIA GPUs: the step and the peak alike).

Run (a GPU):  python bench/gpu_resnet50.py [--batch 256] [--size 224] [--steps 20]
                  [--precision bfloat16,float32] [--out results.json]
      (a CPU smoke run): python bench/gpu_resnet50.py --batch 2 --size 64 --steps 2
Prints one JSON document (and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def train_spec(batch: int, size: int) -> str:
    """The torchvision ResNet-50 spec with labels, a loss and an SGD solver."""
    data = yaml.safe_load((ROOT / "models" / "resnet50_torchvision.yaml").read_text())
    layers = data["layers"]
    assert layers[0]["type"] == "Input", layers[0]
    layers[0] = {
        "name": "data",
        "type": "Input",
        "top": ["data", "label"],
        "input_param": {"shape": [{"dim": [batch, 3, size, size]}, {"dim": [batch]}]},
    }
    layers.append(
        {
            "name": "loss",
            "type": "SoftmaxWithLoss",
            "bottom": [layers[-1]["top"], "label"],
            "top": "loss",
        }
    )
    data["solver"] = {
        "type": "SGD",
        "base_lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "lr_policy": "fixed",
        "max_iter": 1,
    }
    return yaml.safe_dump(data, sort_keys=False)


def block(tree) -> None:
    import jax

    jax.block_until_ready(tree)


def time_step(model, precision: str, inputs: dict, warmup: int, steps: int) -> dict:
    """netc's train step in `precision`: first call (compile) time, then `steps` steps timed
    after `warmup` more, blocking on the results once at the end."""
    import jax

    params, state = model.init(jax.random.key(0))
    t0 = time.perf_counter()
    opt_state, step = model.train_step(precision=precision)
    carry = [params, state, opt_state]

    def run(it: int):
        carry[0], carry[1], carry[2], loss = step(*carry, inputs, np.int32(it))
        return loss

    loss = run(0)
    block((carry, loss))
    first_s = time.perf_counter() - t0
    first_loss = float(loss)  # about ln(1000) = 6.9 from the fillers' initial weights
    for i in range(warmup):
        run(1 + i)
    block(carry)
    t0 = time.perf_counter()
    for i in range(steps):
        loss = run(1 + warmup + i)
    block((carry, loss))
    seconds = time.perf_counter() - t0
    return {
        "first_step_s": round(first_s, 3),
        "steps": steps,
        "seconds": round(seconds, 4),
        "step_ms": round(1e3 * seconds / steps, 3),
        "first_loss": first_loss,
        "final_loss": float(loss),
    }


def matmul_peak(dtype: str, n: int, reps: int) -> dict:
    """FLOP/s of a jitted n×n by n×n jnp.dot in `dtype` (the best of `reps` timed calls)."""
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.key(1))
    a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
    dot = jax.jit(jnp.dot)
    block(dot(a, b))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        block(dot(a, b))
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "seconds": round(best, 6), "flop_per_s": 2.0 * n**3 / best}


def device_info() -> dict:
    import jax

    d = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(d, "device_kind", str(d)),
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }


def run(args) -> dict:
    import jax

    import netc

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write(train_spec(args.batch, args.size))
    model = netc.load(fh.name, phase="TRAIN", batch=args.batch)
    macs = model.plan.macs  # per sample, forward
    flop_per_sample = 6 * macs
    k1, k2 = jax.random.split(jax.random.key(0))
    inputs = {
        "data": jax.random.normal(k1, (args.batch, 3, args.size, args.size)),
        "label": jax.random.randint(k2, (args.batch,), 0, 1000, dtype=np.int32),
    }
    n = args.matmul or (1024 if jax.default_backend() == "cpu" else 8192)
    peaks = {dt: matmul_peak(dt, n, args.matmul_reps) for dt in ("float32", "bfloat16")}
    doc = {
        **device_info(),
        "net": "ResNet-50 (models/resnet50_torchvision.yaml)",
        "batch": args.batch,
        "size": args.size,
        "macs_per_sample": macs,
        "train_flop_per_sample": flop_per_sample,
        "matmul_peak": peaks,
        "runs": {},
    }
    for precision in args.precision.split(","):
        r = time_step(model, precision, inputs, args.warmup, args.steps)
        sps = args.batch * r["steps"] / r["seconds"]
        achieved = sps * flop_per_sample
        peak = peaks["float32" if precision == "float32" else "bfloat16"]["flop_per_s"]
        doc["runs"][precision] = {
            **r,
            "samples_per_s": round(sps, 2),
            "achieved_flop_per_s": achieved,
            "fraction_of_matmul_peak": round(achieved / peak, 4),
        }
    if {"float32", "bfloat16"} <= set(doc["runs"]):
        doc["bfloat16_speedup"] = round(
            doc["runs"]["bfloat16"]["samples_per_s"] / doc["runs"]["float32"]["samples_per_s"], 3
        )
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224, help="image side (global pooling: any)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per precision")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    ap.add_argument(
        "--precision",
        default="bfloat16,float32",
        help="comma-separated: float32, bfloat16, float16",
    )
    ap.add_argument(
        "--matmul",
        type=int,
        default=None,
        help="the peak's matrix side (default 8192; 1024 on a CPU)",
    )
    ap.add_argument("--matmul-reps", type=int, default=10)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    doc = run(args)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
