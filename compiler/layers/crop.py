"""Crop (Caffe's CropLayer): the first bottom cut to the second bottom's shape from `axis` on,
starting at `offset` (FCN's score alignment, U-Net's skip connections)."""

from __future__ import annotations

from netc.compiler.layer import Layer, Shape, canonical_axis, fmt_shape, register
from netc.spec.errors import SpecError
from netc.spec.messages import CropParameter


@register
class Crop(Layer):
    type = "Crop"
    param_field = "crop_param"
    Param = CropParameter
    bottoms = (2, 2)
    bottom_names = ("input", "reference")
    geometry = "window"  # the grid of the first bottom, shifted: a 1×1 window, stride 1
    summary = ("Caffe's Crop: the first bottom cut to the second bottom's shape on every axis from "
               "`axis` (default 2) on, starting at `offset` (one value for all those axes, or one each).")
    example = """\
name: score
type: Crop
bottom: [upscore, data]  # crop upscore to data's H×W
top: score
crop_param: {axis: 2, offset: 0}  # FCN-32s uses offset 19
"""

    def offsets(self, x: Shape, ref: Shape) -> tuple[int, ...]:
        """Caffe's CropLayer::Reshape: the start of the crop on every axis of `x`."""
        if len(x) != len(ref):
            raise SpecError(f"the input {fmt_shape(x)} and the reference {fmt_shape(ref)} must have the "
                            f"same number of axes ({len(x)} vs {len(ref)})", ("bottom",))
        p = self.p
        axis = canonical_axis(p.axis, len(x), ("crop_param", "axis"))
        m = len(x) - axis
        off = p.offset
        if len(off) > 1 and len(off) != m:
            raise SpecError(f"offset has {len(off)} values, but {m} ax{'is is' if m == 1 else 'es are'} "
                            f"cropped (axis {axis} on, of a {len(x)}-axis input; give 1 or {m})",
                            ("crop_param", "offset"))
        offsets = (0,) * axis + (off * m if len(off) == 1 else off or (0,) * m)
        where = ("crop_param", "offset") if off else ("bottom",)
        for i in range(axis, len(x)):
            if isinstance(x[i], str) or isinstance(ref[i], str):
                if x[i] != ref[i] or offsets[i]:
                    raise SpecError(f"cannot crop the batch axis {i}: input {fmt_shape(x)}, reference "
                                    f"{fmt_shape(ref)} (crop from axis 1 on)", ("crop_param", "axis"))
                continue
            if offsets[i] + ref[i] > x[i]:
                raise SpecError(f"the crop does not fit on axis {i}: input {fmt_shape(x)}, reference "
                                f"{fmt_shape(ref)}, offsets {fmt_offsets(offsets[axis:])} from axis "
                                f"{axis}: {offsets[i]} + {ref[i]} > {x[i]}", where)
        return offsets

    def resolve(self, bottoms) -> tuple[tuple[int, int] | None, ...]:
        """Per axis of the first bottom, the [start, stop) kept, or None for the whole axis (the
        axes before `axis`, and a symbolic batch, which is never cropped)."""
        x, ref = bottoms
        start = self.offsets(x, ref)
        axis = canonical_axis(self.p.axis, len(x))
        return tuple(None if i < axis or isinstance(x[i], str) else (start[i], start[i] + ref[i])
                     for i in range(len(x)))

    def infer(self, bottoms):
        x, ref = bottoms
        kept = self.resolve(bottoms)
        return [tuple(d if k is None else k[1] - k[0] for d, k in zip(x, kept))]

    def window(self, bottoms):
        return [(1, 1)] * (len(bottoms[0]) - 2)

    def describe(self) -> str:
        return f"offset {fmt_offsets(self.p.offset)}" if self.p.offset else ""

    def apply(self, params, bottoms, ctx):
        return [bottoms[0][tuple(slice(None) if k is None else slice(*k) for k in ctx.layer.resolved)]]


def fmt_offsets(values) -> str:
    return ",".join(str(v) for v in values)
