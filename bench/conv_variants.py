"""Two convolution lowering choices of compiler/layers/conv.py, measured with netc's own
functions (not copies):

    python bench/conv_variants.py im2col      # LeNet's im2col convs: patches by one gather vs
                                              # stacked shifted slices (compile s, forward ms)
    python bench/conv_variants.py depthwise   # MobileNet v2's depthwise 3x3 convs: XLA's grouped
                                              # lax.conv vs netc's shifted multiply-adds

Each row: XLA compile seconds and the best of 3 timed calls (ms), forward and forward+backward
(gradients of Σ y² w.r.t. input and weight). Not a test.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from netc.compiler.layers import conv as C
from netc.compiler.layers.geometry import Window


def timed(fn, *args) -> tuple[float, float]:
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    jax.block_until_ready(compiled(*args))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - t)
    return compile_s, best * 1e3


def geometry(h: int, k: int, s: int, p: int) -> C.ConvGeometry:
    w = Window(kernel=(k, k), stride=(s, s), pad=(p, p), dilation=(1, 1))
    o = (h + 2 * p - k) // s + 1
    return C.ConvGeometry(1, w, ((p, p), (p, p)), (o, o))


def row(name: str, f, x, wt) -> None:
    def grads(a, b):
        return jax.grad(lambda a_, b_: jnp.sum(f(a_, b_) ** 2), (0, 1))(a, b)

    fc, fr = timed(f, x, wt)
    gc, gr = timed(grads, x, wt)
    print(f"  {name:28s} forward: compile {fc:5.2f} s, {fr:8.2f} ms | "
          f"forward+backward: compile {gc:5.2f} s, {gr:8.2f} ms")


def im2col() -> None:
    rng = np.random.default_rng(0)
    for n, c, h, o, k in [(64, 1, 28, 20, 5), (64, 20, 12, 50, 5), (100, 20, 12, 50, 5)]:
        g = geometry(h, k, 1, 0)
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        wt = rng.standard_normal((o, c, k, k), dtype=np.float32)
        print(f"N {n}, C {c}, {h}x{h}, O {o}, {k}x{k}")
        for name, patches in [("patches by gather", C._patch_rows),
                              ("patches by stacked slices", C._slice_patch_rows)]:
            row(name, lambda a, b, p_=patches, g_=g: C._patches_times_weight(p_(a, g_), a, b, g_),
                x, wt)


def depthwise() -> None:
    rng = np.random.default_rng(0)
    for n, c, h, s in [(64, 96, 24, 1), (64, 144, 24, 2), (64, 384, 6, 1)]:
        g = geometry(h, 3, s, 1)
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        wt = rng.standard_normal((c, 1, 3, 3), dtype=np.float32)
        print(f"N {n}, C {c}, {h}x{h}, 3x3 stride {s}")
        row("grouped lax.conv", lambda a, b, g_=g, c_=c: C._lax_conv(a, b, g_, group=c_), x, wt)
        row("netc depthwise", lambda a, b, g_=g: C._depthwise_conv(a, b, g_), x, wt)


if __name__ == "__main__":
    {"im2col": im2col, "depthwise": depthwise}[sys.argv[1] if len(sys.argv) > 1 else "im2col"]()
