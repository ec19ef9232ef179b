"""InnerProduct: a fully connected layer over the axes from `axis` on."""

from __future__ import annotations

from netc.compiler.layer import (
    Layer,
    ParamDecl,
    batch_axis,
    canonical_axis,
    count,
    cpu_dot_dtype,
    register,
)
from netc.spec.messages import InnerProductParameter


@register
class InnerProduct(Layer):
    type = "InnerProduct"
    param_field = "inner_product_param"
    Param = InnerProductParameter
    summary = "Fully connected layer: y = x·Wᵀ + b over the axes from `axis` on (flattened)."
    example = """\
name: ip1
type: InnerProduct
bottom: pool2
top: ip1
param: [{lr_mult: 1}, {lr_mult: 2}]
inner_product_param:
  num_output: 500
  weight_filler: {type: xavier}
  bias_filler: {type: constant}
"""

    def _axis(self, x) -> int:
        return canonical_axis(self.p.axis, len(x), ("inner_product_param", "axis"))

    def infer(self, bottoms):
        x = bottoms[0]
        axis = self._axis(x)
        count(x, axis)  # the flattened axes must be concrete
        return [x[:axis] + (self.p.num_output,)]

    def params(self, bottoms):
        x = bottoms[0]
        k = count(x, self._axis(x))
        n = self.p.num_output
        out = {"weight": ParamDecl((k, n) if self.p.transpose else (n, k), self.p.weight_filler)}
        if self.p.bias_term:
            out["bias"] = ParamDecl((n,), self.p.bias_filler)
        return out

    def macs(self, bottoms, tops):
        # Per sample: one product per position of the axes before `axis` other than the batch
        # axis (T for a time-major T×N×H input with axis 2); an axis-0 product (the batch
        # flattened in) treats the blob as one sample.
        x = bottoms[0]
        axis = self._axis(x)
        batch = batch_axis(x)
        batch = 0 if batch is None else batch
        outer = count(tuple(d for i, d in enumerate(x[:axis]) if i != batch))
        return outer * count(x, axis) * self.p.num_output

    def apply(self, params, bottoms, ctx):
        x = bottoms[0]
        axis = self._axis(x.shape)
        dt = cpu_dot_dtype(x.dtype)  # float32 on a CPU under bfloat16/float16, rounded once
        x2 = x.reshape(x.shape[:axis] + (-1,)).astype(dt)
        wt = params["weight"].astype(x.dtype).astype(dt)
        y = x2 @ (wt if self.p.transpose else wt.T)
        if "bias" in params:
            y = y + params["bias"].astype(x.dtype).astype(dt)
        return [y.astype(x.dtype)]
