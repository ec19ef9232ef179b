"""Generating sequences with a trained net, one step at a time: sampling and beam search.

A net trained on whole sequences (teacher forcing) is re-planned for generation (`Decoder`): every
data layer becomes an Input layer whose token blob holds ONE step for K rows (time axis 1 long;
K = the number of samples, or samples × beams), the other inputs (an image to caption, a source
sentence) keep their per-sample shape. Each step feeds the previous step's tokens and reads the
`scores` blob (logits, classes last). State flows between steps the way it flows in training:

* a recurrent layer that carries its state (Caffe's `cont`) keeps it in the net state, which the
  decoder threads from step to step (cont is 0 at the first step, 1 after);
* a recurrent layer with `expose_hidden` reads its initial state from bottoms (an encoder's final
  state) and gives its final state as tops: the first step computes the bottoms from the inputs
  (running the encoder once), every later step feeds back the tops of the step before
  (`Net.apply` accepts computed blobs as inputs and skips the layers that made them).

Beam search keeps, per sample, the K prefixes with the highest total log-probability; a prefix
that emits the end symbol is finished and keeps its score; the search stops when every beam of
every sample is finished or at the length limit. With `length_penalty` α > 0 the final choice is by
score / length**α (shorter sequences are otherwise favoured). K = 1 is greedy decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from netc.compiler.xla import jit
from netc.runtime.errors import RunError

__all__ = ["Decoder", "beam_search", "greedy", "sample"]


def _data_layers(plan):
    for pl in plan.layers:
        if pl.unit.is_data:
            yield pl, pl.unit.data_fact()


def _state_pairs(plan, token: str) -> list[tuple[str, str]]:
    """(initial-state blob, final-state blob) of every recurrent layer with exposed state that
    the token blob reaches."""
    reached = {token}
    pairs = []
    for pl in plan.layers:
        if not any(b in reached for b in pl.bottoms):
            continue
        reached.update(pl.tops)
        for bi, ti in pl.unit.state_pairs():
            pairs.append((pl.bottoms[bi], pl.tops[ti]))
    return pairs


@dataclass
class Decoder:
    """A net re-planned to run one step for `rows` rows (see the module docstring)."""

    net: Any
    token: str
    scores: str
    time_axis: int
    rows: int
    cont: str | None = None
    pairs: list = field(default_factory=list)
    fixed: dict = field(default_factory=dict)  # other inputs, one row per decoder row
    transforms: dict = field(default_factory=dict)  # input blob -> its TransformationParameter

    def set_inputs(self, arrays: dict) -> None:
        """The other inputs (an image, a source sentence), one row per decoder row, raw as a data
        source holds them: each data layer's transform_param scale and mean_value are applied
        (TEST phase: no crop, no mirror)."""
        fixed = {}
        for k, a in arrays.items():
            a = np.asarray(a)
            t = self.transforms.get(k)
            if t is not None and (t.scale != 1 or t.mean_value):
                a = a.astype(np.float32)
                if t.mean_value:
                    mean = np.asarray(t.mean_value, np.float32)
                    shape = (1, len(mean)) + (1,) * (a.ndim - 2) if len(mean) > 1 else ()
                    a = a - mean.reshape(shape)
                a = a * np.float32(t.scale)
            elif a.dtype.kind == "f" or k in self.transforms:
                a = a.astype(np.float32)
            fixed[k] = a
        self.fixed = fixed

    @classmethod
    def build(cls, spec, phase_state, rows: int, token: str | None = None,
              scores: str | None = None, cont: str | None = None) -> Decoder:
        """Re-plan `spec` (its `phase_state` net) for generation with `rows` rows. `token`
        defaults to the 'data' top of a text source, `scores` to the first bottom of the layer
        that reads that source's 'label' top (the loss's predictions), `cont` to its 'cont'
        top (give it for nets fed by Input layers)."""
        from netc.compiler.lower import lower
        from netc.compiler.plan import plan as make_plan

        base = make_plan(spec, phase_state, diagnostics=_fresh(spec))
        if not base.ok:
            raise RunError(lines=[d.format() for d in base.diagnostics.sorted()])
        token, scores, found_cont, label = _roles(base, token, scores)
        cont = cont or found_cont
        time_axis = _token_time_axis(base, token)
        per_step = {token, cont, label} | _labels_of(base, token)
        step_spec = _step_spec(spec, base, per_step, rows, time_axis)
        step_plan = make_plan(step_spec, phase_state, diagnostics=step_spec.diagnostics)
        if not step_plan.ok:
            raise RunError("cannot re-plan the net for generation one step at a time:",
                           lines=[d.format() for d in step_plan.diagnostics.sorted()])
        transforms = {pl.tops[0]: fact.transform for pl, fact in _data_layers(base)
                      if fact is not None and fact.transform is not None}
        return cls(lower(step_plan), token, scores, time_axis, rows, cont,
                   _state_pairs(step_plan, token), transforms=transforms)

    def step_fn(self):
        """jitted `(params, state, inputs) -> (scores (rows×V), {final-state blob: value},
        new_state)`."""

        outs = [self.scores] + [t for _, t in self.pairs]

        def run(params, state, inputs):
            blobs, new_state = self.net.apply(params, state, inputs, train=False, outputs=outs)
            s = blobs[self.scores]
            s = s[0] if self.time_axis == 0 else s[:, 0]
            return s, {t: blobs[t] for _, t in self.pairs}, new_state

        return jit(run)

    def inputs(self, tokens: np.ndarray, first: bool, feedback: dict | None) -> dict:
        tok = np.asarray(tokens).reshape(-1)
        x = {self.token: tok[None, :] if self.time_axis == 0 else tok[:, None]}
        if self.cont is not None:
            c = np.full_like(x[self.token], 0 if first else 1)
            x[self.cont] = c
        x.update(self.fixed)
        if feedback:
            for h0, hT in self.pairs:
                x[h0] = feedback[hT]
        return x


def _fresh(spec):
    from netc.spec.errors import Diagnostics

    return Diagnostics(spec.diagnostics.file, spec.diagnostics.positions)


def _roles(plan, token, scores):
    """(token, scores, cont, label) blob names from the data layers' roles, unless given."""
    cont = label = None
    for pl, fact in _data_layers(plan):
        roles = dict(zip(fact.roles, pl.tops)) if fact is not None else {}
        if token is None and fact is not None and fact.vocab and "data" in roles:
            token = roles["data"]
        if token is not None and token in pl.tops:
            cont = roles.get("cont")
            label = roles.get("label")
    if token is None:
        raise RunError("cannot tell which input blob holds the tokens to generate: name it with "
                       "--input BLOB")
    if token not in plan.blobs:
        from netc.spec.errors import did_you_mean

        raise RunError(f"--input: the net has no blob '{token}'{did_you_mean(token, list(plan.blobs))}")
    if scores is None and label is not None:
        readers = [pl for pl in plan.layers if label in pl.bottoms and pl.unit.label_fact(
            pl.bottom_shapes) is not None]
        if readers:
            scores = readers[0].bottoms[0]
    if scores is None:
        raise RunError("cannot tell which blob holds the next-token scores: name it with "
                       "--output BLOB")
    if scores not in plan.blobs:
        from netc.spec.errors import did_you_mean

        raise RunError(f"--output: the net has no blob '{scores}'{did_you_mean(scores, list(plan.blobs))}")
    return token, scores, cont, label


def _labels_of(plan, token: str) -> set[str]:
    """The label blobs read by layers whose predictions depend on the token blob (a decoder's
    targets): one step long in the generation net, as the tokens are."""
    reached, labels = {token}, set()
    for pl in plan.layers:
        if any(b in reached for b in pl.bottoms):
            reached.update(pl.tops)
            fact = pl.unit.label_fact(pl.bottom_shapes)
            if fact is not None and fact.bottom < len(pl.bottoms):
                labels.add(pl.bottoms[fact.bottom])
    return labels - {token}


def _token_time_axis(plan, token: str) -> int:
    for pl, fact in _data_layers(plan):
        if token in pl.tops:
            shape = plan.blobs[token]
            if len(shape) != 2:
                from netc.compiler.layer import fmt_shape

                raise RunError(f"blob '{token}' is {fmt_shape(shape)}; token ids T×N or N×T are "
                               "needed to generate")
            return 1 - (fact.batch_axis if fact is not None else 0)
    raise RunError(f"blob '{token}' is not an input of the net (a data-layer top)")


def _step_spec(spec, plan, per_step: set, rows: int, time_axis: int):
    """A copy of `spec` whose data layers are Input layers shaped for one step of `rows` rows."""
    import dataclasses

    from netc.compiler.catalogue import layer_models

    input_model = layer_models()["Input"]
    step = dataclasses.replace(spec, layers=list(spec.layers), diagnostics=_fresh(spec))
    by_name = {pl.name: pl for pl in plan.layers}
    for i, layer in enumerate(spec.layers):
        pl = by_name.get(layer.name)
        if pl is None or not pl.unit.is_data:
            continue
        fact = pl.unit.data_fact()
        batch_axis = fact.batch_axis if fact is not None else 0
        shapes = []
        for t in pl.tops:
            dims = list(plan.blobs[t])
            if t in per_step:
                dims[time_axis] = 1
            dims[batch_axis] = rows
            shapes.append({"dim": [int(d) for d in dims]})
        step.layers[i] = input_model.model_validate({
            "name": layer.name, "type": "Input", "top": list(layer.top),
            "include": [r.model_dump(exclude_defaults=True) for r in layer.include],
            "exclude": [r.model_dump(exclude_defaults=True) for r in layer.exclude],
            "input_param": {"shape": shapes}})
    return step


# --- search ---------------------------------------------------------------------------------


def _reorder(tree, idx: np.ndarray, axis_of):
    import jax

    def take(path, a):
        ax = axis_of(path, a)
        return a if ax is None else np.take(np.asarray(a), idx, axis=ax)

    return jax.tree_util.tree_map_with_path(take, tree)


def _carry_axis(path, a):
    from netc.compiler.layer import is_carry_role

    role = getattr(path[-1], "key", None) if path else None
    return 1 if isinstance(role, str) and is_carry_role(role) and np.ndim(a) >= 2 else None


def _feedback_axis(path, a):
    return 1 if np.ndim(a) >= 2 else 0


def _prime(dec, fn, params, state, prime):
    """Feed the prime tokens (B×P) one step at a time; returns (scores of the last, feedback,
    state)."""
    prime = np.asarray(prime)
    feedback = None
    scores = None
    for t in range(prime.shape[1]):
        scores, feedback, state = fn(params, state, dec.inputs(prime[:, t], t == 0, feedback))
    return scores, feedback, state


def sample(dec, params, state, prime, length: int, *, temperature: float = 1.0,
           top_k: int = 0, seed: int = 0, end: int | None = None) -> np.ndarray:
    """`length` tokens after each row's prime (rows×P ids), drawn from softmax(scores / T)
    restricted to the top k (k = 0: all); temperature 0 is greedy. Rows that emit `end` stop
    (later positions repeat `end`). Returns rows×length."""
    import jax
    import jax.numpy as jnp

    fn = dec.step_fn()
    scores, feedback, state = _prime(dec, fn, params, state, prime)
    key = jax.random.PRNGKey(seed)
    out = []
    done = np.zeros(dec.rows, bool)
    for t in range(length):
        logits = jnp.asarray(scores, jnp.float32)
        if temperature == 0:
            tok = np.asarray(jnp.argmax(logits, -1))
        else:
            logits = logits / temperature
            if top_k:
                kth = jnp.sort(logits, -1)[:, -min(top_k, logits.shape[-1])][:, None]
                logits = jnp.where(logits < kth, -jnp.inf, logits)
            tok = np.asarray(jax.random.categorical(jax.random.fold_in(key, t), logits, -1))
        if end is not None:
            tok = np.where(done, end, tok)
            done |= tok == end
        out.append(tok)
        if t + 1 < length and not done.all():
            scores, feedback, state = fn(params, state, dec.inputs(tok, False, feedback))
        elif done.all():
            out.extend([np.full(dec.rows, end)] * (length - t - 1))
            break
    return np.stack(out, 1).astype(np.int64)


def greedy(dec, params, state, prime, length: int, end: int | None = None) -> np.ndarray:
    return sample(dec, params, state, prime, length, temperature=0.0, end=end)


def beam_search(dec, params, state, prime, length: int, beams: int, *, end: int | None = None,
                length_penalty: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Beam search for B samples at once: `dec` must have B·beams rows (sample b's beams are rows
    b·K … b·K + K − 1) and `prime` B×P ids. Returns (B×length tokens of the best beam, B
    scores: total log-probability, divided by length**length_penalty when that is > 0)."""
    import jax
    import jax.numpy as jnp

    k = beams
    if dec.rows % k:
        raise RunError(f"the decoder has {dec.rows} rows, not a multiple of {k} beams")
    b = dec.rows // k
    fn = dec.step_fn()
    prime = np.repeat(np.asarray(prime), k, axis=0)
    scores, feedback, state = _prime(dec, fn, params, state, prime)
    total = np.tile(np.r_[0.0, np.full(k - 1, -np.inf)], b).reshape(b, k)  # one live beam
    seqs = np.zeros((b, k, 0), np.int64)
    lengths = np.zeros((b, k), np.int64)
    done = np.zeros((b, k), bool)
    for t in range(length):
        logp = np.asarray(jax.nn.log_softmax(jnp.asarray(scores, jnp.float32), -1),
                          np.float64).reshape(b, k, -1)
        v = logp.shape[-1]
        cand = total[:, :, None] + logp
        if end is not None and done.any():  # a finished beam continues only with `end`, free
            cand = np.where(done[:, :, None], -np.inf, cand)
            cand[..., end] = np.where(done, total, cand[..., end])
        flat = cand.reshape(b, k * v)
        best = np.argsort(-flat, axis=1, kind="stable")[:, :k]
        parent, tok = best // v, best % v
        total = np.take_along_axis(flat, best, 1)
        seqs = np.concatenate([np.take_along_axis(seqs, parent[:, :, None], 1), tok[:, :, None]], 2)
        was_done = np.take_along_axis(done, parent, 1)
        lengths = np.take_along_axis(lengths, parent, 1) + ~was_done
        done = was_done | (tok == end if end is not None else False)
        if done.all() or t + 1 == length:
            break
        rows = (parent + np.arange(b)[:, None] * k).reshape(-1)
        state = _reorder(state, rows, _carry_axis)
        feedback = _reorder(feedback, rows, _feedback_axis) if feedback else feedback
        scores, feedback, state = fn(params, state, dec.inputs(tok.reshape(-1), False, feedback))
    final = total / np.maximum(lengths, 1) ** length_penalty if length_penalty > 0 else total
    pick = np.argmax(final, axis=1)
    out = seqs[np.arange(b), pick]
    if out.shape[1] < length:  # everything finished early
        pad = np.full((b, length - out.shape[1]), end if end is not None else 0, np.int64)
        out = np.concatenate([out, pad], 1)
    return out, final[np.arange(b), pick]
