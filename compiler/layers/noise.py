"""GaussianNoise: additive input noise, a regulariser active in TRAIN only (netc extension)."""

from __future__ import annotations

from netc.compiler.layer import register
from netc.compiler.layers.activations import Pointwise
from netc.spec.messages import GaussianNoiseParameter


@register
class GaussianNoise(Pointwise):
    """Keras's GaussianNoise layer: x + N(0, std²) drawn afresh for every value in TRAIN (from
    the step's key, as Dropout's mask); the identity in TEST."""

    type = "GaussianNoise"
    param_field = "gaussian_noise_param"
    Param = GaussianNoiseParameter
    summary = (
        "netc: adds independent N(0, std²) noise to every value in TRAIN (a regulariser, "
        "e.g. on the input); the identity in TEST."
    )
    example = """\
name: noise
type: GaussianNoise
bottom: data
top: data
gaussian_noise_param: {std: 0.1}
"""

    def apply(self, params, bottoms, ctx):
        import jax

        x = bottoms[0]
        if not ctx.train or self.p.std == 0:
            return [x]
        if ctx.rng is None:
            raise ValueError(f"GaussianNoise layer '{self.spec.name}' needs an rng in TRAIN")
        return [x + self.p.std * jax.random.normal(ctx.rng, x.shape, x.dtype)]
