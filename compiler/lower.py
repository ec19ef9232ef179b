"""Lowering: a Plan becomes pure JAX functions.

    net = lower(plan)
    params, state = net.init(rng)
    blobs, new_state = net.apply(params, state, inputs, rng=rng)
    loss, (blobs, new_state) = net.loss(params, state, inputs, rng=rng)

`params` and `state` are pytrees {layer name: {blob role: array}} (Caffe's roles: weight, bias,
...), so a checkpoint survives unrelated edits to the spec. Blobs use the spec's N×C×H×W order.
The functions are pure and jit-friendly: the trainer compiles the whole step as one XLA program.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netc.compiler.plan import Plan, PlannedLayer


@dataclass
class Context:
    """What a layer's apply sees besides its parameters and bottoms."""

    train: bool
    rng: Any  # a JAX PRNG key for this layer (dropout, ...), or None
    state: dict  # this layer's state (e.g. BatchNorm statistics); read-only
    new_state: dict  # the layer writes its updated state here
    layer: PlannedLayer


class LoweringError(Exception):
    pass


@dataclass
class Net:
    plan: Plan

    @property
    def train(self) -> bool:
        return self.plan.state.phase == "TRAIN"

    # --- parameters ----------------------------------------------------------------------------
    def init(self, rng) -> tuple[dict, dict]:
        """Parameters and state drawn from each blob's filler; each blob's key is derived from
        its (layer, role) name, so adding a layer does not change the others' initial values."""
        import zlib

        import jax

        from netc.compiler.fillers import fill

        params: dict = {}
        state: dict = {}
        for (layer, role), decl in self.plan.params.items():
            key = jax.random.fold_in(rng, zlib.crc32(f"{layer}/{role}".encode()) & 0x7FFFFFFF)
            value = fill(key, decl.filler or decl.default_filler, decl.shape)
            (params if decl.learned else state).setdefault(layer, {})[role] = value
        return params, state

    def multipliers(self) -> tuple[dict, dict]:
        """(lr_mult, decay_mult) pytrees matching `params` (for the solver)."""
        lr: dict = {}
        decay: dict = {}
        for pl in self.plan.layers:
            for role, decl in pl.params.items():
                owner, orole = pl.param_owner[role]
                if decl.learned and owner == pl.name:
                    lr.setdefault(owner, {})[orole] = pl.lr_mult[role]
                    decay.setdefault(owner, {})[orole] = pl.decay_mult[role]
        return lr, decay

    # --- forward -------------------------------------------------------------------------------
    def apply(self, params: dict, state: dict, inputs: dict, *, rng=None, train: bool | None = None,
              stop_at: str | None = None) -> tuple[dict, dict]:
        """Run the net on `inputs` ({blob: array} for every data-layer top it uses). Returns every
        blob's final value and the updated state."""
        import jax

        train = self.train if train is None else train
        blobs: dict = {}
        new_state: dict = {}
        for k, pl in enumerate(self.plan.layers):
            unit = pl.unit
            if unit.is_data:
                for t in pl.tops:
                    if t not in inputs:
                        raise LoweringError(f"input blob '{t}' (from layer '{pl.name}') was not given")
                    blobs[t] = inputs[t]
                continue
            bottoms = [blobs[b] for b in pl.bottoms]
            if pl.unit.spec.propagate_down:
                bottoms = [x if pd else jax.lax.stop_gradient(x)
                           for x, pd in zip(bottoms, pl.unit.spec.propagate_down)]
            p = {}
            for role, (owner, orole) in pl.param_owner.items():
                src = params if pl.params[role].learned else state
                p[role] = src[owner][orole]
            layer_rng = jax.random.fold_in(rng, k) if rng is not None else None
            ctx = Context(train, layer_rng, state.get(pl.name, {}), {}, pl)
            tops = unit.apply(p, bottoms, ctx)
            if ctx.new_state:
                new_state[pl.name] = ctx.new_state
            for t, v in zip(pl.tops, tops):
                blobs[t] = v
            if stop_at is not None and stop_at in pl.tops:
                break
        merged = {**state, **new_state}
        return blobs, merged

    def loss(self, params: dict, state: dict, inputs: dict, *, rng=None, train: bool | None = None):
        """Caffe's objective: Σ loss_weight · Σ(top) over every top with a non-zero weight."""
        import jax.numpy as jnp

        blobs, new_state = self.apply(params, state, inputs, rng=rng, train=train)
        total = jnp.zeros((), jnp.float32)
        for pl in self.plan.layers:
            for t, w in zip(pl.tops, pl.loss_weights):
                if w:
                    total = total + w * jnp.sum(blobs[t])
        return total, (blobs, new_state)

    def loss_blobs(self) -> list[str]:
        return [t for pl in self.plan.layers for t, w in zip(pl.tops, pl.loss_weights) if w]

    def metric_blobs(self) -> list[str]:
        """Scalar outputs worth reporting (losses, accuracies): Caffe prints every net output."""
        return [t for t in self.plan.outputs if self.plan.blobs[t] == ()]


def lower(plan: Plan) -> Net:
    if not plan.ok:
        raise LoweringError("the plan has errors; run `netc check` for details")
    return Net(plan)
