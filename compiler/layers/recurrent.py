"""Sequence layers: Embed, RNN and LSTM (Caffe's embed_layer, rnn_layer, lstm_layer) and GRU (a netc
extension in the same style), all reading `recurrent_param` (RecurrentParameter).

Caffe's recurrent semantics: x is time-major T×N×… (its axes from 2 on are flattened to I
features); the second bottom `cont` (T×N) is 0 where a sequence starts, and the state is multiplied
by cont_t before step t (h_{t−1} ← cont_t·h_{t−1}, c likewise); an optional `x_static` (N×…) adds
W_x*_static·x_static to every step's gates; `expose_hidden` adds the initial state as bottoms and
the final state as tops. Without expose_hidden Caffe carries h_T of one forward into h_0 of the
next: netc declares it as a carried state (`carry_h`, `carry_c`) when the batch is concrete.

netc extensions (see RecurrentParameter): what the second bottom is (`sequence_input` CONT | MASK |
LENGTHS | NONE; with MASK and LENGTHS a padded step changes neither the state nor anything but
its output, which is 0), `batch_first`, `bidirectional` with `merge_mode`, stacked `num_layers`
with `dropout` between them in TRAIN, `output: LAST`, GRU's `reset_after`, RNN's `output_layer`,
`recurrent_weight_filler`, `bptt_steps` (cut the gradient through the state every k steps), and
`weight_dropout` (DropConnect on the recurrent weights W_h in TRAIN, as AWD-LSTM's weight drop,
Merity et al. 2018: one mask per batch for every step, kept entries scaled by 1/(1 − p)).

Cells (gate blocks of H rows, in the order listed):
- LSTM (i, f, o, g — Caffe's lstm_unit_layer.cpp): c_t = σ(f)⊙c_{t−1} + σ(i)⊙tanh(g),
  h_t = σ(o)⊙tanh(c_t); one bias b_c.
- GRU (r, z, n — PyTorch's): r, z = σ(W_x x + b + W_h h); reset_after (PyTorch, cuDNN, Keras's
  default): n = tanh(W_xn x + b_n + r⊙(W_hn h + b_hn)), a second bias b_hg; reset before (Cho et
  al. 2014): n = tanh(W_xn x + b_n + W_hn (r⊙h)), one bias. h_t = (1 − z)⊙n + z⊙h_{t−1}.
- RNN (Elman): h_t = tanh(W_xh x_t + b_h + W_hh h_{t−1}); with output_layer (Caffe's default) the
  top is o_t = tanh(W_ho h_t + b_o), else h_t (PyTorch's nn.RNN).

Stacking: layer l > 0 reads the merged output of layer l − 1 (each direction's o_t for an RNN with
output_layer). x_static feeds the first layer only. Blob roles repeat per layer and direction with
the suffixes `_l1`, `_l2`, … and `_reverse`; the states h0/hT (and the carried state) are
(L·D)×N×H, index layer·D + direction (PyTorch's layout). A reverse direction runs from the last
step to the first: with MASK/LENGTHS over each sequence's valid steps only (as PyTorch's packed
sequences), with CONT its state resets where the NEXT step starts a new sequence. Its carried
state is kept in the state tree but not read: its scan starts at the batch's last step, whose
future the net has not seen, so it starts from zeros.

Lowering: per layer one `lax.scan` over time runs both directions at once (a leading direction
axis); the input projection x·W_xᵀ of every step is one matmul outside the scan (its bias is added
inside the step: (x·W_xᵀ + b) + h·W_hᵀ, the same sums in the same order, without a pass over the
whole T×N×G), and each step does one matmul h·W_hᵀ for all gates (two for GRU reset-before), so
compile time does not grow with T. The single-matmul cells have a hand-written VJP (_recurrence):
the forward writes each step's pre-activations over the input projection and the backward writes
their gradients over them, in place; W_h's and W_x's gradients are one T·N-deep matmul each
(_weight_grad); the LSTM cell's own VJP is written out (_lstm_cell). A first layer reading an
Embed's rows of T×N ids (Context.source) projects the Embed's table once and looks every step's
input projection up in it (_input_lookup), when the table has fewer rows than there are steps.
What each of these saved on bench/char_lstm.py's train step is in the git log of this file.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

from netc.compiler.layer import (
    BATCH,
    Dim,
    LabelFact,
    Layer,
    ParamDecl,
    Shape,
    count,
    fmt_shape,
    register,
)
from netc.spec.errors import SpecError
from netc.spec.messages import EmbedParameter, FillerParameter, RecurrentParameter

# --------------------------------------------------------------------------------------------
# Embed


@register
class Embed(Layer):
    """Caffe's embed_layer.cpp: top = weight[id] (+ bias) for every id of the bottom."""

    type = "Embed"
    param_field = "embed_param"
    Param = EmbedParameter
    bottom_names = ("ids",)
    summary = ("Lookup table: each integer id of the input (any shape S; float blobs holding "
               "integers are accepted, as in Caffe) becomes row `id` of the input_dim×num_output "
               "`weight` (+ `bias`): output S×num_output. An id outside [0, input_dim) gives NaN.")
    example = """\
name: embed
type: Embed
bottom: data
top: embedded
embed_param:
  num_output: 128
  input_dim: 65
  weight_filler: {type: uniform, min: -0.1, max: 0.1}
  bias_term: false
"""

    def infer(self, bottoms):
        return [tuple(bottoms[0]) + (self.p.num_output,)]

    def params(self, bottoms):
        out = {"weight": ParamDecl((self.p.input_dim, self.p.num_output), self.p.weight_filler)}
        if self.p.bias_term:
            out["bias"] = ParamDecl((self.p.num_output,), self.p.bias_filler)
        return out

    def macs(self, bottoms, tops):
        return 0  # lookups, no multiply-accumulates

    def label_fact(self, bottoms):
        """The ids are class indices in [0, input_dim): data checks find an out-of-range id
        before training. Per sample: the bottom's shape without its batch axis (the symbolic
        batch's axis, else axis 0)."""
        x = tuple(bottoms[0])
        axis = x.index(BATCH) if BATCH in x else 0
        per_sample = tuple(int(d) for i, d in enumerate(x) if i != axis)
        return LabelFact(self.spec.name, 0, per_sample, self.p.input_dim, None, "class",
                         f"ids {self.spec.bottom[0]} ({fmt_shape(x)}) index the "
                         f"{self.p.input_dim} rows of the embedding")

    def describe(self) -> str:
        return f"{self.p.input_dim} ids → {self.p.num_output}"

    def apply(self, params, bottoms, ctx):
        table, idx = self.lookup(params, bottoms)
        return [rows(table, idx)]

    def lookup(self, params, bottoms):
        """(table, idx): the top is rows(table, idx), table the weight (+ bias: one add per
        element, as adding it after the lookup) and idx the ids with every one out of range
        (a float id that is not a whole number in range, NaN included) made input_dim."""
        import jax.numpy as jnp

        ids = bottoms[0]
        w = params["weight"]
        if not jnp.issubdtype(w.dtype, jnp.floating):
            w = w.astype(jnp.float32)
        if "bias" in params:
            w = w + params["bias"].astype(w.dtype)
        k = self.p.input_dim
        if jnp.issubdtype(ids.dtype, jnp.floating):
            ok = (ids == jnp.floor(ids)) & (ids >= 0) & (ids < k)
            return w, jnp.where(ok, ids, k).astype(jnp.int32)
        return w, jnp.where((ids >= 0) & (ids < k), ids, k).astype(jnp.int32)


def rows(table, idx):
    """table[idx] along axis 0; index len(table) (out of range) gives a row of NaN, never a
    wrapped or clamped row."""
    import jax.numpy as jnp

    return jnp.take(table, idx, axis=0, mode="fill", fill_value=jnp.nan)


# --------------------------------------------------------------------------------------------
# RNN / LSTM / GRU


@dataclass(frozen=True)
class Recurrence:
    """A recurrent layer's per-shape decisions (Layer.resolve), read by apply."""

    T: int
    N: Dim
    I: int  # noqa: E741 - the input size, as in the papers
    H: int
    L: int  # stacked layers
    D: int  # directions
    S: int | None  # x_static's features, None without it
    seq: int | None  # index of the second bottom (cont / mask / lengths)
    static: int | None  # index of x_static
    h0: int | None  # index of h0 (and h0 + 1: c0 for LSTM)
    carry: bool  # declares carry_h (carry_c) state
    concat: bool  # merge_mode CONCAT

    @property
    def merged(self) -> int:
        """Features of a layer's output (both directions merged)."""
        return self.H * (self.D if self.concat else 1)


def _compute_dtypes(x) -> tuple:
    """(the dtype a recurrent layer computes in, the dtype of its outputs) for input x: x's float
    dtype for both (float32 for ids), except bfloat16/float16 on a CPU, where the recurrence runs
    in float32 and its outputs are rounded once. XLA CPU computes a bfloat16 dot in float32
    anyway, so inside the scan it converted h to float32 and back at every step around float32
    weights (388 converts in the char-LSTM's step against 16): the bfloat16 train step took 89
    ms against float32's 48 (`netc time`, batch 32, T 100, H 256)."""
    import jax.numpy as jnp

    from netc.compiler.layer import cpu_dot_dtype

    dt = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(jnp.float32)
    return cpu_dot_dtype(dt), dt


class _Recurrent(Layer):
    """Shape rules, parameters and the lowering shared by RNN, LSTM and GRU."""

    param_field = "recurrent_param"
    Param = RecurrentParameter
    # the exact counts depend on sequence_input, x_static and expose_hidden: checked in infer
    bottoms = (1, 5)
    tops = (1, 3)
    gates: ClassVar[int]
    n_states: ClassVar[int] = 1  # h (and c for LSTM)
    # Caffe's roles: input weights, bias, static input weights, hidden-to-hidden weights
    roles: ClassVar[tuple[str, str, str, str]]
    # lax.scan's unroll (bench/recurrent_compile.py). bench/char_lstm.py's train step, same-
    # process alternating A/B at load 3.2-4.0: unroll 2 runs at 0.97x, unroll 4 at 0.89x.
    unroll: ClassVar[int] = 1

    # --- shapes ------------------------------------------------------------------------------
    def _bottom_list(self, static: bool) -> list[str]:
        p = self.p
        names = ["x"]
        if p.sequence_input != "NONE":
            names.append({"CONT": "cont", "MASK": "mask", "LENGTHS": "lengths"}[p.sequence_input])
        if static:
            names.append("x_static")
        if p.expose_hidden:
            names += ["h0", "c0"][:self.n_states]
        return names

    def weight_roles(self, params):
        """Every W_* blob (input, static and recurrent weights; W_ho): biases are b_*."""
        return [r for r in params if r.startswith("W_")]

    def saved_elements(self, bottoms, tops):
        """Per layer and direction: every step's gate pre-activations (T×N×G·H) and states (h,
        and c for LSTM: T×N×H each) saved by the forward, and the backward's gate gradients of
        every step (T×N×G·H, kept for W_h's one deep matmul); the tops count the outputs.
        (bench/train_memory.py, char_lstm_hamlet at batch 32: 86.7 MiB estimated, XLA 118.6 MiB;
        24.5 MiB without this term.)"""
        g = self._geometry(bottoms)
        n = g.N if isinstance(g.N, int) else 1
        return g.L * g.D * g.T * n * g.H * (2 * self.gates + self.n_states)

    def state_pairs(self) -> list[tuple[int, int]]:
        """With expose_hidden: h0 (and c0) are the last bottoms, hT (and cT) the tops after y."""
        if not self.p.expose_hidden:
            return []
        nb = len(self.spec.bottom)
        return [(nb - self.n_states + j, 1 + j) for j in range(self.n_states)]

    def _check_tops(self, want_tops: int) -> None:
        """y, and with expose_hidden hT (and cT)."""
        p = self.p
        if len(self.spec.top) != want_tops:
            names = ["y"] + (["hT", "cT"][:self.n_states] if p.expose_hidden else [])
            raise SpecError(f"produces {want_tops} top{'s' if want_tops > 1 else ''} "
                            f"({', '.join(names)}){' with expose_hidden' if p.expose_hidden else ''}"
                            f", got {len(self.spec.top)}", ("top",))

    def _geometry(self, bottoms: list[Shape]) -> Recurrence:
        p = self.p
        nb = len(bottoms)
        base = 1 + (p.sequence_input != "NONE")
        hidden = self.n_states if p.expose_hidden else 0
        if nb not in (base + hidden, base + hidden + 1):
            plain, with_static = self._bottom_list(False), self._bottom_list(True)
            raise SpecError(f"takes the bottoms ({', '.join(plain)}) or ({', '.join(with_static)})"
                            f" with sequence_input {p.sequence_input}"
                            f"{' and expose_hidden' if p.expose_hidden else ''}, got {nb}",
                            ("bottom",))
        static = nb == base + hidden + 1
        self._check_tops(1 + hidden)
        x = tuple(bottoms[0])
        order = "N×T×… (batch_first)" if p.batch_first else "T×N×… (time-major)"
        if len(x) < 2:
            raise SpecError(f"x ('{self.spec.bottom[0]}') must be {order}, got {fmt_shape(x)}",
                            ("bottom", 0))
        T, N = (x[1], x[0]) if p.batch_first else (x[0], x[1])
        if isinstance(T, str) or any(isinstance(d, str) for d in x[2:]):
            axis = "1" if p.batch_first else "0"
            raise SpecError(f"x ('{self.spec.bottom[0]}') is {fmt_shape(x)}: the symbolic batch "
                            f"must be on its batch axis ({order}: axis {0 if p.batch_first else 1}"
                            f"), not on the time axis {axis} or a feature axis", ("bottom", 0))
        I = count(x, 2)  # noqa: E741
        H = p.num_output
        L, D = p.num_layers, 2 if p.bidirectional else 1
        tn = "N×T" if p.batch_first else "T×N"
        seq = 1 if base == 2 else None
        if seq is not None:
            s = tuple(bottoms[1])
            want = (N,) if p.sequence_input == "LENGTHS" else ((N, T) if p.batch_first else (T, N))
            if s != want:
                what = ("N (one length per sequence)" if p.sequence_input == "LENGTHS"
                        else f"{tn} (one value per step and sequence)")
                raise SpecError(f"{p.sequence_input.lower()} ('{self.spec.bottom[1]}') must be "
                                f"{what} = {fmt_shape(want)} for x {fmt_shape(x)}, got "
                                f"{fmt_shape(s)}", ("bottom", 1))
        S = None
        si = base if static else None
        if static:
            xs = tuple(bottoms[si])
            if len(xs) < 1 or xs[0] != N:
                raise SpecError(f"x_static ('{self.spec.bottom[si]}') must be N×… with N = "
                                f"{N} as x {fmt_shape(x)}, got {fmt_shape(xs)}", ("bottom", si))
            S = count(xs, 1)
        h0 = base + static if p.expose_hidden else None
        if h0 is not None:
            want = (L * D, N, H)
            for j, name in enumerate(["h0", "c0"][:self.n_states]):
                s = tuple(bottoms[h0 + j])
                if s != want:
                    raise SpecError(f"{name} ('{self.spec.bottom[h0 + j]}') must be (layers × "
                                    f"directions)×N×H = {fmt_shape(want)} for x {fmt_shape(x)}, "
                                    f"got {fmt_shape(s)}", ("bottom", h0 + j))
        carry = p.sequence_input == "CONT" and not p.expose_hidden and isinstance(N, int)
        return Recurrence(T, N, I, H, L, D, S, seq, si, h0, carry, p.merge_mode == "CONCAT")

    def _warnings(self, g: Recurrence) -> None:
        p, set_ = self.p, self.p.set_fields()
        if "reset_after" in set_ and self.type != "GRU":
            self.warn(f"reset_after applies to GRU only; {self.type} ignores it",
                      "recurrent_param", "reset_after")
        if "output_layer" in set_ and self.type != "RNN":
            self.warn(f"output_layer applies to RNN only; {self.type} ignores it",
                      "recurrent_param", "output_layer")
        if "merge_mode" in set_ and not p.bidirectional:
            self.warn("merge_mode applies to bidirectional layers only; ignored",
                      "recurrent_param", "merge_mode")
        if p.dropout > 0 and p.num_layers == 1:
            self.warn("dropout applies between stacked layers; with num_layers 1 it does nothing",
                      "recurrent_param", "dropout")
        if p.bptt_steps and p.bptt_steps >= g.T:
            self.warn(f"bptt_steps {p.bptt_steps} is not below the {g.T} steps of x: the gradient "
                      f"is never cut inside a batch", "recurrent_param", "bptt_steps")

    def infer(self, bottoms):
        g = self._geometry(bottoms)
        self._warnings(g)
        self._carries = g.carry
        x = tuple(bottoms[0])
        y = (g.N, g.merged) if self.p.output == "LAST" else x[:2] + (g.merged,)
        state = (g.L * g.D, g.N, g.H)
        return [y] + ([state] * self.n_states if self.p.expose_hidden else [])

    def describe_lowering(self, resolved, kernel_dtype: str = "float32") -> str:
        how = ("lax.scan, hand-written VJP" if self._single_matmul else "lax.scan, autodiff")
        if resolved is None:
            return how
        dirs = " both directions" if resolved.D == 2 else ""
        layers = f", {resolved.L} layers" if resolved.L > 1 else ""
        return f"{how}: {resolved.T} steps{dirs}{layers}"

    def resolve(self, bottoms):
        return self._geometry(bottoms)

    # --- parameters ----------------------------------------------------------------------------
    def _blobs(self, g: Recurrence):
        """(role, shape, filler, kind) per blob, in Caffe's order per layer and direction; kind
        says how often the forward multiplies by it: "step" (every step), "once" (x_static's),
        "bias" (never)."""
        p = self.p
        G = self.gates * g.H
        wx, b, ws, wh = self.roles
        rec_filler = p.recurrent_weight_filler or p.weight_filler
        for layer in range(g.L):
            inputs = g.I if layer == 0 else g.merged
            for d in range(g.D):
                sfx = (f"_l{layer}" if layer else "") + ("_reverse" if d else "")
                yield wx + sfx, (G, inputs), p.weight_filler, "step"
                yield b + sfx, (G,), p.bias_filler, "bias"
                if g.S is not None and layer == 0:
                    yield ws + sfx, (G, g.S), p.weight_filler, "once"
                yield wh + sfx, (G, g.H), rec_filler, "step"
                yield from self._extra_blobs(g, sfx)

    def _extra_blobs(self, g: Recurrence, sfx: str):
        return ()

    def params(self, bottoms):
        g = self._geometry(bottoms)
        out = {role: ParamDecl(shape, filler) for role, shape, filler, _ in self._blobs(g)}
        if g.carry:
            shape = (g.L * g.D, int(g.N), g.H)
            for name in ["carry_h", "carry_c"][:self.n_states]:
                out[name] = ParamDecl(shape, None, FillerParameter(), learned=False, carry=True)
        return out

    def macs(self, bottoms, tops):
        """Per sequence: every step's input and recurrent products (and RNN's output layer), plus
        x_static's once per sequence."""
        g = self._geometry(bottoms)
        per = {"step": g.T, "once": 1, "bias": 0}
        return sum(per[kind] * math.prod(shape) for _, shape, _, kind in self._blobs(g))

    def describe(self) -> str:
        p = self.p
        parts = [f"{self.type} {p.num_output}"]
        if p.num_layers > 1:
            parts.append(f"{p.num_layers} layers")
        if p.bidirectional:
            parts.append(f"bidirectional {p.merge_mode.lower()}")
        if self.type == "GRU":
            parts.append("reset after" if p.reset_after else "reset before")
        if self.type == "RNN" and not p.output_layer:
            parts.append("no output layer")
        if p.sequence_input != "CONT":
            parts.append({"MASK": "masked", "LENGTHS": "lengths", "NONE": "no cont"}[
                p.sequence_input])
        if p.batch_first:
            parts.append("batch first")
        if p.output == "LAST":
            parts.append("last step")
        if p.dropout:
            parts.append(f"dropout {p.dropout:g}")
        if p.weight_dropout:
            parts.append(f"weight dropout {p.weight_dropout:g}")
        if p.bptt_steps:
            parts.append(f"bptt {p.bptt_steps}")
        if p.expose_hidden:
            parts.append("exposes hidden")
        if getattr(self, "_carries", False):
            parts.append("carries state")
        return ", ".join(parts)

    # --- lowering ----------------------------------------------------------------------------
    def _cell(self, params: dict, sfx: str, dt):
        """(step(h_or_hc, gx_t, matmul) → new state, recurrent weights (H × G), extra) for one
        direction: the cell's recurrence given the precomputed input projection gx_t."""
        raise NotImplementedError

    def apply(self, params, bottoms, ctx):
        import jax
        import jax.numpy as jnp

        g: Recurrence = ctx.layer.resolved
        p = self.p
        x = bottoms[0]
        dt, out_dt = _compute_dtypes(x)
        if p.batch_first:
            x = jnp.swapaxes(x, 0, 1)
        T, N = x.shape[0], x.shape[1]
        x = x.reshape(T, N, -1).astype(dt)
        cont, mask = self._step_control(g, bottoms, T, N, dt)
        init = self._initial_states(g, params, bottoms, N, dt)
        static = None
        if g.static is not None:
            static = bottoms[g.static].reshape(N, -1).astype(dt)
        lookup = self._input_lookup(ctx)

        inp = x
        finals: list[list] = [[] for _ in range(self.n_states)]
        y = None
        for layer in range(g.L):
            if layer and p.dropout and ctx.train:
                if ctx.rng is None:
                    raise ValueError(f"{self.type} layer '{self.spec.name}' needs an rng for "
                                     f"dropout in TRAIN")
                keep = jax.random.bernoulli(jax.random.fold_in(ctx.rng, layer), 1 - p.dropout,
                                            inp.shape)
                inp = jnp.where(keep, inp / (1 - p.dropout), 0).astype(dt)
            last = layer == g.L - 1
            h0 = [s[layer * g.D:(layer + 1) * g.D] for s in init]
            weight_rng = None
            if p.weight_dropout and ctx.train:
                if ctx.rng is None:
                    raise ValueError(f"{self.type} layer '{self.spec.name}' needs an rng for "
                                     f"weight_dropout in TRAIN")
                weight_rng = jax.random.fold_in(ctx.rng, 1_000_003 + layer)
            outs, states = self._layer(params, layer, g, inp, h0, cont, mask,
                                       static if layer == 0 else None, dt,
                                       sequence=not (last and p.output == "LAST"),
                                       weight_rng=weight_rng,
                                       lookup=lookup if layer == 0 else None)
            for j, st in enumerate(states):
                finals[j].append(st)
            y = outs[0] if len(outs) == 1 else (
                jnp.concatenate(outs, axis=-1) if p.merge_mode == "CONCAT" else outs[0] + outs[1])
            inp = y
        if p.output != "LAST" and p.batch_first:
            y = jnp.swapaxes(y, 0, 1)
        hT = [jnp.concatenate(f, axis=0) for f in finals]
        if g.carry and "carry_h" in params:
            for name, st in zip(["carry_h", "carry_c"], hT):
                ctx.new_state[name] = jax.lax.stop_gradient(st).astype(params[name].dtype)
        if out_dt != dt:
            y, hT = y.astype(out_dt), [h.astype(out_dt) for h in hT]
        return [y] + (hT if p.expose_hidden else [])

    def _input_lookup(self, ctx):
        """(table, ids T×N) when x is, in this walk, an Embed's rows of T×N ids (N×T with
        batch_first): the first layer then projects the table's input_dim rows once and looks
        its rows up, instead of projecting every step's row (bench/char_lstm.py: a 65-row table
        against 3,200 rows, and no T·N-deep matmuls for W_x's and the Embed's gradients);
        None otherwise, and when the table has as many rows as there are steps (a large
        vocabulary: projecting the rows looked up is then the smaller product) or when the
        number of steps is symbolic (an export for any batch size)."""
        src = ctx.source(0)
        if src is None or not isinstance(src.layer.unit, Embed):
            return None
        table, idx = src.layer.unit.lookup(src.params, src.bottoms)
        if idx.ndim != 2 or not isinstance(idx.size, int) or table.shape[0] >= idx.size:
            return None
        return table, (idx.T if self.p.batch_first else idx)

    def _step_control(self, g: Recurrence, bottoms, T: int, N: int, dt):
        """(cont, mask): the per-step control, time-major T×N, no gradient; None where absent."""
        import jax
        import jax.numpy as jnp

        p = self.p
        cont = mask = None
        if g.seq is not None:
            s = jax.lax.stop_gradient(bottoms[g.seq])
            if p.sequence_input == "LENGTHS":
                mask = jnp.arange(T)[:, None] < s.reshape(1, N)
            else:
                s = jnp.swapaxes(s, 0, 1) if p.batch_first else s
                if p.sequence_input == "MASK":
                    mask = s != 0
                else:
                    cont = s.astype(dt)
        return cont, mask

    def _initial_states(self, g: Recurrence, params, bottoms, N: int, dt) -> list:
        """The initial states (L·D)×N×H: the h0 (c0) bottoms, the carried state, or zeros."""
        import jax
        import jax.numpy as jnp

        LD = g.L * g.D
        zeros = jnp.zeros((LD, N, g.H), dt)
        if g.h0 is not None:
            return [bottoms[g.h0 + j].astype(dt) for j in range(self.n_states)]
        if g.carry and "carry_h" in params:
            # Caffe's carried h_T: forward directions continue from it (cont = 0 resets it);
            # a reverse direction starts at the batch's last step, from zeros
            fwd = (jnp.arange(LD) % g.D == 0)[:, None, None]
            return [jnp.where(fwd, jax.lax.stop_gradient(params[name]).astype(dt), 0)
                    for name in ["carry_h", "carry_c"][:self.n_states]]
        return [zeros] * self.n_states

    def _layer(self, params, layer, g: Recurrence, inp, h0, cont, mask, static, dt, *, sequence,
               weight_rng=None, lookup=None):
        """One stacked layer, both directions in one scan. Returns (per-direction outputs —
        T×N×H sequences, or N×H at the last valid step —, final states D×N×H). `weight_rng`:
        draw the weight_dropout mask of each direction's W_h from it; `lookup`: inp is
        rows(table, ids) (_input_lookup)."""
        import jax.numpy as jnp

        p = self.p
        T, N = inp.shape[0], inp.shape[1]
        D = g.D
        sfxs = [(f"_l{layer}" if layer else "") + ("_reverse" if d else "") for d in range(D)]
        gxs, bxs, whs = self._projections(params, sfxs, inp, static, dt, weight_rng, lookup)
        biases = [self._recurrent_bias(params, sfx, dt) for sfx in sfxs]
        ctl = _direction_control(cont, mask, D, N, dt)
        cuts = None
        k = p.bptt_steps
        if k and k < T:
            cuts = (jnp.arange(T) % k == 0) & (jnp.arange(T) > 0)

        batched = D == 2
        if not batched:
            gx_all, bx, wh_all, bh = gxs[0], bxs[0], whs[0], biases[0]
            ctl_all = None if ctl is None else ctl[0][..., None]
            carry0 = tuple(s[0] for s in h0)
        else:
            gx_all = jnp.stack(gxs, axis=1)  # T×D×N×G
            wh_all = jnp.stack(whs)  # D×G×H
            bx, bh = _stack_bias(bxs), _stack_bias(biases)
            ctl_all = None if ctl is None else jnp.stack(ctl, axis=1)[..., None]
            carry0 = tuple(h0)
        masked = mask is not None
        if ctl_all is not None:
            ctl_all = ctl_all.astype(dt)
        if self._single_matmul:
            run = _recurrence(self._cell, masked, sequence, batched, self.unroll,
                              self._additive)
            final, ys = run(gx_all, bx, wh_all, bh, carry0, ctl_all,
                            None if cuts is None else cuts.astype(dt))
        else:
            final, ys = self._plain_scan(gx_all, bx, wh_all, carry0, ctl_all, cuts, masked,
                                         sequence, batched)
        if D == 1:
            final = tuple(f[None] for f in final)
        return self._outputs(params, sfxs, ys, final, mask, sequence, dt), list(final)

    def _projections(self, params, sfxs, inp, static, dt, weight_rng, lookup=None):
        """Each direction's input projections gx (T×N×G, in its processing order), the input
        bias b the step adds to gx_t (None when gx holds it already: with x_static, added first
        as before) and recurrent weights W_h (G×H, Caffe's layout; weight_dropout applied when
        `weight_rng`). Adding b inside the step, not as a pass over the whole T×N×G, saves that
        pass and a T×N×G buffer (the same sums in the same order). With `lookup` (table, ids),
        gx is the rows of the projected table."""
        import jax
        import jax.numpy as jnp

        wx, b, ws, wh = self.roles
        gxs, bxs, whs = [], [], []
        for d, sfx in enumerate(sfxs):
            w = params[wx + sfx].astype(dt)
            if lookup is None:
                gx = _projection()(inp[::-1] if d else inp, w)  # reverse: time reversed
            else:
                table, ids = lookup
                gx = rows(table.astype(dt) @ w.T, ids[::-1] if d else ids)
            bx = params[b + sfx].astype(dt)
            if static is not None:
                gx, bx = gx + bx + (static @ params[ws + sfx].astype(dt).T)[None], None
            gxs.append(gx)
            bxs.append(bx)
            w = params[wh + sfx].astype(dt)  # G × H, Caffe's layout
            if weight_rng is not None:
                q = self.p.weight_dropout
                keep = jax.random.bernoulli(jax.random.fold_in(weight_rng, d), 1 - q, w.shape)
                w = jnp.where(keep, w / (1 - q), 0).astype(dt)
            whs.append(w)
        return gxs, bxs, whs

    def _outputs(self, params, sfxs, ys, final, mask, sequence: bool, dt) -> list:
        """Each direction's output: its T×N×H sequence in time order, or (LAST) its N×H final
        state."""
        import jax.numpy as jnp

        outs = []
        for d, sfx in enumerate(sfxs):
            if sequence:
                h = ys if len(sfxs) == 1 else ys[:, d]
                if d:
                    h = h[::-1]
                valid = None if mask is None else mask[..., None]
            else:
                h = final[0][d]
                # LAST: the output at the last valid step (forward) or the first (reverse), which
                # is the final state; a sequence with no valid step gives 0
                valid = None if mask is None else jnp.any(mask, axis=0)[:, None]
            outs.append(self._output(params, sfx, h, valid, dt))
        return outs

    # --- the recurrence ------------------------------------------------------------------------
    # Every cell but GRU's reset-before does ONE recurrent matmul per step, zr = h·W_hᵀ (+ b_hg),
    # and is elementwise otherwise: `_cell(state, gx_t, zr_t)`. Such a recurrence runs through
    # `_recurrence`, whose backward accumulates W_h's gradient with one matmul over all steps.
    _single_matmul: ClassVar[bool] = True
    _additive: ClassVar[bool] = True  # the cell reads gx_t + zr_t only (not GRU)

    def _cell(self, carry: tuple, gx, zr) -> tuple:
        raise NotImplementedError

    def _recurrent_bias(self, params, sfx: str, dt):
        return None

    def _plain_scan(self, gx, bx, wh, carry0, ctl, cuts, masked, sequence, batched):
        """The recurrence differentiated by JAX itself (GRU reset-before: a second matmul of
        r⊙h inside the step)."""
        import jax
        import jax.numpy as jnp

        def matmul(h, w):  # h·wᵀ
            return jnp.einsum("dnh,dgh->dng", h, w) if batched else h @ w.T

        def body(carry, xs):
            gx_t, ctl_t, cut_t = xs
            if bx is not None:
                gx_t = gx_t + bx
            if cut_t is not None:
                carry = tuple(jnp.where(cut_t, jax.lax.stop_gradient(c), c) for c in carry)
            if ctl_t is not None and not masked:
                carry = tuple(c * ctl_t for c in carry)
            new = self._step(carry, gx_t, wh, matmul)
            if masked:
                m = ctl_t > 0
                new = tuple(jnp.where(m, n, c) for n, c in zip(new, carry))
                out = jnp.where(m, new[0], 0) if sequence else None
            else:
                out = new[0] if sequence else None
            return new, out

        return jax.lax.scan(body, carry0, (gx, ctl, cuts), unroll=self.unroll)

    def _output(self, params, sfx: str, h, valid, dt):
        import jax.numpy as jnp

        return h if valid is None else jnp.where(valid, h, 0)


@register
class LSTM(_Recurrent):
    type = "LSTM"
    gates = 4
    n_states = 2
    roles = ("W_xc", "b_c", "W_xc_static", "W_hc")
    bottom_names = ("x", "cont", "x_static", "h0", "c0")
    summary = ("Long short-term memory (Caffe's lstm_layer): bottoms x (T×N×…, or N×T×… with "
               "batch_first), cont | mask | lengths (sequence_input), [x_static N×…], [h0, c0 with "
               "expose_hidden]; top T×N×H (or the last step, N×H). Gates i, f, o, g; blobs W_xc, "
               "b_c, [W_xc_static], W_hc per layer/direction. Extensions: bidirectional, "
               "num_layers, dropout, output LAST, bptt_steps.")
    example = """\
name: lstm1
type: LSTM
bottom: [x, cont]
top: lstm1
recurrent_param:
  num_output: 256
  weight_filler: {type: uniform, min: -0.08, max: 0.08}
  recurrent_weight_filler: {type: orthogonal}
  bias_filler: {type: constant, value: 0}
"""

    def _cell(self, carry, gx, zr):
        return _lstm_cell()(carry[1], gx + zr)


@functools.cache
def _lstm_cell():
    """cell(c, z) → (h, c'), the LSTM's elementwise step from the pre-activation z (gates i, f,
    o, g: Caffe's order puts the three sigmoid gates first), with its VJP written out: the gate
    gradients joined by one concatenation. JAX's own VJP of the gate slices sums four zero-padded
    blocks, a fusion XLA's CPU emitter runs 1.8x slower (100 backward steps at batch 32, H 256:
    166 → 93 µs a step, bench/char_lstm.py's shape)."""
    import jax
    import jax.numpy as jnp

    def gates(c, z):
        H = c.shape[-1]
        sig, g = jax.nn.sigmoid(z[..., :3 * H]), jnp.tanh(z[..., 3 * H:])
        c2 = sig[..., H:2 * H] * c + sig[..., :H] * g
        tc = jnp.tanh(c2)
        return sig[..., 2 * H:] * tc, c2, (c, sig, g, tc)

    @jax.custom_vjp
    def cell(c, z):
        return gates(c, z)[:2]

    def fwd(c, z):
        h, c2, res = gates(c, z)
        return (h, c2), res

    def bwd(res, cotangents):
        c, sig, g, tc = res
        dh, dc = cotangents
        H = c.shape[-1]
        i, f, o = sig[..., :H], sig[..., H:2 * H], sig[..., 2 * H:]
        dc = dc + dh * o * (1 - tc * tc)
        dsig = jnp.concatenate([dc * g, dc * c, dh * tc], axis=-1) * sig * (1 - sig)
        return dc * f, jnp.concatenate([dsig, dc * i * (1 - g * g)], axis=-1)

    cell.defvjp(fwd, bwd)
    return cell


@register
class GRU(_Recurrent):
    type = "GRU"
    gates = 3
    roles = ("W_xg", "b_g", "W_xg_static", "W_hg")
    bottom_names = ("x", "cont", "x_static", "h0")
    _additive = False  # r multiplies the recurrent part of n only
    summary = ("Gated recurrent unit (netc extension, Caffe's style): bottoms as LSTM's without "
               "c0; gates r, z, n (PyTorch's order). reset_after (default, PyTorch/cuDNN/Keras) "
               "applies r after the recurrent matmul and adds a second bias b_hg; false is Cho et "
               "al. 2014. Blobs W_xg, b_g, [W_xg_static], W_hg, [b_hg].")
    example = """\
name: gru1
type: GRU
bottom: [x, lengths]
top: gru1
recurrent_param:
  num_output: 128
  sequence_input: LENGTHS
  batch_first: true
  bidirectional: true
  weight_filler: {type: xavier}
  recurrent_weight_filler: {type: orthogonal}
"""

    def _extra_blobs(self, g, sfx):
        if self.p.reset_after:
            yield "b_hg" + sfx, (3 * g.H,), self.p.bias_filler, "bias"

    @property
    def _single_matmul(self) -> bool:  # type: ignore[override]
        return self.p.reset_after

    def _recurrent_bias(self, params, sfx, dt):
        return params["b_hg" + sfx].astype(dt) if self.p.reset_after else None

    def _cell(self, carry, gx, zr):
        """reset_after: zr = W_hg·h + b_hg, n = tanh(gx_n + r⊙zr_n)."""
        import jax
        import jax.numpy as jnp

        (h,) = carry
        H = h.shape[-1]
        rz = jax.nn.sigmoid(gx[..., :2 * H] + zr[..., :2 * H])
        r, z = rz[..., :H], rz[..., H:]
        n = jnp.tanh(gx[..., 2 * H:] + r * zr[..., 2 * H:])
        return (n + z * (h - n),)

    def _step(self, carry, gx, wh, matmul):
        """reset before (Cho et al.): n = tanh(gx_n + W_hn·(r⊙h)), a second matmul."""
        import jax
        import jax.numpy as jnp

        (h,) = carry
        H = h.shape[-1]
        rz = jax.nn.sigmoid(gx[..., :2 * H] + matmul(h, wh[..., :2 * H, :]))
        r, z = rz[..., :H], rz[..., H:]
        n = jnp.tanh(gx[..., 2 * H:] + matmul(r * h, wh[..., 2 * H:, :]))
        return (n + z * (h - n),)


@register
class RNN(_Recurrent):
    type = "RNN"
    gates = 1
    roles = ("W_xh", "b_h", "W_xh_static", "W_hh")
    bottom_names = ("x", "cont", "x_static", "h0")
    summary = ("Elman recurrent layer (Caffe's rnn_layer): h_t = tanh(W_xh·x_t + b_h + "
               "W_hh·h_{t−1}); top o_t = tanh(W_ho·h_t + b_o) (output_layer, Caffe's default) or "
               "h_t (output_layer false, PyTorch's nn.RNN). Bottoms as LSTM's without c0.")
    example = """\
name: rnn1
type: RNN
bottom: [x, cont]
top: rnn1
recurrent_param:
  num_output: 64
  weight_filler: {type: gaussian, std: 0.1}
"""

    def _extra_blobs(self, g, sfx):
        if self.p.output_layer:
            yield "W_ho" + sfx, (g.H, g.H), self.p.weight_filler, "step"
            yield "b_o" + sfx, (g.H,), self.p.bias_filler, "bias"

    def _cell(self, carry, gx, zr):
        import jax.numpy as jnp

        return (jnp.tanh(gx + zr),)

    def _output(self, params, sfx, h, valid, dt):
        import jax.numpy as jnp

        if self.p.output_layer:  # Caffe's o_t, for every step at once outside the scan
            h = jnp.tanh(h @ params["W_ho" + sfx].astype(dt).T + params["b_o" + sfx].astype(dt))
        return h if valid is None else jnp.where(valid, h, 0)


def _direction_control(cont, mask, D: int, N: int, dt):
    """The per-step control of each direction, in its processing order (None: none)."""
    import jax.numpy as jnp

    if cont is not None:
        # forward: the state is multiplied by cont_t before step t; reverse (processing t =
        # T−1 … 0): by cont_{t+1} — reset where the next step starts a new sequence
        return [cont] + ([jnp.concatenate([jnp.ones((1, N), dt), cont[::-1][:-1]])]
                         if D == 2 else [])
    if mask is not None:
        return [mask] + ([mask[::-1]] if D == 2 else [])
    return None


def _recurrence(cell, masked: bool, sequence: bool, batched: bool, unroll: int, additive: bool):
    """f(gx, wh, bh, carry0, ctl, cuts) → (final state, per-step outputs or None): the scan of a
    cell with one recurrent matmul zr_t = h_{t−1}·whᵀ (+ bh), with a backward written out.

    gx: T×[D×]N×G input projections (in processing order); wh: [D×]G×H (Caffe's layout: the
    forward's h·whᵀ and the backward's dz·wh both read it in place); bh: the recurrent bias
    ([D×1×]G) or None; carry0: the state tuple ([D×]N×H each); ctl: T×[D×]N×1 cont factors (the
    state is multiplied by them before the step) or, when `masked`, mask values (where 0 the state
    is kept and the output is 0), or None; cuts: T (1 where the gradient through the state is cut
    before the step) or None. Caller's arrays only, so that the custom VJP closes over nothing.
    `additive`: the cell reads gx_t + zr_t only (LSTM, RNN): the pre-activation z_t is saved and
    differentiated once (its gradient is both gx's and zr's).

    Why the custom VJP: differentiated by JAX, the backward scan would add dz_tᵀ·h_{t−1} into W_h's
    gradient at every step (an H×G accumulation per step, with an inner dimension of only N). Here
    the backward scan carries the state's gradient alone — per step: the cell's elementwise VJP,
    recomputed from the saved pre-activations, and dh += dz·wh — and W_h's gradient is one
    (T·N)-deep matmul of the saved states with the saved dz afterwards."""
    import jax

    mm, mm_t = _matmuls(batched)
    enter, elem = _step(cell, masked, sequence)
    forward = _scan_forward(enter, elem, mm, additive, unroll)

    @jax.custom_vjp
    def run(gx, bx, wh, bh, carry0, ctl, cuts):
        return forward(gx, bx, wh, bh, carry0, ctl, False)  # cuts only change the gradient

    def run_fwd(gx, bx, wh, bh, carry0, ctl, cuts):
        final, (ys, ceffs, zrs) = forward(gx, bx, wh, bh, carry0, ctl, True)
        # an additive cell's backward reads z only (gx's buffer now holds it)
        return (final, ys), (None if additive else gx, bx, wh, bh, ctl, cuts, ceffs, zrs)

    run.defvjp(run_fwd, _scan_backward(elem, mm_t, masked, batched, unroll, additive))
    return run


def _matmuls(batched: bool):
    """(h·wᵀ, dz·w), over a leading direction axis when `batched`."""
    import jax.numpy as jnp

    def mm(h, w):  # h·wᵀ
        return jnp.einsum("dnh,dgh->dng", h, w) if batched else h @ w.T

    def mm_t(dz, w):  # dz·w
        return jnp.einsum("dng,dgh->dnh", dz, w) if batched else dz @ w

    return mm, mm_t


def _step(cell, masked: bool, sequence: bool):
    """(enter, elem): the state a step reads, and the elementwise part of a step."""
    import jax.numpy as jnp

    def enter(carry, ctl_t):
        """The state the step reads: Caffe's h_{t−1} ← cont_t·h_{t−1} (c likewise)."""
        if ctl_t is not None and not masked:
            return tuple(c * ctl_t for c in carry)
        return carry

    def elem(ceff, gx_t, zr_t, ctl_t):
        """The elementwise part of a step: (next state, output)."""
        new = cell(ceff, gx_t, zr_t)
        if masked:
            m = ctl_t > 0
            new = tuple(jnp.where(m, n, c) for n, c in zip(new, ceff))
            return new, (jnp.where(m, new[0], 0) if sequence else None)
        return new, (new[0] if sequence else None)

    return enter, elem


def _scan_forward(enter, elem, mm, additive: bool, unroll: int):
    """forward(gx, bx, wh, bh, carry0, ctl, keep) → (final state, outputs, and with `keep` the
    states read and the pre-activations saved for the backward)."""
    import jax
    import jax.numpy as jnp

    def recur(ceff, wh, bh):  # zr = h·whᵀ (+ bh)
        zr = mm(ceff[0], wh)
        return zr if bh is None else zr + bh

    in_place = _forward_in_place(enter, elem, recur, unroll)

    def forward(gx, bx, wh, bh, carry0, ctl, keep):
        if keep and additive:
            return in_place(gx, bx, wh, bh, carry0, ctl)

        def body(carry, xs):
            gx_t, ctl_t = xs
            gx_t = gx_t if bx is None else gx_t + bx
            ceff = enter(carry, ctl_t)
            zr = recur(ceff, wh, bh)
            if additive:  # the cell reads the pre-activation z = gx + zr only
                zr, gx_t = gx_t + zr, jnp.zeros((), zr.dtype)
            new, y = elem(ceff, gx_t, zr, ctl_t)
            return new, ((y, ceff, zr) if keep else y)

        return jax.lax.scan(body, carry0, (gx, ctl), unroll=unroll)

    return forward


def _forward_in_place(enter, elem, recur, unroll: int):
    """The forward of an additive cell that keeps its pre-activations: z_t = gx_t + zr_t is
    written over gx_t (gx is not needed afterwards), so the saved z takes no fresh T×N×G buffer
    to zero and fill (with the backward's dz written over z: 16.0k → 9.7k page faults per
    bench/char_lstm.py train step, each a fresh page the kernel zeroes)."""
    import jax
    import jax.numpy as jnp

    def forward(gx, bx, wh, bh, carry0, ctl):
        def body(state, xs):
            carry, buf = state
            t, ctl_t = xs
            ceff = enter(carry, ctl_t)
            gx_t = jax.lax.dynamic_index_in_dim(buf, t, keepdims=False)
            z = (gx_t if bx is None else gx_t + bx) + recur(ceff, wh, bh)
            buf = jax.lax.dynamic_update_index_in_dim(buf, z, t, 0)
            # read back from the written buffer: nothing reads gx_t after the write, so XLA
            # updates in place instead of copying the whole buffer every step
            z = jax.lax.dynamic_index_in_dim(buf, t, keepdims=False)
            new, y = elem(ceff, jnp.zeros((), z.dtype), z, ctl_t)
            return (new, buf), (y, ceff)

        steps = jnp.arange(gx.shape[0])
        (final, zs), (ys, ceffs) = jax.lax.scan(body, (carry0, gx), (steps, ctl), unroll=unroll)
        return final, (ys, ceffs, zs)

    return forward


def _scan_backward(elem, mm_t, masked: bool, batched: bool, unroll: int, additive: bool):
    """The custom VJP's backward: a reverse scan carrying the state's gradient alone, then the
    recurrent weights' gradient as one deep matmul. An additive cell writes dz_t over its saved
    z_t, in place (see _forward_in_place)."""
    import jax
    import jax.numpy as jnp

    step = _step_vjp(elem, mm_t, masked, additive)

    def run_bwd(res, cotangents):
        gx, bx, wh, bh, ctl, cuts, ceffs, zrs = res
        dfinal, dys = cotangents
        if additive:
            def body(state, xs):
                dcarry, buf = state
                t, dy_t, ctl_t, cut_t, ceff = xs
                zr = jax.lax.dynamic_index_in_dim(buf, t, keepdims=False)
                dceff, _, dzr = step(wh, dcarry, dy_t, None, ctl_t, cut_t, ceff, zr)
                return (dceff, jax.lax.dynamic_update_index_in_dim(buf, dzr, t, 0)), None

            steps = jnp.arange(zrs.shape[0])
            (dcarry0, dzrs), _ = jax.lax.scan(body, (tuple(dfinal), zrs),
                                              (steps, dys, ctl, cuts, ceffs), reverse=True,
                                              unroll=unroll)
            dgx = dzrs
        else:
            def body(dcarry, xs):
                dy_t, gx_t, *rest = xs
                gx_t = gx_t if bx is None else gx_t + bx
                dceff, dgx, dzr = step(wh, dcarry, dy_t, gx_t, *rest)
                return dceff, (dgx, dzr)

            dcarry0, (dgx, dzrs) = jax.lax.scan(body, tuple(dfinal),
                                                (dys, gx, ctl, cuts, ceffs, zrs), reverse=True,
                                                unroll=unroll)
        dwh = _recurrent_grad(dzrs, ceffs[0], batched)
        dbx, dbh = _bias_grad(dgx, bx, batched), _bias_grad(dzrs, bh, batched)
        zeros = None if ctl is None else jnp.zeros_like(ctl)
        dcuts = None if cuts is None else jnp.zeros_like(cuts)
        return dgx, dbx, dwh, dbh, dcarry0, zeros, dcuts

    return run_bwd


def _step_vjp(elem, mm_t, masked: bool, additive: bool):
    """step(wh, dcarry, dy_t, gx_t, ctl_t, cut_t, ceff, zr) → (the gradient of the state the
    step read, dgx_t (None for an additive cell: it is dzr_t), dzr_t): the cell's elementwise
    VJP, recomputed from the saved pre-activations, and dh += dz·wh."""
    import jax
    import jax.numpy as jnp

    def step(wh, dcarry, dy_t, gx_t, ctl_t, cut_t, ceff, zr):
        if additive:
            zero = jnp.zeros((), zr.dtype)
            _, vjp = jax.vjp(lambda c, z: elem(c, zero, z, ctl_t), ceff, zr)
            dceff, dzr = vjp((dcarry, dy_t))
            dgx = None
        else:
            _, vjp = jax.vjp(lambda c, g, z: elem(c, g, z, ctl_t), ceff, gx_t, zr)
            dceff, dgx, dzr = vjp((dcarry, dy_t))
        dceff = (dceff[0] + mm_t(dzr, wh),) + tuple(dceff[1:])
        if ctl_t is not None and not masked:
            dceff = tuple(d * ctl_t for d in dceff)
        if cut_t is not None:  # bptt_steps: nothing flows back past this step
            dceff = tuple(jnp.where(cut_t > 0, 0, d) for d in dceff)
        return dceff, dgx, dzr

    return step


def _recurrent_grad(dzrs, h, batched: bool):
    """dW_h: the saved states h (T×[D×]N×H) against the saved dz, one (T·N)-deep matmul (per
    direction)."""
    import jax.numpy as jnp

    if batched:  # D × (T·N) × …: one deep matmul per direction
        d = h.shape[1]
        h = jnp.swapaxes(h, 0, 1).reshape(d, -1, h.shape[-1])
        return _weight_grad(h, jnp.swapaxes(dzrs, 0, 1).reshape(d, -1, dzrs.shape[-1]))
    return _weight_grad(h.reshape(-1, h.shape[-1]), dzrs.reshape(-1, dzrs.shape[-1]))


def _bias_grad(dz, b, batched: bool):
    """The gradient of a bias ([D×1×]G, or None) added to every step's T×[D×]N×G term."""
    import jax.numpy as jnp

    if b is None:
        return None
    return jnp.sum(dz, axis=(0, 2) if batched else (0, 1)).reshape(b.shape)


def _stack_bias(biases: list):
    """Both directions' biases as D×1×G (None when they have none)."""
    import jax.numpy as jnp

    return None if biases[0] is None else jnp.stack(biases)[:, None]


def _weight_grad(x, dz):
    """dzᵀ·x ([D×]G×I) for x [D×]K×I and dz [D×]K×G, K = T·N deep, as (xᵀ·dz)ᵀ with xᵀ laid out
    first. Written dzᵀ·x, both operands contract their major axis: XLA either runs it through
    Eigen (2-3x slower here than its YNNPACK matmuls) or transposes dz, the larger operand
    (T·N×4H against T·N×H or T·N×I). The barriers keep XLA from folding the transposes back into
    the dot; the last transpose fuses into the optimizer's update."""
    import jax
    import jax.numpy as jnp

    xt = jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))
    return jnp.swapaxes(jax.lax.optimization_barrier(xt @ dz), -1, -2)


@functools.cache
def _projection():
    """project(x, w) = x·wᵀ (T×N×I, G×I → T×N×G), the input projection of every step, with its
    weight gradient through _weight_grad (JAX's own transposes the T·N×G dz for it)."""
    import jax

    @jax.custom_vjp
    def project(x, w):
        return (x.reshape(-1, x.shape[-1]) @ w.T).reshape(*x.shape[:-1], -1)

    def fwd(x, w):
        return project(x, w), (x, w)

    def bwd(res, dz):
        x, w = res
        return dz @ w, _weight_grad(x.reshape(-1, x.shape[-1]), dz.reshape(-1, dz.shape[-1]))

    project.defvjp(fwd, bwd)
    return project
