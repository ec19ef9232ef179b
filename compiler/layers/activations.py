"""Element-wise layers that keep their input's shape (and may run in place)."""

from __future__ import annotations

from netc.compiler.layer import Layer, register, same_shape
from netc.spec.messages import DropoutParameter, ReLUParameter, SigmoidParameter, TanHParameter


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
               "by 1/(1 − ratio); the identity in TEST.")
    example = "name: drop6\ntype: Dropout\nbottom: fc6\ntop: fc6\ndropout_param: {dropout_ratio: 0.5}\n"

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
        keep = jax.random.bernoulli(ctx.rng, 1 - ratio, x.shape)
        scale = 1 / (1 - ratio) if self.p.scale_train else 1.0
        return [jnp.where(keep, x * scale, 0)]
