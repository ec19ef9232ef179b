"""Layers that move, join or split blobs: Softmax, Flatten, Reshape, Concat, Eltwise, Split."""

from __future__ import annotations

from netc.compiler.layer import (
    Layer,
    Shape,
    batch_axis,
    canonical_axis,
    count,
    fmt_shape,
    register,
    same_shape,
    wide,
)
from netc.spec.errors import SpecError
from netc.spec.messages import (
    ConcatParameter,
    EltwiseParameter,
    FlattenParameter,
    ReshapeParameter,
    SoftmaxParameter,
)


def same_batch_axis(layer: Layer, bottoms: list[Shape]) -> None:
    """Inputs joined position by position must hold the batch on one axis: a time-major T×N×…
    blob and a batch-major N×T×… one may have equal shapes (T = N) and still not line up."""
    marked = [(i, b, batch_axis(b)) for i, b in enumerate(bottoms) if batch_axis(b) is not None]
    for i, b, axis in marked[1:]:
        j, first, first_axis = marked[0]
        if axis != first_axis:
            names = layer.spec.bottom
            raise SpecError(f"input {i} ({names[i]}: {fmt_shape(b)}) holds the batch on axis {axis}, "
                            f"input {j} ({names[j]}: {fmt_shape(first)}) on axis {first_axis}: "
                            f"join blobs of one layout (time-major T×N×… or batch-major N×…)",
                            ("bottom",))


def symbolic_batch(x: Shape, lo: int, hi: int) -> int | None:
    """The axis in [lo, hi) of `x` that holds the symbolic batch, if any."""
    return next((i for i in range(lo, hi) if isinstance(x[i], str)), None)


@register
class Softmax(Layer):
    type = "Softmax"
    param_field = "softmax_param"
    Param = SoftmaxParameter
    geometry = "pointwise"
    summary = "Softmax along `axis` (default the channels); other axes are independent."
    example = "name: prob\ntype: Softmax\nbottom: ip2\ntop: prob\n"

    def infer(self, bottoms):
        x = bottoms[0]
        axis = canonical_axis(self.p.axis, len(x), ("softmax_param", "axis"))
        if axis == batch_axis(x):
            self.warn(f"axis {axis} is the batch axis of {self.spec.bottom[0]} ({fmt_shape(x)}): the "
                      f"softmax mixes the samples of the batch; a time-major T×N×C blob has its "
                      f"classes on axis 2 (axis: -1 for the last)", "softmax_param", "axis")
        return same_shape(bottoms)

    def apply(self, params, bottoms, ctx):
        import jax

        x = bottoms[0]  # in float32 under mixed precision
        return [jax.nn.softmax(wide(x), axis=canonical_axis(self.p.axis, x.ndim)).astype(x.dtype)]


@register
class Flatten(Layer):
    type = "Flatten"
    param_field = "flatten_param"
    Param = FlattenParameter
    summary = "Merges axes axis..end_axis into one."
    example = "name: flat\ntype: Flatten\nbottom: pool5\ntop: flat\n"

    def infer(self, bottoms):
        x = bottoms[0]
        a = canonical_axis(self.p.axis, len(x), ("flatten_param", "axis"))
        e = canonical_axis(self.p.end_axis, len(x), ("flatten_param", "end_axis"))
        if e < a:
            raise SpecError(f"end_axis {self.p.end_axis} comes before axis {self.p.axis} "
                            f"for a {len(x)}-axis input", ("flatten_param", "end_axis"))
        if a == e:  # nothing merged (the axis may be the batch)
            return [tuple(x)]
        b = symbolic_batch(x, a, e + 1)
        if b is not None:
            raise SpecError(f"cannot merge axes {a}..{e} of {fmt_shape(x)}: axis {b} is the batch, of "
                            f"symbolic size {x[b]} here (flatten only the axes after it, e.g. "
                            f"axis: {b + 1}, or give the batch: --batch N)", ("flatten_param", "axis"))
        return [x[:a] + (count(x, a, e + 1),) + x[e + 1:]]

    def apply(self, params, bottoms, ctx):
        return [bottoms[0].reshape(self.infer([bottoms[0].shape])[0])]


@register
class Reshape(Layer):
    type = "Reshape"
    param_field = "reshape_param"
    Param = ReshapeParameter
    summary = "Caffe's Reshape: 0 copies the input dimension, −1 is inferred (at most one)."
    example = """\
name: reshape
type: Reshape
bottom: ip1
top: r
reshape_param: {shape: {dim: [0, -1, 4]}}
"""

    def infer(self, bottoms):
        x = bottoms[0]
        p = self.p
        dims = p.shape.dim
        n = len(x)
        path = ("reshape_param", "axis")
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise SpecError(f"axis {p.axis} is out of range for a {n}-axis input", path)
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise SpecError(f"axis {p.axis} + num_axes {p.num_axes} runs past the {n} input axes",
                            ("reshape_param", "num_axes"))
        if list(dims).count(-1) > 1:
            raise SpecError("at most one dimension may be −1", ("reshape_param", "shape", "dim"))
        new: list = []
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= n:
                    raise SpecError(f"dim {i} is 0 (copy), but the input has no axis {start + i}",
                                    ("reshape_param", "shape", "dim"))
                new.append(x[start + i])
            else:
                new.append(d)
        kept = x[start:end]
        b = symbolic_batch(kept, 0, len(kept))
        if b is not None:  # the batch (any size) keeps the elements before and after it
            return [x[:start] + self._around_batch(x, kept, new, b) + x[end:]]
        if -1 in new:
            self._infer_minus_one(x, kept, new)
        elif count(tuple(new)) != count(kept):
            raise SpecError(f"reshape to {fmt_shape(new)} changes the element count of the input "
                            f"{fmt_shape(x)}", ("reshape_param", "shape", "dim"))
        return [x[:start] + tuple(new) + x[end:]]

    @staticmethod
    def _infer_minus_one(x: Shape, kept: Shape, new: list) -> None:
        if -1 not in new:
            return
        total, rest = count(kept), count(tuple(d for d in new if d != -1))
        if rest == 0 or total % rest:
            raise SpecError(f"cannot infer the −1 dimension: {total} elements do not divide by "
                            f"{rest} (input {fmt_shape(x)})", ("reshape_param", "shape", "dim"))
        new[new.index(-1)] = total // rest

    def _around_batch(self, x: Shape, kept: Shape, new: list, b: int) -> tuple:
        """A reshape of axes holding the symbolic batch (kept[b]): the output holds it once (a 0
        copies it), with the same elements before it and after it, since a batch of any size
        must keep each sample's elements together."""
        path = ("reshape_param", "shape", "dim")
        at = [i for i, d in enumerate(new) if isinstance(d, str)]
        if len(at) != 1:
            raise SpecError(f"reshape to {fmt_shape(new)} would merge the batch axis (of symbolic "
                            f"size {kept[b]}) of {fmt_shape(x)} with other axes: copy it with 0 at "
                            f"its position, or give the batch (--batch N)", path)
        nb = at[0]
        parts = []
        for src, dst in ((kept[:b], new[:nb]), (kept[b + 1:], new[nb + 1:])):
            dst = list(dst)
            self._infer_minus_one(x, src, dst)
            if count(tuple(dst)) != count(src):
                raise SpecError(f"reshape to {fmt_shape(new)} moves elements across the batch axis "
                                f"(of symbolic size {kept[b]}) of {fmt_shape(x)}: the output must "
                                f"hold {count(src)} elements {'before' if not parts else 'after'} "
                                f"it, as the input does", path)
            parts.append(tuple(dst))
        return parts[0] + (new[nb],) + parts[1]

    def apply(self, params, bottoms, ctx):
        return [bottoms[0].reshape(self.infer([bottoms[0].shape])[0])]


@register
class Concat(Layer):
    type = "Concat"
    param_field = "concat_param"
    Param = ConcatParameter
    bottoms = (1, None)
    summary = "Joins its inputs along `axis`; all other dimensions must be equal."
    example = "name: concat\ntype: Concat\nbottom: [a, b]\ntop: ab\nconcat_param: {axis: 1}\n"

    def _axis(self, x) -> int:
        if "axis" not in self.p.set_fields() and self.p.concat_dim is not None:
            return canonical_axis(self.p.concat_dim, len(x), ("concat_param", "concat_dim"))
        return canonical_axis(self.p.axis, len(x), ("concat_param", "axis"))

    @property
    def geometry(self) -> str:  # type: ignore[override]
        return "pointwise" if self.p.axis == 1 else "none"

    def infer(self, bottoms):
        first = bottoms[0]
        axis = self._axis(first)
        same_batch_axis(self, bottoms)
        total = 0
        for i, b in enumerate(bottoms):
            if len(b) != len(first) or any(
                    j != axis and b[j] != first[j] for j in range(len(first))):
                raise SpecError(f"input {i} ({self.spec.bottom[i]}: {fmt_shape(b)}) does not match "
                                f"input 0 ({self.spec.bottom[0]}: {fmt_shape(first)}) outside axis {axis}", ("bottom",))
            total += count(b, axis, axis + 1)
        return [first[:axis] + (total,) + first[axis + 1:]]

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        return [jnp.concatenate(bottoms, axis=self._axis(bottoms[0].shape))]


@register
class Eltwise(Layer):
    type = "Eltwise"
    param_field = "eltwise_param"
    Param = EltwiseParameter
    bottoms = (2, None)
    geometry = "pointwise"
    summary = "Element-wise SUM (with per-input coeff), PROD or MAX of ≥ 2 inputs of one shape."
    example = """\
name: res2a
type: Eltwise
bottom: [res2a_branch1, res2a_branch2c]
top: res2a
eltwise_param: {operation: SUM}
"""

    def infer(self, bottoms):
        same_batch_axis(self, bottoms)
        for i, b in enumerate(bottoms[1:], 1):
            if b != bottoms[0]:
                raise SpecError(f"all inputs must have one shape: input {i} ({self.spec.bottom[i]}) is "
                                f"{fmt_shape(b)}, input 0 ({self.spec.bottom[0]}) is {fmt_shape(bottoms[0])}", ("bottom",))
        coeff = self.p.coeff
        if coeff and self.p.operation != "SUM":
            raise SpecError(f"coeff applies only to operation SUM, not {self.p.operation}",
                            ("eltwise_param", "coeff"))
        if coeff and len(coeff) != len(bottoms):
            raise SpecError(f"coeff has {len(coeff)} values for {len(bottoms)} inputs",
                            ("eltwise_param", "coeff"))
        return same_shape(bottoms)

    def apply(self, params, bottoms, ctx):
        import functools

        import jax.numpy as jnp

        op = self.p.operation
        if op == "PROD":
            return [functools.reduce(jnp.multiply, bottoms)]
        if op == "MAX":
            # Caffe's argmax routing, ties included (its backward sends the gradient to the mask's
            # input only; jnp.maximum would split a tie 50/50): bottoms 0 and 1 compare with
            # `a > b` (a tie goes to bottom 1), later bottoms replace the max only when greater.
            out = jnp.where(bottoms[0] > bottoms[1], bottoms[0], bottoms[1])
            for b in bottoms[2:]:
                out = jnp.where(b > out, b, out)
            return [out]
        coeff = self.p.coeff or (1.0,) * len(bottoms)
        out = bottoms[0] * coeff[0] if coeff[0] != 1 else bottoms[0]
        for c, b in zip(coeff[1:], bottoms[1:]):
            out = out + (b * c if c != 1 else b)
        return [out]


@register
class Split(Layer):
    type = "Split"
    tops = (1, None)
    geometry = "pointwise"
    summary = "Copies its input to every top (Caffe inserts these itself; gradients add up)."
    example = "name: split\ntype: Split\nbottom: data\ntop: [data_a, data_b]\n"

    def infer(self, bottoms):
        return [bottoms[0]] * len(self.spec.top)

    def apply(self, params, bottoms, ctx):
        return [bottoms[0]] * len(self.spec.top)

