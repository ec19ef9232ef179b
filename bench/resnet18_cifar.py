"""CIFAR-size ResNet-18 training step, side by side: netc vs PyTorch eager (NCHW and
channels_last), batch 128 of random 3×32×32 inputs, SGD with momentum 0.9, weight decay 5e-4,
BatchNorm in training mode.

netc's spec is models/resnet18_torchvision.yaml turned into the CIFAR variant (3×3 stride-1 stem,
no max pool, 10 classes: 11,173,962 parameters, 0.556 GMACs per sample, so 3.33 GFLOP per sample
per train step). `--lowering` sets the convolution lowering's shape bounds for an experiment
(compiler/layers/conv.py: IM2COL_MAX_ELEMENTS, GRAD_MATMUL_MAX_ELEMENTS; "default" keeps them).

Run: python bench/resnet18_cifar.py [--batch 128] [--steps 3] [--repeats 3] [--only netc,torch,torch-cl]
(also netc-bf16 / netc-fp16: netc's step in mixed precision, the solver's `precision`; torch-cl-bf16:
PyTorch channels_last under autocast bfloat16; netc-xla:
netc without its oneDNN kernels, compiler/kernels/onednn.py)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from harness import compare, netc_train_run, report, torch_threads  # noqa: E402

FLOP_PER_SAMPLE = 3.33e9


def cifar_spec(batch: int) -> str:
    """The torchvision ResNet-18 spec with a 3×3/1 stem, no max pool, fc 10, a loss."""
    data = yaml.safe_load((ROOT / "models" / "resnet18_torchvision.yaml").read_text())
    layers = []
    for layer in data["layers"]:
        if layer["name"] == "data":
            layer = {"name": "data", "type": "Input", "top": ["data", "label"],
                     "input_param": {"shape": [{"dim": [batch, 3, 32, 32]}, {"dim": [batch]}]}}
        elif layer["name"] == "conv1":
            layer["convolution_param"].update(kernel_size=3, stride=1, pad=1)
        elif layer["name"] == "maxpool":
            continue
        elif layer.get("bottom") == "maxpool":
            layer["bottom"] = "conv1"
        elif layer["type"] == "InnerProduct":
            layer["inner_product_param"]["num_output"] = 10
        layers.append(layer)
    layers.append({"name": "loss", "type": "SoftmaxWithLoss", "bottom": [layers[-1]["top"], "label"],
                   "top": "loss"})
    for layer in layers:  # a bare name where a list was written, and the shortcut's bottom
        if layer.get("bottom") == "maxpool":
            layer["bottom"] = "conv1"
        if isinstance(layer.get("bottom"), list):
            layer["bottom"] = ["conv1" if b == "maxpool" else b for b in layer["bottom"]]
    data["layers"] = layers
    data["solver"] = {"type": "SGD", "base_lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                      "lr_policy": "fixed", "max_iter": 1}
    return yaml.safe_dump(data, sort_keys=False)


def set_lowering(which: str) -> None:
    from netc.compiler.layers import conv

    if which == "default":
        return
    for part in which.split(","):
        name, value = part.split("=")
        setattr(conv, name, int(value))


def netc_step(batch: int, precision: str = "float32", kernels: bool | None = None):
    return netc_train_run(cifar_spec(batch), batch, precision, kernels)




def torch_step(channels_last: bool, bf16: bool = False):
    def make(batch: int):
        import torch_nets

        return torch_nets.train_step(torch_nets.resnet18_cifar,
                                     "channels_last" if channels_last else "nchw", bf16)

    return make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="netc,torch,torch-cl")
    ap.add_argument("--lowering", default="default",
                    help="e.g. GRAD_MATMUL_MAX_ELEMENTS=0,IM2COL_MAX_ELEMENTS=262144")
    args = ap.parse_args()
    set_lowering(args.lowering)
    torch = torch_threads()
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, args.batch).astype(np.int32)
    makers = {"netc": netc_step, "netc-xla": lambda b: netc_step(b, kernels=False),
              "netc-bf16": lambda b: netc_step(b, "bfloat16"),
              "netc-fp16": lambda b: netc_step(b, "float16"), "torch": torch_step(False),
              "torch-cl": torch_step(True), "torch-cl-bf16": torch_step(True, bf16=True)}
    chosen = {n: (lambda m=makers[n]: m(args.batch)) for n in args.only.split(",")
              if not (n.startswith("torch") and torch is None)}
    results = compare(chosen, (x, y), args.batch, args.steps, args.repeats)
    report(f"CIFAR ResNet-18 train step, batch {args.batch}, lowering {args.lowering}, "
           f"{args.steps} steps × {args.repeats} repeats", results)
    for n, r in results.items():
        print(f"  {n}: {r['median'] * FLOP_PER_SAMPLE / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
