"""LeNet training step, side by side: netc (the compiled spec models/lenet.yaml with Caffe's LeNet
solver) vs a hand-written JAX + optax program vs PyTorch eager, on the same work: batch 64 of
random 1×28×28 inputs, SGD with momentum 0.9, weight decay 5e-4 (Caffe's LeNet solver).

Run: python bench/lenet_train.py [--batch 64] [--steps 200] [--repeats 5] [--only netc,jax,torch]
(also netc-bf16 / netc-fp16: netc's step in mixed precision, the solver's `precision`; torch-bf16:
PyTorch under autocast bfloat16)
Prints samples/s (median over alternating repeats) and ratios. Not a test: numbers vary by machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from harness import compare, netc_train_run, report, torch_threads  # noqa: E402


def netc_step(batch: int, precision: str = "float32", kernels: bool | None = None):
    """netc's own train step (the one `netc train` runs), through the public API; `kernels`
    False: without the oneDNN kernels (netc-xla)."""
    return netc_train_run(ROOT / "models" / "lenet.yaml", batch, precision, kernels)


def _hand_conv(x, w, im2col: bool):
    """VALID, stride-1 NHWC convolution: lax.conv, or im2col by kh·kw shifted slices stacked
    into one patch matrix and one matmul (faster for LeNet's one-channel conv1)."""
    import jax.numpy as jnp
    from jax import lax

    if not im2col:
        return lax.conv_general_dilated(
            x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    kh, kw, c, o = w.shape
    n, h, wd, _ = x.shape
    ho, wo = h - kh + 1, wd - kw + 1
    cols = jnp.stack([x[:, i : i + ho, j : j + wo, :] for i in range(kh) for j in range(kw)], 3)
    return (cols.reshape(n * ho * wo, kh * kw * c) @ w.reshape(kh * kw * c, o)).reshape(
        n, ho, wo, o
    )


def _hand_pool(x):
    """2×2/2 max pooling of NHWC `x` by a reshape and a max (not lax.reduce_window, whose
    backward XLA CPU runs as select-and-scatter: the step 1,464 vs 1,824 samples per CPU-second)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def jax_step(batch: int):
    """Hand-written LeNet in JAX, the fastest of the variants measured (alternating windows in one
    process, samples per CPU-second, load ~6): NHWC; conv1 by im2col + matmul, conv2 by lax.conv
    (im2col for both: the same; lax.conv for both 1,725 vs 1,824); max pooling by reshape + max;
    optax SGD; one jitted step donating params and optimizer state."""
    import jax
    import jax.numpy as jnp
    import optax

    k = jax.random.split(jax.random.key(0), 4)

    def xavier(key, shape, fan_in):
        s = (3.0 / fan_in) ** 0.5
        return jax.random.uniform(key, shape, jnp.float32, -s, s)

    params = {
        "c1": xavier(k[0], (5, 5, 1, 20), 25),
        "b1": jnp.zeros(20),
        "c2": xavier(k[1], (5, 5, 20, 50), 500),
        "b2": jnp.zeros(50),
        "f1": xavier(k[2], (800, 500), 800),
        "g1": jnp.zeros(500),
        "f2": xavier(k[3], (500, 10), 500),
        "g2": jnp.zeros(10),
    }

    def loss_fn(p, x, y):
        x = _hand_pool(_hand_conv(x.transpose(0, 2, 3, 1), p["c1"], True) + p["b1"])
        x = _hand_pool(_hand_conv(x, p["c2"], False) + p["b2"]).reshape(batch, -1)
        x = jax.nn.relu(x @ p["f1"] + p["g1"])
        logits = x @ p["f2"] + p["g2"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    opt = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9))

    def step(p, s, x, y):
        u, s = opt.update(jax.grad(loss_fn)(p, x, y), s, p)
        return optax.apply_updates(p, u), s

    step = jax.jit(step, donate_argnums=(0, 1))
    carry = [params, opt.init(params)]

    def run(x, y):
        carry[0], carry[1] = step(carry[0], carry[1], x, y)
        return carry[0]

    return run


def torch_step(batch: int, bf16: bool = False):
    """PyTorch eager; `bf16`: forward and loss under torch.autocast (bfloat16)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    lossf = nn.CrossEntropyLoss()

    def run(x, y):
        xt, yt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y)).long()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = lossf(model(xt), yt)
        loss.backward()
        opt.step()
        return loss

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default="netc,jax,torch")
    args = ap.parse_args()
    torch = torch_threads()
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, args.batch).astype(np.int32)
    makers = {
        "netc": netc_step,
        "netc-xla": lambda b: netc_step(b, kernels=False),
        "netc-bf16": lambda b: netc_step(b, "bfloat16"),
        "netc-fp16": lambda b: netc_step(b, "float16"),
        "jax": jax_step,
        "torch": torch_step,
        "torch-bf16": lambda b: torch_step(b, bf16=True),
    }
    chosen = {
        n: (lambda m=makers[n]: m(args.batch))
        for n in args.only.split(",")
        if not (n.startswith("torch") and torch is None)
    }
    results = compare(chosen, (x, y), args.batch, args.steps, args.repeats)
    report(
        f"LeNet train step, batch {args.batch}, {args.steps} steps × {args.repeats} repeats",
        results,
    )


if __name__ == "__main__":
    main()
