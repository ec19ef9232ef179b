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


def class_labels(label, pred, axis: int):
    """Labels as int32 with the prediction's shape minus its class axis (Caffe stores them as
    floats in an N×1×H×W or N blob)."""
    import jax.numpy as jnp

    return label.reshape(pred.shape[:axis] + pred.shape[axis + 1:]).astype(jnp.int32)


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

    def apply(self, params, bottoms, ctx):
        import math

        import jax
        import jax.numpy as jnp

        pred, label = bottoms
        axis = canonical_axis(self.p.axis, pred.ndim)
        logp = jax.nn.log_softmax(pred, axis=axis)
        lab = class_labels(label, pred, axis)
        safe = jnp.clip(lab, 0, pred.shape[axis] - 1)
        picked = jnp.take_along_axis(logp, jnp.expand_dims(safe, axis), axis=axis).squeeze(axis)
        lp = self.spec.loss_param
        valid = jnp.ones(lab.shape, bool) if lp.ignore_label is None else lab != lp.ignore_label
        total = -jnp.sum(jnp.where(valid, picked, 0))
        outer = math.prod(pred.shape[:axis])
        mode = lp.normalization
        if "normalization" not in lp.set_fields() and lp.normalize is False:
            mode = "BATCH_SIZE"  # Caffe's deprecated `normalize: false`
        if mode == "VALID":
            norm = jnp.maximum(jnp.sum(valid), 1).astype(pred.dtype)
        else:
            norm = float(max(1, {"FULL": lab.size, "BATCH_SIZE": outer, "NONE": 1}[mode]))
        loss = total / norm
        return [loss] + ([jax.nn.softmax(pred, axis=axis)] if len(self.spec.top) > 1 else [])


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

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        a, b = bottoms
        diff = a.reshape(a.shape[0], -1) - b.reshape(b.shape[0], -1).astype(a.dtype)
        return [jnp.sum(diff * diff) / a.shape[0] / 2]


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

    def apply(self, params, bottoms, ctx):
        import jax
        import jax.numpy as jnp

        pred, label = bottoms
        pred = jax.lax.stop_gradient(pred)
        axis = canonical_axis(self.p.axis, pred.ndim)
        n_cls = pred.shape[axis]
        lab = class_labels(label, pred, axis)
        scores = jnp.moveaxis(pred, axis, -1)
        true = jnp.take_along_axis(scores, jnp.clip(lab, 0, n_cls - 1)[..., None], axis=-1)
        # Caffe (accuracy_layer.cpp) counts the classes scoring >= the true one, minus the true
        # class itself: a tie counts against the label (all-equal scores are never correct).
        correct = jnp.sum(scores >= true, axis=-1) - 1 < self.p.top_k
        valid = jnp.ones(lab.shape, bool) if self.p.ignore_label is None else lab != self.p.ignore_label
        acc = jnp.sum(correct & valid) / jnp.maximum(jnp.sum(valid), 1)
        tops = [acc.astype(pred.dtype)]
        if len(self.spec.top) > 1:
            onehot = jax.nn.one_hot(lab, n_cls, dtype=pred.dtype) * valid[..., None]
            hits = jnp.sum(onehot * correct[..., None], axis=tuple(range(lab.ndim)))
            seen = jnp.sum(onehot, axis=tuple(range(lab.ndim)))
            tops.append(jnp.where(seen > 0, hits / jnp.maximum(seen, 1), 0))
        return tops
