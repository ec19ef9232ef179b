"""Parity of the sequence layers (compiler/layers/recurrent.py) with PyTorch, in float64.

Every case goes through the real path (YAML spec → parse_spec → plan → lower → Net.apply, jitted
value_and_grad) and is compared with PyTorch's autograd in float64: outputs (y, and hT/cT with
expose_hidden), the carried state written back, and the gradients of Σ top·cotangent with respect
to the inputs (x, x_static, h0, c0) and every parameter blob. Both sides run in float64, so the
tolerance is 1e-9 relative (with an absolute floor of 1e-9 × the array's largest magnitude).

References:
- "full": the whole stack in ONE torch.nn.LSTM / GRU / RNN module (num_layers, bidirectional,
  h0/c0 in PyTorch's (layer·D + direction) layout), with pack_padded_sequence for LENGTHS — this
  checks netc's state layout and packed-sequence semantics against PyTorch's own;
- "each": every sequence of the batch run on its own through torch modules of one layer and one
  direction, over its valid steps only (MASK: the steps whose mask is 1, wherever they are;
  LENGTHS: the first `length` steps), or for CONT cut into the sequences that cont = 0 starts,
  each run separately (Caffe's reset), the reverse direction over the reversed steps. It covers
  what PyTorch's module cannot express: merge_mode SUM, GRU with the reset gate before the matmul
  (Cho et al. 2014, a hand transcription), Caffe's RNN output layer o_t = tanh(W_ho·h_t + b_o).
Weights are mapped from Caffe's roles: LSTM gate order i, f, o, g ↔ PyTorch's i, f, g, o and
b_c = b_ih + b_hh (b_hh = 0); GRU r, z, n with b_g = b_ih, b_hg = b_hh; x_static is PyTorch input
features appended to every step of the first layer (W_x*_static the matching columns of W_ih).
"""

# No `from __future__ import annotations`: tests/test_parity.py's coverage guard loads this file
# without registering it in sys.modules, where dataclasses would look string annotations up.
import dataclasses

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np
import pytest
import torch  # noqa: E402
from conftest import jit_fast  # noqa: E402
from test_parity import build, close, inputs_layer  # noqa: E402
from torch.func import functional_call  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

RTOL = 1e-9
TORCH = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}
ROLES = {"LSTM": ("W_xc", "b_c", "W_xc_static", "W_hc"),
         "GRU": ("W_xg", "b_g", "W_xg_static", "W_hg"),
         "RNN": ("W_xh", "b_h", "W_xh_static", "W_hh")}


@pytest.fixture
def x64():
    """float64 in JAX for the test, restored afterwards."""
    old = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


@dataclasses.dataclass
class Case:
    kind: str
    T: int
    N: int
    feat: tuple[int, ...]
    H: int
    L: int = 1
    D: int = 1
    seq: str = "NONE"
    batch_first: bool = False
    merge: str = "CONCAT"
    expose: bool = False
    output: str = "SEQUENCE"
    static: int | None = None
    reset_after: bool = True
    output_layer: bool = False
    bptt: int = 0

    @property
    def n_states(self) -> int:
        return 2 if self.kind == "LSTM" else 1

    @property
    def I(self) -> int:  # noqa: E743
        return int(np.prod(self.feat))

    @property
    def carry(self) -> bool:
        return self.seq == "CONT" and not self.expose

    @property
    def torch_cell(self) -> bool:
        """PyTorch's module computes this cell (not GRU reset-before, not RNN's output layer)."""
        return not ((self.kind == "GRU" and not self.reset_after)
                    or (self.kind == "RNN" and self.output_layer))

    def sfx(self, layer: int, d: int) -> str:
        return (f"_l{layer}" if layer else "") + ("_reverse" if d else "")

    def layers(self, tag: str = "") -> list[dict]:
        """Input + the layer `l` (blobs x, s, xs, h0, c0 → y, hT, cT), every name + tag."""
        x = (self.N, self.T) if self.batch_first else (self.T, self.N)
        shapes = {"x": x + self.feat}
        if self.seq != "NONE":
            shapes["s"] = (self.N,) if self.seq == "LENGTHS" else x
        if self.static:
            shapes["xs"] = (self.N, self.static)
        if self.expose:
            for b in ["h0", "c0"][:self.n_states]:
                shapes[b] = (self.L * self.D, self.N, self.H)
        param = {"num_output": self.H, "sequence_input": self.seq, "batch_first": self.batch_first,
                 "num_layers": self.L, "output": self.output, "expose_hidden": self.expose,
                 "bptt_steps": self.bptt}
        if self.D == 2:
            param.update(bidirectional=True, merge_mode=self.merge)
        if self.kind == "GRU":
            param["reset_after"] = self.reset_after
        if self.kind == "RNN":
            param["output_layer"] = self.output_layer
        tops = ["y"] + (["hT", "cT"][:self.n_states] if self.expose else [])
        inputs = inputs_layer({k + tag: v for k, v in shapes.items()})
        inputs["name"] += tag
        layer = {"name": "l" + tag, "type": self.kind, "bottom": [k + tag for k in shapes],
                 "top": [t + tag for t in tops], "recurrent_param": param}
        return [inputs, layer]


# --------------------------------------------------------------------------------------------
# data


def draw_inputs(case: Case, rng) -> tuple[dict, dict]:
    """(inputs, carried state) as float64 arrays, netc's layout."""
    T, N = case.T, case.N
    x = rng.standard_normal(((N, T) if case.batch_first else (T, N)) + case.feat)
    out = {"x": x}
    if case.seq == "LENGTHS":
        out["s"] = rng.integers(1, T + 1, size=N).astype(np.float64)
    elif case.seq == "MASK":
        m = (rng.random((T, N)) < 0.7).astype(np.float64)
        if N > 1 and rng.random() < 0.5:
            m[:, -1] = 0.0  # a sequence with no valid step at all
        out["s"] = m.T.copy() if case.batch_first else m
    elif case.seq == "CONT":
        c = (rng.random((T, N)) < 0.7).astype(np.float64)
        c[0, 0] = 0.0  # column 0 starts a new sequence, the others (maybe) continue
        if N > 1:
            c[0, 1] = 1.0
        out["s"] = c.T.copy() if case.batch_first else c
    if case.static:
        out["xs"] = rng.standard_normal((N, case.static))
    if case.expose:
        for b in ["h0", "c0"][:case.n_states]:
            out[b] = rng.standard_normal((case.L * case.D, N, case.H))
    state = {}
    if case.carry:
        state = {"l": {b: rng.standard_normal((case.L * case.D, N, case.H))
                       for b in ["carry_h", "carry_c"][:case.n_states]}}
    return out, state


def time_major(case: Case, a: np.ndarray) -> np.ndarray:
    return np.swapaxes(a, 0, 1) if case.batch_first else a


# --------------------------------------------------------------------------------------------
# netc


def run_netc(net, params, state, inputs, tops, cots, grad_inputs):
    """Outputs, new state and gradients of Σ top·cot; one compiled program per net, tops and
    argument shapes (state and cotangents are arguments: calls with other values reuse it)."""
    key = (id(net), tuple(tops), tuple(sorted(grad_inputs)))
    if key not in _COMPILED:
        def objective(p, xg, xo, state, cots):
            blobs, new_state = net.apply(p, state, {**xg, **xo})
            outs = [blobs[t] for t in tops]
            return sum(jnp.sum(o * c) for o, c in zip(outs, cots)), (outs, new_state)

        _COMPILED[key] = (net, jit_fast(jax.value_and_grad(objective, argnums=(0, 1),
                                                           has_aux=True)))
    xg = {k: jnp.asarray(v) for k, v in inputs.items() if k in grad_inputs}
    xo = {k: jnp.asarray(v) for k, v in inputs.items() if k not in grad_inputs}
    (_, (outs, new_state)), (gp, gx) = _COMPILED[key][1](params, xg, xo, state, list(cots))
    return jax.tree_util.tree_map(np.asarray, (outs, new_state, gp, gx))


_COMPILED: dict = {}  # (id(net), tops, grad inputs) → (net, kept alive; its jitted function)


# --------------------------------------------------------------------------------------------
# references


def gate_order(case: Case):
    """Caffe rows → PyTorch rows (LSTM: i, f, o, g → i, f, g, o)."""
    H = case.H
    if case.kind == "LSTM":
        return torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H),
                          torch.arange(2 * H, 3 * H)])
    return torch.arange((3 if case.kind == "GRU" else 1) * H)


def torch_weights(case: Case, tp: dict, layer: int, d: int, name_sfx: str) -> dict:
    """PyTorch's four weights of one layer and direction from Caffe's blobs (differentiable)."""
    wx, b, ws, wh = ROLES[case.kind]
    s = case.sfx(layer, d)
    idx = gate_order(case)
    w_ih = tp[wx + s]
    if case.static and layer == 0:
        w_ih = torch.cat([w_ih, tp[ws + s]], dim=1)
    b_hh = tp["b_hg" + s] if case.kind == "GRU" else torch.zeros_like(tp[b + s])
    return {f"weight_ih{name_sfx}": w_ih[idx], f"weight_hh{name_sfx}": tp[wh + s][idx],
            f"bias_ih{name_sfx}": tp[b + s][idx], f"bias_hh{name_sfx}": b_hh[idx]}


def module(case: Case, inputs: int, layers: int, directions: int):
    kw = {"nonlinearity": "tanh"} if case.kind == "RNN" else {}
    return TORCH[case.kind](inputs, case.H, num_layers=layers, bidirectional=directions == 2,
                            **kw).double()


def with_static(case: Case, x, xs):
    """x (T×N×I) with x_static's features appended to every step."""
    if not case.static:
        return x
    return torch.cat([x, xs[None].expand(x.shape[0], -1, -1)], dim=-1)


def ref_full(case: Case, tp: dict, x, s, xs, h0s):
    """The whole stack as one PyTorch module (CONCAT, PyTorch's cells; NONE or LENGTHS)."""
    T, N, H, D = case.T, case.N, case.H, case.D
    m = module(case, case.I + (case.static or 0), case.L, D)
    weights = {}
    for layer in range(case.L):
        for d in range(D):
            weights.update(torch_weights(case, tp, layer, d, f"_l{layer}" + ("_reverse" if d else "")))
    inp = with_static(case, x, xs)
    hx = tuple(h0s) if case.kind == "LSTM" else h0s[0]
    if case.seq == "LENGTHS":
        lengths = s.detach().long()
        packed = pack_padded_sequence(inp, lengths, enforce_sorted=False)
        out, hn = functional_call(m, weights, (packed, hx))
        out, _ = pad_packed_sequence(out, total_length=T)
    else:
        lengths = torch.full((N,), T)
        out, hn = functional_call(m, weights, (inp, hx))
    if case.output == "LAST":
        y = out[lengths - 1, torch.arange(N), :H]
        if D == 2:
            y = torch.cat([y, out[0, :, H:]], dim=-1)
    else:
        y = out
    return y, list(hn) if case.kind == "LSTM" else [hn]


def run_direction(case: Case, tp: dict, layer: int, d: int, seq, init):
    """One layer and direction over the steps `seq` (T'×1×I, already in processing order) from
    the states `init` (each 1×1×H). Returns (hidden states T'×1×H, final states)."""
    if case.kind == "GRU" and not case.reset_after:  # Cho et al. 2014, by hand
        s = case.sfx(layer, d)
        w_ih = tp["W_xg" + s]
        if case.static and layer == 0:
            w_ih = torch.cat([w_ih, tp["W_xg_static" + s]], dim=1)
        w_hh, b, H = tp["W_hg" + s], tp["b_g" + s], case.H
        h = init[0][0]
        outs = []
        for t in range(seq.shape[0]):
            gx = seq[t] @ w_ih.T + b
            r = torch.sigmoid(gx[:, :H] + h @ w_hh[:H].T)
            z = torch.sigmoid(gx[:, H:2 * H] + h @ w_hh[H:2 * H].T)
            n = torch.tanh(gx[:, 2 * H:] + (r * h) @ w_hh[2 * H:].T)
            h = (1 - z) * n + z * h
            outs.append(h)
        return torch.stack(outs), [h[None]]
    m = module(case, seq.shape[-1], 1, 1)
    hx = tuple(init) if case.kind == "LSTM" else init[0]
    out, hn = functional_call(m, torch_weights(case, tp, layer, d, "_l0"), (seq, hx))
    return out, list(hn) if case.kind == "LSTM" else [hn]


def output_layer(case: Case, tp: dict, layer: int, d: int, h):
    """Caffe's RNN output o_t = tanh(W_ho·h_t + b_o) (by hand), or h_t."""
    if case.kind == "RNN" and case.output_layer:
        s = case.sfx(layer, d)
        return torch.tanh(h @ tp["W_ho" + s].T + tp["b_o" + s])
    return h


def segments(case: Case, s: np.ndarray | None, n: int) -> list[list[int]]:
    """The steps of sequence n, cut where cont = 0 starts a new sequence (time-major s)."""
    T = case.T
    if case.seq == "NONE":
        return [list(range(T))]
    if case.seq == "LENGTHS":
        return [list(range(int(s[n])))]
    if case.seq == "MASK":
        idx = [t for t in range(T) if s[t, n] != 0]
        return [idx] if idx else []
    cuts = [t for t in range(1, T) if s[t, n] == 0]
    bounds = [0] + cuts + [T]
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]


def ref_each(case: Case, tp: dict, x, s, xs, h0s):
    """Every sequence alone, over its valid steps / its cont-delimited pieces."""
    T, N, H, D, L = case.T, case.N, case.H, case.D, case.L
    width = H * D if case.merge == "CONCAT" else H
    s_np = None if s is None else s.detach().numpy()
    ys, finals = [], [[] for _ in range(case.n_states)]
    for n in range(N):
        y_n = torch.zeros(T, width, dtype=torch.float64)
        last = torch.zeros(width, dtype=torch.float64)
        fin = [[h0[k, n] for k in range(L * D)] for h0 in h0s]  # held when nothing runs
        segs = segments(case, s_np, n)
        first_part = last_part = None
        for k, idx in enumerate(segs):
            inp = x[idx, n][:, None]
            if case.static:
                inp = torch.cat([inp, xs[n][None, None].expand(len(idx), 1, -1)], dim=-1)
            keep_fwd = k == 0 and (case.seq != "CONT" or s_np[0, n] != 0)
            keep_rev = k == len(segs) - 1
            for layer in range(L):
                outs = []
                for d in range(D):
                    keep = keep_rev if d else keep_fwd
                    init = [(h0[layer * D + d, n] if keep else torch.zeros(H, dtype=torch.float64))
                            [None, None] for h0 in h0s]
                    seq = inp.flip(0) if d else inp
                    hs, hn = run_direction(case, tp, layer, d, seq, init)
                    o = output_layer(case, tp, layer, d, hs)
                    outs.append(o.flip(0) if d else o)
                    if (d == 0 and k == len(segs) - 1) or (d == 1 and k == 0):
                        for j in range(case.n_states):
                            fin[j][layer * D + d] = hn[j][0, 0]
                inp = torch.cat(outs, dim=-1) if case.merge == "CONCAT" else sum(outs)
                if layer == L - 1:
                    if k == len(segs) - 1:
                        last_part = outs[0][-1, 0]
                    if k == 0 and D == 2:
                        first_part = outs[1][0, 0]
            y_n[idx] = inp[:, 0]
        if segs:
            parts = [last_part] + ([first_part] if D == 2 else [])
            last = torch.cat(parts) if case.merge == "CONCAT" else sum(parts)
        ys.append(last if case.output == "LAST" else y_n)
        for j in range(case.n_states):
            finals[j].append(torch.stack(fin[j]))
    y = torch.stack(ys, dim=0 if case.output == "LAST" else 1)
    return y, [torch.stack(f, dim=1) for f in finals]


def reference(case: Case, params: dict, inputs: dict, state: dict, cots: list, grad_inputs):
    """Outputs, final states and gradients from PyTorch (float64)."""
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params["l"].items()}
    def arrange(k, v):  # x, cont and mask to time-major
        return time_major(case, v) if k == "x" or (k == "s" and case.seq != "LENGTHS") else v

    tx = {k: torch.tensor(arrange(k, v), requires_grad=k in grad_inputs)
          for k, v in inputs.items()}
    x = tx["x"].reshape(case.T, case.N, case.I)
    s = tx.get("s")
    xs = tx.get("xs")
    states = ["h0", "c0"][:case.n_states]
    if case.expose:
        h0s = [tx[b] for b in states]
    elif case.carry:  # forward directions continue the carried state, reverse ones start at 0
        fwd = torch.tensor([k % case.D == 0 for k in range(case.L * case.D)])[:, None, None]
        h0s = [torch.tensor(state["l"][b]) * fwd for b in ["carry_h", "carry_c"][:case.n_states]]
    else:
        h0s = [torch.zeros(case.L * case.D, case.N, case.H, dtype=torch.float64)] * case.n_states
    full = (case.torch_cell and case.merge == "CONCAT" and case.seq in ("NONE", "LENGTHS")
            and not case.bptt)
    y, hT = (ref_full if full else ref_each)(case, tp, x, s, xs, h0s)
    if case.output != "LAST" and case.batch_first:
        y = y.transpose(0, 1)
    outs = [y] + (hT if case.expose else [])
    total = sum((o * torch.tensor(c)).sum() for o, c in zip(outs, cots))
    leaves = list(tp.values()) + [tx[k] for k in grad_inputs if k in tx]
    # (every sequence fully masked: the outputs are constants, nothing has a gradient)
    grads = (torch.autograd.grad(total, leaves, allow_unused=True) if total.requires_grad
             else [None] * len(leaves))
    g = [np.zeros(t.shape) if gr is None else gr.numpy() for t, gr in zip(leaves, grads)]
    gp = dict(zip(tp, g[:len(tp)]))
    gx = {k: time_major(case, v) if k == "x" else v  # back to netc's layout
          for k, v in zip([k for k in grad_inputs if k in tx], g[len(tp):])}
    return ([o.detach().numpy().reshape(np.shape(c)) for o, c in zip(outs, cots)],
            [h.detach().numpy() for h in hT], gp, gx, full)


# --------------------------------------------------------------------------------------------
# the comparison


def check_cases(cases: list[Case], seed: int) -> list[bool]:
    """All cases side by side in ONE net (one XLA compilation: compiling dominates the run
    time), each compared with its reference. Returns which used the one-module reference."""
    rng = np.random.default_rng(seed)
    tags = [f"_{j}" for j in range(len(cases))]
    net = build([layer for case, tag in zip(cases, tags) for layer in case.layers(tag)])
    planned = {pl.name: pl for pl in net.plan.layers}
    params, state, inputs, cots, tops = {}, {}, {}, [], []
    drawn = []
    for case, tag in zip(cases, tags):
        pl = planned["l" + tag]
        params["l" + tag] = {role: rng.standard_normal(d.shape) * 0.7
                             for role, d in pl.params.items() if d.learned}
        xs, st = draw_inputs(case, rng)
        inputs.update({k + tag: v for k, v in xs.items()})
        if st:
            state["l" + tag] = st["l"]
        case_cots = [rng.standard_normal(net.plan.blobs[t]) for t in pl.tops]
        tops += list(pl.tops)
        cots += case_cots
        drawn.append((xs, st, case_cots))
    grad_inputs = [k for k in inputs if not k.startswith("s_")]
    outs, new_state, gp, gx = run_netc(net, params, state, inputs, tops, cots, list(inputs))
    outs = dict(zip(tops, outs))
    fulls = []
    for case, tag, (xs, st, case_cots) in zip(cases, tags, drawn):
        routs, rhT, rgp, rgx, full = reference(case, {"l": params["l" + tag]}, xs, st, case_cots,
                                               [k for k in ("x", "xs", "h0", "c0") if k in xs])
        fulls.append(full)
        what = f"{case} ({'one torch module' if full else 'each sequence alone'})"
        pl = planned["l" + tag]
        assert outs[pl.tops[0]].dtype == np.float64
        for t, r in zip(pl.tops, routs):
            close(outs[t], r, f"{what}: forward {t}", RTOL)
        for role in params["l" + tag]:
            close(gp["l" + tag][role], rgp[role], f"{what}: d/d {role}", RTOL)
        for k in xs:
            if k == "s":  # cont / mask / lengths get no gradient
                assert not np.any(gx[k + tag]), f"{what}: a gradient reaches the {case.seq} input"
            else:
                assert k + tag in grad_inputs
                close(gx[k + tag], rgx[k], f"{what}: d/d input {k}", RTOL)
        if case.carry:  # the carried state written back is the final state
            for j, b in enumerate(["carry_h", "carry_c"][:case.n_states]):
                close(new_state["l" + tag][b], rhT[j], f"{what}: carried {b}", RTOL)
                assert new_state["l" + tag][b].dtype == st["l"][b].dtype
        else:
            assert "l" + tag not in new_state
    return fulls


# (sequence_input, directions, layers, expose_hidden) of the random cases, in turn: every control
# mode with one and two directions, stacking, and the carried state (CONT without expose_hidden)
PATTERN = [("CONT", 2, 1, False), ("NONE", 1, 2, True), ("MASK", 2, 1, False),
           ("LENGTHS", 2, 2, True), ("CONT", 1, 3, True), ("MASK", 1, 1, True),
           ("NONE", 2, 1, False), ("LENGTHS", 1, 1, False)]


def random_cases(kind: str, seed: int, n: int) -> list[Case]:
    """Random legal configurations: the control mode, directions, stacking and expose_hidden
    follow PATTERN; sizes, batch_first, merge_mode, output, x_static are drawn."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        seq, D, L, expose = PATTERN[i % len(PATTERN)]
        feat = (int(rng.integers(1, 4)),) if rng.random() < 0.6 else (2, int(rng.integers(1, 3)))
        case = Case(kind, T=int(rng.integers(1, 6)), N=int(rng.integers(1, 4)), feat=feat,
                    H=int(rng.integers(1, 5)), L=L, D=D, seq=seq,
                    batch_first=bool(rng.random() < 0.4),
                    merge="SUM" if D == 2 and rng.random() < 0.3 else "CONCAT",
                    expose=expose, output="LAST" if rng.random() < 0.3 else "SEQUENCE",
                    static=int(rng.integers(1, 3)) if rng.random() < 0.3 else None)
        if case.seq == "CONT":
            case.T = max(case.T, 3)  # room for a reset inside
        cases.append(case)
    return cases


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_random_configs_match_pytorch(kind, x64):
    """LSTM, GRU (reset after), RNN (output_layer false) vs torch.nn.LSTM/GRU/RNN."""
    fulls = check_cases(random_cases(kind, len(kind), 6), 100)
    assert any(fulls) and not all(fulls)  # both references were used


def test_pytorch_layout_multilayer_bidirectional_packed(x64):
    """A 2-layer bidirectional LSTM and GRU with lengths, h0/c0, batch_first vs one PyTorch
    module with pack_padded_sequence (h_n from the packed run)."""
    cases = []
    for kind in ("LSTM", "GRU"):
        case = Case(kind, T=5, N=3, feat=(3,), H=4, L=2, D=2, seq="LENGTHS", batch_first=True,
                    expose=True)
        cases += [case, dataclasses.replace(case, output="LAST", batch_first=False)]
    assert all(check_cases(cases, 7))


def test_gru_reset_before_is_cho_et_al(x64):
    cases = [dataclasses.replace(c, reset_after=False) for c in random_cases("GRU", 11, 6)]
    assert not any(check_cases(cases, 200))


def test_rnn_output_layer_is_caffes(x64):
    """Caffe's RNN: o_t = tanh(W_ho·h_t + b_o) on top of the Elman recurrence (torch autograd of a
    hand transcription), and its forward against a plain numpy transcription of rnn_layer.cpp's
    unrolled net with cont."""
    cases = [dataclasses.replace(c, output_layer=True) for c in random_cases("RNN", 12, 6)]
    assert not any(check_cases(cases, 300))

    rng = np.random.default_rng(5)
    T, N, F, H = 6, 2, 3, 4
    net = build([inputs_layer({"x": (T, N, F), "cont": (T, N)}),
                 {"name": "l", "type": "RNN", "bottom": ["x", "cont"], "top": ["o"],
                  "recurrent_param": {"num_output": H}}])
    pl = net.plan.layers[-1]
    assert list(pl.params) == ["W_xh", "b_h", "W_hh", "W_ho", "b_o", "carry_h"]
    p = {r: rng.standard_normal(d.shape) for r, d in pl.params.items() if d.learned}
    x = rng.standard_normal((T, N, F))
    cont = np.array([[0, 1], [1, 1], [1, 0], [0, 1], [1, 1], [1, 1]], np.float64)
    h_prev = rng.standard_normal((N, H))  # the carried h of the previous batch
    want = np.zeros((T, N, H))
    h = h_prev.copy()
    for t in range(T):
        h = cont[t][:, None] * h  # Caffe: h_{t-1} ← cont_t · h_{t-1}
        h = np.tanh(h @ p["W_hh"].T + x[t] @ p["W_xh"].T + p["b_h"])
        want[t] = np.tanh(h @ p["W_ho"].T + p["b_o"])
    blobs, new_state = jit_fast(net.apply)({"l": p}, {"l": {"carry_h": h_prev[None]}},
                                           {"x": jnp.asarray(x), "cont": jnp.asarray(cont)})
    close(blobs["o"], want, "Caffe RNN vs numpy", RTOL)
    close(new_state["l"]["carry_h"][0], h, "Caffe RNN carried h", RTOL)


def test_merge_sum_stacked_and_static(x64):
    """merge_mode SUM between stacked layers and x_static (each sequence alone, torch cells)."""
    cases = [Case(kind, T=4, N=2, feat=(3,), H=3, L=2, D=2, seq="MASK", merge="SUM", expose=True,
                  static=2) for kind in ("LSTM", "GRU", "RNN")]
    assert not any(check_cases(cases, 21))


def test_bptt_steps_cut_the_gradient_every_k_steps(x64):
    """bptt_steps k: the forward is unchanged; the gradient through the state is cut before
    steps k, 2k, … — vs torch.nn.LSTMCell with the state detached there."""
    T, N, F, H, k = 7, 2, 3, 4, 3
    rng = np.random.default_rng(3)
    net = build(Case("LSTM", T=T, N=N, feat=(F,), H=H, bptt=k).layers())
    params = {"l": {r: rng.standard_normal(d.shape) * 0.7
                    for r, d in net.plan.layers[-1].params.items()}}
    x = rng.standard_normal((T, N, F))
    cot = rng.standard_normal((T, N, H))
    outs, _, gp, gx = run_netc(net, params, {}, {"x": x}, ["y"], [cot], ["x"])

    tp = {r: torch.tensor(v, requires_grad=True) for r, v in params["l"].items()}
    tx = torch.tensor(x, requires_grad=True)
    case = Case("LSTM", T=T, N=N, feat=(F,), H=H)
    w = torch_weights(case, tp, 0, 0, "")
    cell = torch.nn.LSTMCell(F, H).double()
    h = c = torch.zeros(N, H, dtype=torch.float64)
    ys = []
    for t in range(T):
        if t and t % k == 0:
            h, c = h.detach(), c.detach()
        h, c = functional_call(cell, w, (tx[t], (h, c)))
        ys.append(h)
    y = torch.stack(ys)
    total = (y * torch.tensor(cot)).sum()
    grads = torch.autograd.grad(total, list(tp.values()) + [tx])
    close(outs[0], y.detach().numpy(), "bptt forward", RTOL)
    for (role, _), g in zip(tp.items(), grads):
        close(gp["l"][role], g.numpy(), f"bptt d/d {role}", RTOL)
    close(gx["x"], grads[-1].numpy(), "bptt d/dx", RTOL)
    # and the cut is real: nothing flows from step k's output back to step k−1's input
    _, _, _, gx1 = run_netc(net, params, {}, {"x": x}, ["y"],
                            [np.eye(T)[k][:, None, None] * np.ones((T, N, H))], ["x"])
    assert not np.any(gx1["x"][:k]) and np.any(gx1["x"][k])


def test_dropout_between_layers_only_in_train(x64):
    """TRAIN: the second layer reads the first one's output through an inverted-dropout mask
    (same mask reproduced from the layer's key: fold_in(fold_in(rng, layer index), 1));
    TEST: no dropout. Checked against the two layers run separately."""
    T, N, F, H, p = 4, 3, 2, 5, 0.4
    rng = np.random.default_rng(4)
    spec = Case("GRU", T=T, N=N, feat=(F,), H=H, L=2).layers()
    spec[1]["recurrent_param"]["dropout"] = p
    net = build(spec)
    params = {"l": {r: rng.standard_normal(d.shape) for r, d in net.plan.layers[-1].params.items()}}
    x = jnp.asarray(rng.standard_normal((T, N, F)))
    key = jax.random.PRNGKey(9)
    # the same two layers as two one-layer nets
    one = build(Case("GRU", T=T, N=N, feat=(F,), H=H).layers())
    two = build(Case("GRU", T=T, N=N, feat=(H,), H=H).layers())
    p1 = {"l": {r: v for r, v in params["l"].items() if "_l1" not in r}}
    p2 = {"l": {r.replace("_l1", ""): v for r, v in params["l"].items() if "_l1" in r}}

    def run(params, x):  # everything in one compiled program
        y_train = net.apply(params, {}, {"x": x}, rng=key)[0]["y"]
        y_test = net.apply(params, {}, {"x": x}, rng=key, train=False)[0]["y"]
        h1 = one.apply(p1, {}, {"x": x})[0]["y"]
        layer_key = jax.random.fold_in(key, 1)  # the recurrent layer is the plan's 2nd layer
        keep = jax.random.bernoulli(jax.random.fold_in(layer_key, 1), 1 - p, h1.shape)
        want_train = two.apply(p2, {}, {"x": jnp.where(keep, h1 / (1 - p), 0)})[0]["y"]
        return y_train, want_train, y_test, two.apply(p2, {}, {"x": h1})[0]["y"], keep

    y_train, want_train, y_test, want_test, keep = jit_fast(run)(params, x)
    close(y_train, want_train, "dropout TRAIN", RTOL)
    close(y_test, want_test, "no dropout in TEST", RTOL)
    assert 0 < float(jnp.mean(keep)) < 1


def test_state_is_carried_across_batches(x64):
    """Two consecutive batches with the carried state = one batch of twice the length."""
    T, N, F, H = 3, 2, 2, 3
    rng = np.random.default_rng(6)
    net = build(Case("LSTM", T=T, N=N, feat=(F,), H=H, seq="CONT").layers())
    long = build(Case("LSTM", T=2 * T, N=N, feat=(F,), H=H, seq="CONT").layers())
    params = {"l": {r: rng.standard_normal(d.shape)
                    for r, d in net.plan.layers[-1].params.items() if d.learned}}
    x = rng.standard_normal((2 * T, N, F))
    cont = np.ones((2 * T, N))
    cont[0] = 0
    cont[4, 1] = 0  # a new sequence inside the second batch
    zero = {"l": {"carry_h": np.zeros((1, N, H)), "carry_c": np.zeros((1, N, H))}}

    def run(params, zero, x, cont):  # one compiled program
        b1, s1 = net.apply(params, zero, {"x": x[:T], "s": cont[:T]})
        b2, s2 = net.apply(params, s1, {"x": x[T:], "s": cont[T:]})
        return b1, b2, s2, long.apply(params, zero, {"x": x, "s": cont})

    b1, b2, s2, (whole, s) = jit_fast(run)(params, zero, x, cont)
    close(np.concatenate([b1["y"], b2["y"]]), whole["y"], "two batches = one", RTOL)
    close(s2["l"]["carry_c"], s["l"]["carry_c"], "carried c", RTOL)


# --------------------------------------------------------------------------------------------
# Embed


def test_embed_matches_torch_embedding(x64):
    """Three Embed layers side by side (one compilation) vs torch's embedding: forward, the
    weight and bias gradients, no gradient to the ids; integer ids give the same rows."""
    rng = np.random.default_rng(8)
    configs = [((5, 3), 7, 4, True), ((6,), 3, 2, False), ((2, 3, 2), 11, 5, True)]
    layers = []
    for i, (shape, k, d, bias) in enumerate(configs):
        layers += [dict(inputs_layer({f"ids{i}": shape}), name=f"in{i}"),
                   {"name": f"e{i}", "type": "Embed", "bottom": [f"ids{i}"], "top": [f"y{i}"],
                    "embed_param": {"num_output": d, "input_dim": k, "bias_term": bias}}]
    net = build(layers)
    params = {pl.name: {r: rng.standard_normal(decl.shape) for r, decl in pl.params.items()}
              for pl in net.plan.layers if pl.type == "Embed"}
    # floats holding ids, as Caffe's blobs
    ids = {f"ids{i}": rng.integers(0, k, size=shape).astype(np.float64)
           for i, (shape, k, _, _) in enumerate(configs)}
    cots = [rng.standard_normal(shape + (d,)) for shape, _, d, _ in configs]

    def f(p, ids):
        blobs = net.apply(p, {}, ids)[0]
        return sum(jnp.sum(blobs[f"y{i}"] * c) for i, c in enumerate(cots)), blobs

    (_, blobs), (gp, gids) = jit_fast(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
        params, ids)
    as_int = jit_fast(lambda p, ids: net.apply(p, {}, ids)[0])(
        params, {k: v.astype(np.int32) for k, v in ids.items()})
    for i, (_, _, _, bias) in enumerate(configs):
        w = torch.tensor(params[f"e{i}"]["weight"], requires_grad=True)
        ref = torch.nn.functional.embedding(torch.tensor(ids[f"ids{i}"]).long(), w)
        if bias:
            b = torch.tensor(params[f"e{i}"]["bias"], requires_grad=True)
            ref = ref + b
        (ref * torch.tensor(cots[i])).sum().backward()
        close(blobs[f"y{i}"], ref.detach().numpy(), f"Embed {i} forward", RTOL)
        close(gp[f"e{i}"]["weight"], w.grad.numpy(), f"Embed {i} d/d weight", RTOL)
        if bias:
            close(gp[f"e{i}"]["bias"], b.grad.numpy(), f"Embed {i} d/d bias", RTOL)
        assert not np.any(gids[f"ids{i}"])
        close(as_int[f"y{i}"], blobs[f"y{i}"], f"Embed {i} int ids", RTOL)


def test_embed_out_of_range_id_is_nan_not_a_wrapped_row():
    net = build([inputs_layer({"ids": (6,)}),
                 {"name": "e", "type": "Embed", "bottom": ["ids"], "top": ["y"],
                  "embed_param": {"num_output": 2, "input_dim": 3, "bias_term": False}}])
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    embed = jit_fast(lambda ids: net.apply({"e": {"weight": w}}, {}, {"ids": ids})[0]["y"])
    for ids in (np.array([0, 1, 2, 3, -1, 2.5], np.float32), np.array([0, 1, 2, 3, -1, -3])):
        y = np.asarray(embed(jnp.asarray(ids)))
        np.testing.assert_array_equal(y[:3], w)
        assert np.all(np.isnan(y[3:])), y  # 3 and −1 (and 2.5) are no rows: never wrapped
    nan = np.asarray(embed(jnp.asarray([np.nan, 0, 0, 0, 0, 0], jnp.float32)))
    assert np.all(np.isnan(nan[0])) and not np.any(np.isnan(nan[1:]))


# The parity tests above, by layer type (merged into tests/test_parity.py's coverage guard).
COVERED = {
    "LSTM": test_random_configs_match_pytorch, "GRU": test_random_configs_match_pytorch,
    "RNN": test_random_configs_match_pytorch, "Embed": test_embed_matches_torch_embedding,
}
