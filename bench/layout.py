"""Which internal layout should the compiler use on this CPU? The LeNet forward+backward written
with lax.conv in NCHW (the spec's order, no transposes) vs NHWC (channels last, a transpose at the
input). Run: python bench/layout.py [--batch 64] [--steps 100]"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax


def make(layout: str, batch: int):
    k = jax.random.split(jax.random.key(0), 2)
    if layout == "NCHW":
        dn = ("NCHW", "OIHW", "NCHW")
        w1, w2 = jax.random.normal(k[0], (20, 1, 5, 5)), jax.random.normal(k[1], (50, 20, 5, 5))
        win = (1, 1, 2, 2)
    else:
        dn = ("NHWC", "HWIO", "NHWC")
        w1, w2 = jax.random.normal(k[0], (5, 5, 1, 20)), jax.random.normal(k[1], (5, 5, 20, 50))
        win = (1, 2, 2, 1)
    f1 = jax.random.normal(k[0], (800, 500)) * 0.01

    def loss(p, x):
        if layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        x = lax.conv_general_dilated(x, p[0], (1, 1), "VALID", dimension_numbers=dn)
        x = lax.reduce_window(x, -jnp.inf, lax.max, win, win, "VALID")
        x = lax.conv_general_dilated(x, p[1], (1, 1), "VALID", dimension_numbers=dn)
        x = lax.reduce_window(x, -jnp.inf, lax.max, win, win, "VALID")
        return jnp.sum(jax.nn.relu(x.reshape(batch, -1) @ p[2]))

    g = jax.jit(jax.grad(loss))
    return g, (w1, w2, f1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    x = jax.random.normal(jax.random.key(1), (a.batch, 1, 28, 28))
    fns = {lay: make(lay, a.batch) for lay in ("NCHW", "NHWC")}
    res = {lay: [] for lay in fns}
    for g, p in fns.values():
        jax.block_until_ready(g(p, x))
    for _ in range(a.repeats):
        for lay, (g, p) in fns.items():
            t = time.perf_counter()
            for _ in range(a.steps):
                out = g(p, x)
            jax.block_until_ready(out)
            res[lay].append(a.steps * a.batch / (time.perf_counter() - t))
    for lay, v in res.items():
        print(f"{lay}: {statistics.median(v):7.0f} samples/s (forward+backward, batch {a.batch})")


if __name__ == "__main__":
    main()
