"""Scheduled sampling (Bengio et al. 2015) as an option of the Solver's train step.

Teacher forcing is the default: a decoder reads the true previous token at every step. With the
solver's `scheduled_sampling` section, each position t ≥ 1 of the `input` blob keeps its true
token with probability eps_i (the schedule at iteration i, spec/solver.py ScheduledSampling) and
otherwise takes the model's own prediction of it — the `output` scores at t − 1, sampled from
their softmax or arg-maxed. The predictions come from forward passes without gradient: pass p reads
the mix of pass p − 1 (pass 1 reads the true tokens), so one pass is Duckworth et al.'s parallel
scheduled sampling and T passes reproduce the sequential procedure on T-step sequences exactly
(position t's choice then conditions on the already-mixed positions before it). The loss and its
gradient are then computed on the mixed input, as in the paper.
"""

from __future__ import annotations

from typing import Any

from netc.runtime.errors import RunError

__all__ = ["make_mixer"]

_MIX_TAG = 0x5353  # separates the mixing randomness from dropout's


def _time_axis(plan, blob: str) -> int:
    """The time axis of a 2-D token blob: the axis that is not its data layer's batch axis."""
    for pl in plan.layers:
        if pl.unit.is_data and blob in pl.tops:
            fact = pl.unit.data_fact()
            batch_axis = fact.batch_axis if fact is not None else 0
            return 1 - batch_axis
    raise RunError(f"scheduled_sampling.input: blob '{blob}' is not a top of a data layer of the "
                   "TRAIN net (the model's predictions replace tokens the data feeds)")


def check_blobs(plan, ss) -> int:
    """Validate the section against the TRAIN plan; returns the input's time axis."""
    from netc.compiler.layer import fmt_shape
    from netc.spec.errors import did_you_mean

    for field in ("input", "output"):
        name = getattr(ss, field)
        if name not in plan.blobs:
            raise RunError(f"scheduled_sampling.{field}: the TRAIN net has no blob '{name}'"
                           f"{did_you_mean(name, list(plan.blobs))}")
    tokens, scores = plan.blobs[ss.input], plan.blobs[ss.output]
    if len(tokens) != 2:
        raise RunError(f"scheduled_sampling.input: blob '{ss.input}' is {fmt_shape(tokens)}; "
                       "token ids T×N or N×T are needed")
    if len(scores) != 3 or tuple(scores[:2]) != tuple(tokens):
        raise RunError(f"scheduled_sampling.output: blob '{ss.output}' is {fmt_shape(scores)}; "
                       f"scores {fmt_shape(tuple(tokens) + ('V',))} (one per token of "
                       f"'{ss.input}', classes last) are needed")
    return _time_axis(plan, ss.input)


def make_mixer(net, ss) -> Any:
    """`mix(params, state, inputs, key, it) -> inputs` with `ss.input` replaced by the scheduled
    mix of true and predicted tokens (pure, jit-friendly)."""
    import jax
    import jax.numpy as jnp

    time_axis = check_blobs(net.plan, ss)

    def shift(tok, first):
        # position t gets the prediction made at t − 1; position 0 keeps its true token
        if time_axis == 0:
            return jnp.concatenate([first[:1], tok[:-1]], axis=0)
        return jnp.concatenate([first[:, :1], tok[:, :-1]], axis=1)

    def mix(params, state, inputs, key, it):
        true = inputs[ss.input]
        key = jax.random.fold_in(key, _MIX_TAG)
        keep = jax.random.bernoulli(jax.random.fold_in(key, 0), ss.teacher_prob(it), true.shape)
        steps = jnp.arange(true.shape[time_axis])
        first = (steps == 0)[:, None] if time_axis == 0 else (steps == 0)[None, :]
        keep = keep | first
        current = inputs
        for p in range(ss.passes):
            blobs, _ = net.apply(params, state, current, rng=jax.random.fold_in(key, 2 + 2 * p),
                                 train=True, outputs=[ss.output])
            scores = jax.lax.stop_gradient(blobs[ss.output]).astype(jnp.float32)
            if ss.decode == "ARGMAX":
                tok = jnp.argmax(scores, axis=-1)
            else:
                tok = jax.random.categorical(jax.random.fold_in(key, 3 + 2 * p), scores, axis=-1)
            mixed = jnp.where(keep, true, shift(tok, true).astype(true.dtype))
            current = {**inputs, ss.input: mixed}
        return current

    return mix
