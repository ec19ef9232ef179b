"""Pooling with Caffe's output-size rule: CEIL rounding by default, FLOOR on request, and the clip
of a last window that would start in the padding; and SPP (spatial pyramid pooling), which is a
stack of such poolings. Adaptive pooling (`output_size`, PyTorch's AdaptiveAvgPool / AdaptiveMaxPool)
is a netc extension: the output size is given and each bin's window follows from it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from netc.compiler.layer import Layer, Shape, fmt_shape, register
from netc.compiler.layers.geometry import Window, axis_name, warn_unread, window
from netc.spec.errors import SpecError
from netc.spec.messages import PoolingParameter, SPPParameter

FLT_MAX = 3.4028234663852886e38  # Caffe's −FLT_MAX: a MAX window that holds no input
FLT_MIN = 1.1754943508222875e-38  # Caffe's STOCHASTIC test-time denominator starts here


def pooled_size(size: int, k: int, s: int, p: int, round_mode: str) -> int:
    """Caffe's PoolingLayer::Reshape for one axis (may return ≤ 0; the caller reports it)."""
    span = size + 2 * p - k
    out = (-(-span // s) if round_mode == "CEIL" else span // s) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1  # the last window must start inside the image or the left padding
    return out


@dataclass(frozen=True)
class PoolGeometry:
    """A pooling resolved for its input shape once, at plan time (Layer.resolve); apply reads it
    as ctx.layer.resolved. Per spatial axis: the input is cut to `keep` positions (FLOOR drops
    the rest) and padded by `pads` (Caffe's pad before; after it, as far as the last window
    reaches), so that windows j·stride + [0, kernel) tile it exactly."""

    window: Window
    size: tuple[int, ...]  # input spatial dims
    out: tuple[int, ...]  # output spatial dims
    keep: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, w: Window, size: tuple[int, ...], out: tuple[int, ...]) -> PoolGeometry:
        need = [(o - 1) * s + k - p for o, s, k, p in zip(out, w.stride, w.kernel, w.pad, strict=True)]
        return cls(w, tuple(size), tuple(out), tuple(min(n, e) for n, e in zip(size, need)),
                   tuple((p, max(0, e - n)) for p, n, e in zip(w.pad, size, need)))

    @property
    def tiles(self) -> bool:
        """The windows tile the input exactly: no padding, no overlap, nothing dropped."""
        w = self.window
        return (w.kernel == w.stride and not any(w.pad)
                and all(o * k == n for o, k, n in zip(self.out, w.kernel, self.size)))

    def divisors(self):
        """AVE's divisor per output: Caffe divides by the window clipped to the padded input
        (not to the image); a window wholly past it holds nothing and gets 1."""
        import numpy as np

        w, n = self.window, len(self.out)
        div = np.ones(self.out, np.float32)
        for i in range(n):
            size, k, s, p = self.size[i], w.kernel[i], w.stride[i], w.pad[i]
            start = np.arange(self.out[i]) * s - p
            extent = np.maximum(np.minimum(start + k, size + p) - start, 1)
            div = div * extent.reshape((-1,) + (1,) * (n - 1 - i))
        return div


def adaptive_bins(size: int, out: int) -> tuple[tuple[int, int], ...]:
    """PyTorch's adaptive pooling bins on one axis: bin i pools [floor(i·size/out),
    ceil((i+1)·size/out)). Bins may overlap (size not divisible by out) or repeat (out > size)."""
    return tuple((i * size // out, -(-(i + 1) * size // out)) for i in range(out))


@dataclass(frozen=True)
class AdaptiveGeometry:
    """An adaptive pooling resolved for its input shape: per spatial axis the input size, the
    output size and each output position's [start, end) bin."""

    size: tuple[int, ...]
    out: tuple[int, ...]

    def bins(self, axis: int) -> tuple[tuple[int, int], ...]:
        return adaptive_bins(self.size[axis], self.out[axis])


def adaptive_pool(x, method: str, g: AdaptiveGeometry):
    """MAX / AVE over PyTorch's adaptive bins. Both are separable over the axes (a bin is the
    product of per-axis intervals), so each axis is pooled in turn: an axis whose size divides
    by its output pools equal, disjoint bins by a reshape; otherwise AVE multiplies by the
    out×size averaging matrix and MAX stacks each bin's maximum."""
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    for i, (n, o) in enumerate(zip(g.size, g.out)):
        a = 2 + i
        if n == o:
            continue
        if n % o == 0:
            split = x.shape[:a] + (o, n // o) + x.shape[a + 1:]
            x = (jnp.max if method == "MAX" else jnp.mean)(x.reshape(split), axis=a + 1)
            continue
        bins = g.bins(i)
        if method == "MAX":
            x = jnp.stack([jnp.max(lax.slice_in_dim(x, s, e, axis=a), axis=a) for s, e in bins], a)
            continue
        m = np.zeros((o, n), np.float32)
        for j, (s, e) in enumerate(bins):
            m[j, s:e] = 1.0 / (e - s)
        y = jnp.tensordot(x, jnp.asarray(m, x.dtype), axes=([a], [1]),
                          precision=lax.Precision.HIGHEST)
        x = jnp.moveaxis(y, -1, a)
    return x


def _pad_to_windows(x, g: PoolGeometry, value):
    """`x` cut and padded with `value` so that the windows tile it exactly (PoolGeometry)."""
    import jax.numpy as jnp

    x = x[(slice(None), slice(None)) + tuple(slice(0, c) for c in g.keep)]
    return jnp.pad(x, ((0, 0), (0, 0)) + g.pads, constant_values=value)


def _windows(xp, g: PoolGeometry):
    """N×C×K×out...: the K = Π kernel elements of every window, in Caffe's row-major scan order."""
    import itertools

    import jax.numpy as jnp

    return jnp.stack([xp[(slice(None), slice(None)) + tuple(
        slice(o, o + (n - 1) * s + 1, s) for o, n, s in zip(off, g.out, g.window.stride))]
        for off in itertools.product(*(range(k) for k in g.window.kernel))], 2)


def _stochastic(x, g: PoolGeometry, ctx) -> list:
    """Caffe's STOCHASTIC pooling: TRAIN samples an element with probability ∝ its value; TEST
    takes the probability-weighted average."""
    import jax
    import jax.numpy as jnp

    win = _windows(_pad_to_windows(x, g, 0.0), g)
    if not ctx.train:  # the probability-weighted average Σx² / (FLT_MIN + Σx)
        total = jnp.sum(win, 2)
        # An all-zero window gives 0 (Caffe: 0 / FLT_MIN); dividing by 1 there keeps its
        # gradient finite (0) instead of 0 · 1/FLT_MIN².
        return [jnp.sum(win * win, 2) / (FLT_MIN + jnp.where(total == 0, 1.0, total))]
    if ctx.rng is None:
        raise ValueError(f"STOCHASTIC pooling layer '{ctx.layer.name}' needs an rng in TRAIN")
    # Caffe: the first element whose running sum reaches u·Σx, u ~ U[0, 1)
    cum = jnp.cumsum(win, 2)
    thresh = jax.random.uniform(ctx.rng, cum[:, :, -1].shape, x.dtype) * cum[:, :, -1]
    pick = jnp.argmax(cum >= thresh[:, :, None], axis=2)[:, :, None]
    return [jnp.take_along_axis(win, pick, 2)[:, :, 0]]


def _first_max_mask(win, y, axes: tuple[int, ...], kernel: tuple[int, ...]):
    """True at each window's FIRST maximum in Caffe's row-major scan order (Caffe's `>` keeps
    the first of tied maxima): the smallest window offset whose value equals the max `y`."""
    import jax.numpy as jnp
    from jax import lax

    offset = 0
    for k, a in zip(kernel, axes):
        offset = offset * k + lax.broadcasted_iota(jnp.int32, win.shape, a)
    ties = jnp.where(win == jnp.expand_dims(y, axes), offset, math.prod(kernel))
    return offset == jnp.min(ties, axis=axes, keepdims=True)


def _max_tiled(x, g: PoolGeometry, last: bool = False):
    """MAX over windows that tile the input exactly (LeNet's 2×2/2): a reshape splits each
    spatial axis into (out, kernel) and a max reduces the kernel axes. The gradient goes to each
    window's first maximum only, as in Caffe: the forward saves that one-hot mask (in x's
    layout) and the backward is one select of the upsampled cotangent. Against gathering each
    window's argmax (whose backward XLA CPU runs as a serial scatter), LeNet's train step (batch
    64, alternating windows in one process, samples per CPU-second, load ~5): +10% with both
    convs in oneDNN; with conv1 by im2col too (Convolution._use_kernel) 1,633 -> 2,071; bfloat16
    963 -> 995; but XLA alone (no kernels) 1,578 -> 1,477, as XLA fuses conv2's im2col input
    gradient (a sum of 25 pads) into this select and so computes it once per window element.
    `last`: written on the channels-last view of x (where the native kernels keep activations
    channels-last in memory, compiler/kernels/onednn.py channels_last), so that the reshape to
    windows is a view there too and XLA keeps the layout instead of copying around the pool."""
    import jax
    import jax.numpy as jnp

    n, kernel = len(g.out), g.window.kernel
    windows = tuple(d for o, k in zip(g.out, kernel) for d in (o, k))
    if last:  # the same on N×spatial×C, which reshapes to windows without moving memory
        split, first = x.shape[:1] + windows + x.shape[1:2], 1
        to, back = (lambda a: jnp.moveaxis(a, 1, -1)), (lambda a: jnp.moveaxis(a, -1, 1))
    else:
        split, first = x.shape[:2] + windows, 2
        to = back = lambda a: a  # noqa: E731
    axes = tuple(first + 1 + 2 * i for i in range(n))  # each window's kernel axes

    def fwd(x_):
        win = to(x_).reshape(split)
        y = jnp.max(win, axis=axes)
        return back(y), _first_max_mask(win, y, axes, kernel).reshape(to(x_).shape)

    def bwd(mask, dy):
        dy = to(dy)
        for i, k in enumerate(kernel):
            dy = jnp.repeat(dy, k, axis=first + i)
        return (back(jnp.where(mask, dy, jnp.zeros((), dy.dtype))),)

    pool_max = jax.custom_vjp(lambda x_: fwd(x_)[0])
    pool_max.defvjp(fwd, bwd)
    return [pool_max(x)]


def _channels_last(ctx, x) -> bool:
    """Whether x is channels-last in memory around here: the native kernels are in use in this
    walk and take activations of x's rank channels-last (onednn.activation_layout)."""
    from netc.compiler.kernels.onednn import activation_layout, usable

    return activation_layout(x.ndim) is not None and usable(ctx, x, bfloat16=True)


def pool(x, method: str, g: PoolGeometry, ctx, *, mask: bool = False) -> list:
    """Pool N×C×spatial `x` as `g` resolved (Caffe's forward passes; autodiff gives the backward)."""
    import jax.numpy as jnp
    from jax import lax

    w = g.window
    if method == "STOCHASTIC":
        return _stochastic(x, g, ctx)
    if method == "MAX" and not mask and g.tiles:
        return _max_tiled(x, g, _channels_last(ctx, x))
    xp = _pad_to_windows(x, g, -jnp.inf if method == "MAX" else 0.0)
    dims, strides = (1, 1) + w.kernel, (1, 1) + w.stride
    if method == "MAX":
        # A Python scalar −inf init lets JAX recognise the max monoid (differentiable).
        y = lax.reduce_window(xp, -jnp.inf, lax.max, dims, strides, "VALID")
        y = jnp.where(y == -jnp.inf, -FLT_MAX, y)  # a window wholly outside the input
        if not mask:
            return [y]
        # Caffe's top mask: the flat index into the input plane of the first maximum (−1: none).
        plane = jnp.arange(math.prod(g.size), dtype=x.dtype).reshape((1, 1) + g.size)
        first = jnp.argmax(_windows(xp, g), axis=2)[:, :, None]
        idx = jnp.broadcast_to(_windows(_pad_to_windows(plane, g, -1.0), g),
                               x.shape[:2] + (math.prod(w.kernel),) + g.out)
        return [y, lax.stop_gradient(jnp.take_along_axis(idx, first, 2)[:, :, 0])]
    if method == "L2":  # sqrt(Σ x²); the padding adds 0; gradient 0 where the window is all 0
        total = lax.reduce_window(xp * xp, 0.0, lax.add, dims, strides, "VALID")
        safe = jnp.where(total > 0, total, 1.0)
        return [jnp.where(total > 0, jnp.sqrt(safe), 0.0)]
    total = lax.reduce_window(xp, 0.0, lax.add, dims, strides, "VALID")
    return [total / jnp.asarray(g.divisors(), x.dtype)]  # AVE


@register
class Pooling(Layer):
    type = "Pooling"
    param_field = "pooling_param"
    Param = PoolingParameter
    geometry = "window"
    tops = (1, 2)
    summary = ("MAX / AVE / L2 / STOCHASTIC pooling over N-D windows; Caffe's CEIL rounding by "
               "default, FLOOR on request; MAX's optional second top is the argmax mask. "
               "output_size (a netc extension): adaptive MAX / AVE pooling to that size, with "
               "PyTorch's bins [floor(i·n/out), ceil((i+1)·n/out)).")
    example = """\
name: pool1
type: Pooling
bottom: conv1
top: pool1
pooling_param:
  pool: MAX
  kernel_size: 2
  stride: 2
"""

    @property
    def adaptive(self) -> bool:
        return bool(self.p.output_size)

    def _adaptive(self, x: Shape) -> AdaptiveGeometry:
        p = self.p
        n = len(x) - 2
        if n < 1:
            raise SpecError(f"needs N×C×spatial input; input is {fmt_shape(x)}")
        given = p.model_fields_set
        for name in ("kernel_size", "kernel_h", "kernel_w", "stride", "stride_h", "stride_w",
                     "pad", "pad_h", "pad_w", "global_pooling", "round_mode"):
            if name in given:
                raise SpecError(f"output_size (adaptive pooling) takes each window from the input "
                                f"and output sizes; do not set {name}", ("pooling_param", name))
        if p.pool not in ("MAX", "AVE"):
            raise SpecError(f"adaptive pooling (output_size) is MAX or AVE, not {p.pool}",
                            ("pooling_param", "pool"))
        if len(p.output_size) not in (1, n):
            raise SpecError(f"output_size has {len(p.output_size)} values; give 1 or {n} (one per "
                            f"spatial axis of the input {fmt_shape(x)})",
                            ("pooling_param", "output_size"))
        out = tuple(p.output_size) * n if len(p.output_size) == 1 else tuple(p.output_size)
        return AdaptiveGeometry(tuple(x[2:]), out)

    def _window(self, x: Shape) -> Window:
        p = self.p
        n = len(x) - 2
        if n < 1:
            raise SpecError(f"needs N×C×spatial input; input is {fmt_shape(x)}")
        if p.global_pooling:
            if p.kernel_size or p.kernel_h is not None or p.kernel_w is not None:
                raise SpecError("global_pooling takes the window from the input; do not set kernel_size",
                                ("pooling_param", "kernel_size"))
            w = window(p.model_copy(update={"kernel_size": tuple(x[2:])}), n, "pooling_param",
                       dilation=False)
            if any(s != 1 for s in w.stride) or any(w.pad):
                raise SpecError("global_pooling needs stride 1 and pad 0", ("pooling_param",))
            return w
        w = window(p, n, "pooling_param", dilation=False)
        for i in range(n):
            if w.pad[i] >= w.kernel[i]:
                raise SpecError(f"pad {w.pad[i]} must be smaller than the kernel {w.kernel[i]} "
                                f"(axis {axis_name(i, n)})", ("pooling_param", "pad"))
        if p.pool == "STOCHASTIC" and any(w.pad):
            raise SpecError("STOCHASTIC pooling takes no pad (Caffe pads only MAX and AVE pooling)",
                            ("pooling_param", "pad" if p.pad else "pad_h" if p.pad_h else "pad_w"))
        return w

    def _sizes(self, x: Shape, w: Window) -> tuple[int, ...]:
        n = len(x) - 2
        out = []
        for i in range(n):
            size, k, s, p = x[2 + i], w.kernel[i], w.stride[i], w.pad[i]
            o = pooled_size(size, k, s, p, self.p.round_mode)
            if size + 2 * p < k or o <= 0:
                raise SpecError(
                    f"output would be empty: input {fmt_shape(x)}, on axis {axis_name(i, n)} the padded "
                    f"input {size} + 2·{p} = {size + 2 * p} is smaller than the kernel {k}",
                    ("pooling_param", "kernel_size"))
            out.append(o)
        return tuple(out)

    def resolve(self, bottoms) -> PoolGeometry | AdaptiveGeometry:
        """The one computation of the geometry (window, Caffe's output size, cut and pads; or
        the adaptive bins)."""
        x = bottoms[0]
        if self.adaptive:
            return self._adaptive(x)
        w = self._window(x)
        return PoolGeometry.of(w, x[2:], self._sizes(x, w))

    def infer(self, bottoms):
        x = bottoms[0]
        g = self.resolve(bottoms)
        if self.adaptive:
            if len(self.spec.top) == 2:
                raise SpecError("adaptive pooling (output_size) has no argmax mask: give one top",
                                ("top",))
            return [x[:2] + g.out]
        if len(self.spec.top) == 2 and self.p.pool != "MAX":
            raise SpecError(f"a second top (the argmax mask) comes only from MAX pooling, "
                            f"not {self.p.pool}", ("top",))
        warn_unread(self, g.size, g.window, g.window.pad, g.out, ("pooling_param", "stride"))
        return [x[:2] + g.out] * len(self.spec.top)

    def window(self, bottoms):
        if self.adaptive:
            return None  # bins of unequal size and fractional stride: not tracked
        w = self._window(bottoms[0])
        return list(zip(w.extent, w.stride))

    def describe(self) -> str:
        p = self.p
        if p.output_size:
            return f"{p.pool} adaptive {'×'.join(map(str, p.output_size))}"
        if p.global_pooling:
            return f"{p.pool} global"
        return f"{p.pool} {p.round_mode}"

    def macs(self, bottoms, tops):
        return 0  # comparisons / additions, not multiply-accumulates

    def describe_lowering(self, resolved, kernel_dtype: str = "float32") -> str:
        method = self.p.pool
        if self.adaptive:
            return f"{method} adaptive: per-axis reshape / bins"
        if method == "STOCHASTIC":
            return "STOCHASTIC: windows + categorical draw"
        if method == "MAX" and len(self.spec.top) == 1 and resolved is not None and resolved.tiles:
            return "MAX: tiled reshape + first-max mask"
        if method == "MAX" and len(self.spec.top) == 2:
            return "MAX: reduce_window + argmax mask"
        return f"{method}: reduce_window"

    def apply(self, params, bottoms, ctx):
        if self.adaptive:
            return [adaptive_pool(bottoms[0], self.p.pool, ctx.layer.resolved)]
        return pool(bottoms[0], self.p.pool, ctx.layer.resolved, ctx, mask=len(self.spec.top) == 2)


@register
class SPP(Layer):
    type = "SPP"
    param_field = "spp_param"
    Param = SPPParameter
    summary = ("Spatial pyramid pooling (Caffe's SPPLayer): level l pools the whole N×C×H×W input "
               "into 2^l × 2^l bins; the levels are flattened and concatenated into "
               "N × C·Σ4^l (pyramid_height 1: the one N×C×1×1 pooling).")
    example = """\
name: spp
type: SPP
bottom: conv5
top: spp
spp_param:
  pyramid_height: 3
  pool: MAX
"""

    def levels(self, x: Shape) -> list[PoolGeometry]:
        """Per level, Caffe's SPPLayer::GetPoolingParam window and the pooled H×W (CEIL rule).
        Its windows (kernel = stride, pad < kernel) always read every input position."""
        if len(x) != 4:
            raise SpecError(f"needs N×C×H×W input; input is {fmt_shape(x)}")
        out = []
        for level in range(self.p.pyramid_height):
            bins = 2**level
            kernel, pad, sizes = [], [], []
            for size, name in zip(x[2:], "HW"):
                k = -(-size // bins)
                p = (k * bins - size + 1) // 2
                if p >= k:
                    raise SpecError(
                        f"the input {fmt_shape(x)} is too small for pyramid level {level} "
                        f"({bins}×{bins} bins): on axis {name} Caffe would pool {size} with kernel {k} "
                        f"and pad {p}, and the pad must be smaller than the kernel",
                        ("spp_param", "pyramid_height"))
                if p and self.p.pool == "STOCHASTIC":
                    raise SpecError(
                        f"pool STOCHASTIC needs H and W divisible by the {bins} bins of level {level}: "
                        f"on axis {name} Caffe would pad {size} by {p}, and it pads only MAX and AVE "
                        f"pooling (input {fmt_shape(x)})", ("spp_param", "pool"))
                kernel.append(k)
                pad.append(p)
                sizes.append(pooled_size(size, k, k, p, "CEIL"))
            w = Window(tuple(kernel), tuple(kernel), tuple(pad), (1, 1))
            out.append(PoolGeometry.of(w, x[2:], tuple(sizes)))
        return out

    def resolve(self, bottoms) -> tuple[PoolGeometry, ...]:
        return tuple(self.levels(bottoms[0]))

    def infer(self, bottoms):
        x = bottoms[0]
        levels = self.resolve(bottoms)
        if len(levels) == 1:
            return [x[:2] + levels[0].out]
        return [(x[0], x[1] * sum(math.prod(g.out) for g in levels))]

    def describe(self) -> str:
        return f"{self.p.pool} {self.p.pyramid_height} levels"

    def apply(self, params, bottoms, ctx):
        import dataclasses

        import jax
        import jax.numpy as jnp

        x = bottoms[0]
        pooled = []
        for level, g in enumerate(ctx.layer.resolved):
            rng = None if ctx.rng is None else jax.random.fold_in(ctx.rng, level)
            pooled.append(pool(x, self.p.pool, g, dataclasses.replace(ctx, rng=rng))[0])
        if len(pooled) == 1:
            return pooled
        return [jnp.concatenate([y.reshape(y.shape[0], -1) for y in pooled], 1)]
