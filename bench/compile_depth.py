"""Compile time of the train step against depth: runs of identical blocks scanned or unrolled.

`lower(plan, scan_blocks=True)` (or NETC_SCAN_BLOCKS=1) lowers each run of >= 2 structurally
identical blocks (compiler/blocks.py: ResNet's identity blocks) as one `jax.lax.scan` over the
blocks, so the blocks' code appears once in the program instead of once per block. This script
measures whether that buys compile time, through netc's own train step (the one `netc train`
runs, via the public API): `step.lower(...)` (tracing) and `.compile()` (XLA: wall and this
process's CPU seconds, the latter less disturbed by other load), for

- a generated ResNet-like net (`resnet_spec`: a stem, one projection block, N identical basic
  blocks with BatchNorm + Scale + Dropout, 8 channels, 8×8 input, batch 2) at N = 2, 4, 8, 16;
- models/resnet50_caffe.yaml (4 runs, 12 of its 16 blocks) at batch 8 with a SoftmaxWithLoss.

What it showed on the 2-core CPU VM (2026-11-30, load average ~20): no compile-time gain; on
ResNet-50 the scanned step compiled ~1.8x slower (see README, "Runs of identical blocks").

Run: python bench/compile_depth.py [--depths 2,4,8,16] [--no-resnet50]
Prints one row per net and mode. Not a test: the numbers vary by machine and load.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SOLVER = {"type": "SGD", "base_lr": 0.01, "momentum": 0.9, "lr_policy": "fixed", "max_iter": 1}


def _conv(name: str, bottom: str, c: int, k: int = 3) -> list[dict]:
    """Convolution (no bias) + BatchNorm + Scale, the last two in place (Caffe's ResNet)."""
    return [
        {
            "name": name,
            "type": "Convolution",
            "bottom": bottom,
            "top": name,
            "convolution_param": {
                "num_output": c,
                "kernel_size": k,
                "pad": k // 2,
                "bias_term": False,
                "weight_filler": {"type": "msra"},
            },
        },
        {"name": f"{name}_bn", "type": "BatchNorm", "bottom": name, "top": name},
        {
            "name": f"{name}_sc",
            "type": "Scale",
            "bottom": name,
            "top": name,
            "scale_param": {"bias_term": True},
        },
    ]


def _relu(name: str, blob: str) -> dict:
    return {"name": name, "type": "ReLU", "bottom": blob, "top": blob}


def _sum(name: str, a: str, b: str) -> list[dict]:
    """Eltwise SUM of `a` and `b` into `name`, then an in-place ReLU."""
    return [
        {
            "name": name,
            "type": "Eltwise",
            "bottom": [a, b],
            "top": name,
            "eltwise_param": {"operation": "SUM"},
        },
        _relu(f"{name}_relu", name),
    ]


def _basic_block(b: str, prev: str, c: int, width: int, dropout: float) -> list[dict]:
    """conv(width)-BN-Scale-ReLU-Dropout-conv(c)-BN-Scale, Eltwise SUM with `prev`, ReLU."""
    layers = _conv(f"{b}_a", prev, width) + [_relu(f"{b}_a_relu", f"{b}_a")]
    if dropout:
        drop = {"dropout_ratio": dropout}
        layers.append(
            {
                "name": f"{b}_drop",
                "type": "Dropout",
                "bottom": f"{b}_a",
                "top": f"{b}_a",
                "dropout_param": drop,
            }
        )
    return layers + _conv(f"{b}_b", f"{b}_a", c) + _sum(b, prev, f"{b}_b")


def resnet_spec(
    n: int, c: int = 8, hw: int = 8, batch: int = 2, odd: int | None = None, dropout: float = 0.3
) -> dict:
    """A tiny Caffe-style ResNet: stem, a projection block (1×1 conv shortcut), `n` identical
    basic blocks (conv-BN-Scale-ReLU-Dropout-conv-BN-Scale, identity shortcut, Eltwise SUM,
    ReLU), global average pooling, InnerProduct 10, SoftmaxWithLoss and Accuracy. `odd`: the
    index of one block whose first conv has c // 2 outputs (it breaks the run there)."""
    layers = [
        {
            "name": "data",
            "type": "Input",
            "top": ["data", "label"],
            "input_param": {"shape": [{"dim": [batch, 3, hw, hw]}, {"dim": [batch]}]},
        }
    ]
    layers += _conv("stem", "data", c) + [_relu("stem_relu", "stem")]
    layers += _conv("p_a", "stem", c) + [_relu("p_a_relu", "p_a")] + _conv("p_b", "p_a", c)
    layers += _conv("p_short", "stem", c, k=1) + _sum("p", "p_b", "p_short")
    prev = "p"
    for k in range(n):
        layers += _basic_block(f"b{k}", prev, c, c // 2 if k == odd else c, dropout)
        prev = f"b{k}"
    layers += [
        {
            "name": "pool",
            "type": "Pooling",
            "bottom": prev,
            "top": "pool",
            "pooling_param": {"pool": "AVE", "global_pooling": True},
        },
        {
            "name": "fc",
            "type": "InnerProduct",
            "bottom": "pool",
            "top": "fc",
            "inner_product_param": {"num_output": 10},
        },
        {"name": "loss", "type": "SoftmaxWithLoss", "bottom": ["fc", "label"], "top": "loss"},
        {"name": "acc", "type": "Accuracy", "bottom": ["fc", "label"], "top": "acc"},
    ]
    return {"name": f"resnet_{n}", "layers": layers, "solver": SOLVER}


def resnet50_spec(batch: int) -> dict:
    """models/resnet50_caffe.yaml with a batch of `batch`, labels and a SoftmaxWithLoss."""
    data = yaml.safe_load((ROOT / "models" / "resnet50_caffe.yaml").read_text())
    data["input_dim"] = [batch, *data["input_dim"][1:]]
    data["layers"] = [dict(layer) for layer in data["layers"] if layer["name"] != "prob"]
    data["layers"].insert(
        0,
        {
            "name": "labels",
            "type": "Input",
            "top": "label",
            "input_param": {"shape": [{"dim": [batch]}]},
        },
    )
    data["layers"].append(
        {"name": "loss", "type": "SoftmaxWithLoss", "bottom": ["fc1000", "label"], "top": "loss"}
    )
    data["solver"] = SOLVER
    return data


def write(spec: dict, folder: str) -> str:
    path = Path(folder) / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def measure(path: str, scan: bool) -> dict:
    """Lowering and compile seconds of the train step of `path`, scanned or unrolled."""
    import jax

    import netc
    from netc.compiler.lower import lower

    model = netc.load(path, phase="TRAIN")
    model._net = lower(model.plan, scan_blocks=scan)
    params, state = model.init(0)
    opt_state, step = model.train_step()
    rng = np.random.default_rng(0)
    inputs = {}
    for b in model.inputs:
        shape = model.shapes[b]
        inputs[b] = (
            rng.integers(0, 10, shape) if b == "label" else rng.standard_normal(shape)
        ).astype(np.float32)
    start, cpu = time.perf_counter(), time.process_time()
    lowered = step.lower(params, state, opt_state, inputs, np.int32(0))
    lower_s = time.perf_counter() - start
    start, cpu_lower = time.perf_counter(), time.process_time() - cpu
    lowered.compile()
    compile_s = time.perf_counter() - start
    compile_cpu = time.process_time() - cpu - cpu_lower
    runs = model.net.runs
    jax.clear_caches()
    return {
        "lower_s": lower_s,
        "compile_s": compile_s,
        "compile_cpu": compile_cpu,
        "hlo_chars": len(lowered.as_text()),
        "runs": len(runs),
        "blocks": sum(r.count for r in runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="2,4,8,16")
    ap.add_argument("--no-resnet50", action="store_true")
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="netc_compile_depth_")
    nets = [
        (f"generated N={n}", write(resnet_spec(int(n)), folder)) for n in args.depths.split(",")
    ]
    if not args.no_resnet50:
        nets.append(("resnet50_caffe batch 8", write(resnet50_spec(8), folder)))
    print(
        f"{'net':<24} {'mode':<9} {'runs':>4} {'blocks':>6} {'lower s':>8} {'compile s':>9} "
        f"{'compile CPU s':>13} {'HLO chars':>10}"
    )
    for label, path in nets:
        for scan in (True, False):
            r = measure(path, scan)
            print(
                f"{label:<24} {'scan' if scan else 'unrolled':<9} {r['runs']:>4} "
                f"{r['blocks']:>6} {r['lower_s']:>8.2f} {r['compile_s']:>9.2f} "
                f"{r['compile_cpu']:>13.2f} {r['hlo_chars']:>10,}",
                flush=True,
            )


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
