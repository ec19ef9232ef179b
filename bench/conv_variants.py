"""Two convolution lowering choices of compiler/layers/conv.py, measured with netc's own
functions (not copies):

    python bench/conv_variants.py im2col      # LeNet's im2col convs: patches by one gather vs
                                              # stacked shifted slices (compile s, forward ms)
    python bench/conv_variants.py depthwise   # MobileNet v2's depthwise 3x3 convs: XLA's grouped
                                              # lax.conv vs netc's shifted multiply-adds
    python bench/conv_variants.py onednn      # the pure-XLA lowering netc picks by shape vs
                                              # oneDNN's primitives (compiler/kernels/onednn.py)
                                              # on the layers of LeNet, CIFAR ResNet-18 (batch
                                              # 128) and MobileNet v2 at 96x96 (batch 64)

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


def row(name: str, f, x, wt, wrt=(0, 1)) -> None:
    """`wrt`: what the backward differentiates (a net's first layer needs no input gradient)."""
    def grads(a, b):
        return jax.grad(lambda a_, b_: jnp.sum(f(a_, b_) ** 2), wrt)(a, b)

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


# (name, batch, in channels, size, out channels, kernel, stride, pad, groups)
NET_LAYERS = [
    ("LeNet conv1", 64, 1, 28, 20, 5, 1, 0, 1), ("LeNet conv2", 64, 20, 12, 50, 5, 1, 0, 1),
    ("R18 conv1", 128, 3, 32, 64, 3, 1, 1, 1), ("R18 64@32", 128, 64, 32, 64, 3, 1, 1, 1),
    ("R18 64->128 s2", 128, 64, 32, 128, 3, 2, 1, 1), ("R18 128@16", 128, 128, 16, 128, 3, 1, 1, 1),
    ("R18 proj 1x1 s2", 128, 64, 32, 128, 1, 2, 0, 1), ("R18 256@8", 128, 256, 8, 256, 3, 1, 1, 1),
    ("R18 512@4", 128, 512, 4, 512, 3, 1, 1, 1), ("MBv2 conv1 s2", 64, 3, 96, 32, 3, 2, 1, 1),
    ("MBv2 dw 96@24", 64, 96, 24, 96, 3, 1, 1, 96), ("MBv2 dw 144@24 s2", 64, 144, 24, 144, 3, 2, 1, 144),
    ("MBv2 pw 16->96@48", 64, 16, 48, 96, 1, 1, 0, 1), ("MBv2 pw 384->64@6", 64, 384, 6, 64, 1, 1, 0, 1),
    ("AlexNet conv2 g2", 32, 96, 27, 256, 5, 1, 2, 2), ("AlexNet conv4 g2", 32, 384, 13, 384, 3, 1, 1, 2),
]


def xla_choice(c: int, k: int, g: C.ConvGeometry, groups: int):
    """The pure-XLA lowering compiler/layers/conv.py picks for this shape (its rules, restated)."""
    size = c * k * k * g.out[0] * g.out[1]
    if groups > 1:
        return ("depthwise", lambda a, b: C._depthwise_conv(a, b, g)) if groups == c else \
            ("grouped lax.conv", lambda a, b: C._lax_conv(a, b, g, groups))
    if size <= C.IM2COL_MAX_ELEMENTS:
        return "im2col", lambda a, b: C._im2col_conv(a, b, g)
    if size <= C.GRAD_MATMUL_MAX_ELEMENTS:
        return "lax.conv, dW matmuls", C._conv_matmul_grad(g)
    return "lax.conv", lambda a, b: C._lax_conv(a, b, g)


# transposed convolutions (name, batch, in channels, size, out channels, kernel, stride, pad)
DECONV_LAYERS = [
    ("FCN-32s upscore (bilinear)", 4, 21, 16, 21, 64, 32, 0),
    ("FCN-8s upscore2", 8, 21, 16, 21, 4, 2, 0),
    ("U-Net up 2x2 512->256@28", 8, 512, 28, 256, 2, 2, 0),
    ("U-Net up 2x2 128->64@56", 8, 128, 56, 64, 2, 2, 0),
]


# 1-D and 3-D convolutions (name, batch, in channels, size, out channels, kernel, dilation, pads)
ND_LAYERS = [
    ("1-D WaveNet dilated causal", 16, 32, (1024,), 32, (2,), (4,), ((4, 0),)),
    ("1-D TDNN", 32, 64, (200,), 64, (5,), (1,), ((2, 2),)),
    ("3-D 16@16^3", 4, 16, (16, 16, 16), 16, (3, 3, 3), (1, 1, 1), ((1, 1),) * 3),
]


def nd_geometry(size, kernel, dilation, pads) -> C.ConvGeometry:
    w = Window(kernel=kernel, stride=(1,) * len(kernel), pad=(0,) * len(kernel), dilation=dilation)
    out = tuple(z + lo + hi - (k - 1) * d - 1 + 1
                for z, (lo, hi), k, d in zip(size, pads, kernel, dilation))
    return C.ConvGeometry(1, w, pads, out)


def deconv_layer(n: int, c: int, h: int, o: int, k: int, s: int, p: int, kernels: bool):
    """f(x, w): netc's own Deconvolution layer (planned and lowered from a spec) on x."""
    import tempfile

    from netc.compiler.lower import lower
    from netc.compiler.report import check_file

    spec = (f"layers:\n- {{name: in, type: Input, top: x, input_param: {{shape: {{dim: [{n}, {c}, "
            f"{h}, {h}]}}}}}}\n- {{name: up, type: Deconvolution, bottom: x, top: y, "
            f"convolution_param: {{num_output: {o}, kernel_size: {k}, stride: {s}, pad: {p}, "
            f"bias_term: false}}}}\n")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write(spec)
    _, plan = check_file(fh.name, shown="TRAIN")
    net = lower(plan, kernels=kernels)
    return lambda x, w: net.apply({"up": {"weight": w}}, {}, {"x": x}, outputs=["y"])[0]["y"]


def onednn(only: str = "") -> None:
    """Every layer of NET_LAYERS, ND_LAYERS and DECONV_LAYERS whose name contains `only`."""
    from netc.compiler.kernels import onednn as K

    print(K.status().detail)
    rng = np.random.default_rng(0)
    for name, n, c, h, o, k, s, p, groups in NET_LAYERS:
        if only not in name:
            continue
        g = geometry(h, k, s, p)
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        wt = rng.standard_normal((o, c // groups, k, k), dtype=np.float32)
        label, f = xla_choice(c, k, g, groups)
        print(f"{name}: N {n}, C {c}, {h}x{h}, O {o}, {k}x{k} stride {s}, groups {groups}")
        wrt = (1,) if c <= 3 else (0, 1)  # a first layer: no input gradient
        row(f"XLA ({label})", f, x, wt, wrt)
        row("oneDNN", C._onednn_conv(g, groups), x, wt, wrt)
    for name, n, c, size, o, k, d, pads in ND_LAYERS:
        if only not in name:
            continue
        g = nd_geometry(size, k, d, pads)
        x = rng.standard_normal((n, c, *size), dtype=np.float32)
        wt = rng.standard_normal((o, c, *k), dtype=np.float32)
        print(f"{name}: N {n}, C {c}, {size}, O {o}, kernel {k}, dilation {d}")
        row("XLA (lax.conv)", lambda a, b, g_=g: C._lax_conv(a, b, g_), x, wt)
        row("oneDNN", C._onednn_conv(g), x, wt)
    for name, n, c, h, o, k, s, p in DECONV_LAYERS:
        if only not in name:
            continue
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        wt = rng.standard_normal((c, o, k, k), dtype=np.float32)
        print(f"{name}: Deconvolution N {n}, C {c}, {h}x{h}, O {o}, {k}x{k} stride {s}, pad {p}")
        row("XLA (lhs-dilated lax.conv)", deconv_layer(n, c, h, o, k, s, p, False), x, wt)
        row("oneDNN", deconv_layer(n, c, h, o, k, s, p, True), x, wt)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "im2col"
    {"im2col": im2col, "depthwise": depthwise, "onednn": onednn}[what](*sys.argv[2:])
