"""Convolution and Deconvolution (Caffe's BaseConvolutionLayer family), N-D."""

from __future__ import annotations

import math
from dataclasses import dataclass

from netc.compiler.layer import (
    Layer,
    ParamDecl,
    Shape,
    canonical_axis,
    count,
    cpu_dot_dtype,
    fmt_shape,
    register,
)
from netc.compiler.layers.geometry import Window, axis_name, axis_values, warn_unread, window
from netc.spec.errors import SpecError
from netc.spec.messages import ConvolutionParameter

# Per-sample size of the patch matrix up to which a 2-D convolution is lowered as im2col + matmul.
IM2COL_MAX_ELEMENTS = 1 << 18
# Per-sample size of the patch matrix up to which the backward pass computes a 2-D convolution's
# weight gradient as matmuls over the shifted input slices (the input gradient stays XLA's
# transposed convolution); 0 turns it off. See _ConvBase._use_grad_matmul.
GRAD_MATMUL_MAX_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class ConvGeometry:
    """A (de)convolution resolved for its input shape once, at plan time (Layer.resolve); apply
    reads it as ctx.layer.resolved. Nothing here depends on the batch."""

    axis: int  # the channel axis; the axes before it act as the batch
    window: Window
    pads: tuple[tuple[int, int], ...]  # per spatial axis (before, after), as lax.conv takes them
    out: tuple[int, ...]  # the output's spatial dims
    im2col: bool = False  # lowered as im2col + one matmul; else lax.conv_general_dilated
    grad_matmul: bool = False  # the weight gradient as one matmul per kernel offset (custom VJP)
    depthwise: bool = False  # groups == input channels: kh·kw shifted multiply-adds
    # the oneDNN kernels it uses in float32 when the Net may (compiler/kernels/onednn.py):
    # "" none, "onednn" forward and backward
    kernel: str = ""


def _shifted_slices(x, g: ConvGeometry, channels_last: bool = True) -> list:
    """N×C×H×W → the kh·kw shifted (strided, dilated) slices of the padded input, each
    N×Ho×Wo×C (channels last) or N×C×Ho×Wo, in (i, j) order."""
    import jax.numpy as jnp

    w = g.window
    xp = jnp.pad(x, ((0, 0), (0, 0)) + g.pads)
    if channels_last:
        xp = xp.transpose(0, 2, 3, 1)
    (kh, kw), (sh, sw), (dh, dw) = w.kernel, w.stride, w.dilation
    ho, wo = g.out
    rows = [slice(i * dh, i * dh + (ho - 1) * sh + 1, sh) for i in range(kh)]
    cols = [slice(j * dw, j * dw + (wo - 1) * sw + 1, sw) for j in range(kw)]
    return [xp[:, r, c] if channels_last else xp[:, :, r, c] for r in rows for c in cols]


def _patch_rows(x, g: ConvGeometry):
    """N×C×H×W → the (N·Ho·Wo, kh·kw·C) patch matrix (Caffe's im2col, transposed), by one
    gather of the padded, channels-last input. On LeNet's convolutions XLA compiles the forward
    2–5× faster than stacking the kh·kw shifted slices; it runs in 0.9× (conv1), 1.4× (conv2,
    batch 64) and 1.0× (conv2, batch 100) their time (bench/conv_variants.py im2col)."""
    import jax.numpy as jnp
    import numpy as np

    w = g.window
    xt = jnp.pad(x, ((0, 0), (0, 0)) + g.pads).transpose(0, 2, 3, 1)
    (kh, kw), (sh, sw), (dh, dw) = w.kernel, w.stride, w.dilation
    ho, wo = g.out
    rows = np.arange(ho)[:, None] * sh + np.arange(kh)[None, :] * dh  # (Ho, kh)
    cols = np.arange(wo)[:, None] * sw + np.arange(kw)[None, :] * dw  # (Wo, kw)
    patches = xt[:, rows[:, None, :, None], cols[None, :, None, :]]  # N, Ho, Wo, kh, kw, C
    return patches.reshape(x.shape[0] * ho * wo, kh * kw * x.shape[1])


def _slice_patch_rows(x, g: ConvGeometry):
    """The same patch matrix stacked from the kh·kw shifted slices: slower to compile, but its
    autodiff (pads and adds of the slices back to the input) is the fastest backward measured."""
    import jax.numpy as jnp

    cols = jnp.stack(_shifted_slices(x, g), axis=3)  # N, Ho, Wo, kh·kw, C
    n, ho, wo, k, c = cols.shape
    return cols.reshape(n * ho * wo, k * c)


def _patches_times_weight(rows, x, wt, g: ConvGeometry):
    """(N·Ho·Wo, kh·kw·C) patch rows @ the (kh·kw·C, O) weight matrix, back to N×O×Ho×Wo."""
    o, c, kh, kw = wt.shape
    y = rows @ wt.transpose(2, 3, 1, 0).reshape(kh * kw * c, o)
    return y.reshape(x.shape[0], g.out[0], g.out[1], o).transpose(0, 3, 1, 2)


def _im2col_conv(x, wt, g: ConvGeometry):
    """N×C×H×W convolution as one matmul: (N·Ho·Wo, kh·kw·C) @ (kh·kw·C, O). A forward that is
    not differentiated (testing, predict, export) gathers the patches (LeNet's TEST net compiles
    in ~1/4 of the time); under differentiation the patches are stacked slices, whose autodiff
    is the faster backward (forward+backward 5.8 vs 9.2 ms on LeNet's conv1, 11.2 vs 15.8 on
    conv2; bench/conv_variants.py im2col). Both build the same matrix: the same values."""
    import jax

    def stacked(x_, wt_):
        return _patches_times_weight(_slice_patch_rows(x_, g), x_, wt_, g)

    @jax.custom_vjp
    def conv(x_, wt_):
        return _patches_times_weight(_patch_rows(x_, g), x_, wt_, g)

    def fwd(x_, wt_):
        return jax.vjp(stacked, x_, wt_)  # (y, the VJP function: its residuals are arrays)

    conv.defvjp(fwd, lambda vjp_fn, dy: vjp_fn(dy))
    return conv(x, wt)


def _depthwise_conv(x, wt, g: ConvGeometry):
    """A 2-D convolution whose groups are its input channels (MobileNet's depthwise layers;
    channel multiplier k = O / C): y = Σ over kernel offsets of the shifted, strided slice of
    the padded input times that offset's per-channel weight. XLA CPU's grouped convolution is
    4–6× slower forward + backward on MobileNet v2's shapes (batch 64, 3×3: 96 channels at
    24×24 674 → 148 ms, 144 at stride 2 568 → 91 ms, 384 at 6×6 178 → 41 ms;
    bench/conv_variants.py depthwise)."""
    import jax.numpy as jnp

    k = wt.shape[0] // x.shape[1]
    if k > 1:  # output channel o reads input channel o // k
        x = jnp.repeat(x, k, axis=1)
    kw = g.window.kernel[1]
    y = None
    for t, tap in enumerate(_shifted_slices(x, g, channels_last=False)):  # (i, j) order
        term = tap * wt[:, 0, t // kw, t % kw][None, :, None, None]
        y = term if y is None else y + term
    return y


def _lax_conv(x, wt, g: ConvGeometry, group: int = 1):
    from jax import lax

    n = len(g.out)
    sp = "DHW"[-n:] if n <= 3 else "".join(chr(ord("a") + i) for i in range(n))
    return lax.conv_general_dilated(
        x, wt, window_strides=g.window.stride, padding=g.pads, rhs_dilation=g.window.dilation,
        dimension_numbers=("NC" + sp, "OI" + sp, "NC" + sp), feature_group_count=group)


def _conv_matmul_grad(g: ConvGeometry):
    """The 2-D convolution (forward by lax.conv) with a custom backward pass: the input
    gradient is XLA's own (lax.conv's VJP, a transposed convolution) and the weight gradient is
    Σ over kernel offsets of (shifted input slice)ᵀ · dy, a matmul each — XLA CPU's
    weight-gradient convolution is 2–10× slower (bench/conv_lowering.py, CIFAR ResNet-18 shapes
    at batch 128). Same values up to float rounding."""
    import jax
    import jax.numpy as jnp

    def bwd(x, wt, dy):
        _, vjp_x = jax.vjp(lambda x_: _lax_conv(x_, wt, g), x)
        (dx,) = vjp_x(dy)
        o, c = wt.shape[0], wt.shape[1]
        kh, kw = g.window.kernel
        rows = dy.transpose(0, 2, 3, 1).reshape(-1, o)  # (N·Ho·Wo, O)
        # one (C, N·Ho·Wo)·(N·Ho·Wo, O) matmul per kernel offset: as fast as one matmul of the
        # whole patch matrix (bench/resnet18_cifar.py), which it need not build
        dw = jnp.stack([s.reshape(-1, c).T @ rows for s in _shifted_slices(x, g)])
        return dx, dw.reshape(kh, kw, c, o).transpose(3, 2, 0, 1).astype(wt.dtype)

    return _with_vjp(lambda x, wt: _lax_conv(x, wt, g), bwd)


def _with_vjp(forward, backward):
    """forward(x, wt), differentiated by backward(x, wt, dy) → (dx, dW) (a jax.custom_vjp)."""
    import jax

    @jax.custom_vjp
    def f(x, wt):
        return forward(x, wt)

    f.defvjp(lambda x, wt: (forward(x, wt), (x, wt)), lambda res, dy: backward(*res, dy))
    return f


def _like(a):
    import jax

    return jax.ShapeDtypeStruct(a.shape, a.dtype)


def _onednn_conv(g: ConvGeometry, group: int = 1):
    """The convolution (N×C×spatial, float32 or bfloat16) as oneDNN primitives called from the XLA program
    (compiler/kernels/onednn.py): the forward, and a custom VJP whose input and weight gradients are oneDNN's backward-data and backward-weights primitives.
    XLA drops the input gradient's call where nothing uses it (a net's first convolution)."""
    import jax

    from netc.compiler.kernels.onednn import conv_call

    geo = {"strides": g.window.stride, "dilation": g.window.dilation, "pads": g.pads,
           "groups": group}

    def onednn_forward(x, wt):
        y = jax.ShapeDtypeStruct(x.shape[:1] + wt.shape[:1] + g.out, x.dtype)
        return conv_call("forward", y, x, wt, **geo)

    def backward(x, wt, dy):
        return (conv_call("backward_data", _like(x), dy, wt, **geo),
                conv_call("backward_weights", _like(wt), x, dy, **geo))

    return _with_vjp(onednn_forward, backward)


def _onednn_conv_bias(g: ConvGeometry, group: int = 1):
    """(x, wt, b) ↦ conv(x, wt) + b per channel, whose backward-weights primitive gives the bias
    gradient too (Σ dy per channel, in the same pass over dy, in float32: b is the float32
    master bias, added in x's dtype; x and wt float32, or bfloat16 where oneDNN computes it).
    Left to autodiff that sum is an XLA reduction, which XLA's CPU backend runs on row-major
    N×C×spatial only: with activations channels-last in memory (onednn.channels_last) it
    copied dy to that layout first (LeNet: conv1's and conv2's)."""
    import jax

    from netc.compiler.kernels.onednn import conv_call

    conv = _onednn_conv(g, group)
    geo = {"strides": g.window.stride, "dilation": g.window.dilation, "pads": g.pads,
           "groups": group}

    def forward(x, wt, b):
        return conv(x, wt) + b.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 2))

    def backward(res, dy):
        x, wt, b = res
        dx = conv_call("backward_data", _like(x), dy, wt, **geo)
        db = jax.ShapeDtypeStruct(b.shape, "float32")
        dw, db = conv_call("backward_weights_bias", (_like(wt), db), x, dy, **geo)
        return dx, dw, db.astype(b.dtype)

    f = jax.custom_vjp(forward)
    f.defvjp(lambda x, wt, b: (forward(x, wt, b), (x, wt, b)), backward)
    return f


def _onednn_deconv(g: ConvGeometry, group: int = 1):
    """The transposed convolution (N×C_in×spatial, float32 or bfloat16) as oneDNN primitives: it is the
    backward-data pass of the convolution from its output (O channels) back to its input, whose
    weight (C_in, O/g, k...) is Caffe's Deconvolution weight as it stands; so its forward is that
    convolution's backward-data primitive, its input gradient the convolution's forward and its
    weight gradient the convolution's backward-weights with the roles of input and output
    swapped. The geometry is the convolution's own: stride, dilation and Caffe's pad."""
    import jax

    from netc.compiler.kernels.onednn import conv_call

    w = g.window
    geo = {"strides": w.stride, "dilation": w.dilation, "pads": tuple((q, q) for q in w.pad),
           "groups": group}

    def forward(x, wt):
        y = jax.ShapeDtypeStruct(x.shape[:1] + (wt.shape[1] * group,) + g.out, x.dtype)
        return conv_call("backward_data", y, x, wt, **geo)

    def backward(x, wt, dy):
        return (conv_call("forward", _like(x), dy, wt, **geo),
                conv_call("backward_weights", _like(wt), dy, x, **geo))

    return _with_vjp(forward, backward)


def _by_onednn(g: ConvGeometry, ctx, x):
    """The dtype this (de)convolution computes in through oneDNN here, or None for XLA's
    lowering: the plan picked oneDNN for the shape, the Net may call native kernels, and
    onednn.conv_dtype admits x's dtype (float32; bfloat16 natively, or on a CPU without
    bfloat16 units and for depthwise layers widened to float32 and rounded back once, as XLA's
    CPU convolution does)."""
    from netc.compiler.kernels.onednn import conv_dtype

    if not g.kernel or not ctx.kernels:
        return None
    return conv_dtype(x.dtype, depthwise=g.depthwise)


class _ConvBase(Layer):
    param_field = "convolution_param"
    Param = ConvolutionParameter
    geometry = "window"

    def _geometry(self, x: Shape) -> tuple[int, int, Window]:
        p = self.p
        axis = canonical_axis(p.axis, len(x), ("convolution_param", "axis"))
        n = len(x) - axis - 1
        if n < 1:
            raise SpecError(f"needs at least one spatial axis after the channel axis; input is {fmt_shape(x)}")
        channels = x[axis]
        if channels % p.group:
            raise SpecError(f"group {p.group} does not divide the {channels} input channels",
                            ("convolution_param", "group"))
        if p.num_output % p.group:
            raise SpecError(f"group {p.group} does not divide num_output {p.num_output}",
                            ("convolution_param", "group"))
        return axis, n, window(p, n, "convolution_param")

    def params(self, bottoms):
        x = bottoms[0]
        axis, _, w = self._geometry(x)
        p = self.p
        out = {"weight": ParamDecl(self._weight_shape(x[axis], w), p.weight_filler)}
        if p.bias_term:
            out["bias"] = ParamDecl((p.num_output,), p.bias_filler)
        return out

    def window(self, bottoms):
        _, _, w = self._geometry(bottoms[0])
        return list(zip(w.extent, w.stride))

    def describe(self) -> str:
        return f"group {self.p.group}" if self.p.group > 1 else ""

    def _bias(self, y, params, axis):
        if "bias" in params:
            y = y + params["bias"].reshape((-1,) + (1,) * (y.ndim - axis - 1))
        return y

    @staticmethod
    def _dims(n: int):
        sp = "DHW"[-n:] if n <= 3 else "".join(chr(ord("a") + i) for i in range(n))
        return ("NC" + sp, "OI" + sp, "NC" + sp)

    def _flat(self, x, axis):
        """Caffe's `axis`: leading axes before the channel axis act as the batch."""
        lead = x.shape[:axis]
        return x.reshape((-1,) + x.shape[axis:]) if axis != 1 else x, lead


@register
class Convolution(_ConvBase):
    type = "Convolution"
    summary = ("N-D convolution (cross-correlation) with per-axis kernel, stride, pad, dilation and "
               "groups; netc extensions: pad_mode SAME / VALID / CAUSAL (1-D) or per-side "
               "pad_begin / pad_end.")
    example = """\
name: conv1
type: Convolution
bottom: data
top: conv1
param: [{lr_mult: 1}, {lr_mult: 2}]
convolution_param:
  num_output: 20
  kernel_size: 5
  stride: 1
  weight_filler: {type: xavier}
  bias_filler: {type: constant}
"""

    def pads(self, x: Shape, axis: int, n: int, w: Window) -> tuple[tuple[int, int], ...]:
        """Per spatial axis (before, after): Caffe's symmetric `pad`, explicit `pad_begin` /
        `pad_end`, or the padding `pad_mode` SAME / VALID / CAUSAL computes from the input."""
        p = self.p
        sym = "pad" if p.pad else "pad_h" if p.pad_h is not None else "pad_w" if p.pad_w is not None else ""
        side = "pad_begin" if p.pad_begin else "pad_end" if p.pad_end else ""
        if p.pad_mode != "CAFFE":
            if sym:
                raise SpecError(f"pad_mode {p.pad_mode} computes the padding itself; remove {sym}",
                                ("convolution_param", sym))
            if side:
                raise SpecError(f"{side} is explicit padding, which needs pad_mode CAFFE (the default), "
                                f"not {p.pad_mode}", ("convolution_param", side))
        if side:
            if sym:
                raise SpecError(f"give either {sym} or pad_begin/pad_end, not both", ("convolution_param", sym))
            begin = axis_values(p, "pad_begin", n, 0, "convolution_param")
            end = axis_values(p, "pad_end", n, 0, "convolution_param")
            return tuple(zip(begin, end, strict=True))
        if p.pad_mode == "SAME":  # TF/Keras: out = ceil(in / stride), the odd pixel at the end
            pads = []
            for size, e, s in zip(x[axis + 1:], w.extent, w.stride):
                total = max((-(-size // s) - 1) * s + e - size, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        if p.pad_mode == "VALID":
            return ((0, 0),) * n
        if p.pad_mode == "CAUSAL":  # output t sees inputs ≤ t only (WaveNet)
            if n != 1:
                raise SpecError(f"pad_mode CAUSAL is for 1-D inputs (N×C×L); this input {fmt_shape(x)} has "
                                f"{n} spatial axes (use pad_begin/pad_end for other layouts)",
                                ("convolution_param", "pad_mode"))
            return ((w.extent[0] - 1, 0),)
        return tuple((q, q) for q in w.pad)

    def resolve(self, bottoms) -> ConvGeometry:
        """The one computation of the geometry: pads, output dims (Caffe floors) and the
        lowering, from the input shape. infer() derives the output shape from it."""
        x = bottoms[0]
        axis, n, w = self._geometry(x)
        pads = self.pads(x, axis, n, w)
        out = []
        for i in range(n):
            size, k, s, (lo, hi) = x[axis + 1 + i], w.extent[i], w.stride[i], pads[i]
            if size + lo + hi < k:
                padded = f"{size} + 2·{lo}" if lo == hi else f"{size} + {lo} + {hi}"
                raise SpecError(
                    f"output would be empty: input {fmt_shape(x)}, on axis {axis_name(i, n)} the padded "
                    f"input {padded} = {size + lo + hi} is smaller than the kernel extent {k}",
                    ("convolution_param", "kernel_size"))
            out.append((size + lo + hi - k) // s + 1)
        out = tuple(out)
        im2col = self._use_im2col(x[axis], w, out)
        depthwise = n == 2 and self.p.group > 1 and self.p.group == x[axis]
        return ConvGeometry(axis, w, pads, out, im2col,
                            not im2col and self._use_grad_matmul(x[axis], w, out), depthwise,
                            self._use_kernel(w, x[axis], im2col))

    def infer(self, bottoms):
        x = bottoms[0]
        g = self.resolve(bottoms)
        warn_unread(self, x[g.axis + 1:], g.window, [lo for lo, _ in g.pads], g.out,
                    ("convolution_param", "stride"))
        return [x[: g.axis] + (self.p.num_output,) + g.out]

    def describe(self) -> str:
        p = self.p
        parts = [super().describe()]
        if p.pad_mode != "CAFFE":
            parts.append(f"pad_mode {p.pad_mode}")
        if p.pad_begin or p.pad_end:
            parts.append(f"pad_begin {','.join(map(str, p.pad_begin or (0,)))} "
                         f"pad_end {','.join(map(str, p.pad_end or (0,)))}")
        return ", ".join(part for part in parts if part)

    def _weight_shape(self, channels: int, w: Window) -> tuple[int, ...]:
        return (self.p.num_output, channels // self.p.group) + w.kernel

    def apply(self, params, bottoms, ctx):
        g: ConvGeometry = ctx.layer.resolved
        x = bottoms[0]
        x2, lead = self._flat(x, g.axis)
        wt = params["weight"].astype(x.dtype)
        via = _by_onednn(g, ctx, x)
        if "bias" in params and via == x.dtype.name:  # the bias gradient by oneDNN too
            y = _onednn_conv_bias(g, self.p.group)(x2, wt, params["bias"])
        elif via is not None:
            y = _onednn_conv(g, self.p.group)(x2.astype(via), wt.astype(via)).astype(x.dtype)
            y = self._bias(y, params, 1)
        else:  # float32 on a CPU under bfloat16/float16 (cpu_dot_dtype), rounded once
            dt = cpu_dot_dtype(x.dtype)
            y = self._xla_conv(x2.astype(dt), wt.astype(dt), g).astype(x.dtype)
            y = self._bias(y, params, 1)
        return [y.reshape(lead + y.shape[1:]) if g.axis != 1 else y]

    def _xla_conv(self, x, wt, g: ConvGeometry):
        """The pure-XLA lowering resolve() chose for this shape."""
        if g.depthwise:
            return _depthwise_conv(x, wt, g)
        if g.grad_matmul:
            return _conv_matmul_grad(g)(x, wt)
        if g.im2col:
            return _im2col_conv(x, wt, g)
        return _lax_conv(x, wt, g, self.p.group)

    def macs(self, bottoms, tops):
        x, y = bottoms[0], tops[0]
        axis, _, w = self._geometry(x)
        per_out = (x[axis] // self.p.group) * math.prod(w.kernel)
        return count(y, 1) * per_out

    def describe_lowering(self, resolved, kernel_dtype: str = "float32") -> str:
        xla = self._describe_xla(resolved)
        if resolved is None or not resolved.kernel:
            return xla
        return f"oneDNN forward+backward ({kernel_dtype}; else {xla})"

    def _describe_xla(self, resolved) -> str:
        if resolved is not None and resolved.depthwise:
            return "depthwise: shifted multiply-adds"
        grad = ", dW as matmuls" if resolved is not None and resolved.grad_matmul else ""
        if resolved is not None and resolved.im2col:
            return "im2col+matmul" + grad
        groups = f", {self.p.group} groups" if self.p.group != 1 else ""
        return f"lax.conv {len(resolved.out) if resolved is not None else '?'}-D{groups}{grad}"

    def _use_im2col(self, channels: int, w: Window, out: tuple[int, ...]) -> bool:
        """The lowering is chosen by shape (bench/lenet_train.py): small 2-D convolutions run
        faster on CPU as one matmul over shifted slices (Caffe's own im2col strategy) than through
        lax.conv; large ones would materialise a huge patch matrix, so they keep lax.conv. The
        bound is on the patch matrix of one sample, so the choice never depends on the batch
        (which may still be the symbolic N at plan time)."""
        if len(out) != 2 or self.p.group != 1:
            return False
        return channels * math.prod(w.kernel) * math.prod(out) <= IM2COL_MAX_ELEMENTS

    def _use_kernel(self, w: Window, channels: int, im2col: bool) -> str:
        """Where oneDNN's primitives beat the pure-XLA lowering: every 2-D and 3-D convolution,
        forward and backward; 1-D ones stay lax.conv. Measured per layer (bench/conv_variants.py
        onednn, forward+backward): ResNet-18's 3×3 layers 1.3-3x faster, AlexNet's 2-group layers
        7-8x, depthwise 4x, a 3×3×3 one 5x; a 1-D dilated causal (WaveNet) one 7x SLOWER, a TDNN
        one as fast. 1×1 layers measured alone favour XLA's matmul (reorders), but in whole nets
        (bench/onednn_choices.py) oneDNN 1×1 made MobileNet v2's step 1.3x faster and ResNet-18's
        no slower; a depthwise forward by XLA's shifted multiply-adds (faster alone) gained
        MobileNet nothing measurable and compiled 1.7x slower.
        A single-channel input (a grayscale image) with a small patch matrix stays im2col +
        matmul: no input gradient is needed and oneDNN's per-call cost dominates; LeNet's conv1
        forward+backward 6.0 vs 7.8 ms CPU, its train step +7% samples per CPU-second
        (alternating windows in one process, load ~6)."""
        if channels == 1 and im2col:
            return ""
        return "onednn" if len(w.kernel) in (2, 3) else ""

    def _use_grad_matmul(self, channels: int, w: Window, out: tuple[int, ...]) -> bool:
        """The weight gradient as matmuls over shifted input slices instead of XLA's weight-
        gradient convolution, for 2-D ungrouped convolutions lowered through lax.conv (the
        im2col path's own VJP is faster still: LeNet 1,850 vs 1,060 samples/s) whose patch
        matrix per sample is bounded (the slices are materialised). Measured on CIFAR ResNet-18
        at batch 128 (bench/conv_lowering.py): 3×3 64@32×32 forward+backward 4,381 → 882 ms,
        128@16×16 739 → 418 ms; its train step 5.2 → 14.6 samples/s (bench/resnet18_cifar.py)."""
        if len(out) != 2 or self.p.group != 1 or not GRAD_MATMUL_MAX_ELEMENTS:
            return False
        return channels * math.prod(w.kernel) * math.prod(out) <= GRAD_MATMUL_MAX_ELEMENTS


@register
class Deconvolution(_ConvBase):
    type = "Deconvolution"

    def describe_lowering(self, resolved, kernel_dtype: str = "float32") -> str:
        n = len(resolved.out) if resolved is not None else "?"
        xla = f"lax.conv {n}-D transposed (input dilated by the stride)"
        if resolved is not None and resolved.kernel:
            return f"oneDNN backward-data as forward ({kernel_dtype}; else {xla})"
        return xla
    summary = "Transposed convolution: out = stride·(in−1) + dilation·(k−1) + 1 − 2·pad."
    example = """\
name: upscore
type: Deconvolution
bottom: score
top: upscore
param: {lr_mult: 0}
convolution_param:
  num_output: 21
  kernel_size: 4
  stride: 2
  bias_term: false
  weight_filler: {type: bilinear}
"""

    def resolve(self, bottoms) -> ConvGeometry:
        """Caffe's output size stride·(in − 1) + extent − 2·pad; `pads` are those of the
        equivalent stride-1 convolution of the stride-dilated input (extent − 1 − pad per side)."""
        x = bottoms[0]
        axis, n, w = self._geometry(x)
        p = self.p
        if p.pad_mode != "CAFFE" or p.pad_begin or p.pad_end:
            field = "pad_mode" if p.pad_mode != "CAFFE" else "pad_begin" if p.pad_begin else "pad_end"
            what = f"pad_mode {p.pad_mode}" if field == "pad_mode" else field
            raise SpecError(f"{what} is a Convolution extension; Deconvolution takes Caffe's "
                            f"symmetric pad only (its output is cropped by 2·pad)",
                            ("convolution_param", field))
        out = []
        for i in range(n):
            size = x[axis + 1 + i]
            o = w.stride[i] * (size - 1) + w.extent[i] - 2 * w.pad[i]
            if o <= 0:
                raise SpecError(
                    f"output would be empty: input {fmt_shape(x)}, on axis {axis_name(i, n)} "
                    f"{w.stride[i]}·({size} − 1) + {w.extent[i]} − 2·{w.pad[i]} = {o}",
                    ("convolution_param", "pad"))
            out.append(o)
        pads = tuple((e - 1 - q, e - 1 - q) for e, q in zip(w.extent, w.pad, strict=True))
        # oneDNN: the transpose of a convolution is its backward-data primitive (below)
        return ConvGeometry(axis, w, pads, tuple(out), kernel="onednn" if n == 2 else "")

    def infer(self, bottoms):
        x = bottoms[0]
        g = self.resolve(bottoms)
        return [x[: g.axis] + (self.p.num_output,) + g.out]

    def _weight_shape(self, channels: int, w: Window) -> tuple[int, ...]:
        return (channels, self.p.num_output // self.p.group) + w.kernel

    def apply(self, params, bottoms, ctx):
        """Transposed convolution as a stride-dilated input convolved with the flipped kernel."""
        import jax.numpy as jnp
        from jax import lax

        geo: ConvGeometry = ctx.layer.resolved
        w, n = geo.window, len(geo.out)
        x = bottoms[0]
        x2, lead = self._flat(x, geo.axis)
        g = self.p.group
        wt = params["weight"].astype(x.dtype)  # (C_in, O/g, k...)
        via = _by_onednn(geo, ctx, x)
        if via is not None:
            y = _onednn_deconv(geo, g)(x2.astype(via), wt.astype(via)).astype(x.dtype)
            y = self._bias(y, params, 1)
            return [y.reshape(lead + y.shape[1:]) if geo.axis != 1 else y]
        cin, og = wt.shape[0], wt.shape[1]
        wt = wt.reshape((g, cin // g, og) + wt.shape[2:])
        wt = jnp.swapaxes(wt, 1, 2).reshape((g * og, cin // g) + wt.shape[3:])
        wt = jnp.flip(wt, axis=tuple(range(2, 2 + n)))
        dt = cpu_dot_dtype(x.dtype)  # float32 on a CPU under bfloat16/float16, rounded once
        y = lax.conv_general_dilated(
            x2.astype(dt), wt.astype(dt), window_strides=(1,) * n, padding=geo.pads,
            lhs_dilation=w.stride, rhs_dilation=w.dilation, dimension_numbers=self._dims(n),
            feature_group_count=g).astype(x.dtype)
        y = self._bias(y, params, 1)
        return [y.reshape(lead + y.shape[1:]) if geo.axis != 1 else y]

    def macs(self, bottoms, tops):
        x = bottoms[0]
        axis, _, w = self._geometry(x)
        return count(x, 1) * (self.p.num_output // self.p.group) * math.prod(w.kernel)

    def window(self, bottoms):
        return None  # a transposed convolution's receptive field is fractional: not tracked
