"""Which lowering of a 2-D convolution's forward + backward is fastest on this CPU, per layer shape?
The convolutions of CIFAR ResNet-18 (batch 128 by default), each timed as one jitted
value-and-gradient program (forward, grad-input, grad-weight) in several lowerings, beside PyTorch
eager (NCHW and channels_last) on the same shapes:

  lax-nchw     lax.conv_general_dilated in NCHW, JAX's own VJP (netc's lowering before this bench)
  lax-nhwc     the same in NHWC (transposes at the boundary included)
  dw-im2col    lax.conv forward and grad-input (NCHW), grad-weight as im2col + one matmul
  im2col       forward as im2col + one matmul, JAX's VJP of it (netc's lowering of small convs)
  im2col-cvjp  forward as im2col, backward as dw-im2col's (grad-input by XLA's transposed conv)

Run: python bench/conv_lowering.py [--batch 128] [--repeats 5] [--json OUT.json]
Times are medians of alternating repeats (ms per forward+backward); the ratio column is the best
JAX lowering against PyTorch channels_last."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

# (name, C_in, C_out, H=W of the input, kernel, stride, pad) of CIFAR ResNet-18
SHAPES = [
    ("conv1 3x3/1 3->64 @32", 3, 64, 32, 3, 1, 1),
    ("s1 3x3/1 64 @32", 64, 64, 32, 3, 1, 1),
    ("s2 3x3/2 64->128 @32", 64, 128, 32, 3, 2, 1),
    ("s2 3x3/1 128 @16", 128, 128, 16, 3, 1, 1),
    ("s2 1x1/2 64->128 @32", 64, 128, 32, 1, 2, 0),
    ("s3 3x3/1 256 @8", 256, 256, 8, 3, 1, 1),
    ("s4 3x3/1 512 @4", 512, 512, 4, 3, 1, 1),
]


def patches_nhwc(x, k, s, p, ho):
    """N×H×W×C → N×Ho×Wo×(k·k·C): the shifted, strided slices of the padded input."""
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    return jnp.concatenate([xp[:, i:i + (ho - 1) * s + 1:s, j:j + (ho - 1) * s + 1:s]
                            for i in range(k) for j in range(k)], axis=-1)


def make_lowerings(c, o, h, k, s, p):
    ho = (h + 2 * p - k) // s + 1
    pads = ((p, p), (p, p))

    def lax_nchw(x, w):
        return lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=("NCHW", "OIHW", "NCHW"))

    def lax_nhwc(x, w):
        y = lax.conv_general_dilated(x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), (s, s), pads,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y.transpose(0, 3, 1, 2)

    @jax.custom_vjp
    def dw_im2col(x, w):
        return lax_nchw(x, w)

    def fwd(x, w):
        return lax_nchw(x, w), (x, w)

    def bwd(res, dy):
        x, w = res
        _, vjp_x = jax.vjp(lambda x_: lax_nchw(x_, w), x)
        (dx,) = vjp_x(dy)
        cols = patches_nhwc(x.transpose(0, 2, 3, 1), k, s, p, ho).reshape(-1, k * k * c)
        dyt = dy.transpose(0, 2, 3, 1).reshape(-1, o)
        dw = (cols.T @ dyt).reshape(k, k, c, o).transpose(3, 2, 0, 1)
        return dx, dw

    dw_im2col.defvjp(fwd, bwd)

    def im2col(x, w):
        cols = patches_nhwc(x.transpose(0, 2, 3, 1), k, s, p, ho)
        y = cols.reshape(-1, k * k * c) @ w.transpose(2, 3, 1, 0).reshape(k * k * c, o)
        return y.reshape(x.shape[0], ho, ho, o).transpose(0, 3, 1, 2)

    @jax.custom_vjp
    def im2col_cvjp(x, w):
        return im2col(x, w)

    im2col_cvjp.defvjp(lambda x, w: (im2col(x, w), (x, w)), bwd)

    return {"lax-nchw": lax_nchw, "lax-nhwc": lax_nhwc, "dw-im2col": dw_im2col, "im2col": im2col,
            "im2col-cvjp": im2col_cvjp}


def jax_step(f):
    def loss(x, w, dy):
        return jnp.vdot(f(x, w), dy)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def torch_step(c, o, k, s, p, x, w, dy, channels_last):
    import torch

    xt = torch.tensor(x.__array__()).requires_grad_(True)
    wt = torch.tensor(w.__array__()).requires_grad_(True)
    dyt = torch.tensor(dy.__array__())
    if channels_last:
        xt = xt.detach().to(memory_format=torch.channels_last).requires_grad_(True)
        wt = wt.detach().to(memory_format=torch.channels_last).requires_grad_(True)
        dyt = dyt.to(memory_format=torch.channels_last)

    def run():
        y = torch.nn.functional.conv2d(xt, wt, stride=s, padding=p)
        gx, gw = torch.autograd.grad(y, (xt, wt), dyt)
        return gx, gw

    return run


def timed(fn, repeats_inner: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats_inner):
        out = fn()
    jax.block_until_ready(out) if not hasattr(out[0], "numpy") else None
    return (time.perf_counter() - start) / repeats_inner * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--inner", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(os.cpu_count())
    except ImportError:
        torch = None
    results = []
    for name, c, o, h, k, s, p in SHAPES:
        kx, kw, kd = jax.random.split(jax.random.key(0), 3)
        ho = (h + 2 * p - k) // s + 1
        x = jax.random.normal(kx, (args.batch, c, h, h))
        w = jax.random.normal(kw, (o, c, k, k)) * 0.1
        dy = jax.random.normal(kd, (args.batch, o, ho, ho))
        runs = {}
        ref = None
        for lname, f in make_lowerings(c, o, h, k, s, p).items():
            step = jax_step(f)
            got = step(x, w, dy)
            jax.block_until_ready(got)
            if ref is None:
                ref = got
            else:  # every lowering computes the same gradients
                for a, b in zip(ref, got):
                    err = float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30))
                    assert err < 1e-4, (name, lname, err)
            runs[lname] = (lambda step=step, x=x, w=w, dy=dy: step(x, w, dy))
        if torch is not None and not args.no_torch:
            runs["torch-nchw"] = torch_step(c, o, k, s, p, x, w, dy, False)
            runs["torch-cl"] = torch_step(c, o, k, s, p, x, w, dy, True)
            for r in ("torch-nchw", "torch-cl"):
                runs[r]()
        times = {n: [] for n in runs}
        for _ in range(args.repeats):
            for n, r in runs.items():
                times[n].append(timed(r, args.inner))
        med = {n: statistics.median(v) for n, v in times.items()}
        jax_best = min((n for n in med if not n.startswith("torch")), key=med.get)
        row = {"layer": name, "ms": med, "best_jax": jax_best}
        if "torch-cl" in med:
            row["torch_cl_over_best"] = med["torch-cl"] / med[jax_best]
        results.append(row)
        cols = "  ".join(f"{n} {v:7.1f}" for n, v in med.items())
        extra = f"  best {jax_best}" + (f", torch-cl/best {row['torch_cl_over_best']:.2f}×"
                                         if "torch_cl_over_best" in row else "")
        print(f"{name:24s} {cols}{extra}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"batch": args.batch, "jax": jax.__version__, "rows": results}, fh, indent=1)


if __name__ == "__main__":
    main()
