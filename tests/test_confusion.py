"""`netc test`'s confusion matrix and per-class precision / recall / F1: on the shared trained
MLP against numpy computed from the net's own predictions, the text table and the summary for
many classes, and how the classifier is found (a metric before a loss, class axis, ignore_label)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MLP, netc

from netc.runtime.commands.test import Classifier, class_report, find_classifier, format_report


@pytest.fixture(scope="module")
def reported(trained_mlp_run):
    r = netc("test", MLP, "--weights", trained_mlp_run, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def predictions(run_dir) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) of the 2 × 100 TEST samples netc test reads, from a plain forward."""
    import jax

    from netc.compiler.lower import lower
    from netc.runtime.context import load_context
    from netc.runtime.feeds import data_feeds
    from netc.runtime.weights import init_with_weights

    ctx = load_context(str(MLP))
    plan = ctx.plan("TEST")
    net = lower(plan)
    params, state = init_with_weights(net, str(run_dir))
    (feed,) = data_feeds(plan, ctx.spec.spec_dir)
    stream = feed.stream(0)
    true, pred = [], []
    try:
        for _ in range(2):
            batch = feed.feed(next(stream))
            out, _ = net.apply(params, state, jax.device_put(batch), outputs=["ip2"])
            true.append(np.asarray(batch["label"]).astype(int))
            pred.append(np.asarray(out["ip2"]).argmax(axis=1))
    finally:
        stream.close()
    return np.concatenate(true), np.concatenate(pred)


def test_matrix_and_scores_match_numpy(reported, trained_mlp_run):
    true, pred = predictions(trained_mlp_run)
    want = np.zeros((10, 10), int)
    for t, p in zip(true, pred):
        want[t, p] += 1
    r = reported["classes"]
    assert (r["layer"], r["prediction"], r["label"], r["classes"]) == (
        "accuracy",
        "ip2",
        "label",
        10,
    )
    np.testing.assert_array_equal(np.asarray(r["confusion"]), want)
    assert r["samples"] == 200 == want.sum()
    assert r["accuracy"] == pytest.approx(reported["metrics"]["accuracy"], abs=1e-6)
    for c, row in enumerate(r["per_class"]):
        tp, npred, ntrue = np.sum((pred == c) & (true == c)), np.sum(pred == c), np.sum(true == c)
        p = tp / npred if npred else 0.0
        rec = tp / ntrue if ntrue else 0.0
        f1 = 2 * p * rec / (p + rec) if p + rec else 0.0
        assert (row["class"], row["support"]) == (c, ntrue)
        assert row["precision"] == pytest.approx(p) and row["recall"] == pytest.approx(rec)
        assert row["f1"] == pytest.approx(f1)
    assert r["macro"]["f1"] == pytest.approx(np.mean([x["f1"] for x in r["per_class"]]))


def test_text_table(trained_mlp_run, reported):
    r = netc("test", MLP, "--weights", trained_mlp_run)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    start = lines.index("confusion matrix (rows: true class, columns: predicted class):")
    assert lines[start + 1].split() == [str(c) for c in range(10)]
    rows = [[int(v) for v in line.split()] for line in lines[start + 2 : start + 12]]
    assert rows == [[t, *row] for t, row in enumerate(reported["classes"]["confusion"])]
    assert lines[start + 12].split() == ["class", "precision", "recall", "F1", "support"]
    first = reported["classes"]["per_class"][0]
    assert lines[start + 13].split() == [
        "0",
        f"{first['precision']:.4f}",
        f"{first['recall']:.4f}",
        f"{first['f1']:.4f}",
        str(first["support"]),
    ]
    assert lines[-1].startswith("  macro ")


def test_report_zeroes_and_macro_over_the_classes_that_occur():
    clf = Classifier("acc", "p", "l", 1, 4, None)
    counts = np.array([[3, 1, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    r = class_report(clf, counts)
    c0, c1, c2, _ = r["per_class"]
    assert (c0["precision"], c0["recall"]) == pytest.approx((0.6, 0.75))
    assert (c1["precision"], c1["recall"], c1["f1"]) == (0.0, 0.0, 0.0)  # never right
    assert c2["support"] == 0
    assert r["macro"]["precision"] == pytest.approx(0.3)  # classes 0 and 1 occur; 2 and 3 do not
    assert r["accuracy"] == 0.5


def test_many_classes_summary():
    k = 25
    counts = np.diag(np.full(k, 10))
    counts[3, 7], counts[12, 0], counts[5, 6] = 9, 4, 4
    text = format_report(class_report(Classifier("acc", "p", "l", 1, k, None), counts))
    assert "confusion matrix" not in text
    assert (
        "the 3 most frequent confusions (true → predicted: count): 3 → 7: 9, 5 → 6: 4, 12 → 0: 4"
    ) in text
    rows = text.split("the 10 classes with the lowest F1:\n")[1].splitlines()
    assert [line.split()[0] for line in rows[1:11]] == [
        "3",
        "7",
        "0",
        "5",
        "6",
        "12",
        "1",
        "2",
        "4",
        "8",
    ]


def test_counting_skips_ignored_and_out_of_range_labels():
    clf = Classifier("loss", "p", "l", 1, 3, 255)
    scores = np.zeros((2, 3, 2))  # N×C×W: classes on axis 1
    scores[0, 2, :] = 1  # sample 0 predicts 2 at both positions
    scores[1, 0, 0] = scores[1, 1, 1] = 1
    labels = np.array([[2, 255], [0, 7]], np.float32)
    counts = np.zeros((3, 3), np.int64)
    clf.count({"p": scores, "l": labels}, counts)
    assert counts.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]


def test_which_layer_is_the_classifier(check_spec):
    head = (
        "layers:\n"
        "  - {name: in, type: Input, top: [x, t],\n"
        "     input_param: {shape: [{dim: [4, 3, 5, 6]}, {dim: [4, 5, 6]}]}}\n"
    )
    loss = "  - {name: loss, type: SoftmaxWithLoss, bottom: [x, t], top: l,\n     loss_param: {ignore_label: 9}}\n"
    acc = "  - {name: acc, type: Accuracy, bottom: [x, t], top: a}\n"
    for text, want in (
        (head + loss, Classifier("loss", "x", "t", 1, 3, 9)),
        (head + loss + acc, Classifier("acc", "x", "t", 1, 3, None)),
    ):
        _, plans, diags = check_spec(text, phase="TEST")
        assert not diags, diags
        assert find_classifier(plans["TEST"]) == want
    regression = head.replace("[4, 5, 6]", "[4, 3, 5, 6]") + (
        "  - {name: loss, type: EuclideanLoss, bottom: [x, t], top: l}\n"
    )
    _, plans, diags = check_spec(regression, phase="TEST")
    assert not diags, diags
    assert find_classifier(plans["TEST"]) is None  # regression: no classes
