"""Losses and metrics: SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss, HingeLoss,
InfogainLoss, MultinomialLogisticLoss, ContrastiveLoss, Accuracy.

Each follows its Caffe layer (src/caffe/layers/*_loss_layer.cpp), forward and backward: where Caffe's
hand-written gradient differs from the derivative of its forward (a clamp inside a log, an epsilon
in a denominator), the lowering reproduces Caffe's gradient with a stop_gradient construction.

Labels arrive as floats (Caffe stores them in float blobs) and are truncated to integers. A label
outside [0, classes) that is not the ignore_label makes the loss NaN: Caffe reads out of bounds
(undefined), PyTorch raises; a jitted JAX program cannot raise, and a NaN loss stops the trainer.
"""

from __future__ import annotations

import math
import os

from netc.compiler.layer import (
    LabelFact,
    Layer,
    Shape,
    batch_axis,
    canonical_axis,
    count,
    fmt_shape,
    register,
)
from netc.spec.errors import SpecError
from netc.spec.messages import (
    AccuracyParameter,
    ContrastiveLossParameter,
    HingeLossParameter,
    InfogainLossParameter,
    LossParameter,
    SoftmaxLossParameter,
    SoftmaxParameter,
)

# Caffe's kLOG_THRESHOLD: probabilities are clamped to it before a log (loss_layer.hpp).
LOG_THRESHOLD = 1e-20
# log(FLT_MIN): SoftmaxWithLoss computes −log(max(prob, FLT_MIN)), at most ≈ 87.3365 per position.
LOG_FLT_MIN = math.log(2.0**-126)


def sample_axis(shape: Shape) -> int:
    """The axis of a blob that indexes samples: its batch axis (the symbol N or a concrete batch
    the planner marked; axis 1 of a time-major T×N×… blob), else axis 0 as in Caffe."""
    axis = batch_axis(shape)
    return 0 if axis is None else axis


def per_sample(shape: Shape) -> tuple[int, ...]:
    """The shape of one sample: `shape` without its sample axis, as plain ints."""
    axis = sample_axis(shape)
    return tuple(int(d) for d in tuple(shape[:axis]) + tuple(shape[axis + 1:]))


def same_samples(a: Shape, b: Shape) -> bool:
    """Two blobs hold the same number of samples, with the same number of elements before and
    after the sample axis: so that position i of one sample of `a` is position i of the same
    sample of `b` (N×H×W labels for N×1×H×W, T×N labels for T×N×C predictions; not N×T for
    T×N×C). The sample axis is axis 0 where no batch axis is marked (Caffe's rule)."""
    if not a or not b:
        return False
    i, j = sample_axis(a), sample_axis(b)
    return (a[i] == b[j] and count(tuple(a[:i])) == count(tuple(b[:j]))
            and count(tuple(a[i + 1:])) == count(tuple(b[j + 1:])))


def check_labels(layer: Layer, pred: Shape, label: Shape, axis: int) -> None:
    """Caffe's rule: one label per prediction position outside the class axis."""
    batch = sample_axis(pred)
    if axis == batch:
        if axis == 0:
            raise SpecError("the class axis cannot be the batch axis 0")
        raise SpecError(f"the class axis cannot be the batch axis {axis} (predictions "
                        f"{layer.spec.bottom[0]} are {fmt_shape(pred)}; a time-major T×N×C blob "
                        f"has its classes on axis 2, or −1 for the last)")
    want = tuple(pred[:axis]) + tuple(pred[axis + 1:])
    if not same_samples(want, label):
        raise SpecError(
            f"label {layer.spec.bottom[1]} ({fmt_shape(label)}) must hold one label per prediction: "
            f"predictions {layer.spec.bottom[0]} are {fmt_shape(pred)} with classes on axis {axis}, "
            f"so the label needs {fmt_shape(pred[:axis] + pred[axis + 1:])} elements", ("bottom",))


def check_sample_labels(layer: Layer, pred: Shape, label: Shape) -> None:
    """Caffe's rule for losses whose classes are all of a sample's values (HingeLoss,
    MultinomialLogisticLoss): one label per sample (N, or N×1×1×1)."""
    if not label or label[0] != pred[0] or count(label, 1) != 1:
        raise SpecError(
            f"label {layer.spec.bottom[1]} ({fmt_shape(label)}) must hold one label per sample: "
            f"predictions {layer.spec.bottom[0]} are {fmt_shape(pred)} (every value of a sample is "
            f"a class), so the label needs {pred[0]} elements", ("bottom",))


def class_label_fact(layer: Layer, pred: Shape, axis: int, ignore: int | None) -> LabelFact:
    """Caffe's rule as a fact: class indices shaped as the predictions without the class axis,
    per sample (without the sample axis: T for T×N×C predictions with classes on axis 2)."""
    classes = int(pred[axis]) if isinstance(pred[axis], int) else None
    want = tuple(pred[:axis]) + tuple(pred[axis + 1:])
    return LabelFact(layer.spec.name, 1, per_sample(want), classes,
                     ignore, "class", f"predictions {layer.spec.bottom[0]} are {fmt_shape(pred)} "
                     f"with classes on axis {axis}")


def sample_label_fact(layer: Layer, pred: Shape) -> LabelFact:
    """One class index per sample; every value of a sample is a class (HingeLoss, ...)."""
    classes = count(pred, 1) if all(isinstance(d, int) for d in pred[1:]) else None
    return LabelFact(layer.spec.name, 1, (), classes, None, "class",
                     f"predictions {layer.spec.bottom[0]} are {fmt_shape(pred)}, one class per value")


def target_fact(layer: Layer, pred: Shape, ignore: int | None = None) -> LabelFact:
    """Real-valued targets, one per prediction value."""
    return LabelFact(layer.spec.name, 1, per_sample(pred), None, ignore, "target",
                     f"{layer.spec.bottom[0]} is {fmt_shape(pred)}, one target per value")


def class_labels(label, pred, axis: int):
    """Labels as int32 with the prediction's shape minus its class axis (Caffe stores them as
    floats in an N×1×H×W or N blob)."""
    import jax.numpy as jnp

    return label.reshape(pred.shape[:axis] + pred.shape[axis + 1:]).astype(jnp.int32)


def pick_class(values, lab, axis: int):
    """values at class `lab` along `axis` (which is removed); NaN where lab is not a class."""
    import jax.numpy as jnp

    inside = (lab >= 0) & (lab < values.shape[axis])
    safe = jnp.where(inside, lab, 0)
    picked = jnp.take_along_axis(values, jnp.expand_dims(safe, axis), axis=axis).squeeze(axis)
    return jnp.where(inside, picked, jnp.nan)


def clamped_log(p):
    """Caffe's log(max(p, 1e-20)) with Caffe's gradient 1/max(p, 1e-20): below the threshold the
    value is the threshold's but the gradient still flows (jnp.maximum would stop it)."""
    import jax
    import jax.numpy as jnp

    ste = LOG_THRESHOLD + (p - jax.lax.stop_gradient(p))
    return jnp.log(jnp.where(p > LOG_THRESHOLD, p, ste))


def normalization_mode(lp: LossParameter, default: str) -> str:
    """Caffe's LossLayer rule: `normalization` if written, else the deprecated `normalize`
    (true: VALID, false: BATCH_SIZE), else the layer's default."""
    if "normalization" in lp.set_fields():
        return lp.normalization
    if lp.normalize is not None:
        return "VALID" if lp.normalize else "BATCH_SIZE"
    return default


def normalizer(mode: str, valid, full: int, batch: int, dtype):
    """Caffe's get_normalizer, clamped to ≥ 1."""
    import jax.numpy as jnp

    if mode == "VALID":
        return jnp.maximum(jnp.sum(valid), 1).astype(dtype)
    return float(max(1, {"FULL": full, "BATCH_SIZE": batch, "NONE": 1}[mode]))


@register
class SoftmaxWithLoss(Layer):
    type = "SoftmaxWithLoss"
    param_field = "softmax_param"
    Param = SoftmaxParameter
    extra_params = {"loss_param": SoftmaxLossParameter}
    bottoms = (2, 2)
    tops = (1, 2)
    bottom_names = ("predictions", "label")
    is_loss = True
    summary = ("Softmax + multinomial logistic loss; honours loss_param.ignore_label and "
               "normalization (VALID by default); each position's loss is at most −log(FLT_MIN) ≈ "
               "87.34, as Caffe. netc: loss_param.label_smoothing ε mixes in ε·mean_c(−log p_c). "
               "Optional second top: the probabilities.")
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

    def label_fact(self, bottoms):
        axis = canonical_axis(self.p.axis, len(bottoms[0]))
        return class_label_fact(self, bottoms[0], axis, self.spec.loss_param.ignore_label)

    def apply(self, params, bottoms, ctx):
        import jax
        import jax.numpy as jnp

        pred, label = bottoms
        axis = canonical_axis(self.p.axis, pred.ndim)
        logp = jax.nn.log_softmax(pred, axis=axis)
        lab = class_labels(label, pred, axis)
        picked = pick_class(logp, lab, axis)
        # Caffe: −log(max(prob, FLT_MIN)) forward, prob − onehot backward (the clamp only caps the
        # value): below the cap, the value is the cap's and the gradient is log_softmax's.
        picked = jnp.where(picked > LOG_FLT_MIN, picked,
                           LOG_FLT_MIN + (picked - jax.lax.stop_gradient(picked)))
        lp = self.spec.loss_param
        per = -picked
        if lp.label_smoothing:  # the target (1 − ε)·onehot + ε/C, as PyTorch's cross_entropy
            eps = lp.label_smoothing
            per = (1 - eps) * per - eps * jnp.mean(logp, axis=axis)
        valid = jnp.ones(lab.shape, bool) if lp.ignore_label is None else lab != lp.ignore_label
        total = jnp.sum(jnp.where(valid, per, 0))
        outer = math.prod(pred.shape[:axis])
        norm = normalizer(normalization_mode(lp, "VALID"), valid, lab.size, outer, pred.dtype)
        loss = total / norm
        return [loss] + ([jax.nn.softmax(pred, axis=axis)] if len(self.spec.top) > 1 else [])


@register
class SigmoidCrossEntropyLoss(Layer):
    type = "SigmoidCrossEntropyLoss"
    extra_params = {"loss_param": LossParameter}
    bottoms = (2, 2)
    bottom_names = ("scores", "targets")
    is_loss = True
    summary = ("Σ −[t·log σ(x) + (1−t)·log(1−σ(x))], computed stably from the scores x; targets t "
               "(no gradient) have one value per score. loss_param: ignore_label (targets truncated "
               "to integers), normalization BATCH_SIZE by default for this layer, as Caffe.")
    example = """\
name: loss
type: SigmoidCrossEntropyLoss
bottom: [scores, targets]
top: loss
"""

    def infer(self, bottoms):
        x, t = bottoms
        if not same_samples(x, t):
            raise SpecError(f"scores and targets must have the same count: {self.spec.bottom[0]} is "
                            f"{fmt_shape(x)}, {self.spec.bottom[1]} is {fmt_shape(t)}", ("bottom",))
        return [()]

    def label_fact(self, bottoms):
        return target_fact(self, bottoms[0], self.spec.loss_param.ignore_label)

    def apply(self, params, bottoms, ctx):
        import jax
        import jax.numpy as jnp

        x, t = bottoms
        t = jax.lax.stop_gradient(t).reshape(x.shape).astype(x.dtype)  # Caffe: no gradient to targets
        # −[x·(t − (x ≥ 0)) − log(1 + exp(x − 2x·(x ≥ 0)))] = softplus(x) − x·t; gradient σ(x) − t.
        per = jax.nn.softplus(x) - x * t
        lp = self.spec.loss_param
        if lp.ignore_label is None:
            valid = jnp.ones(x.shape, bool)
        else:
            valid = jnp.trunc(t).astype(jnp.int32) != lp.ignore_label  # Caffe: static_cast<int>
        total = jnp.sum(jnp.where(valid, per, 0))
        norm = normalizer(normalization_mode(lp, "BATCH_SIZE"), valid, x.size, x.shape[0], x.dtype)
        return [total / norm]


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
        if not same_samples(a, b):
            raise SpecError(f"inputs must match per sample: {self.spec.bottom[0]} is {fmt_shape(a)}, "
                            f"{self.spec.bottom[1]} is {fmt_shape(b)}", ("bottom",))
        return [()]

    def label_fact(self, bottoms):
        return target_fact(self, bottoms[0])

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        a, b = bottoms
        diff = a.reshape(a.shape[0], -1) - b.reshape(b.shape[0], -1).astype(a.dtype)
        return [jnp.sum(diff * diff) / a.shape[0] / 2]


@register
class HingeLoss(Layer):
    type = "HingeLoss"
    param_field = "hinge_loss_param"
    Param = HingeLossParameter
    bottoms = (2, 2)
    bottom_names = ("predictions", "label")
    is_loss = True
    summary = ("One-vs-all hinge: t = +1 for the label's class, −1 for every other value of the "
               "sample; Σ max(0, 1 − t·x) (norm L1) or its square (L2), divided by N.")
    example = """\
name: loss
type: HingeLoss
bottom: [ip2, label]
top: loss
hinge_loss_param: {norm: L2}
"""

    def infer(self, bottoms):
        check_sample_labels(self, *bottoms)
        return [()]

    def label_fact(self, bottoms):
        return sample_label_fact(self, bottoms[0])

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        pred, label = bottoms
        n = pred.shape[0]
        x = pred.reshape(n, -1)
        lab = label.reshape(n).astype(jnp.int32)
        classes = x.shape[1]
        t = jnp.where(jnp.arange(classes)[None, :] == lab[:, None], 1.0, -1.0).astype(x.dtype)
        margin = 1 - t * x
        # where, not maximum: Caffe's gradient at margin 0 is sign(0) = 0
        margin = jnp.where(margin > 0, margin, 0)
        total = jnp.sum(margin * margin) if self.p.norm == "L2" else jnp.sum(margin)
        bad = jnp.any((lab < 0) | (lab >= classes))
        return [jnp.where(bad, jnp.nan, total / n)]


@register
class MultinomialLogisticLoss(Layer):
    type = "MultinomialLogisticLoss"
    bottoms = (2, 2)
    bottom_names = ("probabilities", "label")
    is_loss = True
    summary = ("−Σ log(max(p[label], 1e−20)) / N over probabilities (e.g. a Softmax's output); "
               "every value of a sample is a class, one label per sample.")
    example = """\
name: loss
type: MultinomialLogisticLoss
bottom: [prob, label]
top: loss
"""

    def infer(self, bottoms):
        check_sample_labels(self, *bottoms)
        return [()]

    def label_fact(self, bottoms):
        return sample_label_fact(self, bottoms[0])

    def apply(self, params, bottoms, ctx):
        import jax.numpy as jnp

        prob, label = bottoms
        n = prob.shape[0]
        picked = pick_class(prob.reshape(n, -1), label.reshape(n).astype(jnp.int32), 1)
        return [-jnp.sum(clamped_log(picked)) / n]


def _npz_member_header(path: str, member: str):
    """(shape, dtype) of array `member` of an .npz, from its header only (no data, no pickle);
    None when the archive has no such array. Raises OSError / ValueError for unreadable files."""
    import zipfile

    import numpy.lib.format as fmt

    with zipfile.ZipFile(path) as z:
        if f"{member}.npy" not in z.namelist():
            return None, sorted(n[:-4] for n in z.namelist() if n.endswith(".npy"))
        with z.open(f"{member}.npy") as f:
            major, _ = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
    return (tuple(int(d) for d in shape), dtype), None


@register
class InfogainLoss(Layer):
    type = "InfogainLoss"
    param_field = "infogain_loss_param"
    Param = InfogainLossParameter
    bottoms = (2, 3)
    bottom_names = ("probabilities", "label", "H")
    is_loss = True
    summary = ("−Σ_k H[label, k]·log(max(p_k, 1e−20)) summed over positions, divided by the count "
               "of axes before the class axis (N). H (C×C) is the third input, or the array `H` of "
               "the .npz infogain_loss_param.source, or the identity (= MultinomialLogisticLoss).")
    example = """\
name: loss
type: InfogainLoss
bottom: [prob, label]
top: loss
infogain_loss_param: {axis: 1}
"""

    def _source_path(self) -> str:
        src = self.p.source
        if os.path.isabs(src) or self.spec_dir is None:
            return src
        path = os.path.join(self.spec_dir, src)
        return path if os.path.exists(path) or not os.path.exists(src) else src

    def infer(self, bottoms):
        pred, label = bottoms[:2]
        axis = canonical_axis(self.p.axis, len(pred), ("infogain_loss_param", "axis"))
        check_labels(self, pred, label, axis)
        classes = count(pred, axis, axis + 1)
        where = f"the {classes} classes of {self.spec.bottom[0]} (axis {axis})"
        if len(bottoms) == 3:
            if count(bottoms[2]) != classes * classes:
                raise SpecError(f"H input {self.spec.bottom[2]} ({fmt_shape(bottoms[2])}) must hold "
                                f"C×C = {classes * classes} elements for {where}", ("bottom",))
            if self.p.source is not None:
                self.warn("ignored: the third input gives H", "infogain_loss_param", "source")
        elif self.p.source is not None:
            path = ("infogain_loss_param", "source")
            src = self.p.source
            full = self._source_path()
            if not os.path.exists(full):
                looked = f" (looked in {self.spec_dir})" if self.spec_dir and not os.path.isabs(src) else ""
                raise SpecError(f"no such file '{src}'{looked}", path)
            try:
                header, names = _npz_member_header(full, "H")
            except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
                raise SpecError(f"cannot read '{src}' as an .npz: {e}", path) from None
            if header is None:
                raise SpecError(f"'{src}' has no array 'H' (it holds: {', '.join(names) or 'nothing'})",
                                path)
            shape, dtype = header
            if dtype.kind not in "biuf":
                raise SpecError(f"H in '{src}' has dtype {dtype}; it must be a numeric array", path)
            if shape != (classes, classes):
                raise SpecError(f"H in '{src}' is {fmt_shape(shape)}; it must be "
                                f"{classes}×{classes} for {where}", path)
        return [()]

    def label_fact(self, bottoms):
        return class_label_fact(self, bottoms[0], canonical_axis(self.p.axis, len(bottoms[0])), None)

    def _load_h(self):
        import numpy as np

        from netc.compiler.layer import LoweringError

        try:
            with np.load(self._source_path(), allow_pickle=False) as z:
                return np.asarray(z["H"], np.float32)
        except Exception as e:  # noqa: BLE001 - a file changed since `netc check`
            raise LoweringError(f"layer '{self.spec.name}' (InfogainLoss): infogain_loss_param.source: "
                                f"cannot read H from '{self.p.source}': {e}") from None

    def apply(self, params, bottoms, ctx):
        import jax
        import jax.numpy as jnp

        prob, label = bottoms[:2]
        axis = canonical_axis(self.p.axis, prob.ndim)
        classes = prob.shape[axis]
        if len(bottoms) == 3:  # Caffe: no gradient to H
            h = jax.lax.stop_gradient(bottoms[2]).reshape(classes, classes).astype(prob.dtype)
        elif self.p.source is not None:
            h = jnp.asarray(self._load_h(), prob.dtype)
        else:
            h = jnp.eye(classes, dtype=prob.dtype)
        lab = class_labels(label, prob, axis)
        inside = (lab >= 0) & (lab < classes)
        rows = h[jnp.where(inside, lab, 0)]  # (..., C): H[label_n, :]
        total = -jnp.sum(rows * clamped_log(jnp.moveaxis(prob, axis, -1)))
        loss = total / math.prod(prob.shape[:axis])
        return [jnp.where(jnp.all(inside), loss, jnp.nan)]


@register
class ContrastiveLoss(Layer):
    type = "ContrastiveLoss"
    param_field = "contrastive_loss_param"
    Param = ContrastiveLossParameter
    bottoms = (3, 3)
    bottom_names = ("features a", "features b", "similar")
    is_loss = True
    summary = ("Siamese loss Σ [y·d² + (1−y)·max(margin − d, 0)²] / 2N, d = ‖a − b‖, y = 1 for "
               "similar pairs (any non-zero integer, as Caffe); legacy_version: (1−y)·max(margin − "
               "d², 0). a, b: N×C features; y: one value per pair.")
    example = """\
name: loss
type: ContrastiveLoss
bottom: [feat, feat_p, label]
top: loss
contrastive_loss_param: {margin: 1.0}
"""

    def infer(self, bottoms):
        a, b, y = bottoms
        names = self.spec.bottom
        if a != b:
            raise SpecError(f"the two feature inputs must have one shape: {names[0]} is "
                            f"{fmt_shape(a)}, {names[1]} is {fmt_shape(b)}", ("bottom",))
        if len(a) < 2 or count(a, 2) != 1:
            raise SpecError(f"features must be N×C vectors (Caffe's rule: height and width 1): "
                            f"{names[0]} is {fmt_shape(a)}; Flatten them first", ("bottom",))
        if not y or y[0] != a[0] or count(y, 1) != 1:
            raise SpecError(f"similarity label {names[2]} ({fmt_shape(y)}) must hold one value per "
                            f"pair: the features are {fmt_shape(a)}, so it needs {a[0]} elements",
                            ("bottom",))
        return [()]

    def label_fact(self, bottoms):
        return LabelFact(self.spec.name, 2, (), None, None, "class",
                         "one similarity per pair: any non-zero integer is similar")

    def apply(self, params, bottoms, ctx):
        import jax
        import jax.numpy as jnp

        a, b, y = bottoms
        n = a.shape[0]
        diff = a.reshape(n, -1) - b.reshape(n, -1)
        dist_sq = jnp.sum(diff * diff, axis=1)
        similar = jnp.trunc(jax.lax.stop_gradient(y)).reshape(n).astype(jnp.int32) != 0
        margin = self.p.margin
        if self.p.legacy_version:
            gap = margin - dist_sq
            apart = jnp.where(gap > 0, gap, 0)
        else:
            # d with Caffe's backward: ∂d/∂diff = diff / (d + 1e−4) (no NaN at d = 0)
            sq = jax.lax.stop_gradient(dist_sq)
            d = jnp.sqrt(sq)
            d = d + (dist_sq - sq) / (2 * (d + 1e-4))
            gap = margin - d
            gap = jnp.where(gap > 0, gap, 0)
            apart = gap * gap
        return [jnp.sum(jnp.where(similar, dist_sq, apart)) / n / 2]


@register
class Accuracy(Layer):
    type = "Accuracy"
    param_field = "accuracy_param"
    Param = AccuracyParameter
    bottoms = (2, 2)
    tops = (1, 2)
    bottom_names = ("predictions", "label")
    is_metric = True
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
        check_labels(self, pred, label, axis)  # first: it refuses the (symbolic) batch axis
        if self.p.top_k > pred[axis]:
            raise SpecError(f"top_k {self.p.top_k} is more than the {pred[axis]} classes",
                            ("accuracy_param", "top_k"))
        return [()] + ([(pred[axis],)] if len(self.spec.top) > 1 else [])

    def label_fact(self, bottoms):
        axis = canonical_axis(self.p.axis, len(bottoms[0]))
        return class_label_fact(self, bottoms[0], axis, self.p.ignore_label)

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
