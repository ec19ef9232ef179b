"""PyTorch's ResNet-50 train step on the same work as bench/gpu_resnet50.py, for the ratio: torchvision's
resnet50 (random init), batch 256 of random 224×224 images already on the GPU, SGD momentum 0.9,
weight decay 1e-4, BatchNorm in training mode; float32 (TF32 matmuls allowed, as JAX's default
precision does) and bfloat16 autocast; NCHW and channels_last. Needs torch + torchvision (the
GPU machine's image has both).

Run: python bench/gpu_resnet50_torch.py [--batch 256] [--steps 20] [--out torch.json]
"""

from __future__ import annotations

import argparse
import json
import time


def bench(batch: int, steps: int, bf16: bool, channels_last: bool) -> dict:
    import torch
    import torchvision

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = torchvision.models.resnet50().cuda().to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, 224, 224, device="cuda").to(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device="cuda")
    lossf = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = lossf(model(x), y)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"first_step_s": round(first, 3), "step_ms": round(1000 * dt / steps, 3),
            "samples_per_s": round(batch * steps / dt, 1), "final_loss": float(loss)}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "batch": args.batch,
           "runs": {}}
    for bf16 in (True, False):
        for cl in (True, False):
            name = f"{'bfloat16' if bf16 else 'float32'}{'-channels_last' if cl else ''}"
            out["runs"][name] = bench(args.batch, args.steps, bf16, cl)
            print(name, out["runs"][name], flush=True)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
