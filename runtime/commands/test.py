"""`netc test`: Caffe's `caffe test` — the TEST net's scalar outputs averaged over batches, and for
a classifier its confusion matrix with per-class precision, recall and F1.

A classifier is found from what its layers say, not from their types: a metric (Accuracy) or,
failing one, a loss (SoftmaxWithLoss) that reads class indices as labels (`label_fact`) names the
prediction blob (its first bottom) and the label blob. The predicted class is the argmax over the
class axis; positions whose label is the layer's ignore_label, or not a class, are left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from netc.runtime.errors import EXIT_OK, RunError

__all__ = ["run", "scores", "Classifier", "find_classifier", "class_report"]

TABLE_MAX = 20  # classes shown as a full table; more get a summary of the top confusions


def run(
    spec_path: str,
    weights: str,
    iterations: int | None,
    out: TextIO,
    err: TextIO,
    as_json: bool = False,
) -> int:
    """Print every scalar TEST-net output (accuracy, loss) averaged over `iterations` batches
    (default: the solver's test_iter, else 50), and a classifier's confusion matrix and
    per-class precision / recall / F1; with `as_json`, one JSON document instead."""
    doc = scores(spec_path, weights, iterations, err)
    if as_json:
        out.write(json.dumps(doc, indent=2) + "\n")
        return EXIT_OK
    out.write(
        f"{spec_path}: TEST phase, {doc['iterations']} iterations ({doc['samples']:,} samples)\n"
    )
    for k, v in doc["metrics"].items():
        out.write(f"{k} = {v:.6g}\n")
    if doc.get("classes") is not None:
        out.write(format_report(doc["classes"]))
    return EXIT_OK


def scores(spec_path: str, weights: str, iterations: int | None, err: TextIO) -> dict:
    """{"iterations", "samples", "metrics": {name: mean}, "classes": class_report(...) or None}."""
    from netc.compiler.lower import lower
    from netc.runtime.context import load_context
    from netc.runtime.feeds import data_feeds, evaluate, make_eval_fn, metric_names
    from netc.runtime.weights import init_with_weights

    ctx = load_context(spec_path)
    tplan = ctx.plan("TEST")
    feeds = data_feeds(tplan, ctx.spec.spec_dir)
    if not feeds:
        raise RunError(
            f"{spec_path}: the TEST net has no Data layer to read batches from; "
            "use `netc predict` to run it on given inputs"
        )
    net = lower(tplan)
    if not metric_names(net):
        raise RunError(
            f"{spec_path}: the TEST net has no scalar outputs (accuracy, loss) to report"
        )
    solver = ctx.solver
    if iterations is None:
        iterations = int(solver.test_iter[0]) if solver is not None and solver.test_iter else 50
    params, state = init_with_weights(net, weights, err)
    clf = find_classifier(tplan)
    counts = None if clf is None else np.zeros((clf.classes, clf.classes), np.int64)
    extra = () if clf is None else (clf.pred, clf.label)
    result = evaluate(
        make_eval_fn(net, extra=extra),
        params,
        state,
        feeds,
        iterations,
        collect=None if clf is None else lambda o: clf.count(o, counts),
    )
    return {
        "iterations": iterations,
        "samples": feeds[0].batch_size * iterations,
        "metrics": result,
        "classes": None if clf is None else class_report(clf, counts),
    }


# --- the classifier -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Classifier:
    """Where a TEST net's class scores and labels are: `pred` (classes on `axis`) and `label`
    (one class index per position of `pred` without that axis), read by layer `layer`."""

    layer: str
    pred: str
    label: str
    axis: int
    classes: int
    ignore: int | None

    def count(self, outputs: dict, counts: np.ndarray) -> None:
        """Add one batch's (true, predicted) pairs to `counts` (rows true, columns predicted)."""
        scores = np.asarray(outputs[self.pred])
        predicted = scores.argmax(axis=self.axis).ravel()
        true = np.asarray(outputs[self.label]).astype(np.int64).ravel()
        keep = (true >= 0) & (true < self.classes)
        if self.ignore is not None:
            keep &= true != self.ignore
        np.add.at(counts, (true[keep], predicted[keep]), 1)


def _class_axis(pred: tuple, fact) -> int | None:
    """The axis of `pred` whose removal leaves the label's shape (per sample): Caffe's rule."""
    from netc.compiler.layer import batch_axis

    batch = batch_axis(pred)
    for a in range(len(pred)):
        rest = [int(d) for i, d in enumerate(pred) if i not in (a, batch)]
        if a != batch and pred[a] == fact.classes and np.prod(rest) == fact.count:
            return a
    return None


def find_classifier(plan) -> Classifier | None:
    """The TEST net's classifier: the first metric that reads class indices as labels, else the
    first loss that does; None when no layer does (a regression net, an autoencoder)."""
    found = []
    for pl in plan.layers:
        fact = (
            pl.unit.label_fact(pl.bottom_shapes) if (pl.unit.is_metric or pl.unit.is_loss) else None
        )
        if fact is None or fact.kind != "class" or not fact.classes or fact.bottom != 1:
            continue
        axis = _class_axis(tuple(pl.bottom_shapes[0]), fact)
        if axis is not None:
            found.append(
                (
                    not pl.unit.is_metric,
                    Classifier(
                        pl.name, pl.bottoms[0], pl.bottoms[1], axis, fact.classes, fact.ignore_label
                    ),
                )
            )
    return min(found, key=lambda f: f[0])[1] if found else None


# --- the report ------------------------------------------------------------------------------------


def class_report(clf: Classifier, counts: np.ndarray) -> dict:
    """The confusion matrix with per-class precision, recall, F1 and support, and their macro
    average over the classes that occur (as labels or predictions). A ratio with nothing to
    count (no sample predicted as the class, or none of it) is 0, as scikit-learn reports it."""
    tp = np.diag(counts).astype(np.float64)
    predicted, support = counts.sum(axis=0), counts.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(tp), where=both > 0)
    seen = (predicted + support) > 0
    macro = {
        k: float(v[seen].mean()) if seen.any() else 0.0
        for k, v in (("precision", precision), ("recall", recall), ("f1", f1))
    }
    return {
        "layer": clf.layer,
        "prediction": clf.pred,
        "label": clf.label,
        "classes": clf.classes,
        "samples": int(counts.sum()),
        "accuracy": float(tp.sum() / max(counts.sum(), 1)),
        "confusion": counts.tolist(),
        "per_class": [
            {
                "class": c,
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c in range(clf.classes)
        ],
        "macro": macro,
    }


def format_report(r: dict) -> str:
    """The report as text: the whole matrix and every class for up to TABLE_MAX classes, else
    the most frequent confusions and the classes with the lowest F1."""
    lines = [
        f"classes: {r['classes']} ({r['prediction']} scored against {r['label']}, as layer "
        f"'{r['layer']}' reads them; {r['samples']:,} labelled positions, argmax accuracy "
        f"{r['accuracy']:.4g})"
    ]
    rows = r["per_class"]
    if r["classes"] <= TABLE_MAX:
        lines += _matrix(r["confusion"])
    else:
        lines += _top_confusions(r["confusion"])
        rows = sorted(rows, key=lambda c: (c["f1"], c["class"]))[:10]
        lines.append("the 10 classes with the lowest F1:")
    lines.append(f"{'class':>7} {'precision':>9} {'recall':>7} {'F1':>7} {'support':>8}")
    for c in rows:
        lines.append(
            f"{c['class']:>7} {c['precision']:>9.4f} {c['recall']:>7.4f} "
            f"{c['f1']:>7.4f} {c['support']:>8,}"
        )
    m = r["macro"]
    lines.append(
        f"{'macro':>7} {m['precision']:>9.4f} {m['recall']:>7.4f} {m['f1']:>7.4f} "
        f"{r['samples']:>8,}"
    )
    return "\n".join(lines) + "\n"


def _matrix(confusion: list[list[int]]) -> list[str]:
    width = max(len(f"{max(max(row) for row in confusion):,}"), len(str(len(confusion) - 1)), 3)
    head = " " * 7 + " ".join(f"{c:>{width}}" for c in range(len(confusion)))
    out = ["confusion matrix (rows: true class, columns: predicted class):", head]
    for t, row in enumerate(confusion):
        out.append(f"{t:>7}" + "".join(f" {n:>{width},}" for n in row))
    return out


def _top_confusions(confusion: list[list[int]], k: int = 10) -> list[str]:
    m = np.asarray(confusion)
    off = [(int(m[t, p]), t, p) for t, p in zip(*np.nonzero(m)) if t != p]
    off.sort(key=lambda x: (-x[0], x[1], x[2]))
    if not off:
        return ["no confusions: every labelled position is predicted as its class"]
    return [
        f"the {min(k, len(off))} most frequent confusions (true → predicted: count): "
        + ", ".join(f"{t} → {p}: {n:,}" for n, t, p in off[:k])
    ]
