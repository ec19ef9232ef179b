"""Pooling with Caffe's output-size rule: CEIL rounding by default, FLOOR on request, and the clip
of a last window that would start in the padding."""

from __future__ import annotations

from netc.compiler.layer import Layer, Shape, fmt_shape, register
from netc.compiler.layers.geometry import Window, axis_name, window
from netc.spec.errors import SpecError
from netc.spec.messages import PoolingParameter


def pooled_size(size: int, k: int, s: int, p: int, round_mode: str) -> int:
    """Caffe's PoolingLayer::Reshape for one axis (may return ≤ 0; the caller reports it)."""
    span = size + 2 * p - k
    out = (-(-span // s) if round_mode == "CEIL" else span // s) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1  # the last window must start inside the image or the left padding
    return out


@register
class Pooling(Layer):
    type = "Pooling"
    param_field = "pooling_param"
    Param = PoolingParameter
    geometry = "window"
    summary = "MAX / AVE pooling over N-D windows; Caffe's CEIL rounding by default, FLOOR on request."
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
        return w

    def infer(self, bottoms):
        x = bottoms[0]
        w = self._window(x)
        n = len(x) - 2
        mode = self.p.round_mode
        out = []
        for i in range(n):
            size, k, s, p = x[2 + i], w.kernel[i], w.stride[i], w.pad[i]
            o = pooled_size(size, k, s, p, mode)
            name = axis_name(i, n)
            if size + 2 * p < k or o <= 0:
                raise SpecError(
                    f"output would be empty: input {fmt_shape(x)}, on axis {name} the padded input "
                    f"{size} + 2·{p} = {size + 2 * p} is smaller than the kernel {k}",
                    ("pooling_param", "kernel_size"))
            span = size + 2 * p - k
            if span % s and not self.p.global_pooling:
                if mode == "CEIL":
                    self.warn(f"windows do not tile the input on axis {name}: ({size} + 2·{p} − {k}) / {s} "
                              f"= {span}/{s} is not whole; CEIL rounding adds a last window that "
                              f"overhangs the input ({o} outputs; FLOOR would give {span // s + 1})",
                              "pooling_param", "stride")
                else:
                    self.warn(f"windows do not tile the input on axis {name}: ({size} + 2·{p} − {k}) / {s} "
                              f"= {span}/{s} is not whole; FLOOR rounding drops the last {span % s} "
                              f"input position(s)", "pooling_param", "stride")
            out.append(o)
        return [x[:2] + tuple(out)]

    def window(self, bottoms):
        w = self._window(bottoms[0])
        return list(zip(w.extent, w.stride))

    def describe(self) -> str:
        p = self.p
        if p.global_pooling:
            return f"{p.pool} global"
        return f"{p.pool} {p.round_mode}"

    def macs(self, bottoms, tops):
        return 0  # comparisons / additions, not multiply-accumulates

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp
        import numpy as np
        from jax import lax

        x = bottoms[0]
        w = self._window(x.shape)
        out = self.infer([x.shape])[0][2:]
        n = len(out)
        # Padding after the input so that `out` windows fit exactly (CEIL may need more than `pad`,
        # FLOOR may drop input: then the input is cut).
        pads, cut = [], []
        for i in range(n):
            size, k, s, p = x.shape[2 + i], w.kernel[i], w.stride[i], w.pad[i]
            need = (out[i] - 1) * s + k - p  # end of the last window, in input coordinates
            cut.append(min(size, need))
            pads.append((p, max(0, need - size)))
        x = x[(slice(None), slice(None)) + tuple(slice(0, c) for c in cut)]
        dims, strides = (1, 1) + w.kernel, (1, 1) + w.stride
        padding = ((0, 0), (0, 0)) + tuple(pads)
        if self.p.pool == "MAX":
            # A Python scalar init lets JAX recognise the max monoid (differentiable).
            return [lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, padding)]
        if self.p.pool == "AVE":
            total = lax.reduce_window(x, 0.0, lax.add, dims, strides, padding)
            # Caffe divides by the window clipped to the padded input (not to the image).
            div = np.ones(out, np.float32)
            for i in range(n):
                size, k, s, p = bottoms[0].shape[2 + i], w.kernel[i], w.stride[i], w.pad[i]
                start = np.arange(out[i]) * s - p
                extent = np.minimum(start + k, size + p) - start
                div = div * extent.reshape((-1,) + (1,) * (n - 1 - i))
            return [total / jnp.asarray(div, x.dtype)]
        raise NotImplementedError(f"pooling method {self.p.pool} has no lowering")

