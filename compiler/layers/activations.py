"""Element-wise layers that keep their input's shape (and may run in place)."""

from __future__ import annotations

import math

from netc.compiler.layer import (
    Layer,
    ParamDecl,
    batch_axis,
    canonical_axis,
    count,
    fmt_shape,
    register,
    same_shape,
    stops_gradient,
)
from netc.spec.errors import SpecError
from netc.spec.messages import (
    ClipParameter,
    DropoutParameter,
    ELUParameter,
    ExpParameter,
    FillerParameter,
    GELUParameter,
    LogParameter,
    MaxoutParameter,
    PowerParameter,
    PReLUParameter,
    ReLUParameter,
    SigmoidParameter,
    SwishParameter,
    TanHParameter,
    ThresholdParameter,
)


def _after_batch_norm(ctx, z, lo, hi):
    """The activation clamp(z, lo, hi) of z = Scale(BatchNorm(x)) made in this walk, computed with
    the two as one (compiler/layers/norm.py batch_norm_affine: in TRAIN, the backward passes over
    the tensor twice instead of once per layer); None when the input is not such a chain."""
    from netc.compiler.layers.norm import bn_scale_input

    if ctx.sources is None or stops_gradient(ctx.layer, 0):
        return None
    scale = ctx.sources.of_value(z)
    chain = None if scale is None else bn_scale_input(ctx, scale)
    return None if chain is None else chain.apply(lo, hi)


class Pointwise(Layer):
    geometry = "pointwise"
    infer = staticmethod(same_shape)


@register
class ReLU(Pointwise):
    type = "ReLU"
    param_field = "relu_param"
    Param = ReLUParameter
    summary = "max(x, 0) + negative_slope·min(x, 0) (leaky when negative_slope > 0)."

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        x = bottoms[0]
        slope = self.p.negative_slope
        if not slope and (folded := _after_batch_norm(ctx, x, 0.0, None)) is not None:
            return [folded]
        return [jnp.where(x > 0, x, x * slope) if slope else jnp.where(x > 0, x, 0)]
    example = """\
name: relu1
type: ReLU
bottom: ip1
top: ip1
"""


@register
class Sigmoid(Pointwise):
    type = "Sigmoid"
    param_field = "sigmoid_param"
    Param = SigmoidParameter
    summary = "1 / (1 + exp(−x))."

    def apply(self, params, bottoms, ctx):
        import jax

        return [jax.nn.sigmoid(bottoms[0])]
    example = "name: sig\ntype: Sigmoid\nbottom: ip1\ntop: ip1\n"


@register
class TanH(Pointwise):
    type = "TanH"
    param_field = "tanh_param"
    Param = TanHParameter
    summary = "tanh(x)."

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        return [jnp.tanh(bottoms[0])]
    example = "name: tanh1\ntype: TanH\nbottom: ip1\ntop: ip1\n"


@register
class Dropout(Pointwise):
    type = "Dropout"
    param_field = "dropout_param"
    Param = DropoutParameter
    summary = ("Zeroes each unit with probability dropout_ratio in TRAIN and scales the kept ones "
               "by 1/(1 − ratio); the identity in TEST. netc: spatial: true drops whole channels "
               "(one draw per sample and channel of an N×C×… blob).")
    example = "name: drop6\ntype: Dropout\nbottom: fc6\ntop: fc6\ndropout_param: {dropout_ratio: 0.5}\n"

    def infer(self, bottoms):
        x = bottoms[0]
        if self.p.spatial and (len(x) < 3 or batch_axis(x) not in (0, None)):
            raise SpecError(f"spatial dropout drops whole channels of a batch-major N×C×… blob "
                            f"(N×C×H×W, N×C×L); {self.spec.bottom[0]} is {fmt_shape(x)}",
                            ("dropout_param", "spatial"))
        return [x]

    def apply(self, params, bottoms, ctx):
        import jax
        import jax.numpy as jnp

        x = bottoms[0]
        ratio = self.p.dropout_ratio
        if not ctx.train:  # Caffe: the identity, or ×(1 − ratio) when training did not rescale
            return [x if self.p.scale_train else x * (1 - ratio)]
        if ratio == 0:
            return [x]
        if ctx.rng is None:
            raise ValueError(f"Dropout layer '{self.spec.name}' needs an rng in TRAIN")
        mask = x.shape[:2] + (1,) * (x.ndim - 2) if self.p.spatial else x.shape
        keep = jax.random.bernoulli(ctx.rng, 1 - ratio, mask)
        scale = 1 / (1 - ratio) if self.p.scale_train else 1.0
        return [jnp.where(keep, x * scale, 0)]


# --- Caffe's other neuron layers -----------------------------------------------------------------


@register
class PReLU(Pointwise):
    """Caffe's prelu_layer.cpp: a learned negative slope per channel (axis 1), or one shared."""

    type = "PReLU"
    param_field = "prelu_param"
    Param = PReLUParameter
    summary = ("max(x, 0) + a·min(x, 0) with a learned slope `weight` per channel (axis 1), or one "
               "with channel_shared; filler default constant 0.25.")
    example = "name: prelu1\ntype: PReLU\nbottom: conv1\ntop: conv1\n"

    def infer(self, bottoms):
        x = bottoms[0]
        if len(x) < 2:
            raise SpecError(f"needs an input with at least 2 axes (N×C×…), got {fmt_shape(x)}",
                            ("bottom",))
        if batch_axis(x) == 1 and not self.p.channel_shared:
            what = (f"the channels are axis 1, which is the batch axis of {self.spec.bottom[0]} "
                    f"({fmt_shape(x)})")
            if isinstance(x[1], str):
                raise SpecError(f"{what}: one slope per channel needs a batch-major N×C×… input, "
                                f"or set prelu_param.channel_shared", ("bottom",))
            self.warn(f"{what}: as in Caffe, each sample of the batch gets its own slope; "
                      f"use a batch-major N×C×… input or set channel_shared", "bottom")
        return [x]

    def params(self, bottoms):
        c = 1 if self.p.channel_shared else count(bottoms[0], 1, 2)
        default = FillerParameter(type="constant", value=0.25)
        return {"weight": ParamDecl((c,), self.p.filler or default, default)}

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        x = bottoms[0]
        a = params["weight"].astype(x.dtype)
        a = a.reshape((1, -1) + (1,) * (x.ndim - 2))
        return [jnp.where(x > 0, x, a * x)]


@register
class ELU(Pointwise):
    type = "ELU"
    param_field = "elu_param"
    Param = ELUParameter
    summary = "x if x > 0, else alpha·(exp(x) − 1)."
    example = "name: elu1\ntype: ELU\nbottom: ip1\ntop: ip1\nelu_param: {alpha: 1.0}\n"

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        x = bottoms[0]
        # expm1 of min(x, 0): the unused branch must not overflow (its gradient would be NaN)
        return [jnp.where(x > 0, x, self.p.alpha * jnp.expm1(jnp.minimum(x, 0)))]


@register
class AbsVal(Pointwise):
    type = "AbsVal"
    summary = "|x| (gradient sign(x), 0 at 0)."
    example = "name: abs1\ntype: AbsVal\nbottom: ip1\ntop: ip1\n"

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        x = bottoms[0]
        return [x * jnp.sign(x)]


@register
class BNLL(Pointwise):
    type = "BNLL"
    summary = "Binomial normal log likelihood: log(1 + exp(x)), computed without overflow."
    example = "name: bnll1\ntype: BNLL\nbottom: ip1\ntop: ip1\n"

    def apply(self, params, bottoms, ctx):
        import jax

        return [jax.nn.softplus(bottoms[0])]


@register
class Power(Pointwise):
    """Caffe's power_layer.cpp: (shift + scale·x)^power; when power or scale is 0 the output is
    the constant 1 or shift^power and no gradient flows. A negative base with a fractional power
    gives NaN, as in Caffe."""

    type = "Power"
    param_field = "power_param"
    Param = PowerParameter
    summary = "(shift + scale·x)^power."
    example = ("name: pow1\ntype: Power\nbottom: ip1\ntop: ip1\n"
               "power_param: {power: 2, scale: 1, shift: 0}\n")

    def apply(self, params, bottoms, ctx):
        import jax
        import jax.numpy as jnp

        x = bottoms[0]
        power, scale, shift = self.p.power, self.p.scale, self.p.shift
        if power == 0 or scale == 0:
            value = 1.0 if power == 0 else jnp.power(jnp.asarray(shift, x.dtype), power)
            return [jnp.full_like(x, value)]
        u = x * scale + shift if (scale != 1 or shift != 0) else x
        if power == 1:
            return [u]
        if float(power).is_integer() and abs(power) <= 64:
            return [jax.lax.integer_pow(u, int(power))]
        return [jnp.power(u, power)]


@register
class Exp(Pointwise):
    type = "Exp"
    param_field = "exp_param"
    Param = ExpParameter
    summary = "base^(shift + scale·x); base −1 (the default) means e."
    example = ("name: exp1\ntype: Exp\nbottom: ip1\ntop: ip1\n"
               "exp_param: {base: 2, scale: 1, shift: 0}\n")

    def infer(self, bottoms):
        base = self.p.base
        if base != -1 and base <= 0:
            raise SpecError(f"base must be positive (or -1 for e), got {base:g}", ("exp_param", "base"))
        return [bottoms[0]]

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        x = bottoms[0]
        log_base = 1.0 if self.p.base == -1 else math.log(self.p.base)
        inner = log_base * self.p.scale
        outer = math.exp(log_base * self.p.shift)  # Caffe: base^shift, outside the exp
        return [outer * jnp.exp(inner * x)]


@register
class Log(Pointwise):
    type = "Log"
    param_field = "log_param"
    Param = LogParameter
    summary = "log_base(shift + scale·x); base −1 (the default) means e."
    example = ("name: log1\ntype: Log\nbottom: ip1\ntop: ip1\n"
               "log_param: {base: 10, scale: 1, shift: 1}\n")

    def infer(self, bottoms):
        base = self.p.base
        if base != -1 and (base <= 0 or base == 1):
            raise SpecError(f"base must be positive and not 1 (or -1 for e), got {base:g}",
                            ("log_param", "base"))
        return [bottoms[0]]

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        x = bottoms[0]
        u = x * self.p.scale + self.p.shift if (self.p.scale != 1 or self.p.shift != 0) else x
        y = jnp.log(u)
        return [y if self.p.base == -1 else y * (1.0 / math.log(self.p.base))]


@register
class Threshold(Pointwise):
    type = "Threshold"
    param_field = "threshold_param"
    Param = ThresholdParameter
    summary = "1 where x > threshold, else 0 (no gradient)."
    example = ("name: thr1\ntype: Threshold\nbottom: ip1\ntop: t\n"
               "threshold_param: {threshold: 0.5}\n")

    def apply(self, params, bottoms, ctx):
        import jax

        x = jax.lax.stop_gradient(bottoms[0])
        return [(x > self.p.threshold).astype(x.dtype)]


@register
class Clip(Pointwise):
    type = "Clip"
    param_field = "clip_param"
    Param = ClipParameter
    summary = "min(max(x, min), max); the gradient passes where min ≤ x ≤ max."
    example = "name: clip1\ntype: Clip\nbottom: ip1\ntop: ip1\nclip_param: {min: -1, max: 1}\n"

    def infer(self, bottoms):
        if self.p.min > self.p.max:
            raise SpecError(f"min {self.p.min:g} is greater than max {self.p.max:g}",
                            ("clip_param", "min"))
        return [bottoms[0]]

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        x = bottoms[0]
        lo, hi = self.p.min, self.p.max
        # Caffe's backward: the gradient passes where min <= x <= max (both ends included)
        return [jnp.where(x < lo, jnp.asarray(lo, x.dtype), jnp.where(x > hi, jnp.asarray(hi, x.dtype), x))]


@register
class Swish(Pointwise):
    type = "Swish"
    param_field = "swish_param"
    Param = SwishParameter
    summary = "x·sigmoid(beta·x)."
    example = "name: swish1\ntype: Swish\nbottom: ip1\ntop: ip1\nswish_param: {beta: 1.0}\n"

    def apply(self, params, bottoms, ctx):
        import jax

        x = bottoms[0]
        return [x * jax.nn.sigmoid(self.p.beta * x)]


@register
class GELU(Pointwise):
    type = "GELU"
    param_field = "gelu_param"
    Param = GELUParameter
    summary = ("netc extension: x·Φ(x) (exact, erf); approximate: true uses the tanh form "
               "0.5x(1 + tanh(sqrt(2/π)(x + 0.044715x³))).")
    example = "name: gelu1\ntype: GELU\nbottom: ip1\ntop: ip1\n"

    def apply(self, params, bottoms, ctx):
        import jax

        return [jax.nn.gelu(bottoms[0], approximate=self.p.approximate)]


@register
class ReLU6(Pointwise):
    type = "ReLU6"
    summary = "netc extension: min(max(x, 0), 6); the gradient passes where 0 < x < 6."
    example = "name: relu6\ntype: ReLU6\nbottom: conv1\ntop: conv1\n"

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        x = bottoms[0]
        if (folded := _after_batch_norm(ctx, x, 0.0, 6.0)) is not None:
            return [folded]
        return [jnp.where(x > 0, jnp.where(x < 6, x, jnp.asarray(6, x.dtype)), jnp.asarray(0, x.dtype))]


@register
class Maxout(Layer):
    """netc extension (Goodfellow et al. 2013): output channel c of `axis` is the max of input
    channels c·k .. c·k + k − 1 (k = num_pieces); the gradient goes to the first maximum."""

    type = "Maxout"
    param_field = "maxout_param"
    Param = MaxoutParameter
    summary = ("netc extension: the max over num_pieces consecutive channels of `axis`; "
               "C channels become C/num_pieces.")
    example = """\
name: maxout1
type: Maxout
bottom: conv1
top: maxout1
maxout_param: {num_pieces: 3}
"""

    @property
    def geometry(self) -> str:  # type: ignore[override]
        return "pointwise" if self.p.axis == 1 else "none"

    def _axis(self, x) -> int:
        return canonical_axis(self.p.axis, len(x), ("maxout_param", "axis"))

    def infer(self, bottoms):
        x = bottoms[0]
        axis = self._axis(x)
        c = count(x, axis, axis + 1)
        k = self.p.num_pieces
        if c % k:
            raise SpecError(f"num_pieces {k} does not divide the {c} channels of axis {axis} "
                            f"(input {fmt_shape(x)})", ("maxout_param", "num_pieces"))
        return [x[:axis] + (c // k,) + x[axis + 1:]]

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        x = bottoms[0]
        axis = self._axis(x.shape)
        k = self.p.num_pieces
        pieces = x.reshape(x.shape[:axis] + (x.shape[axis] // k, k) + x.shape[axis + 1:])
        first = jnp.argmax(pieces, axis=axis + 1, keepdims=True)  # ties: the first maximum
        return [jnp.take_along_axis(pieces, first, axis=axis + 1).squeeze(axis + 1)]
