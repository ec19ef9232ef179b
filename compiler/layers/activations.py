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
    example = "name: sig\ntype: Sigmoid\nbottom: ip1\ntop: ip1\n"


@register
class TanH(Pointwise):
    type = "TanH"
    param_field = "tanh_param"
    Param = TanHParameter
    summary = "tanh(x)."
    example = "name: tanh1\ntype: TanH\nbottom: ip1\ntop: ip1\n"


@register
class Dropout(Pointwise):
    type = "Dropout"
    param_field = "dropout_param"
    Param = DropoutParameter
    summary = ("Zeroes each unit with probability dropout_ratio in TRAIN and scales the kept ones "
               "by 1/(1 − ratio); the identity in TEST.")
    example = "name: drop6\ntype: Dropout\nbottom: fc6\ntop: fc6\ndropout_param: {dropout_ratio: 0.5}\n"
