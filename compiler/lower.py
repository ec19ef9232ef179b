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

from netc.compiler.layer import LoweringError, wide
from netc.compiler.plan import Plan, PlannedLayer

__all__ = ["Context", "LoweringError", "Net", "lower", "param_spec"]

_WEIGHT_NOISE_TAG = 0x3A7E  # folded into a layer's key: its weight noise apart from its dropout


def param_spec(pl: PlannedLayer, role: str):
    """The ParamSpec (`param:` entry) the spec gives the layer's blob `role`, or None."""
    j = list(pl.params).index(role)
    given = pl.unit.spec.param
    return given[j] if j < len(given) else None


@dataclass
class Context:
    """What a layer's apply sees besides its parameters and bottoms."""

    train: bool
    rng: Any  # a JAX PRNG key for this layer (dropout, ...), or None
    state: dict  # this layer's state (e.g. BatchNorm statistics); read-only
    new_state: dict  # the layer writes its updated state here
    layer: PlannedLayer


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

    def max_norms(self) -> dict:
        """{layer: {role: max_norm}} of the learned blobs whose ParamSpec (the owner's) sets
        max_norm (runtime/solver.py's with_max_norm applies them after each update)."""
        out: dict = {}
        for pl in self.plan.layers:
            for role, decl in pl.params.items():
                ps = param_spec(pl, role)
                if decl.learned and pl.param_owner[role][0] == pl.name and ps and ps.max_norm:
                    out.setdefault(pl.name, {})[pl.param_owner[role][1]] = ps.max_norm
        return out

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
              outputs=None) -> tuple[dict, dict]:
        """Run the net on `inputs` ({blob: array} for every data-layer top it needs). Returns
        ({blob: value}, updated state): every blob, or with `outputs` (blob names) only those,
        computed by only the layers they need (Plan.subgraph). This is the one graph walk that
        training, `test`, `predict`, `export` and the Python API share.

        `inputs` may also give blobs that layers compute (say a decoder's initial state while
        generating step by step): the layers that write a given blob are skipped, and so are the
        layers only they needed."""
        import jax

        train = self.train if train is None else train
        given = {b for b in inputs if b in self.plan.blobs and b not in self._data_tops}
        layers = self.plan.layers if outputs is None else self.plan.subgraph(outputs)
        if given:
            layers = _prune(layers, given, outputs)
        blobs: dict = {b: inputs[b] for b in given}
        new_state: dict = {}
        for pl in layers:
            if pl.unit.is_data:
                for t in pl.tops:
                    if t in inputs:
                        blobs[t] = inputs[t]
                    elif outputs is None:  # the whole net needs every input
                        raise LoweringError(f"input blob '{t}' (from layer '{pl.name}') was not given")
                continue
            bottoms = _bottoms(pl, blobs)
            p = _layer_params(pl, params, state)
            layer_rng = jax.random.fold_in(rng, self._rng_index[pl.name]) if rng is not None else None
            if train and pl.name in self._weight_noise:
                p = self._noisy(pl, p, layer_rng)
            ctx = Context(train, layer_rng, state.get(pl.name, {}), {}, pl)
            tops = pl.unit.apply(p, bottoms, ctx)
            if ctx.new_state:
                new_state[pl.name] = ctx.new_state
            for t, v in zip(pl.tops, tops):
                blobs[t] = v
        merged = {**state, **new_state}
        if outputs is not None:
            missing = [b for b in outputs if b not in blobs]
            if missing:
                raise LoweringError(f"input blob(s) {', '.join(missing)} were not given")
            blobs = {b: blobs[b] for b in outputs}
        return blobs, merged

    @property
    def _data_tops(self) -> set[str]:
        tops = self.__dict__.get("_data_top_set")
        if tops is None:
            tops = self.__dict__["_data_top_set"] = {
                t for pl in self.plan.layers if pl.unit.is_data for t in pl.tops}
        return tops

    @property
    def _weight_noise(self) -> dict[str, dict[str, float]]:
        """{layer: {role: std}} of the learned blobs a layer reads with weight noise."""
        noise = self.__dict__.get("_noise")
        if noise is None:
            noise = self.__dict__["_noise"] = {}
            for pl in self.plan.layers:
                for role, decl in pl.params.items():
                    ps = param_spec(pl, role)
                    if decl.learned and ps is not None and ps.weight_noise:
                        noise.setdefault(pl.name, {})[role] = ps.weight_noise
        return noise

    def _noisy(self, pl: PlannedLayer, p: dict, rng) -> dict:
        """Weight noise (ParamSpec.weight_noise, TRAIN only): N(0, std²) added to the blobs the
        layer reads, drawn afresh each step from the layer's key (apart from its own draws);
        the gradient reaches the noiseless blob."""
        import jax

        if rng is None:
            raise LoweringError(f"layer '{pl.name}': weight_noise needs an rng in TRAIN")
        key = jax.random.fold_in(rng, _WEIGHT_NOISE_TAG)
        p = dict(p)
        for k, (role, std) in enumerate(self._weight_noise[pl.name].items()):
            w = p[role]
            p[role] = w + std * jax.random.normal(jax.random.fold_in(key, k), w.shape, w.dtype)
        return p

    @property
    def _rng_index(self) -> dict[str, int]:
        """Each layer's position in the plan: its dropout key is fold_in(rng, position) whichever
        subgraph runs, so a forward of part of the net draws the same masks as the whole."""
        idx = self.__dict__.get("_rng_idx")
        if idx is None:
            idx = self.__dict__["_rng_idx"] = {pl.name: k for k, pl in enumerate(self.plan.layers)}
        return idx

    def loss(self, params: dict, state: dict, inputs: dict, *, rng=None, train: bool | None = None):
        """Caffe's objective: Σ loss_weight · Σ(top) over every top with a non-zero weight."""
        import jax.numpy as jnp

        blobs, new_state = self.apply(params, state, inputs, rng=rng, train=train)
        total = jnp.zeros((), jnp.float32)
        for pl in self.plan.layers:
            for t, w in zip(pl.tops, pl.loss_weights):
                if w:
                    total = total + w * jnp.sum(wide(blobs[t]))
        return total, (blobs, new_state)

    def loss_blobs(self) -> list[str]:
        return [t for pl in self.plan.layers for t, w in zip(pl.tops, pl.loss_weights) if w]

    def metric_blobs(self) -> list[str]:
        """Scalar outputs worth reporting (losses, accuracies): Caffe prints every net output."""
        return self.plan.scalar_outputs()


def _bottoms(pl, blobs: dict) -> list:
    """The layer's bottoms as it reads them: float32 for losses and metrics (mixed precision),
    gradients stopped where propagate_down says false."""
    import jax

    bottoms = []
    for b in pl.bottoms:
        if b not in blobs:
            raise LoweringError(f"input blob '{b}' (needed by layer '{pl.name}') was "
                                "not given")
        bottoms.append(blobs[b])
    if pl.unit.is_loss or pl.unit.is_metric:  # in float32 under mixed precision
        bottoms = [wide(x) for x in bottoms]
    if pl.unit.spec.propagate_down:
        bottoms = [x if pd else jax.lax.stop_gradient(x)
                   for x, pd in zip(bottoms, pl.unit.spec.propagate_down)]
    return bottoms


def _layer_params(pl, params: dict, state: dict) -> dict:
    """{role: array} of the layer's blobs, shared ones read from their owner."""
    p = {}
    for role, (owner, orole) in pl.param_owner.items():
        decl = pl.params[role]
        src = params if decl.learned else state
        if decl.carry and orole not in src.get(owner, {}):
            continue  # no carried state given: the layer starts from zeros (an export)
        p[role] = src[owner][orole]
    return p


def _prune(layers: list[PlannedLayer], given: set[str], outputs) -> list[PlannedLayer]:
    """`layers` without those that write a given blob and without those only they needed."""
    kept = [pl for pl in layers if not any(t in given for t in pl.tops)]
    want = set(outputs) if outputs is not None else {t for pl in kept for t in pl.tops}
    out = []
    for pl in reversed(kept):
        if any(t in want for t in pl.tops):
            out.append(pl)
            want.update(b for b in pl.bottoms if b not in given)
    return out[::-1]


def lower(plan: Plan) -> Net:
    if not plan.ok:
        raise LoweringError("the plan has errors; run `netc check` for details")
    return Net(plan)
