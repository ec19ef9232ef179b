"""ONNX forms of netc's LSTM, GRU and RNN layers (used by runtime/onnx_export.py).

Each stacked layer becomes one ONNX LSTM / GRU / RNN operator (both directions in one, ONNX's
``bidirectional``), its weights reordered from netc's (Caffe's) layout:

* LSTM: netc's gate blocks i, f, o, g → ONNX's i, o, f, c; Caffe's single bias b_c → Wb = b_c,
  Rb = 0.
* GRU: netc's r, z, n → ONNX's z, r, h; reset_after → linear_before_reset = 1 with Rb = b_hg
  (reset before: linear_before_reset = 0, Rb = 0).
* RNN: tanh(W_xh x + b_h + W_hh h) is ONNX's RNN with Rb = 0; Caffe's output layer
  o_t = tanh(W_ho h_t + b_o) follows as MatMul + Add + Tanh per direction.

Sequence control: ``sequence_input NONE`` (whole sequences) and ``LENGTHS`` (ONNX's
``sequence_lens``: padded steps leave the state alone and output 0, a reverse direction runs over
each sequence's valid steps — netc's semantics; lengths must be ≥ 1, ONNX runtimes reject 0).
Refused, by layer name: ``CONT`` (Caffe's per-step state resets have no ONNX form), ``MASK``
(arbitrary padding patterns), ``x_static``, and — never reached in a deploy net — the TRAIN-only
dropout/weight_dropout/bptt_steps, which the TEST forward does not apply anyway.
"""

from __future__ import annotations

import numpy as np

LSTM_ORDER = (0, 2, 1, 3)  # ONNX i, o, f, c from netc's i, f, o, g
GRU_ORDER = (1, 0, 2)  # ONNX z, r, h from netc's r, z, n


def _blocks(w: np.ndarray, order, H: int) -> np.ndarray:
    return np.concatenate([w[k * H:(k + 1) * H] for k in order], axis=0)


def _convert(b, pl, xs):
    unit, g = pl.unit, pl.resolved
    p = unit.p
    _refuse_unsupported(pl, p, g)
    x, lens, h0, c0 = _inputs(b, pl, xs)
    final_h, final_c = [], []
    valid = None  # T×N×1 float mask (for RNN's output layer), from the lengths
    for layer in range(g.L):
        sfxs = [(f"_l{layer}" if layer else "") + ("_reverse" if d else "") for d in range(g.D)]
        outs = _layer_op(b, pl, layer, sfxs, [x, lens, h0, c0])
        final_h.append(outs[1])
        if pl.type == "LSTM":
            final_c.append(outs[2])
        sequence = not (layer == g.L - 1 and p.output == "LAST")
        per_dir = []
        for d, sfx in enumerate(sfxs):
            h = _direction(b, pl.name, outs[:2], d, sequence)
            if pl.type == "RNN" and p.output_layer:
                h, valid = _output_layer(b, pl, h, sfx, x, lens, valid, sequence)
            per_dir.append(h)
        x = y = _merge(b, pl.name, per_dir, p.merge_mode)
    if p.output != "LAST" and p.batch_first:
        y = b.op("Transpose", [y], pl.name, perm=[1, 0, 2])
    tops = [y]
    if p.expose_hidden:
        for finals in (final_h, final_c) if pl.type == "LSTM" else (final_h,):
            tops.append(finals[0] if g.L == 1 else b.op("Concat", finals, pl.name, axis=0))
    return tops


def _refuse_unsupported(pl, p, g) -> None:
    from netc.runtime.onnx_export import _refuse

    if p.sequence_input == "CONT":
        _refuse(pl, "sequence_input CONT: Caffe's per-step state resets (cont = 0 starts a new "
                    "sequence) cannot be expressed by ONNX's recurrent operators; use "
                    "sequence_input NONE or LENGTHS for an exported net")
    if p.sequence_input == "MASK":
        _refuse(pl, "sequence_input MASK: an arbitrary mask of valid steps has no ONNX form "
                    "(LENGTHS maps to sequence_lens)")
    if g.static is not None:
        _refuse(pl, "x_static (a per-sequence term added to every step's gates) has no ONNX "
                    "form")


def _inputs(b, pl, xs):
    """(x time-major T×N×F, int32 lengths or None, h0 or None, c0 or None)."""
    g, p, name = pl.resolved, pl.unit.p, pl.name
    x = xs[0]
    if p.batch_first:
        x = b.op("Transpose", [x], name, perm=[1, 0] + list(range(2, len(pl.bottom_shapes[0]))))
    if len(pl.bottom_shapes[0]) != 3:
        x = b.op("Reshape", [x, b.const("shape", [0, 0, -1], np.int64)], name)
    lens = None
    if g.seq is not None:  # LENGTHS
        lens = b.op("Cast", [xs[g.seq]], name, to=6)  # int32
    h0 = c0 = None
    if g.h0 is not None:
        h0 = xs[g.h0]
        if pl.unit.n_states == 2:
            c0 = xs[g.h0 + 1]
    return x, lens, h0, c0


def _weights(b, pl, sfxs):
    """ONNX's W, R, B of one stacked layer (one entry per direction), from netc's blobs."""
    kind, H, p = pl.type, pl.resolved.H, pl.unit.p
    wx, bx, _, wh = pl.unit.roles
    W, R, B = [], [], []
    for sfx in sfxs:
        w = b.param(pl, wx + sfx).astype(np.float32)
        r = b.param(pl, wh + sfx).astype(np.float32)
        bias = b.param(pl, bx + sfx).astype(np.float32)
        rb = np.zeros_like(bias)
        if kind == "GRU" and p.reset_after:
            rb = b.param(pl, "b_hg" + sfx).astype(np.float32)
        if kind == "LSTM":
            w, r, bias, rb = (_blocks(a, LSTM_ORDER, H) for a in (w, r, bias, rb))
        elif kind == "GRU":
            w, r, bias, rb = (_blocks(a, GRU_ORDER, H) for a in (w, r, bias, rb))
        W.append(w)
        R.append(r)
        B.append(np.concatenate([bias, rb]))
    return W, R, B


def _layer_op(b, pl, layer, sfxs, inputs):
    """One stacked layer as one ONNX LSTM / GRU / RNN operator: its outputs Y (T×D×N×H),
    Y_h (D×N×H) and, for an LSTM, Y_c."""
    from netc.runtime.onnx_export import _slice

    x, lens, h0, c0 = inputs
    kind, name, D, p = pl.type, pl.name, pl.resolved.D, pl.unit.p
    W, R, B = _weights(b, pl, sfxs)
    tag = f"{name}/l{layer}"
    ins = [x, b.init(f"{tag}:W", np.stack(W)), b.init(f"{tag}:R", np.stack(R)),
           b.init(f"{tag}:B", np.stack(B)), lens or ""]
    if h0 is not None or c0 is not None:
        ins.append(_slice(b, h0, name, [0], [layer * D], [(layer + 1) * D])
                   if h0 is not None else "")
    if c0 is not None:
        ins.append(_slice(b, c0, name, [0], [layer * D], [(layer + 1) * D]))
    while ins and ins[-1] == "":
        ins.pop()
    attrs = {"hidden_size": pl.resolved.H, "direction": "bidirectional" if D == 2 else "forward"}
    if kind == "GRU":
        attrs["linear_before_reset"] = 1 if p.reset_after else 0
    return b.op(kind, ins, name, n_out=3 if kind == "LSTM" else 2, **attrs)


def _direction(b, name, outs, d, sequence):
    """Direction d of a layer's outputs: its sequence T×N×H, or its last state N×H."""
    from netc.runtime.onnx_export import _slice

    Y, Yh = outs
    if sequence:
        h = _slice(b, Y, name, [1], [d], [d + 1])
        return b.op("Squeeze", [h, b.const("axes", [1], np.int64)], name)  # T×N×H
    h = _slice(b, Yh, name, [0], [d], [d + 1])
    return b.op("Squeeze", [h, b.const("axes", [0], np.int64)], name)  # N×H


def _output_layer(b, pl, h, sfx, x, lens, valid, sequence):
    """Caffe RNN's o = tanh(W_ho h + b_o), 0 at padded steps; (o, the T×N×1 mask, made once)."""
    name = pl.name
    w_ho = b.param(pl, "W_ho" + sfx).astype(np.float32)
    h = b.op("Tanh", [b.op("Add", [
        b.op("MatMul", [h, b.init(f"{name}/W_ho{sfx}:T", w_ho.T)], name),
        b.param_name(pl, "b_o" + sfx)], name)], name)
    if lens is not None:  # padded steps output 0, as netc's
        if valid is None:
            valid = _valid_steps(b, name, x, lens, pl.resolved)
        h = b.op("Mul", [h, valid if sequence else _any_valid(b, name, lens)], name)
    return h, valid


def _merge(b, name, per_dir, merge_mode):
    """The directions' outputs as one: the only one, concatenated (CONCAT) or summed."""
    if len(per_dir) == 1:
        return per_dir[0]
    if merge_mode == "CONCAT":
        return b.op("Concat", per_dir, name, axis=-1)
    return b.op("Add", per_dir, name)


def _valid_steps(b, name, x, lens, g):
    """T×N×1: 1.0 where step t < the sequence's length."""
    t = b.op("Range", [b.const("zero", np.int32(0)), b.const("T", np.int32(g.T)),
                       b.const("one", np.int32(1))], name)
    t = b.op("Unsqueeze", [t, b.const("axes", [1], np.int64)], name)  # T×1
    less = b.op("Less", [t, b.op("Unsqueeze", [lens, b.const("axes", [0], np.int64)], name)],
                name)  # T×N
    m = b.op("Cast", [less], name, to=1)
    return b.op("Unsqueeze", [m, b.const("axes", [2], np.int64)], name)


def _any_valid(b, name, lens):
    """N×1: 1.0 where the sequence has a valid step."""
    pos = b.op("Greater", [lens, b.const("zero", np.int32(0))], name)
    m = b.op("Cast", [pos], name, to=1)
    return b.op("Unsqueeze", [m, b.const("axes", [1], np.int64)], name)


CONVERTERS = {"LSTM": _convert, "GRU": _convert, "RNN": _convert}
