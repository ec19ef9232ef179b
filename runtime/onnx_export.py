"""The deploy forward of a netc spec as an ONNX model (opset 17), written layer by layer with
`onnx.helper` from the plan (no tracing): ``netc export SPEC --weights CKPT --format onnx -o DIR``.

    from netc.runtime.onnx_export import export_onnx
    export_onnx("models/lenet.yaml", "runs/lenet/lenet_iter_10000.json", "lenet-onnx")

The graph is the deploy graph of `netc.runtime.export` (TEST phase; Data layers become inputs,
losses, metrics and label paths dropped). Every input's batch axis (axis 0, or 1 of a time-major
T×N×… blob) is the symbolic dimension ``N``; the outputs are the deploy net's output blobs under
their own names. The weights are initializers named ``layer/blob`` (the checkpoint's keys);
weights a layer needs in another form (BatchNorm's statistics divided by its scale factor, a
transposed InnerProduct weight) are initializers named ``layer/blob:what``.

Each layer maps to ONNX operators that compute what netc computes, Caffe's conventions included:

* Convolution → Conv (explicit per-side pads: Caffe's pad, pad_mode SAME/VALID/CAUSAL,
  pad_begin/pad_end; group, dilation); Deconvolution → ConvTranspose (Caffe's output size).
* Pooling MAX/AVE: Caffe's output size (CEIL by default, the clip of a last window starting in
  the padding, FLOOR's dropped rows) is made explicit — the input is sliced to the rows the
  windows read and padded per side so that windows tile it with ONNX's floor rule (never
  ``ceil_mode``). AVE divides by the window clipped to the *padded* extent, as Caffe does:
  Pad(zeros, Caffe's pad) + AveragePool(count_include_pad=0) over the rest. MAX with a second
  top (the argmax mask): MaxPool's Indices reduced to the index within each plane (Caffe's mask).
  Adaptive pooling (``output_size``): PyTorch's bins, by Reshape + ReduceMax/ReduceMean where
  they are equal, else bin by bin.
* LRN ACROSS_CHANNELS → LRN; WITHIN_CHANNEL → x·(1 + α/n^d·AvePool(x², pad, counting pads))^−β.
* BatchNorm (TEST, global statistics) → BatchNormalization with mean/variance divided by the
  layer's scale factor (Caffe) and its eps; Scale/Bias → Mul/Add broadcast from `axis`.
* InnerProduct → Flatten + Gemm (axis 1) or Reshape + MatMul + Add (other axes).
* Eltwise SUM (coefficients), PROD, MAX; Concat; Softmax on its axis; Slice → Slice per top; Tile; Flatten/Reshape →
  Reshape (the batch copied with 0); Crop → Slice; Dropout → Identity (or ×(1 − ratio) without
  scale_train); Split → Identity.
* Upsample with a mask (SegNet) → MaxUnpool with indices offset per plane; NEAREST/BILINEAR →
  Gather of the same source rows and weights netc computes.
* Caffe's neuron layers ReLU (leaky), ReLU6, Sigmoid, TanH, AbsVal, ELU, BNLL (Softplus),
  PReLU, Power, Exp, Log, Threshold.
* Embed → Gather (ids cast to integers: netc gives NaN rows for an id that is not a whole number
  in range, onnxruntime rejects an out-of-range id and truncates a fractional one).

A layer with no faithful ONNX form is refused with an `ExportError` naming it (STOCHASTIC or
L2 pooling, BatchNorm with batch statistics at test time, the recurrent layers' ``cont`` resets,
layers not listed above) — never approximated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from netc.runtime.export import DeployGraph, ExportError

__all__ = ["BATCH_DIM", "ONNX_FILE", "OPSET", "build_onnx", "export_onnx"]

OPSET = 17
ONNX_FILE = "model.onnx"
BATCH_DIM = "N"
FLT_MAX = 3.4028234663852886e38


class _Refused(ExportError):
    pass


def _refuse(pl, why: str):
    raise _Refused(f"layer '{pl.name}' ({pl.type}) has no faithful ONNX form: {why}")


def _is_batch(d) -> bool:
    from netc.compiler.layer import is_batch

    return is_batch(d)


class _Builder:
    def __init__(self, params: Mapping, state: Mapping):
        self.params, self.state = params, state
        self.nodes: list = []
        self.inits: dict[str, Any] = {}
        self.names: set[str] = set()
        self.reserved: set[str] = set()  # the blob names
        self.counter = 0

    # --- names, constants, nodes -------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A value name of its own: never a blob's name (graph inputs and outputs keep those)
        nor an earlier value's."""
        while True:
            self.counter += 1
            name = f"{hint}:{self.counter}"
            if name not in self.names and name not in self.reserved:
                self.names.add(name)
                return name

    def init(self, name: str, value) -> str:
        from onnx import numpy_helper

        if name not in self.inits:
            arr = np.asarray(value)
            if arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            self.inits[name] = numpy_helper.from_array(np.array(arr, order="C", copy=True), name)
        return name

    def const(self, hint: str, value, dtype=None) -> str:
        arr = np.asarray(value, dtype=dtype)
        return self.init(self.fresh(hint), arr)

    def op(self, op: str, inputs: Sequence[str], hint: str, n_out: int = 1, **attrs):
        from onnx import helper

        outs = [self.fresh(f"{hint}/{op}") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs

    def param(self, pl, role: str) -> np.ndarray:
        owner, orole = pl.param_owner[role]
        decl = pl.params[role]
        src = self.params if decl.learned else self.state
        return np.asarray(src[owner][orole])

    def param_name(self, pl, role: str) -> str:
        """The initializer `owner/role` holding the parameter as it is."""
        owner, orole = pl.param_owner[role]
        return self.init(f"{owner}/{orole}", self.param(pl, role).astype(np.float32))


# ------------------------------------------------------------------------------------------------
# Layers: each converter returns the ONNX value names of the layer's tops
# ------------------------------------------------------------------------------------------------


def _ints(v) -> list[int]:
    return [int(x) for x in v]


def _conv(b: _Builder, pl, xs):
    g = pl.resolved
    if g.axis != 1:
        _refuse(pl, f"convolution_param.axis {g.axis} (ONNX Conv has its channels on axis 1)")
    p = pl.unit.p
    w = g.window
    ins = [xs[0], b.param_name(pl, "weight")]
    if "bias" in pl.params:
        ins.append(b.param_name(pl, "bias"))
    pads = [lo for lo, _ in g.pads] + [hi for _, hi in g.pads]
    return [b.op("Conv", ins, pl.name, kernel_shape=_ints(w.kernel), strides=_ints(w.stride),
                 dilations=_ints(w.dilation), pads=_ints(pads), group=int(p.group))]


def _deconv(b: _Builder, pl, xs):
    g = pl.resolved
    if g.axis != 1:
        _refuse(pl, f"convolution_param.axis {g.axis} (ONNX ConvTranspose has its channels on "
                    f"axis 1)")
    w = g.window
    ins = [xs[0], b.param_name(pl, "weight")]
    if "bias" in pl.params:
        ins.append(b.param_name(pl, "bias"))
    return [b.op("ConvTranspose", ins, pl.name, kernel_shape=_ints(w.kernel),
                 strides=_ints(w.stride), dilations=_ints(w.dilation),
                 pads=_ints(list(w.pad) + list(w.pad)), group=int(pl.unit.p.group))]


def _slice(b: _Builder, x: str, hint: str, axes, starts, ends) -> str:
    return b.op("Slice", [x, b.const("starts", starts, np.int64), b.const("ends", ends, np.int64),
                          b.const("axes", axes, np.int64)], hint)


def _pad(b: _Builder, x: str, hint: str, ndim: int, before, after, value: float) -> str:
    pads = [0, 0] + list(before) + [0, 0] + list(after)
    assert len(pads) == 2 * ndim
    return b.op("Pad", [x, b.const("pads", pads, np.int64), b.const("value", np.float32(value))],
                hint, mode="constant")


def _adaptive(b: _Builder, pl, x: str, g, method: str) -> str:
    """PyTorch's adaptive bins, one axis at a time as netc pools them: equal disjoint bins by a
    reshape and a reduction, others bin by bin (Slice + reduction, then Concat)."""
    reduce = "ReduceMax" if method == "MAX" else "ReduceMean"
    shape = list(pl.bottom_shapes[0])
    for i, (n, o) in enumerate(zip(g.size, g.out)):
        a = 2 + i
        if n == o:
            continue
        if n % o == 0:
            split = [0, int(shape[1])] + [int(d) for d in shape[2:a]] + [o, n // o] + \
                    [int(d) for d in shape[a + 1:]]
            x = b.op("Reshape", [x, b.const("shape", split, np.int64)], pl.name)
            x = b.op(reduce, [x], pl.name, axes=[a + 1], keepdims=0)
        else:
            parts = [b.op(reduce, [_slice(b, x, pl.name, [a], [s], [e])], pl.name, axes=[a],
                          keepdims=1) for s, e in g.bins(i)]
            x = b.op("Concat", parts, pl.name, axis=a)
        shape[a] = o
    return x


def _pooling(b: _Builder, pl, xs):
    g = pl.resolved
    method = pl.unit.p.pool
    if method not in ("MAX", "AVE"):
        _refuse(pl, f"pool {method} (ONNX has no {method} pooling with Caffe's semantics)")
    if getattr(pl.unit, "adaptive", False):
        return [_adaptive(b, pl, xs[0], g, method)]
    w = g.window
    n = len(g.out)
    ndim = n + 2
    x = xs[0]
    mask = len(pl.tops) == 2
    cut = [i for i in range(n) if g.keep[i] < g.size[i]]
    if cut:  # FLOOR drops the rows no window reaches
        if mask:
            _refuse(pl, "the argmax mask of a pooling that drops input rows (FLOOR rounding) "
                        "would index a cut plane")
        x = _slice(b, x, pl.name, [2 + i for i in cut], [0] * len(cut), [g.keep[i] for i in cut])
    before = [lo for lo, _ in g.pads]
    after = [hi for _, hi in g.pads]
    kernel, stride = _ints(w.kernel), _ints(w.stride)
    if method == "MAX":
        if any(a >= k for a, k in zip(before + after, kernel * 2)):
            # ONNX pads must be smaller than the kernel: pad explicitly with Caffe's −FLT_MAX
            # (the value of a window that holds no input)
            x = _pad(b, x, pl.name, ndim, before, after, -FLT_MAX)
            before = after = [0] * n
        outs = b.op("MaxPool", [x], pl.name, n_out=2 if mask else 1, kernel_shape=kernel,
                    strides=stride, pads=_ints(before + after))
        if not mask:
            return [outs]
        y, idx = outs
        plane = int(np.prod(g.size))
        # ONNX's indices run over the whole N×C×H×W tensor; Caffe's mask over one H×W plane
        idx = b.op("Mod", [idx, b.const("plane", np.int64(plane))], pl.name)
        return [y, b.op("Cast", [idx], pl.name, to=1)]
    # AVE: Caffe's divisor is the window clipped to [−pad, size + pad): pad those zeros
    # explicitly (they count), and let the rest (CEIL's reach past size + pad) not count
    inner = [min(p, a) for p, a in zip(before, after)]
    if any(before) or any(inner):
        x = _pad(b, x, pl.name, ndim, before, inner, 0.0)
    rest = [a - i for a, i in zip(after, inner)]
    if any(r >= k for r, k in zip(rest, kernel)):
        _refuse(pl, "a window reaching a full kernel past the padded input")
    return [b.op("AveragePool", [x], pl.name, kernel_shape=kernel, strides=stride,
                 pads=_ints([0] * n + rest), count_include_pad=0)]


def _inner_product(b: _Builder, pl, xs):
    unit = pl.unit
    axis = unit._axis(pl.bottom_shapes[0])
    wt = b.param(pl, "weight").astype(np.float32)
    owner, orole = pl.param_owner["weight"]
    has_bias = "bias" in pl.params
    if axis == 1 and len(pl.bottom_shapes[0]) >= 2:
        x = b.op("Flatten", [xs[0]], pl.name, axis=1) if len(pl.bottom_shapes[0]) > 2 else xs[0]
        ins = [x, b.param_name(pl, "weight")]
        if has_bias:
            ins.append(b.param_name(pl, "bias"))
        return [b.op("Gemm", ins, pl.name, transB=0 if unit.p.transpose else 1)]
    x = b.op("Reshape", [xs[0], b.const("shape", [0] * axis + [-1], np.int64)], pl.name)
    w = b.param_name(pl, "weight") if unit.p.transpose else b.init(f"{owner}/{orole}:T", wt.T)
    y = b.op("MatMul", [x, w], pl.name)
    if has_bias:
        y = b.op("Add", [y, b.param_name(pl, "bias")], pl.name)
    return [y]


def _relu(b: _Builder, pl, xs):
    slope = pl.unit.p.negative_slope
    if slope:
        return [b.op("LeakyRelu", xs[:1], pl.name, alpha=float(slope))]
    return [b.op("Relu", xs[:1], pl.name)]


def _relu6(b: _Builder, pl, xs):
    return [b.op("Clip", [xs[0], b.const("min", np.float32(0)), b.const("max", np.float32(6))],
                 pl.name)]


def _dropout(b: _Builder, pl, xs):
    p = pl.unit.p
    if p.scale_train:
        return [b.op("Identity", xs[:1], pl.name)]
    return [b.op("Mul", [xs[0], b.const("keep", np.float32(1 - p.dropout_ratio))], pl.name)]


def _batchnorm(b: _Builder, pl, xs):
    p = pl.unit.p
    if p.use_global_stats is False:
        _refuse(pl, "use_global_stats false: the deploy net would normalise with the batch's "
                    "own statistics")
    if len(pl.bottom_shapes[0]) < 2:
        _refuse(pl, "a 1-axis input (ONNX BatchNormalization needs N×C×…)")
    sf = b.param(pl, "scale_factor").astype(np.float32)[0]
    inv = np.float32(0.0) if sf == 0 else np.float32(1.0) / sf
    mean = b.param(pl, "mean").astype(np.float32) * inv
    var = b.param(pl, "variance").astype(np.float32) * inv
    c = mean.shape[0]
    return [b.op("BatchNormalization", [
        xs[0], b.init(f"{pl.name}/:ones", np.ones(c, np.float32)),
        b.init(f"{pl.name}/:zeros", np.zeros(c, np.float32)),
        b.init(f"{pl.name}/mean:scaled", mean), b.init(f"{pl.name}/variance:scaled", var)],
        pl.name, epsilon=float(p.eps))]


def _operand(b: _Builder, pl, value: str, shape, ndim: int, axis: int) -> str:
    """A Scale/Bias operand of `shape` covering x's axes axis.. reshaped to broadcast."""
    trail = ndim - axis - len(shape)
    if trail == 0 or len(shape) == 0:
        return value
    return b.op("Reshape", [value, b.const("shape", [0] * len(shape) + [1] * trail, np.int64)],
                pl.name)


def _const_operand(b: _Builder, pl, role: str, ndim: int) -> str:
    from netc.compiler.layer import canonical_axis

    arr = b.param(pl, role).astype(np.float32)
    if arr.ndim == 0:
        return b.param_name(pl, role)
    axis = canonical_axis(pl.unit.p.axis, ndim)
    trail = ndim - axis - arr.ndim
    if trail == 0:
        return b.param_name(pl, role)
    owner, orole = pl.param_owner[role]
    return b.init(f"{owner}/{orole}:bcast", arr.reshape(arr.shape + (1,) * trail))


def _scale(b: _Builder, pl, xs):
    from netc.compiler.layer import canonical_axis

    ndim = len(pl.bottom_shapes[0])
    if len(xs) == 2:
        axis = canonical_axis(pl.unit.p.axis, ndim)
        s = _operand(b, pl, xs[1], pl.bottom_shapes[1], ndim, axis)
    else:
        s = _const_operand(b, pl, "weight", ndim)
    y = b.op("Mul", [xs[0], s], pl.name)
    if "bias" in pl.params:
        y = b.op("Add", [y, _const_operand(b, pl, "bias", ndim)], pl.name)
    return [y]


def _bias(b: _Builder, pl, xs):
    from netc.compiler.layer import canonical_axis

    ndim = len(pl.bottom_shapes[0])
    if len(xs) == 2:
        axis = canonical_axis(pl.unit.p.axis, ndim)
        s = _operand(b, pl, xs[1], pl.bottom_shapes[1], ndim, axis)
    else:
        s = _const_operand(b, pl, "bias", ndim)
    return [b.op("Add", [xs[0], s], pl.name)]


def _lrn(b: _Builder, pl, xs):
    p = pl.unit.p
    n = int(p.local_size)
    if p.norm_region == "ACROSS_CHANNELS":
        return [b.op("LRN", xs[:1], pl.name, size=n, alpha=float(p.alpha), beta=float(p.beta),
                     bias=float(p.k))]
    d = len(pl.bottom_shapes[0]) - 2
    pad = (n - 1) // 2
    sq = b.op("Mul", [xs[0], xs[0]], pl.name)
    # AveragePool counting the zero padding divides by n^d everywhere, as Caffe's does
    avg = b.op("AveragePool", [sq], pl.name, kernel_shape=[n] * d, strides=[1] * d,
               pads=[pad] * (2 * d), count_include_pad=1)
    scale = b.op("Add", [b.op("Mul", [avg, b.const("alpha", np.float32(p.alpha))], pl.name),
                         b.const("one", np.float32(1))], pl.name)
    return [b.op("Mul", [xs[0], b.op("Pow", [scale, b.const("beta", np.float32(-p.beta))],
                                          pl.name)], pl.name)]


def _softmax(b: _Builder, pl, xs):
    from netc.compiler.layer import canonical_axis

    axis = canonical_axis(pl.unit.p.axis, len(pl.bottom_shapes[0]))
    return [b.op("Softmax", xs[:1], pl.name, axis=axis)]


def _concat(b: _Builder, pl, xs):
    return [b.op("Concat", xs, pl.name, axis=pl.unit._axis(pl.bottom_shapes[0]))]


def _eltwise(b: _Builder, pl, xs):
    p = pl.unit.p
    if p.operation == "PROD":
        y = xs[0]
        for x in xs[1:]:
            y = b.op("Mul", [y, x], pl.name)
        return [y]
    if p.operation == "MAX":
        return [b.op("Max", xs, pl.name)]
    coeff = p.coeff or (1.0,) * len(xs)
    terms = [x if c == 1 else b.op("Mul", [x, b.const("coeff", np.float32(c))], pl.name)
             for x, c in zip(xs, coeff)]
    y = terms[0]
    for t in terms[1:]:
        y = b.op("Add", [y, t], pl.name)
    return [y]


def _reshape_to(b: _Builder, pl, x: str, src, dst) -> str:
    """Reshape to the plan's top shape; the batch (any size) is copied with 0 where it stays at
    its axis, else inferred with −1."""
    target = []
    for i, d in enumerate(dst):
        if _is_batch(d):
            target.append(0 if i < len(src) and _is_batch(src[i]) else -1)
        else:
            target.append(int(d))
    if target.count(-1) > 1:
        _refuse(pl, f"a reshape to {tuple(dst)} that moves the batch axis")
    return b.op("Reshape", [x, b.const("shape", target, np.int64)], pl.name)


def _flatten(b: _Builder, pl, xs):
    return [_reshape_to(b, pl, xs[0], pl.bottom_shapes[0], pl.top_shapes[0])]


def _crop(b: _Builder, pl, xs):
    kept = pl.resolved
    axes = [i for i, k in enumerate(kept) if k is not None]
    if not axes:
        return [b.op("Identity", xs[:1], pl.name)]
    return [_slice(b, xs[0], pl.name, axes, [kept[i][0] for i in axes],
                   [kept[i][1] for i in axes])]


def _slice_layer(b: _Builder, pl, xs):
    axis, sizes = pl.resolved
    out, start = [], 0
    for size in sizes:
        out.append(_slice(b, xs[0], pl.name, [axis], [start], [start + size]))
        start += size
    return out


def _tile(b: _Builder, pl, xs):
    from netc.compiler.layer import canonical_axis

    ndim = len(pl.bottom_shapes[0])
    reps = [1] * ndim
    reps[canonical_axis(pl.unit.p.axis, ndim)] = int(pl.unit.p.tiles)
    return [b.op("Tile", [xs[0], b.const("repeats", reps, np.int64)], pl.name)]


def _split(b: _Builder, pl, xs):
    return [b.op("Identity", xs[:1], pl.name) for _ in pl.tops]


def _upsample(b: _Builder, pl, xs):
    r = pl.resolved
    if len(xs) == 2:
        n_c = pl.bottom_shapes[0][1]
        plane = int(np.prod(r.out))
        # MaxUnpool's indices run over the whole N×C×H×W output: add (n·C + c)·plane
        shape = b.op("Shape", [xs[0]], pl.name)
        nb = b.op("Gather", [shape, b.const("axis0", np.int64(0))], pl.name, axis=0)
        total = b.op("Mul", [nb, b.const("C", np.int64(n_c))], pl.name)
        ramp = b.op("Range", [b.const("zero", np.int64(0)), total, b.const("one", np.int64(1))],
                    pl.name)
        offs = b.op("Reshape", [b.op("Mul", [ramp, b.const("plane", np.int64(plane))], pl.name),
                                b.const("shape", [-1, n_c, 1, 1], np.int64)], pl.name)
        idx = b.op("Add", [b.op("Cast", [xs[1]], pl.name, to=7), offs], pl.name)
        out_shape = b.op("Concat", [b.op("Slice", [shape, b.const("s", [0], np.int64),
                                                   b.const("e", [2], np.int64)], pl.name),
                                    b.const("hw", list(r.out), np.int64)], pl.name, axis=0)
        return [b.op("MaxUnpool", [xs[0], idx, out_shape], pl.name,
                     kernel_shape=[1] * len(r.out))]
    x = xs[0]
    mode = pl.unit.p.mode
    for i, (size, o) in enumerate(zip(r.size, r.out)):
        axis = 2 + i
        if mode == "NEAREST":
            x = b.op("Gather", [x, b.const("rows", np.arange(o) * size // o, np.int64)], pl.name,
                     axis=axis)
            continue
        src = np.maximum((np.arange(o) + 0.5) * size / o - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), size - 1)
        i1 = np.minimum(i0 + 1, size - 1)
        lam = np.clip(src - i0, 0.0, 1.0).reshape((-1,) + (1,) * (len(r.size) - 1 - i))
        lam = lam.astype(np.float32)
        a = b.op("Gather", [x, b.const("i0", i0)], pl.name, axis=axis)
        c = b.op("Gather", [x, b.const("i1", i1)], pl.name, axis=axis)
        x = b.op("Add", [b.op("Mul", [a, b.const("1-lam", 1 - lam)], pl.name),
                         b.op("Mul", [c, b.const("lam", lam)], pl.name)], pl.name)
    return [x]


def _embed(b: _Builder, pl, xs):
    ids = b.op("Cast", xs[:1], pl.name, to=7)
    y = b.op("Gather", [b.param_name(pl, "weight"), ids], pl.name, axis=0)
    if "bias" in pl.params:
        y = b.op("Add", [y, b.param_name(pl, "bias")], pl.name)
    return [y]


def _unary(op: str):
    def convert(b: _Builder, pl, xs):
        return [b.op(op, xs[:1], pl.name)]
    return convert


def _prelu(b: _Builder, pl, xs):
    a = b.param(pl, "weight").astype(np.float32)
    ndim = len(pl.bottom_shapes[0])
    owner, orole = pl.param_owner["weight"]
    slope = b.init(f"{owner}/{orole}:bcast", a.reshape((-1,) + (1,) * (ndim - 2)) if a.size > 1
                   else a.reshape(()))
    return [b.op("PRelu", [xs[0], slope], pl.name)]


def _scalar(b: _Builder, value: float) -> str:
    return b.const("c", np.float32(value))


def _power(b: _Builder, pl, xs):
    p = pl.unit.p
    power, scale, shift = p.power, p.scale, p.shift
    x = xs[0]
    if power == 0 or scale == 0:  # a constant: 1, or shift^power
        value = 1.0 if power == 0 else float(np.power(np.float32(shift), np.float32(power)))
        zero = b.op("Mul", [x, _scalar(b, 0.0)], pl.name)
        return [b.op("Add", [zero, _scalar(b, value)], pl.name)]
    u = x
    if scale != 1:
        u = b.op("Mul", [u, _scalar(b, scale)], pl.name)
    if shift != 0:
        u = b.op("Add", [u, _scalar(b, shift)], pl.name)
    if power == 1:
        return [u if u != x else b.op("Identity", [x], pl.name)]
    return [b.op("Pow", [u, _scalar(b, power)], pl.name)]


def _exp(b: _Builder, pl, xs):
    import math

    p = pl.unit.p
    log_base = 1.0 if p.base == -1 else math.log(p.base)
    y = b.op("Exp", [b.op("Mul", [xs[0], _scalar(b, log_base * p.scale)], pl.name)], pl.name)
    outer = math.exp(log_base * p.shift)
    return [y if outer == 1 else b.op("Mul", [y, _scalar(b, outer)], pl.name)]


def _log(b: _Builder, pl, xs):
    import math

    p = pl.unit.p
    u = xs[0]
    if p.scale != 1 or p.shift != 0:
        u = b.op("Add", [b.op("Mul", [u, _scalar(b, p.scale)], pl.name), _scalar(b, p.shift)],
                 pl.name)
    y = b.op("Log", [u], pl.name)
    return [y if p.base == -1 else b.op("Mul", [y, _scalar(b, 1.0 / math.log(p.base))], pl.name)]


def _threshold(b: _Builder, pl, xs):
    above = b.op("Greater", [xs[0], _scalar(b, pl.unit.p.threshold)], pl.name)
    return [b.op("Cast", [above], pl.name, to=1)]


def _elu(b: _Builder, pl, xs):
    return [b.op("Elu", xs[:1], pl.name, alpha=float(pl.unit.p.alpha))]


CONVERTERS = {
    "Convolution": _conv,
    "Deconvolution": _deconv,
    "Pooling": _pooling,
    "InnerProduct": _inner_product,
    "ReLU": _relu,
    "ReLU6": _relu6,
    "Sigmoid": _unary("Sigmoid"),
    "TanH": _unary("Tanh"),
    "AbsVal": _unary("Abs"),
    "BNLL": _unary("Softplus"),
    "PReLU": _prelu,
    "Power": _power,
    "Exp": _exp,
    "Log": _log,
    "Threshold": _threshold,
    "ELU": _elu,
    "Dropout": _dropout,
    "GaussianNoise": _unary("Identity"),  # TRAIN-only noise: the deploy net has none
    "BatchNorm": _batchnorm,
    "Scale": _scale,
    "Bias": _bias,
    "LRN": _lrn,
    "Softmax": _softmax,
    "Concat": _concat,
    "Eltwise": _eltwise,
    "Flatten": _flatten,
    "Reshape": _flatten,
    "Crop": _crop,
    "Split": _split,
    "Slice": _slice_layer,
    "Tile": _tile,
    "Upsample": _upsample,
    "Embed": _embed,
}


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


def _value_info(name: str, shape, batch_axis: int | None):
    from onnx import TensorProto, helper

    dims = [BATCH_DIM if i == batch_axis else int(d) for i, d in enumerate(shape)]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _output_batch_axis(shape) -> int | None:
    for i, d in enumerate(shape):
        if _is_batch(d):
            return i
    return None


def build_onnx(graph: DeployGraph, params: Mapping, state: Mapping, *, name: str = "netc",
               opset: int = OPSET):
    """The onnx.ModelProto of `graph` with `params`/`state` as initializers. Raises ExportError
    naming the first layer without a faithful ONNX form."""
    from onnx import helper

    import netc

    b = _Builder(params, state)
    b.reserved = set(graph.inputs) | {t for pl in graph.layers for t in pl.tops}
    current: dict[str, str] = {n: n for n in graph.inputs}
    shapes: dict[str, tuple] = {}
    for pl in graph.layers:
        convert = CONVERTERS.get(pl.type)
        if convert is None and pl.type in ("LSTM", "GRU", "RNN"):
            from netc.runtime.onnx_recurrent import CONVERTERS as RECURRENT

            convert = RECURRENT[pl.type]
        if convert is None:
            raise _Refused(f"layer '{pl.name}' ({pl.type}) has no ONNX converter; netc does not "
                           f"export it to ONNX (it would have to be approximated)")
        xs = [current[bt] for bt in pl.bottoms]
        tops = convert(b, pl, xs)
        for t, v, s in zip(pl.tops, tops, pl.top_shapes):
            current[t] = v
            shapes[t] = s
    outputs = []
    for out in graph.outputs:
        b.nodes.append(helper.make_node("Identity", [current[out]], [out], name=f"{out}:output"))
        outputs.append(_value_info(out, shapes[out], _output_batch_axis(shapes[out])))
    inputs = [_value_info(n, graph.input_shape(n, 0), graph.batch_axes[n])
              for n in graph.inputs]
    g = helper.make_graph(b.nodes, name, inputs, outputs, initializer=list(b.inits.values()))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="netc", producer_version=netc.__version__)
    model.ir_version = 8  # opset 17's IR version: readable by onnxruntime 1.14 and later
    return model


def export_onnx(
    spec_path: str | os.PathLike[str],
    weights: Any,
    out_dir: str | os.PathLike[str],
    *,
    phase: str = "TEST",
    stages: Sequence[str] = (),
    level: int = 0,
    outputs: Sequence[str] | None = None,
) -> Path:
    """Write `out_dir`/model.onnx (checked by onnx.checker) and the shared manifest (see
    netc.runtime.export.write_manifest); returns the manifest's path."""
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'netc[onnx]'") from None
    from netc.runtime.export import _load_weights, _plan_deploy, write_manifest

    spec_path = Path(spec_path)
    spec, graph = _plan_deploy(spec_path, phase, stages, level, outputs)
    params, state, provenance = _load_weights(weights, graph)
    model = build_onnx(graph, params, state, name=spec.name or spec_path.stem)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - onnx raises ValidationError and others
        raise ExportError(f"the ONNX model fails onnx.checker: {e}") from e
    blob = model.SerializeToString()
    source = {"spec": spec_path.name, "phase": phase, "stages": list(stages), "level": level,
              "layers": [pl.name for pl in graph.layers], **provenance}
    inputs = [{"name": n, "shape": [BATCH_DIM if i == graph.batch_axes[n] else int(d)
                                    for i, d in enumerate(graph.input_shape(n, 0))],
               "dtype": "float32"} for n in sorted(graph.inputs)]
    outs = []
    for o in sorted(graph.outputs):
        s = next(s for pl in graph.layers for t, s in zip(pl.tops, pl.top_shapes) if t == o)
        ax = _output_batch_axis(s)
        outs.append({"name": o, "shape": [BATCH_DIM if i == ax else int(d)
                                          for i, d in enumerate(s)], "dtype": "float32"})
    return write_manifest(Path(out_dir), kind="onnx", files={ONNX_FILE: blob}, model_file=ONNX_FILE,
                          name=spec.name, spec_path=spec_path, source=source, inputs=inputs,
                          outputs=outs, extra={
                              "batch": {"symbol": BATCH_DIM, "axes": {
                                  n: graph.batch_axes[n] for n in sorted(graph.inputs)
                                  if graph.batch_axes[n] is not None}},
                              "transform_param": graph.transforms, "layout": "NCHW",
                              "opset": OPSET, "onnx_version": onnx.__version__})
