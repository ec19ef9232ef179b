"""Numerical parity of Slice, Tile, Reduction, ArgMax, Silence and the losses (SigmoidCrossEntropy,
Hinge, Infogain, MultinomialLogistic, Contrastive; SoftmaxWithLoss's FLT_MIN cap and label range)
with an independent implementation, through the real path (YAML → parse_spec → plan → lower →
Net.apply), forward values and gradients, on random legal configurations.

The references are PyTorch (float64, autograd) where it computes the same function, and a numpy
transcription of Caffe's Forward_cpu/Backward_cpu loops where Caffe's gradient is not the
derivative of its forward (ContrastiveLoss's d + 1e−4, the 1e−20 clamps) or where PyTorch has no
equivalent (ArgMax's tie order and output layout). Tolerances as tests/test_parity.py (`close`).
"""

from __future__ import annotations

import math
import os
import tempfile

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np
import pytest
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import SCRATCH, jit_fast
from test_parity import (  # noqa: E402
    build,
    close,
    compare_many,
    inputs_layer,
    random_params,
    run_netc,
)

import netc.compiler.layers.slicing  # noqa: E402, F401 - registers Slice, Tile, Reduction, ArgMax, Silence
from netc.compiler.lower import LoweringError  # noqa: E402

FLT_MIN = float(np.finfo(np.float32).tiny)


def _struct_case(name, layers, inputs, ref, tops, _rng=None, *, labels=(), zero_grad=(), **kw):
    """A compare_many case from check()'s arguments: Input(inputs) + layers; `tops` and
    d(Σ top·cot)/d(inputs) against ref(tx) (torch). `labels`: inputs without a reference
    gradient, whose netc gradient must be 0 (as zero_grad); kw: compare_many's blob_shapes."""
    return (name, layers[-1], {k: v.shape for k, v in inputs.items()}, lambda p, x: ref(x),
            {"before": layers[:-1], "tops": tops, "zero_grad": zero_grad,
             "inputs": {k: v for k, v in inputs.items() if k not in labels},
             "label_inputs": {k: inputs[k] for k in labels}, **kw})


def check_all(make, seeds):
    """make(seed, check) for each seed; its check(name, layers, inputs, ref, tops, rng, ...)
    calls are collected and run in ONE net and compiled program (test_parity.compare_many)."""
    cases = []
    for seed in seeds:
        make(seed, lambda *args, **kw: cases.append(_struct_case(*args, **kw)))
    return compare_many(cases, np.random.default_rng(0))


def layer(kind, bottom, top, **fields):
    return {"name": "l", "type": kind, "bottom": bottom, "top": top, **fields}


def rand_shape(rng, lo_rank=2, hi_rank=4, hi=4):
    return tuple(int(v) for v in rng.integers(1, hi + 1, size=int(rng.integers(lo_rank, hi_rank + 1))))


# --------------------------------------------------------------------------------------------
# Slice / Tile / Reduction


def test_slice():
    check_all(_slice, range(6))


def _slice(seed, check):
    rng = np.random.default_rng(40_000 + seed)
    shape = list(rand_shape(rng, 2, 4, 3))
    axis = int(rng.integers(0, len(shape)))
    shape[axis] = int(rng.integers(2, 7))
    dim = shape[axis]
    tops = int(rng.integers(1, dim + 1))
    param: dict = {}
    if seed % 3 == 0:  # equal pieces: the tops must divide the axis
        tops = int(rng.choice([t for t in range(1, dim + 1) if dim % t == 0]))
        sizes = [dim // tops] * tops
    else:
        points = sorted(int(v) for v in rng.choice(np.arange(1, dim), size=tops - 1, replace=False))
        param["slice_point"] = points
        sizes = np.diff([0, *points, dim]).tolist()
    written = axis - len(shape) if rng.random() < 0.3 else axis
    if seed == 4 and written >= 0:
        param["slice_dim"] = written  # the deprecated spelling
    else:
        param["axis"] = written
    names = [f"t{i}" for i in range(tops)]
    x = {"x": rng.standard_normal(shape).astype(np.float32)}
    want = {n: tuple(shape[:axis] + [size] + shape[axis + 1:]) for n, size in zip(names, sizes)}
    check(f"Slice {param} on {shape}", [layer("Slice", ["x"], names, slice_param=param)],
          x, lambda t: list(torch.split(t["x"], sizes, dim=axis)), names, rng, blob_shapes=want)


def test_tile():
    check_all(_tile, range(4))


def _tile(seed, check):
    rng = np.random.default_rng(41_000 + seed)
    shape = rand_shape(rng, 1, 4, 3)
    axis = int(rng.integers(0, len(shape)))
    tiles = int(rng.integers(1, 4))
    written = axis - len(shape) if seed % 2 else axis
    reps = [1] * len(shape)
    reps[axis] = tiles
    x = {"x": rng.standard_normal(shape).astype(np.float32)}
    check(f"Tile axis {written} tiles {tiles} on {shape}",
          [layer("Tile", ["x"], ["y"], tile_param={"axis": written, "tiles": tiles})],
          x, lambda t: [t["x"].repeat(*reps)], ["y"], rng)


def test_reduction():
    check_all(_reduction, ["SUM", "ASUM", "SUMSQ", "MEAN"])


def _reduction(op, check):
    rng = np.random.default_rng(42_000 + len(op))
    for case in range(2):  # two random configurations per operation, in one net
        shape = rand_shape(rng, 1, 4, 4)
        axis = int(rng.integers(0, len(shape)))
        written = axis - len(shape) if case else axis
        coeff = [1.0, float(rng.uniform(-2, 2))][case]
        param = {"operation": op, "axis": written, "coeff": coeff}
        dims = tuple(range(axis, len(shape)))

        def ref(t, dims=dims, coeff=coeff):
            v = t["x"]
            v = {"SUM": v, "ASUM": v.abs(), "SUMSQ": v * v, "MEAN": v}[op]
            red = v.mean(dim=dims) if op == "MEAN" else v.sum(dim=dims)
            return [red * coeff]

        x = {"x": rng.standard_normal(shape).astype(np.float32)}
        check(f"Reduction {param} on {shape}",
              [layer("Reduction", ["x"], ["y"], reduction_param=param)], x, ref, ["y"], rng,
              blob_shapes={"y": shape[:axis]})


# --------------------------------------------------------------------------------------------
# ArgMax: Caffe's loop (argmax_layer.cpp) — partial_sort of (value, index) pairs, descending


def caffe_argmax(x: np.ndarray, top_k: int, out_max_val: bool, axis: int | None) -> np.ndarray:
    def ranked(values):
        return sorted(((float(v), j) for j, v in enumerate(values)), reverse=True)[:top_k]

    if axis is None:
        n = x.shape[0]
        rows = x.reshape(n, -1)
        out = np.zeros((n, 2 if out_max_val else 1, top_k))
        for i, row in enumerate(rows):
            for j, (v, idx) in enumerate(ranked(row)):
                out[i, 0, j] = idx
                if out_max_val:
                    out[i, 1, j] = v
        return out.reshape((n, out.shape[1], top_k) + (1,) * (max(x.ndim, 3) - 3))
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros(moved.shape[:-1] + (top_k,))
    for pos in np.ndindex(moved.shape[:-1]):
        for j, (v, idx) in enumerate(ranked(moved[pos])):
            out[pos + (j,)] = v if out_max_val else idx
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize("seed", range(6))
def test_argmax(seed):
    rng = np.random.default_rng(43_000 + seed)
    shape = rand_shape(rng, 1 if seed == 5 else 2, 4, 4)
    use_axis = seed % 2 == 1
    param: dict = {"out_max_val": bool(seed % 3 == 0)}
    if use_axis:
        axis = int(rng.integers(0, len(shape)))
        param["axis"] = axis - len(shape) if seed == 3 else axis
        n_ranked = shape[axis]
    else:
        axis = None
        n_ranked = math.prod(shape[1:])
    param["top_k"] = int(rng.integers(1, n_ranked + 1))
    # ties: values from a few integers, so that the index order among equal values matters
    x = rng.integers(0, 3, size=shape).astype(np.float32) if seed < 4 else \
        rng.standard_normal(shape).astype(np.float32)
    want = caffe_argmax(x, param["top_k"], param["out_max_val"], axis)
    net = build([inputs_layer({"x": shape}), layer("ArgMax", ["x"], ["y"], argmax_param=param)])
    assert net.plan.blobs["y"] == want.shape, (param, shape)
    cot = rng.standard_normal(want.shape).astype(np.float32)
    (out,), _, gx = run_netc(net, {}, {"x": x}, ["y"], [cot])
    np.testing.assert_array_equal(out, want, err_msg=f"ArgMax {param} on {shape}")
    assert not np.any(gx["x"]), "ArgMax must pass no gradient back"


# --------------------------------------------------------------------------------------------
# Silence (a layer with no tops) and loss_weight on tops that are not losses


IP = {"name": "ip", "type": "InnerProduct", "bottom": ["x"], "top": ["ip"],
      "inner_product_param": {"num_output": 2}}


def test_silence_consumes_and_plans_with_no_tops():
    rng = np.random.default_rng(44_000)
    net = build([inputs_layer({"x": (2, 3), "unused": (2, 4)}),
                 layer("Silence", ["unused", "x"], []), IP])
    silence = net.plan.layers[1]
    assert silence.type == "Silence" and silence.tops == () and silence.top_shapes == []
    assert net.plan.outputs == ["ip"]  # silenced blobs are consumed, not outputs
    assert not net.plan.diagnostics.warnings
    inputs = {"x": rng.standard_normal((2, 3)).astype(np.float32),
              "unused": rng.standard_normal((2, 4)).astype(np.float32)}
    (ip,), gp, gx = run_netc(net, random_params(net, rng), inputs, ["ip"], [np.ones((2, 2))])
    assert ip.shape == (2, 2) and not np.any(gx["unused"])


def test_silence_after_the_output_layer_does_not_make_the_output_unused():
    net = build([inputs_layer({"x": (2, 3), "unused": (2, 4)}), IP,
                 layer("Silence", ["unused"], [])])
    assert net.plan.outputs == ["ip"]
    assert not net.plan.diagnostics.warnings, [d.format() for d in net.plan.diagnostics.warnings]


def test_loss_weight_on_non_loss_tops_adds_to_the_loss():
    """Caffe: any top may carry a loss_weight; the objective is Σ weight · Σ(top)."""
    rng = np.random.default_rng(44_001)
    net = build([inputs_layer({"x": (3, 4)}),
                 {"name": "ip", "type": "InnerProduct", "bottom": ["x"], "top": ["ip"],
                  "loss_weight": [0.5], "inner_product_param": {"num_output": 2}},
                 {"name": "sq", "type": "Reduction", "bottom": ["ip"], "top": ["sq"],
                  "loss_weight": [2.0], "reduction_param": {"operation": "SUMSQ", "axis": 1}}])
    assert [pl.loss_weights for pl in net.plan.layers[1:]] == [(0.5,), (2.0,)]
    assert net.loss_blobs() == ["ip", "sq"] and net.plan.has_loss
    params = random_params(net, rng)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        (loss, _), grads = jit_fast(jax.value_and_grad(
            lambda p: net.loss(p, {}, {"x": jnp.asarray(x)}), has_aux=True))(params)
    w = torch.tensor(params["ip"]["weight"], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(params["ip"]["bias"], dtype=torch.float64, requires_grad=True)
    ip = torch.tensor(x, dtype=torch.float64) @ w.T + b
    ref = 0.5 * ip.sum() + 2.0 * (ip * ip).sum()
    ref.backward()
    close(loss, ref.item(), "loss_weight: net.loss")
    close(grads["ip"]["weight"], w.grad.numpy(), "loss_weight: d/d weight")
    close(grads["ip"]["bias"], b.grad.numpy(), "loss_weight: d/d bias")


# --------------------------------------------------------------------------------------------
# Losses


def labels_for(rng, n, classes, *, ignore=None):
    lab = rng.integers(0, classes, size=n)
    if ignore is not None:
        lab[rng.random(n) < 0.3] = ignore
    return lab.astype(np.float32)


def test_sigmoid_cross_entropy_loss():
    check_all(_sigmoid_cross_entropy, range(6))


def _sigmoid_cross_entropy(seed, check):
    rng = np.random.default_rng(45_000 + seed)
    shape = rand_shape(rng, 2, 4, 4)
    n = shape[0]
    modes = [None, "VALID", "FULL", "BATCH_SIZE", "NONE", None]
    loss_param: dict = {}
    mode = modes[seed] or "BATCH_SIZE"  # this layer's default, unlike SoftmaxWithLoss
    if modes[seed]:
        loss_param["normalization"] = modes[seed]
    if seed == 5:  # deprecated `normalize: true` = VALID
        loss_param, mode = {"normalize": True}, "VALID"
    ignore = -1 if seed % 2 else None
    if ignore is not None:
        loss_param["ignore_label"] = ignore
    t = rng.random(shape).astype(np.float32)
    t[rng.random(shape) < 0.3] = 1.0
    if ignore is not None:
        t[rng.random(shape) < 0.3] = ignore
    t_shape = (n, math.prod(shape[1:])) if seed % 3 == 1 else shape  # same count per sample
    inputs = {"x": (3 * rng.standard_normal(shape)).astype(np.float32), "t": t.reshape(t_shape)}
    valid = np.trunc(t) != ignore if ignore is not None else np.ones(shape, bool)

    def ref(v):
        per = F.binary_cross_entropy_with_logits(v["x"], v["t"].reshape(shape), reduction="none")
        norm = {"VALID": valid.sum(), "FULL": t.size, "BATCH_SIZE": n, "NONE": 1}[mode]
        return [torch.where(torch.tensor(valid), per, 0).sum() / max(1, int(norm))]

    spec = layer("SigmoidCrossEntropyLoss", ["x", "t"], ["loss"])
    if loss_param:
        spec["loss_param"] = loss_param
    check(f"SigmoidCrossEntropyLoss {loss_param} on {shape}", [spec], inputs, ref, ["loss"], rng,
          labels=("t",))


def test_hinge_loss():
    check_all(_hinge, range(4))


def _hinge(seed, check):
    rng = np.random.default_rng(46_000 + seed)
    shape = rand_shape(rng, 2, 4, 4)
    n, classes = shape[0], math.prod(shape[1:])
    norm = ["L1", "L2"][seed % 2]
    lab = labels_for(rng, n, classes)
    label = lab.reshape((n, 1, 1, 1) if seed >= 2 else (n,))

    def ref(v):
        x = v["x"].reshape(n, -1)
        sign = -torch.ones(n, classes, dtype=torch.float64)
        sign[torch.arange(n), torch.tensor(lab.astype(np.int64))] = 1
        margin = torch.clamp(1 - sign * x, min=0)
        return [(margin.sum() if norm == "L1" else (margin * margin).sum()) / n]

    spec = layer("HingeLoss", ["x", "label"], ["loss"])
    if seed != 0:  # seed 0: the default norm, L1
        spec["hinge_loss_param"] = {"norm": norm}
    check(f"HingeLoss {norm} on {shape}", [spec],
          {"x": rng.standard_normal(shape).astype(np.float32), "label": label}, ref, ["loss"], rng,
          labels=("label",))


def test_hinge_loss_gradient_is_zero_at_the_kink():
    """Caffe's backward is sign(max(0, 1 − t·x)): 0 where the margin is exactly 0 (PyTorch's clamp
    would pass the gradient there)."""
    x = np.array([[1.0, -1.0, 0.5], [-1.0, 2.0, -3.0]], np.float32)  # label 0 / others: margins 0
    lab = np.array([0, 1], np.float32)
    net = build([inputs_layer({"x": (2, 3), "label": (2,)}),
                 layer("HingeLoss", ["x", "label"], ["loss"])])
    (loss,), _, gx = run_netc(net, {}, {"x": x, "label": lab}, ["loss"], [np.float32(1)])
    sign = np.where(np.arange(3)[None] == lab[:, None], 1.0, -1.0)
    margin = np.maximum(0, 1 - sign * x)
    close(loss, margin.sum() / 2, "HingeLoss at the kink: forward")
    close(gx["x"], -sign * np.sign(margin) / 2, "HingeLoss at the kink: Caffe's gradient")
    assert gx["x"][0, 0] == 0 and gx["x"][0, 1] == 0


def probabilities(rng, shape):
    return rng.uniform(0.02, 1.0, size=shape).astype(np.float32)


def test_multinomial_logistic_loss():
    check_all(_multinomial_logistic, range(3))


def _multinomial_logistic(seed, check):
    rng = np.random.default_rng(47_000 + seed)
    shape = rand_shape(rng, 2, 4, 4)
    n, classes = shape[0], math.prod(shape[1:])
    lab = labels_for(rng, n, classes)

    def ref(v):
        p = v["p"].reshape(n, -1)
        return [-torch.log(p[torch.arange(n), torch.tensor(lab.astype(np.int64))]).sum() / n]

    check(f"MultinomialLogisticLoss on {shape}",
          [layer("MultinomialLogisticLoss", ["p", "label"], ["loss"])],
          {"p": probabilities(rng, shape), "label": lab}, ref, ["loss"], rng, labels=("label",))


def infogain_ref(h, lab, axis, shape):
    def ref(v):
        p = torch.movedim(v["p"], axis, -1)  # (..., C)
        rows = torch.tensor(h, dtype=torch.float64)[torch.tensor(lab.astype(np.int64))]
        return [-(rows * torch.log(p)).sum() / math.prod(shape[:axis])]

    return ref


def test_infogain_loss():
    """H from a third input, from an .npz source, or the identity; classes on axis 1 or 2."""
    check_all(_infogain, range(4))


def _infogain(seed, check):
    rng = np.random.default_rng(48_000 + seed)
    shape = rand_shape(rng, 2, 4, 4) if seed != 3 else (2, 3, 4)
    axis = 2 if seed == 3 else 1
    classes = shape[axis]
    lab = rng.integers(0, classes, size=shape[:axis] + shape[axis + 1:]).astype(np.float32)
    h = rng.uniform(0, 2, size=(classes, classes)).astype(np.float32)
    inputs = {"p": probabilities(rng, shape), "label": lab}
    spec = layer("InfogainLoss", ["p", "label"], ["loss"])
    if axis != 1:
        spec["infogain_loss_param"] = {"axis": axis}
    labels = ["label"]
    if seed == 0:
        h = np.eye(classes, dtype=np.float32)  # neither source nor third input
    elif seed in (1, 3):
        inputs["h"] = h.reshape(1, 1, classes, classes)
        spec["bottom"] = ["p", "label", "h"]
        labels.append("h")  # Caffe: no gradient to H
    else:
        path = os.path.join(tempfile.mkdtemp(prefix="netc_infogain_", dir=SCRATCH), "h.npz")
        np.savez(path, H=h)
        spec["infogain_loss_param"] = {"source": path}
    check(f"InfogainLoss seed {seed} on {shape}", [spec], inputs,
          infogain_ref(h, lab, axis, shape), ["loss"], rng, labels=tuple(labels))


def test_log_clamp_keeps_caffes_gradient():
    """Below 1e−20, Caffe's value is −log(1e−20) and its gradient −1/1e−20 (not 0)."""
    p = np.array([[1e-30, 0.5, 0.5], [0.25, 0.0, 0.75]], np.float32)
    lab = np.array([0, 1], np.float32)
    h = np.array([[1, 0.5, 0], [0.25, 2, 0], [0, 0, 1]], np.float32)
    n = 2
    for kind, rows in (("MultinomialLogisticLoss", np.eye(3)), ("InfogainLoss", h)):
        bottoms = ["p", "label"] + (["h"] if kind == "InfogainLoss" else [])
        inputs = {"p": p, "label": lab} | ({"h": h} if kind == "InfogainLoss" else {})
        net = build([inputs_layer({k: v.shape for k, v in inputs.items()}),
                     layer(kind, bottoms, ["loss"])])
        (loss,), _, gx = run_netc(net, {}, inputs, ["loss"], [np.float32(1)])
        hl = rows[lab.astype(int)]  # H[label_n, :]
        clamped = np.maximum(p.astype(np.float64), 1e-20)
        close(loss, -(hl * np.log(clamped)).sum() / n, f"{kind}: clamped forward")
        close(gx["p"], -hl / clamped / n, f"{kind}: Caffe's gradient through the clamp")


# ContrastiveLoss: contrastive_loss_layer.cpp, forward and backward


def caffe_contrastive(a, b, y, margin, legacy):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    n = len(a)
    diff = a - b
    dist_sq = (diff * diff).sum(1)
    loss, grad = 0.0, np.zeros_like(diff)
    alpha = 1.0 / n
    for i in range(n):
        if int(y.reshape(-1)[i]):  # static_cast<int>: any non-zero integer is "similar"
            loss += dist_sq[i]
            grad[i] = alpha * diff[i]
        elif legacy:
            loss += max(margin - dist_sq[i], 0.0)
            if margin - dist_sq[i] > 0:
                grad[i] = -alpha * diff[i]
        else:
            dist = math.sqrt(dist_sq[i])
            mdist = margin - dist
            loss += max(mdist, 0.0) ** 2
            if mdist > 0:
                grad[i] = -alpha * mdist / (dist + 1e-4) * diff[i]
    return loss / n / 2, grad


@pytest.mark.parametrize("seed", range(4))
def test_contrastive_loss(seed):
    rng = np.random.default_rng(49_000 + seed)
    n, c = int(rng.integers(2, 6)), int(rng.integers(1, 5))
    legacy = seed % 2 == 1
    margin = float(rng.uniform(0.5, 3.0)) if seed else 1.0
    shape = (n, c, 1, 1) if seed == 2 else (n, c)
    a = rng.standard_normal(shape).astype(np.float32)
    b = (a + rng.standard_normal(shape) * 0.6).astype(np.float32)
    b[0] = a[0]  # d = 0: Caffe's 1e−4 keeps the gradient finite
    y = rng.integers(0, 2, size=n).astype(np.float32)
    y[0] = 0
    if seed == 3:
        y[1:] = [(-1.0, 0.7, 2.0)[i % 3] for i in range(n - 1)]  # int(−1), int(2) similar; int(.7) not
    param = {"legacy_version": legacy} | ({"margin": margin} if seed else {})
    net = build([inputs_layer({"a": shape, "b": shape, "y": (n,)}),
                 layer("ContrastiveLoss", ["a", "b", "y"], ["loss"],
                       contrastive_loss_param=param)])
    (loss,), _, gx = run_netc(net, {}, {"a": a, "b": b, "y": y}, ["loss"], [np.float32(1)])
    ref, grad = caffe_contrastive(a, b, y, margin, legacy)
    close(loss, ref, f"ContrastiveLoss {param}: forward")
    close(gx["a"].reshape(n, -1), grad, f"ContrastiveLoss {param}: d/d a")
    close(gx["b"].reshape(n, -1), -grad, f"ContrastiveLoss {param}: d/d b")
    assert not np.any(gx["y"])
    # the forward is the textbook formula (PyTorch), independently of the transcription
    d = torch.tensor(a.reshape(n, -1) - b.reshape(n, -1), dtype=torch.float64).norm(dim=1)
    sim = torch.tensor(np.trunc(y) != 0)
    apart = (torch.clamp(margin - d * d, min=0) if legacy else torch.clamp(margin - d, min=0) ** 2)
    close(loss, (torch.where(sim, d * d, apart).sum() / (2 * n)).item(), "ContrastiveLoss: torch")


# SoftmaxWithLoss: Caffe's FLT_MIN cap, and labels outside the classes


def test_softmax_loss_is_capped_at_minus_log_flt_min_with_caffes_gradient():
    x = np.array([[0.0, 200.0, 0.0], [1.0, 2.0, 3.0]], np.float32)
    lab = np.array([0, 2], np.float32)
    net = build([inputs_layer({"x": (2, 3), "label": (2,)}),
                 layer("SoftmaxWithLoss", ["x", "label"], ["loss"])])
    (loss,), _, gx = run_netc(net, {}, {"x": x, "label": lab}, ["loss"], [np.float32(1)])
    x64 = x.astype(np.float64)
    prob = np.exp(x64 - x64.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    picked = prob[np.arange(2), lab.astype(int)]
    close(loss, -np.log(np.maximum(picked, FLT_MIN)).sum() / 2, "capped loss")
    assert -math.log(FLT_MIN) / 2 < loss < -math.log(FLT_MIN)  # sample 0 contributes ≈ 87.34
    close(gx["x"], (prob - np.eye(3)[lab.astype(int)]) / 2, "prob − onehot, uncapped")


@pytest.mark.parametrize("kind", ["SoftmaxWithLoss", "HingeLoss", "MultinomialLogisticLoss",
                                  "InfogainLoss"])
def test_label_outside_the_classes_gives_nan(kind):
    """A label not in [0, classes) (and not ignore_label) makes the loss NaN: Caffe reads out of
    bounds; a jitted program cannot raise, and the trainer stops on a NaN loss."""
    rng = np.random.default_rng(50_000)
    x = probabilities(rng, (2, 3))
    good = np.array([0, 2], np.float32)
    spec = layer(kind, ["x", "label"], ["loss"])
    net = build([inputs_layer({"x": (2, 3), "label": (2,)}), spec])
    apply = jit_fast(lambda v, lab: net.apply({}, {}, {"x": v, "label": lab})[0]["loss"])
    assert np.isfinite(apply(x, good))
    for bad in ([0, 3], [-1, 1]):
        assert np.isnan(apply(x, np.array(bad, np.float32))), (kind, bad)
    if kind == "SoftmaxWithLoss":  # an ignored label may be anything, 255 included
        spec["loss_param"] = {"ignore_label": 255}
        net = build([inputs_layer({"x": (2, 3), "label": (2,)}), spec])
        loss = jit_fast(lambda v, lab: net.apply({}, {}, {"x": v, "label": lab})[0]["loss"])(
            x, np.array([255, 1], np.float32))
        close(loss, -np.log(np.exp(x[1, 1]) / np.exp(x[1].astype(np.float64)).sum()),
              "ignored 255")


def test_infogain_source_removed_after_planning_is_a_lowering_error():
    path = os.path.join(tempfile.mkdtemp(prefix="netc_infogain_", dir=SCRATCH), "h.npz")
    np.savez(path, H=np.eye(3, dtype=np.float32))
    net = build([inputs_layer({"p": (2, 3), "label": (2,)}),
                 layer("InfogainLoss", ["p", "label"], ["loss"],
                       infogain_loss_param={"source": path})])
    os.remove(path)
    with pytest.raises(LoweringError, match=r"layer 'l' \(InfogainLoss\): infogain_loss_param."
                                            r"source: cannot read H from '.*h.npz'"):
        net.apply({}, {}, {"p": np.full((2, 3), 0.5, np.float32), "label": np.zeros(2, np.float32)})


COVERED = {
    "Slice": test_slice, "Tile": test_tile, "Reduction": test_reduction, "ArgMax": test_argmax,
    "Silence": test_silence_consumes_and_plans_with_no_tops,
    "SigmoidCrossEntropyLoss": test_sigmoid_cross_entropy_loss, "HingeLoss": test_hinge_loss,
    "MultinomialLogisticLoss": test_multinomial_logistic_loss, "InfogainLoss": test_infogain_loss,
    "ContrastiveLoss": test_contrastive_loss,
}
