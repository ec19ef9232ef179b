"""Normalisation and affine layers: BatchNorm, Scale, Bias, LRN, MVN (Caffe's semantics).

None of them counts multiply-accumulates: Caffe's published figures (AlexNet with LRN, ResNet-50
with BatchNorm + Scale) count the weight layers (convolutions, inner products) only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netc.compiler.layer import (
    Layer,
    Made,
    ParamDecl,
    canonical_axis,
    count,
    fmt_shape,
    register,
    stops_gradient,
    wide,
)
from netc.spec.errors import SpecError
from netc.spec.messages import (
    BatchNormParameter,
    BiasParameter,
    FillerParameter,
    LRNParameter,
    MVNParameter,
    ScaleParameter,
)

ZERO = FillerParameter(type="constant", value=0.0)
ONE = FillerParameter(type="constant", value=1.0)


@register
class BatchNorm(Layer):
    """Caffe's batch_norm_layer.cpp. The three blobs hold running SUMS: `mean` and `variance`
    accumulate `old·maf + batch statistic` and `scale_factor` accumulates `old·maf + 1`; the
    estimates are mean/scale_factor and variance/scale_factor (0 while scale_factor is 0)."""

    type = "BatchNorm"
    param_field = "batch_norm_param"
    Param = BatchNormParameter
    geometry = "pointwise"
    summary = ("(x − mean) / sqrt(var + eps) per channel (axis 1), no affine part (follow it with "
               "Scale, bias_term: true). TRAIN: batch statistics, and the running sums are updated "
               "(state, not learned); TEST or use_global_stats: the stored statistics.")
    example = """\
name: bn1
type: BatchNorm
bottom: conv1
top: conv1
batch_norm_param: {moving_average_fraction: 0.999, eps: 1e-5}
"""

    def infer(self, bottoms):
        x = bottoms[0]
        if len(x) == 0:
            raise SpecError("needs an input with at least 1 axis, got a scalar", ("bottom",))
        return [x]

    def _channels(self, x) -> int:
        return 1 if len(x) == 1 else count(x, 1, 2)

    def params(self, bottoms):
        roles = ("mean", "variance", "scale_factor")
        for j, ps in enumerate(self.spec.param[:3]):
            if ps.lr_mult != 0:  # Caffe: "Cannot configure batch normalization statistics as ..."
                raise SpecError(f"blob {j} ({roles[j]}) is a running statistic, not learned: "
                                f"lr_mult must be 0, got {ps.lr_mult:g} (or leave `param` out)",
                                ("param", j, "lr_mult"))
        c = self._channels(bottoms[0])
        return {"mean": ParamDecl((c,), None, ZERO, learned=False),
                "variance": ParamDecl((c,), None, ZERO, learned=False),
                "scale_factor": ParamDecl((1,), None, ZERO, learned=False)}

    def apply(self, params, bottoms, ctx):
        import jax
        import jax.numpy as jnp

        x = wide(bottoms[0])  # statistics and their running sums in float32
        c = self._channels(x.shape)
        axes = tuple(i for i in range(x.ndim) if i != 1)
        bshape = (1,) if x.ndim == 1 else (1, c) + (1,) * (x.ndim - 2)
        use_global = self.p.use_global_stats
        if use_global is None:  # Caffe: use_global_stats = (phase == TEST) unless set
            use_global = not ctx.train
        if use_global:
            sf = params["scale_factor"][0]
            inv = jnp.where(sf == 0, 0.0, 1.0 / jnp.where(sf == 0, 1.0, sf))
            mean = (params["mean"] * inv).astype(x.dtype)
            var = (params["variance"] * inv).astype(x.dtype)
            centred = x - mean.reshape(bshape)
        else:
            native = _native_for(ctx, x)
            # the kernel reads a bfloat16 input as it is (no float32 copy written for it)
            src = bottoms[0] if native and bottoms[0].dtype == "bfloat16" else x
            y, mean, var = _batch_statistics_norm(axes, bshape, self.p.eps, native)(x, src)
            ctx.notes["batch_stats"] = (x, mean, var, src)  # for batch_norm_affine
            m = x.size // c
            correction = m / (m - 1) if m > 1 else 1.0
            maf = self.p.moving_average_fraction
            bm, bv = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
            ctx.new_state.update(
                mean=params["mean"] * maf + bm.reshape(c),
                variance=params["variance"] * maf + bv.reshape(c) * correction,
                scale_factor=params["scale_factor"] * maf + 1)
            return [y.astype(bottoms[0].dtype)]
        y = centred / jnp.sqrt(var.reshape(bshape) + self.p.eps)
        return [y.astype(bottoms[0].dtype)]


def _batch_statistics_norm(axes: tuple, bshape: tuple, eps: float, kernel: bool = False):
    """x ↦ (y, mean, var): y = (x − mean) / sqrt(var + eps) with the batch's statistics per
    channel (var biased, as Caffe's), differentiated by Caffe's own backward
    (batch_norm_layer.cpp): dx = (dy − mean(dy) − y · mean(dy · y)) / sqrt(var + eps). That is
    the exact gradient, in two reductions and one elementwise pass over the tensor, keeping only
    y and the per-channel σ, where differentiating the forward's ops costs more passes and keeps
    the centred input as well. Whole train steps, quiet machine, under runtime/allocator.py's
    setting, 8 alternating processes each: MobileNet v2 96 batch 64 98-101 samples/s against
    89-96 by autodiff (1.22 vs 1.29 CPU s per step); CIFAR ResNet-18 batch 128 39-41 either way.
    The statistics are outputs for the running sums only (their cotangents, zero under
    stop_gradient, are not propagated). `kernel`: the statistics come from the native kernel
    (compiler/kernels/batch_norm.cc, one pass) instead of XLA's two reductions, reading `src`:
    x itself, or x before it was widened to float32 (bfloat16; no gradient flows through it)."""
    import jax
    import jax.numpy as jnp

    def forward(x, src):
        if kernel:  # one pass over x (compiler/kernels/batch_norm.cc)
            from netc.compiler.kernels.onednn import batch_norm_stats_call

            mean, var = (v.reshape(bshape).astype(x.dtype) for v in batch_norm_stats_call(src))
            centred = x - mean
        else:  # XLA: two reductions, the second over x − mean written out
            mean = jnp.mean(x, axis=axes, keepdims=True)
            centred = x - mean
            var = jnp.mean(jnp.square(centred), axis=axes, keepdims=True)
        sigma = jnp.sqrt(var + eps)
        return (centred / sigma, mean.reshape(bshape), var.reshape(bshape)), sigma

    @jax.custom_vjp
    def f(x, src):
        return forward(x, src)[0]

    def fwd(x, src):
        out, sigma = forward(x, src)
        return out, (out[0], sigma)

    def bwd(res, cotangents):
        y, sigma = res
        dy = cotangents[0]
        d_mean = jnp.mean(dy, axis=axes, keepdims=True)
        dy_y = jnp.mean(dy * y, axis=axes, keepdims=True)
        return (dy - d_mean - y * dy_y) / sigma, None

    f.defvjp(fwd, bwd)
    return f


@dataclass(frozen=True)
class FoldedChain:
    """A BatchNorm (batch statistics mean, var of x) → Scale (gamma, beta) chain of one walk, to
    be computed as one (batch_norm_affine); `kernel`: its backward by the native kernel."""

    x: Any  # BatchNorm's input as the chain reads it: float32, or bfloat16 for the kernel
    mean: Any
    var: Any
    eps: float
    gamma: Any
    beta: Any
    kernel: bool
    out_dtype: Any = None  # the Scale's dtype when narrower than float32 (bfloat16, float16)

    def apply(self, lo=None, hi=None):
        """The chain's output, clamped to [lo, hi] (an activation folded in), as one function."""
        return batch_norm_affine(self.x, self.mean, self.var, self.eps, self.gamma, self.beta,
                                 lo, hi, kernel=self.kernel, out_dtype=self.out_dtype)


def bn_scale_input(ctx, scale: Made) -> FoldedChain | None:
    """The chain when `scale`, a Scale of this walk, scales per channel (axis 1, a learned weight
    of C values, bias optional) a BatchNorm of this walk that normalised x by the batch's
    statistics, with gradients flowing through both, in float32 or float64; else None. Under a
    narrower compute dtype (`precision: bfloat16|float16`) BatchNorm already normalises in
    float32 (its input widened, `wide`); the chain then runs in float32 too — the Scale's affine
    and both backward reductions in float32, by the native kernel where there is one — and its
    output is rounded to the narrow dtype once, where the Scale would have taken BatchNorm's
    rounded output and reduced dγ, dβ in bfloat16 (XLA CPU: MobileNet v2's Scale backward 23-65
    ms a layer in bfloat16 against 3-7 in float32, `netc time`). The layer asking (the Scale
    itself, or an activation after it) is recorded with the chain in ctx.sources.fused (`netc
    time` marks them)."""
    if ctx.sources is None or not isinstance(scale.layer.unit, Scale) or len(scale.bottoms) != 1 \
            or "weight" not in scale.params or stops_gradient(scale.layer, 0):
        return None
    y = scale.bottoms[0]
    gamma, beta = scale.params["weight"], scale.params.get("bias")
    if y.ndim < 2 or canonical_axis(scale.layer.unit.p.axis, y.ndim) != 1 \
            or gamma.shape != (y.shape[1],) or (beta is not None and beta.shape != gamma.shape):
        return None
    bn = ctx.sources.of_value(y)
    if bn is None or not isinstance(bn.layer.unit, BatchNorm) or stops_gradient(bn.layer, 0) \
            or "batch_stats" not in bn.notes:
        return None
    x, mean, var, src = bn.notes["batch_stats"]
    if x.dtype.name not in ("float32", "float64") or (
            y.dtype != x.dtype and y.dtype.name not in ("bfloat16", "float16")):
        return None
    chain = FoldedChain(src, mean, var, bn.layer.unit.p.eps, gamma.astype(x.dtype),
                        None if beta is None else beta.astype(x.dtype), _native_for(ctx, x),
                        None if y.dtype == x.dtype else y.dtype)
    names = (bn.layer.name, scale.layer.name)
    names += (ctx.layer.name,) if ctx.layer.name not in names else ()
    ctx.sources.fused[ctx.layer.name] = (
        names, "backward by the native kernel" if chain.kernel else "backward in XLA")
    return chain


def batch_norm_affine(x, mean, var, eps: float, gamma, beta, lo=None, hi=None, *,
                      kernel: bool = False, out_dtype=None):
    """BatchNorm on the batch's statistics (mean, var: BatchNorm's own, computed from x), then
    Scale (gamma, beta per channel, axis 1), then clamp to [lo, hi] (ReLU: lo 0; ReLU6: 0 and 6;
    None: no bound), as one function with its own VJP. The forward is the three layers' values
    in one elementwise pass; the backward is theirs combined: with g = dy where lo < z < hi
    (Caffe's ReLU passes where z > 0), x̂ the normalised input and M the values per channel,

        dbeta = Σ g,   dgamma = Σ g·x̂,   dx = gamma/σ · (g − dbeta/M − x̂·dgamma/M)

    (batch_norm_layer.cpp's backward applied to dx̂ = gamma·g, the statistics' dependence on x
    included), keeping only x and per-channel numbers, where the layers apart make and keep the
    normalised, the scaled and the clamped tensors. `kernel`: the backward is the native kernel
    (compiler/kernels/batch_norm.cc), two passes per channel; else the formula in XLA, whose
    reductions (YNNPACK) read the masked g and x̂ written out first. Computed in mean's dtype
    (float32 or float64); the output is rounded to `out_dtype` when given (a narrower compute
    dtype), inside the function, so that its cotangent arrives narrow too; x may be narrow
    (bfloat16, for the kernel, which reads x and dy and writes dx in bfloat16 as they are)."""
    import jax
    import jax.numpy as jnp

    bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    has_bias = beta is not None
    beta = beta if has_bias else jnp.zeros_like(gamma)
    mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)  # BatchNorm's, from x

    wide = mean.dtype

    def fwd(x, gamma, beta):
        inv = 1 / jnp.sqrt(var.reshape(bshape) + eps)
        z = (x.astype(wide) - mean.reshape(bshape)) * inv * gamma.reshape(bshape) \
            + beta.reshape(bshape)
        if lo is not None or hi is not None:
            z = jnp.clip(z, lo, hi)
        return z if out_dtype is None else z.astype(out_dtype), (x, inv, gamma, beta)

    @jax.custom_vjp
    def f(x, gamma, beta):
        return fwd(x, gamma, beta)[0]

    def bwd(res, dy):
        x, inv, gamma, beta = res
        if kernel:
            from netc.compiler.kernels.onednn import batch_norm_backward_call

            dx, dgamma, dbeta = batch_norm_backward_call(
                dy.astype(x.dtype), x, mean, inv, gamma, beta, -jnp.inf if lo is None else lo,
                jnp.inf if hi is None else hi)
        else:
            dx, dgamma, dbeta = _affine_backward(dy.astype(wide), x.astype(wide),
                                                 mean.reshape(bshape), inv,
                                                 gamma.reshape(bshape), beta.reshape(bshape),
                                                 lo, hi)
            dx = dx.astype(x.dtype)
        return dx, dgamma, (dbeta if has_bias else jnp.zeros_like(dbeta))

    f.defvjp(fwd, bwd)
    return f(x, gamma, beta)


def _affine_backward(dy, x, mean, inv, gamma, beta, lo, hi):
    """batch_norm_affine's backward in XLA (per-channel operands broadcast against x)."""
    import jax.numpy as jnp

    axes = (0,) + tuple(range(2, x.ndim))
    m = x.size // x.shape[1]
    xhat = (x - mean) * inv
    z = xhat * gamma + beta
    mask = None if lo is None else z > lo
    if hi is not None:
        mask = z < hi if mask is None else mask & (z < hi)
    g = dy if mask is None else jnp.where(mask, dy, 0)
    dbeta = jnp.sum(g, axis=axes)
    dgamma = jnp.sum(g * xhat, axis=axes)
    rows = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    dx = gamma * inv * (g - (dbeta / m).reshape(rows) - xhat * (dgamma / m).reshape(rows))
    return dx, dgamma, dbeta


def _native_for(ctx, x) -> bool:
    """Whether BatchNorm's statistics and batch_norm_affine's backward on x call the native
    kernels (compiler/kernels/batch_norm.cc): float32 x (BatchNorm's input, widened from
    bfloat16 or not) with a channel axis, in a walk whose Net may call kernels (Net.kernels)
    with the kernel library built and loaded."""
    from netc.compiler.kernels.onednn import usable

    return x.ndim >= 2 and usable(ctx, x)


def _operand_shape(unit: Layer, x, field: str) -> tuple[int, tuple]:
    """Scale/Bias with one bottom: (axis, blob shape) = x[axis : axis + num_axes]."""
    p = getattr(unit.spec, field)
    axis = canonical_axis(p.axis, len(x), (field, "axis"))
    n = len(x) - axis if p.num_axes == -1 else p.num_axes
    if axis + n > len(x):
        raise SpecError(f"num_axes {n} from axis {axis} extends past the input's {len(x)} axes "
                        f"({fmt_shape(x)})", (field, "num_axes"))
    count(x, axis, axis + n)  # the blob cannot span the symbolic batch axis
    return axis, tuple(x[axis:axis + n])


def _check_operand(unit: Layer, x, s, field: str, what: str) -> int:
    """Scale/Bias with two bottoms: bottom[1] must match x's axes from `axis` on."""
    if len(s) == 0:  # a scalar: Caffe sets axis 0, the choice does not matter
        return 0
    p = getattr(unit.spec, field)
    axis = canonical_axis(p.axis, len(x), (field, "axis"))
    if axis + len(s) > len(x) or tuple(x[axis:axis + len(s)]) != tuple(s):
        span = fmt_shape(x[axis:axis + len(s)]) if axis + len(s) <= len(x) else "past its end"
        raise SpecError(f"the {what} {fmt_shape(s)} must equal the input's axes "
                        f"{axis}..{axis + len(s) - 1} ({span}) of {fmt_shape(x)}", ("bottom", 1))
    return axis


def _broadcast(v, x_ndim: int, axis: int):
    """Reshape a blob that covers x's axes axis..axis+v.ndim−1 so that it broadcasts against x."""
    return v.reshape(v.shape + (1,) * (x_ndim - axis - v.ndim))


@register
class Scale(Layer):
    """Caffe's scale_layer.cpp: y = x ⊙ s (+ b), s broadcast over x's axes from `axis` on."""

    type = "Scale"
    param_field = "scale_param"
    Param = ScaleParameter
    bottoms = (1, 2)
    bottom_names = ("input", "scale")
    geometry = "pointwise"
    summary = ("y = x·s (+ b) with s covering the input's axes axis..axis+num_axes−1 (num_axes −1: "
               "to the end); s is a learned `weight` (filler default constant 1), or the second "
               "input; bias_term adds a learned `bias` (bias_filler default 0).")
    example = """\
name: scale1
type: Scale
bottom: conv1
top: conv1
scale_param: {bias_term: true}
"""

    def infer(self, bottoms):
        x = bottoms[0]
        if len(bottoms) == 2:
            _check_operand(self, x, bottoms[1], "scale_param", "scale input")
        return [x]

    def params(self, bottoms):
        if len(bottoms) == 2 and not self.p.bias_term:
            return {}
        _, shape = _operand_shape(self, bottoms[0], "scale_param")
        out = {}
        if len(bottoms) == 1:
            out["weight"] = ParamDecl(shape, self.p.filler or ONE, ONE)
        if self.p.bias_term:  # Caffe's inner Bias layer takes scale_param's axis and num_axes
            out["bias"] = ParamDecl(shape, self.p.bias_filler or ZERO, ZERO)
        return out

    def apply(self, params, bottoms, ctx):
        x = bottoms[0]
        chain = bn_scale_input(ctx, Made(ctx.layer, params, bottoms, {}))
        if chain is not None:  # BatchNorm + this Scale as one (an activation may fold them again)
            return [chain.apply()]
        if len(bottoms) == 2:
            s = bottoms[1]
            axis = _check_operand(self, x.shape, s.shape, "scale_param", "scale input")
        else:
            s = params["weight"].astype(x.dtype)
            axis = canonical_axis(self.p.axis, x.ndim) if s.ndim else 0
        y = x * _broadcast(s, x.ndim, axis)
        if "bias" in params:
            b = params["bias"].astype(x.dtype)
            baxis = canonical_axis(self.p.axis, x.ndim) if b.ndim else 0
            y = y + _broadcast(b, x.ndim, baxis)
        return [y]


@register
class Bias(Layer):
    """Caffe's bias_layer.cpp: y = x + b, b broadcast over x's axes from `axis` on."""

    type = "Bias"
    param_field = "bias_param"
    Param = BiasParameter
    bottoms = (1, 2)
    bottom_names = ("input", "bias")
    geometry = "pointwise"
    summary = ("y = x + b with b covering the input's axes axis..axis+num_axes−1 (num_axes −1: to "
               "the end); b is a learned `bias` (filler default constant 0), or the second input.")
    example = """\
name: bias1
type: Bias
bottom: conv1
top: conv1
bias_param: {axis: 1, num_axes: 1}
"""

    def infer(self, bottoms):
        x = bottoms[0]
        if len(bottoms) == 2:
            _check_operand(self, x, bottoms[1], "bias_param", "bias input")
        else:
            _operand_shape(self, x, "bias_param")
        return [x]

    def params(self, bottoms):
        if len(bottoms) == 2:
            return {}
        _, shape = _operand_shape(self, bottoms[0], "bias_param")
        return {"bias": ParamDecl(shape, self.p.filler or ZERO, ZERO)}

    def apply(self, params, bottoms, ctx):
        x = bottoms[0]
        if len(bottoms) == 2:
            b = bottoms[1]
            axis = _check_operand(self, x.shape, b.shape, "bias_param", "bias input")
        else:
            b = params["bias"].astype(x.dtype)
            axis = canonical_axis(self.p.axis, x.ndim) if b.ndim else 0
        return [x + _broadcast(b, x.ndim, axis)]


@register
class LRN(Layer):
    """Caffe's lrn_layer.cpp. ACROSS_CHANNELS: y = x / (k + alpha/n · Σ x²)^beta over a window of
    n = local_size channels centred on each channel (zeros beyond the ends). WITHIN_CHANNEL:
    y = x / (1 + alpha/n^d · Σ x²)^beta over an n×…×n spatial window (d spatial axes) zero-padded
    by (n − 1)/2 — Caffe builds it from AVE pooling (divisor n² even at the borders) and a Power
    layer with shift 1, so `k` is not used."""

    type = "LRN"
    param_field = "lrn_param"
    Param = LRNParameter
    summary = ("Local response normalisation: ACROSS_CHANNELS y = x/(k + alpha/n·Σ_window x²)^beta "
               "(n = local_size channels, centred); WITHIN_CHANNEL y = x/(1 + alpha/n²·Σ x²)^beta "
               "over an n×n spatial window.")
    example = """\
name: norm1
type: LRN
bottom: conv1
top: norm1
lrn_param: {local_size: 5, alpha: 0.0001, beta: 0.75}
"""

    @property
    def geometry(self) -> str:  # type: ignore[override]
        return "window" if self.p.norm_region == "WITHIN_CHANNEL" else "pointwise"

    def infer(self, bottoms):
        x = bottoms[0]
        n = self.p.local_size
        if n % 2 == 0:
            raise SpecError(f"local_size must be odd (the window is centred), got {n}",
                            ("lrn_param", "local_size"))
        need = 3 if self.p.norm_region == "WITHIN_CHANNEL" else 2
        if len(x) < need:
            what = "N×C×spatial" if need == 3 else "N×C×…"
            raise SpecError(f"{self.p.norm_region} needs an input with at least {need} axes "
                            f"({what}), got {fmt_shape(x)}", ("bottom",))
        return [x]

    def window(self, bottoms):
        return [(self.p.local_size, 1)] * (len(bottoms[0]) - 2)

    def apply(self, params, bottoms, ctx):
        import jax
        import jax.numpy as jnp

        x = wide(bottoms[0])
        n, pad = self.p.local_size, (self.p.local_size - 1) // 2
        sq = jnp.square(x)
        if self.p.norm_region == "ACROSS_CHANNELS":
            dims = (1, n) + (1,) * (x.ndim - 2)
            padding = ((0, 0), (pad, pad)) + ((0, 0),) * (x.ndim - 2)
            s = jax.lax.reduce_window(sq, 0.0, jax.lax.add, dims, (1,) * x.ndim, padding)
            scale = self.p.k + (self.p.alpha / n) * s
        else:
            d = x.ndim - 2
            dims = (1, 1) + (n,) * d
            padding = ((0, 0), (0, 0)) + ((pad, pad),) * d
            s = jax.lax.reduce_window(sq, 0.0, jax.lax.add, dims, (1,) * x.ndim, padding)
            scale = 1.0 + (self.p.alpha / n**d) * s
        return [(x * scale ** (-self.p.beta)).astype(bottoms[0].dtype)]


@register
class MVN(Layer):
    """Caffe's mvn_layer.cpp: per sample and channel (per sample with across_channels), subtract
    the mean and, with normalize_variance, divide by (std + eps) — eps is added to the standard
    deviation, not to the variance."""

    type = "MVN"
    param_field = "mvn_param"
    Param = MVNParameter
    summary = ("Mean-variance normalisation over the spatial axes (and the channels with "
               "across_channels): (x − mean) / (std + eps), std biased.")
    example = """\
name: mvn1
type: MVN
bottom: data
top: mvn1
mvn_param: {normalize_variance: true, across_channels: false, eps: 1e-9}
"""

    def infer(self, bottoms):
        return [bottoms[0]]

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        x = wide(bottoms[0])
        axes = tuple(range(1 if self.p.across_channels else 2, x.ndim))
        y = x - jnp.mean(x, axis=axes, keepdims=True)
        if self.p.normalize_variance:
            var = jnp.mean(jnp.square(y), axis=axes, keepdims=True)
            # sqrt has an infinite slope at 0 (a constant slice): keep the gradient finite there
            std = jnp.where(var > 0, jnp.sqrt(jnp.where(var > 0, var, 1.0)), 0.0)
            y = y / (std + self.p.eps)
        return [y.astype(bottoms[0].dtype)]
