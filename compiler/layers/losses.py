"""Losses and metrics: SoftmaxWithLoss, EuclideanLoss, Accuracy."""

from __future__ import annotations

from netc.compiler.layer import Layer, Shape, canonical_axis, count, fmt_shape, register
from netc.spec.errors import SpecError
from netc.spec.messages import AccuracyParameter, LossParameter, SoftmaxParameter


def check_labels(layer: Layer, pred: Shape, label: Shape, axis: int) -> None:
    """Caffe's rule: one label per prediction position outside the class axis."""
    if axis == 0:
        raise SpecError("the class axis cannot be the batch axis 0")
    want = count(pred, 1, axis) * count(pred, axis + 1)
    if not label or label[0] != pred[0] or count(label, 1) != want:
        raise SpecError(
            f"label {layer.spec.bottom[1]} ({fmt_shape(label)}) must hold one label per prediction: "
            f"predictions {layer.spec.bottom[0]} are {fmt_shape(pred)} with classes on axis {axis}, "
            f"so the label needs {fmt_shape(pred[:axis] + pred[axis + 1:])} elements", ("bottom",))


@register
class SoftmaxWithLoss(Layer):
    type = "SoftmaxWithLoss"
    param_field = "softmax_param"
    Param = SoftmaxParameter
    extra_params = {"loss_param": LossParameter}
    bottoms = (2, 2)
    tops = (1, 2)
    bottom_names = ("predictions", "label")
    is_loss = True
    summary = ("Softmax + multinomial logistic loss; honours loss_param.ignore_label and "
               "normalization (VALID by default). Optional second top: the probabilities.")
    example = """\
name: loss
type: SoftmaxWithLoss
bottom: [ip2, label]
top: loss
"""

    def infer(self, bottoms):
        pred, label = bottoms
        axis = canonical_axis(self.p.axis, len(pred), ("softmax_param", "axis"))
        check_labels(self, pred, label, axis)
        return [()] + ([pred] if len(self.spec.top) > 1 else [])


@register
class EuclideanLoss(Layer):
    type = "EuclideanLoss"
    extra_params = {"loss_param": LossParameter}
    bottoms = (2, 2)
    bottom_names = ("predictions", "targets")
    is_loss = True
    summary = "Σ (a − b)² / (2N) over two inputs with the same number of elements per sample."
    example = "name: loss\ntype: EuclideanLoss\nbottom: [pred, target]\ntop: loss\n"

    def infer(self, bottoms):
        a, b = bottoms
        if a[:1] != b[:1] or count(a, 1) != count(b, 1):
            raise SpecError(f"inputs must match per sample: {self.spec.bottom[0]} is {fmt_shape(a)}, "
                            f"{self.spec.bottom[1]} is {fmt_shape(b)}", ("bottom",))
        return [()]


@register
class Accuracy(Layer):
    type = "Accuracy"
    param_field = "accuracy_param"
    Param = AccuracyParameter
    bottoms = (2, 2)
    tops = (1, 2)
    bottom_names = ("predictions", "label")
    summary = "Fraction of labels among the top_k scores (ignore_label skips); optional per-class top."
    example = """\
name: accuracy
type: Accuracy
bottom: [ip2, label]
top: accuracy
include: {phase: TEST}
"""

    def infer(self, bottoms):
        pred, label = bottoms
        axis = canonical_axis(self.p.axis, len(pred), ("accuracy_param", "axis"))
        if self.p.top_k > pred[axis]:
            raise SpecError(f"top_k {self.p.top_k} is more than the {pred[axis]} classes",
                            ("accuracy_param", "top_k"))
        check_labels(self, pred, label, axis)
        return [()] + ([(pred[axis],)] if len(self.spec.top) > 1 else [])
