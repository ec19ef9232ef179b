"""Layers that cut, repeat, reduce or drop blobs: Slice, Tile, Reduction, ArgMax, Silence.

Shape rules follow Caffe's Reshape (slice_layer.cpp, tile_layer.cpp, reduction_layer.cpp,
argmax_layer.cpp, silence_layer.cpp); where Caffe CHECK-fails at run time, netc says why at check
time."""

from __future__ import annotations

from netc.compiler.layer import Layer, canonical_axis, count, fmt_shape, register
from netc.spec.errors import SpecError
from netc.spec.messages import (
    ArgMaxParameter,
    ReductionParameter,
    SliceParameter,
    TileParameter,
)

# ArgMax writes indices into a float32 blob: beyond 2**24 they are no longer exact (Caffe checks
# the same against its top type).
MAX_EXACT_INDEX = 2**24


def axis_size(x, axis: int, verb: str, path: tuple) -> int:
    """The size of axis `axis`, which must not be the symbolic batch."""
    d = x[axis]
    if isinstance(d, str):
        raise SpecError(f"cannot {verb} axis {axis}: it is the batch axis, of symbolic size {d} here "
                        f"(give the Input a batch, or use --batch N)", path)
    return d


def _spatially_pointwise(axis: int) -> str:
    """Cutting or repeating the batch or channel axis keeps every spatial position's window."""
    return "pointwise" if axis in (0, 1) else "none"


@register
class Slice(Layer):
    type = "Slice"
    param_field = "slice_param"
    Param = SliceParameter
    tops = (1, None)
    summary = ("Cuts its input along `axis` at each slice_point (strictly increasing, inside the "
               "axis), or into len(top) equal pieces when no slice_point is given.")
    example = """\
name: slice
type: Slice
bottom: data
top: [data_a, data_b]
slice_param: {axis: 1, slice_point: [1]}
"""

    def _written_axis(self) -> tuple[int, tuple]:
        if "slice_dim" in self.p.set_fields():
            return self.p.slice_dim, ("slice_param", "slice_dim")
        return self.p.axis, ("slice_param", "axis")

    @property
    def geometry(self) -> str:  # type: ignore[override]
        return _spatially_pointwise(self._written_axis()[0])

    def sizes(self, x) -> tuple[int, list[int]]:
        """(axis, size of each piece), or SpecError."""
        p = self.p
        if {"axis", "slice_dim"} <= p.set_fields():
            raise SpecError("give axis or slice_dim (its deprecated spelling), not both",
                            ("slice_param", "slice_dim"))
        written, path = self._written_axis()
        axis = canonical_axis(written, len(x), path)
        dim = axis_size(x, axis, "slice", path)
        tops = len(self.spec.top)
        points = p.slice_point
        if not points:
            if dim % tops:
                raise SpecError(f"{tops} tops cannot split axis {axis} of size {dim} "
                                f"(input {fmt_shape(x)}) into equal pieces; give slice_point",
                                ("top",))
            return axis, [dim // tops] * tops
        if len(points) != tops - 1:
            raise SpecError(f"{len(points)} slice_point value(s) cut axis {axis} into "
                            f"{len(points) + 1} pieces, but the layer has {tops} top(s)",
                            ("slice_param", "slice_point"))
        prev = 0
        out = []
        for i, pt in enumerate(points):
            if pt <= prev:
                raise SpecError(f"slice_point must be strictly increasing: {pt} follows {prev}",
                                ("slice_param", "slice_point", i))
            if pt >= dim:
                raise SpecError(f"slice_point {pt} is not inside axis {axis} of size {dim} "
                                f"(input {fmt_shape(x)}); every piece must be non-empty",
                                ("slice_param", "slice_point", i))
            out.append(pt - prev)
            prev = pt
        out.append(dim - prev)
        return axis, out

    def resolve(self, bottoms) -> tuple[int, tuple[int, ...]]:
        """(axis, size of each piece), decided at plan time; apply reads it."""
        axis, sizes = self.sizes(bottoms[0])
        return axis, tuple(sizes)

    def infer(self, bottoms):
        x = bottoms[0]
        axis, sizes = self.resolve(bottoms)
        return [x[:axis] + (s,) + x[axis + 1:] for s in sizes]

    def apply(self, params, bottoms, ctx):
        import jax

        x = bottoms[0]
        axis, sizes = ctx.layer.resolved
        out, start = [], 0
        for s in sizes:
            out.append(jax.lax.slice_in_dim(x, start, start + s, axis=axis))
            start += s
        return out


@register
class Tile(Layer):
    type = "Tile"
    param_field = "tile_param"
    Param = TileParameter
    summary = ("Repeats the input `tiles` times along `axis`: each block of axes axis..end is "
               "copied whole (numpy's tile, not repeat).")
    example = """\
name: tile
type: Tile
bottom: data
top: tiled
tile_param: {axis: 1, tiles: 3}
"""

    @property
    def geometry(self) -> str:  # type: ignore[override]
        return _spatially_pointwise(self.p.axis)

    def infer(self, bottoms):
        x = bottoms[0]
        path = ("tile_param", "axis")
        axis = canonical_axis(self.p.axis, len(x), path)
        return [x[:axis] + (axis_size(x, axis, "tile", path) * self.p.tiles,) + x[axis + 1:]]

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        x = bottoms[0]
        axis = canonical_axis(self.p.axis, x.ndim)
        reps = [1] * x.ndim
        reps[axis] = self.p.tiles
        return [jnp.tile(x, reps)]


@register
class Reduction(Layer):
    type = "Reduction"
    param_field = "reduction_param"
    Param = ReductionParameter
    summary = ("SUM, ASUM (Σ|x|), SUMSQ (Σx²) or MEAN over every axis from `axis` on (default 0: "
               "the whole blob to a scalar), times coeff; the output keeps the axes before `axis`.")
    example = """\
name: total
type: Reduction
bottom: ip2
top: total
reduction_param: {operation: SUMSQ, axis: 1, coeff: 0.5}
"""

    def infer(self, bottoms):
        x = bottoms[0]
        axis = canonical_axis(self.p.axis, len(x), ("reduction_param", "axis"))
        return [x[:axis]]

    def apply(self, params, bottoms, ctx):
        import math

        import jax.numpy as jnp

        x = bottoms[0]
        axis = canonical_axis(self.p.axis, x.ndim)
        flat = x.reshape(x.shape[:axis] + (-1,))
        op = self.p.operation
        if op == "ASUM":
            y = jnp.sum(jnp.abs(flat), axis=-1)  # d|x|/dx = sign(x), 0 at 0, like Caffe
        elif op == "SUMSQ":
            y = jnp.sum(flat * flat, axis=-1)
        else:
            y = jnp.sum(flat, axis=-1)
        coeff = self.p.coeff
        if op == "MEAN":
            coeff = coeff / max(1, math.prod(x.shape[axis:]))
        return [y * coeff if coeff != 1 else y]


@register
class ArgMax(Layer):
    type = "ArgMax"
    param_field = "argmax_param"
    Param = ArgMaxParameter
    summary = ("Indices of the top_k largest values (ties: the larger index first, as Caffe). "
               "Without axis: over each sample flattened, N×1×top_k (N×2×top_k with out_max_val: "
               "indices then values); with axis: that axis becomes top_k (values only with "
               "out_max_val). Not differentiable: no gradient flows back.")
    example = """\
name: argmax
type: ArgMax
bottom: prob
top: pred
argmax_param: {top_k: 1}
"""

    @property
    def geometry(self) -> str:  # type: ignore[override]
        return "pointwise" if self.p.axis == 1 else "none"

    def _ranked(self, x) -> tuple[int | None, int]:
        """(canonical axis or None, number of values ranked)."""
        k = self.p.top_k
        path = ("argmax_param", "top_k")
        if self.p.axis is None:
            dim = count(x, 1)
            if k > dim:
                raise SpecError(f"top_k {k} is more than the {dim} values per sample (without "
                                f"axis, ArgMax ranks each sample of the {fmt_shape(x)} input "
                                f"flattened)", path)
            axis = None
        else:
            axis = canonical_axis(self.p.axis, len(x), ("argmax_param", "axis"))
            dim = axis_size(x, axis, "rank along", ("argmax_param", "axis"))
            if k > dim:
                raise SpecError(f"top_k {k} is more than the {dim} values along axis {axis} "
                                f"(input {fmt_shape(x)})", path)
        if not self.p.out_max_val or axis is None:
            if dim > MAX_EXACT_INDEX:
                raise SpecError(f"ranks {dim} values, but indices above 2^24 = {MAX_EXACT_INDEX} "
                                f"are not exact in a float32 blob", ("argmax_param",))
        return axis, dim

    def infer(self, bottoms):
        x = bottoms[0]
        axis, _ = self._ranked(x)
        k = self.p.top_k
        if axis is not None:
            return [x[:axis] + (k,) + x[axis + 1:]]
        rank = max(len(x), 3)
        return [(x[0], 2 if self.p.out_max_val else 1, k) + (1,) * (rank - 3)]

    def apply(self, params, bottoms, ctx):
        import jax
        import jax.numpy as jnp

        x = jax.lax.stop_gradient(bottoms[0])  # Caffe: Backward is NOT_IMPLEMENTED
        axis, dim = self._ranked(x.shape)
        k = self.p.top_k

        def top_k(v):
            # lax.top_k puts the lower index first among equal values; Caffe's partial_sort with
            # std::greater on (value, index) pairs puts the higher one first: rank reversed.
            vals, idx = jax.lax.top_k(v[..., ::-1], k)
            return vals, (dim - 1 - idx).astype(x.dtype)

        if axis is None:
            vals, idx = top_k(x.reshape(x.shape[0], dim))
            parts = [idx, vals] if self.p.out_max_val else [idx]
            out = jnp.stack(parts, axis=1)
            return [out.reshape(self.infer([x.shape])[0])]
        vals, idx = top_k(jnp.moveaxis(x, axis, -1))
        return [jnp.moveaxis(vals if self.p.out_max_val else idx, -1, axis)]


@register
class Silence(Layer):
    type = "Silence"
    bottoms = (1, None)
    tops = (0, 0)
    bottom_names = ("blobs",)
    summary = ("Consumes its inputs and produces nothing: marks blobs as used (so they are not "
               "net outputs); no gradient flows back.")
    example = "name: silence\ntype: Silence\nbottom: data\n"

    def infer(self, bottoms):
        return []

    def apply(self, params, bottoms, ctx):
        return []
