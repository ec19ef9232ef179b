"""Upsample: SegNet's max-unpooling (two bottoms: the values and the argmax mask of a MAX Pooling's
second top) and, as a netc extension, NEAREST / BILINEAR resizing of one bottom."""

from __future__ import annotations

from dataclasses import dataclass

from netc.compiler.layer import Layer, Shape, fmt_shape, register
from netc.compiler.layers.geometry import axis_name
from netc.spec.errors import SpecError
from netc.spec.messages import UpsampleParameter


@dataclass(frozen=True)
class Resize:
    """An Upsample resolved at plan time: the input and output spatial dims."""

    size: tuple[int, ...]
    out: tuple[int, ...]


@register
class Upsample(Layer):
    type = "Upsample"
    param_field = "upsample_param"
    Param = UpsampleParameter
    bottoms = (1, 2)
    bottom_names = ("values", "mask")
    summary = ("SegNet's unpooling: with a second bottom (the argmax mask of a MAX Pooling's second "
               "top) each value goes back to its argmax position of an upsample_h×upsample_w (or "
               "scale×) plane, zeros elsewhere; with one bottom, NEAREST or BILINEAR resizing "
               "(PyTorch's align_corners=False).")
    example = """\
name: upsample1
type: Upsample
bottom: [pool1, pool1_mask]  # pool1_mask: the second top of the MAX Pooling pool1
top: upsample1
upsample_param: {scale: 2}  # or upsample_h/upsample_w: the pooling input's size
"""

    def out_size(self, x: Shape) -> tuple[int, ...]:
        """Caffe's UpsampleLayer::Reshape: upsample_h/upsample_w when given, else
        scale (or scale_h/scale_w) × input, minus 1 where pad_out_h/pad_out_w."""
        p, n, sizes = self.p, len(x) - 2, x[2:]
        if n < 1:
            raise SpecError(f"needs N×C×spatial input; input is {fmt_shape(x)}")
        two_d = [f for f in ("upsample_h", "upsample_w", "scale_h", "scale_w") if getattr(p, f) is not None]
        two_d += [f for f in ("pad_out_h", "pad_out_w") if getattr(p, f)]
        if two_d and n != 2:
            raise SpecError(f"{two_d[0]} is for 2-D inputs; this input {fmt_shape(x)} has {n} spatial "
                            f"ax{'is' if n == 1 else 'es'} (use scale)", ("upsample_param", two_d[0]))
        if p.upsample_h is not None or p.upsample_w is not None:  # Caffe: these win over scale
            missing = "upsample_w" if p.upsample_w is None else "upsample_h" if p.upsample_h is None else ""
            if missing:
                raise SpecError(f"upsample_h and upsample_w go together: {missing} is missing",
                                ("upsample_param", missing))
            out, fields = (p.upsample_h, p.upsample_w), ("upsample_h", "upsample_w")
        else:
            if p.scale_h is not None or p.scale_w is not None:
                if p.scale is not None:
                    raise SpecError("give either scale or scale_h/scale_w, not both", ("upsample_param", "scale"))
                missing = "scale_w" if p.scale_w is None else "scale_h" if p.scale_h is None else ""
                if missing:
                    raise SpecError(f"scale_h and scale_w go together: {missing} is missing",
                                    ("upsample_param", missing))
                scales, fields = (p.scale_h, p.scale_w), ("scale_h", "scale_w")
            elif p.scale is not None:
                scales, fields = (p.scale,) * n, ("scale",) * n
            else:
                raise SpecError("needs the output size: give upsample_h and upsample_w, or scale "
                                "(or scale_h and scale_w)", ("upsample_param",))
            pad_out = (p.pad_out_h, p.pad_out_w) if n == 2 else (False,) * n
            for i, (s, cut) in enumerate(zip(scales, pad_out)):
                if cut and s != 2:
                    raise SpecError(f"pad_out_{'hw'[i]} needs scale 2 on axis {axis_name(i, n)}, not {s} "
                                    f"(otherwise the output size is ill-defined)",
                                    ("upsample_param", f"pad_out_{'hw'[i]}"))
            out = tuple(size * s - cut for size, s, cut in zip(sizes, scales, pad_out))
        for i, (o, size) in enumerate(zip(out, sizes)):
            if o < size:
                raise SpecError(f"the output would be smaller than the input on axis {axis_name(i, n)}: "
                                f"{o} < {size} (input {fmt_shape(x)}); Upsample does not shrink",
                                ("upsample_param", fields[i]))
        return out

    def resolve(self, bottoms) -> Resize:
        x = bottoms[0]
        return Resize(tuple(x[2:]), self.out_size(x))

    def infer(self, bottoms):
        x = bottoms[0]
        out = self.resolve(bottoms).out
        if len(bottoms) == 2:
            if "mode" in self.p.set_fields():
                raise SpecError(f"mode {self.p.mode} is for the one-bottom form; with a mask (the second "
                                f"bottom) the values go back to their argmax positions",
                                ("upsample_param", "mode"))
            if len(x) != 4:
                raise SpecError(f"unpooling with a mask needs N×C×H×W values; input is {fmt_shape(x)}",
                                ("bottom", 0))
            if bottoms[1] != x:
                raise SpecError(f"the mask {fmt_shape(bottoms[1])} must have the shape of the values "
                                f"{fmt_shape(x)}", ("bottom", 1))
        return [x[:2] + out]

    def describe(self) -> str:
        return "unpool (mask)" if len(self.spec.bottom) == 2 else self.p.mode

    def apply(self, params, bottoms, ctx):
        x, g = bottoms[0], ctx.layer.resolved
        if len(bottoms) == 2:
            return [_unpool(x, bottoms[1], g.out)]
        for i, (size, o) in enumerate(zip(g.size, g.out)):
            x = (_nearest if self.p.mode == "NEAREST" else _linear)(x, 2 + i, size, o)
        return [x]


def _nearest(x, axis: int, size: int, out: int):
    """PyTorch's `nearest`: output o reads input floor(o·size/out) (exact integer arithmetic)."""
    import numpy as np

    return x.take(np.arange(out) * size // out, axis=axis)


def _linear(x, axis: int, size: int, out: int):
    """PyTorch's linear interpolation with align_corners=False along one axis: output o sits at
    input coordinate max((o + ½)·size/out − ½, 0) between its two neighbours."""
    import numpy as np

    src = np.maximum((np.arange(out) + 0.5) * size / out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    lam = np.clip(src - i0, 0.0, 1.0).reshape((-1,) + (1,) * (x.ndim - 1 - axis))
    lam = lam.astype(x.dtype)
    return x.take(i0, axis=axis) * (1 - lam) + x.take(i1, axis=axis) * lam


def _unpool(values, mask, out: tuple[int, int]):
    """SegNet's UpsampleLayer: top[mask[i]] = bottom[i] in each N, C plane (in order, so the last
    of duplicate indices wins), zeros elsewhere; backward bottom_diff[i] = top_diff[mask[i]]
    (every duplicate gets it). Indices outside the plane are dropped (Caffe aborts on them)."""
    import jax
    import jax.numpy as jnp

    n, c = values.shape[:2]
    plane = out[0] * out[1]
    v = values.reshape(n * c, -1)
    idx = mask.reshape(n * c, -1).astype(jnp.int32)  # Caffe: static_cast<int>
    valid = (idx >= 0) & (idx < plane)
    idx = jnp.where(valid, idx, plane)  # out of range: dropped by the scatter

    @jax.custom_vjp
    def scatter(v):
        order = jnp.broadcast_to(jnp.arange(v.shape[1]), v.shape)
        winner = jax.vmap(lambda i, o: jnp.full(plane, -1).at[i].max(o, mode="drop"))(idx, order)
        y = jnp.take_along_axis(v, jnp.maximum(winner, 0), 1)
        return jnp.where(winner >= 0, y, 0)

    def fwd(v):
        return scatter(v), None

    def bwd(_, g):
        return (jnp.where(valid, jnp.take_along_axis(g, jnp.minimum(idx, plane - 1), 1), 0),)

    scatter.defvjp(fwd, bwd)
    return scatter(v).reshape((n, c) + tuple(out))
