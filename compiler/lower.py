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

from dataclasses import dataclass, field
from typing import Any

from netc.compiler.blocks import Run, find_runs
from netc.compiler.layer import LoweringError, Made, Sources, stops_gradient, wide
from netc.compiler.plan import Plan, PlannedLayer

__all__ = ["Context", "LoweringError", "Made", "Net", "Sources", "lower", "param_spec",
           "stops_gradient"]

_WEIGHT_NOISE_TAG = 0x3A7E  # folded into a layer's key: its weight noise apart from its dropout
SCAN_ENV = "NETC_SCAN_BLOCKS"  # "1": lower() scans runs of identical blocks (default: unrolled)


class _NotScannable(Exception):
    """A run's block changes its blob's dtype: it cannot be a scan's carry."""


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
    kernels: bool = False  # native kernels may be called (Net.kernels)
    sources: Sources | None = None  # the producers of this walk's values
    # values the layer computed on the way that a layer fusing with it may reuse (BatchNorm: its
    # batch statistics), kept with what made its tops (Made.notes)
    notes: dict = field(default_factory=dict)

    def source(self, i: int) -> Made | None:
        """What made this layer's bottom `i` in this walk, so that a layer may fuse with its
        producer; None when the bottom was given, made outside this walk, or its gradient is
        stopped (propagate_down)."""
        if self.sources is None or stops_gradient(self.layer, i):
            return None
        return self.sources.of_blob(self.layer.bottoms[i])


@dataclass
class Net:
    plan: Plan
    scan_blocks: bool = False  # runs of identical blocks as lax.scan (see apply)
    # layers may call native kernels (compiler/kernels/): only in programs this process runs on
    # one device; off for exported artifacts (they must run anywhere) and sharded steps
    kernels: bool = False

    @property
    def train(self) -> bool:
        return self.plan.state.phase == "TRAIN"

    # --- parameters ----------------------------------------------------------------------------
    def init(self, rng, given=None) -> tuple[dict, dict]:
        """Parameters and state drawn from each blob's filler; each blob's key is derived from
        its (layer, role) name, so adding a layer does not change the others' initial values.
        `given` ({(layer, role): value}) supplies blobs that are then not drawn at all (loaded
        weights: their fillers would cost an XLA compile each for nothing)."""
        import zlib

        from netc.compiler.fillers import fill, fold_in, host_key

        host = host_key(rng)  # keys derived in NumPy (no XLA program) when rng is concrete
        rng = host if host is not None else rng
        params: dict = {}
        state: dict = {}
        for (layer, role), decl in self.plan.params.items():
            if given is not None and (layer, role) in given:
                value = given[layer, role]
            else:
                key = fold_in(rng, zlib.crc32(f"{layer}/{role}".encode()) & 0x7FFFFFFF)
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
              outputs=None, sources: Sources | None = None) -> tuple[dict, dict]:
        """Run the net on `inputs` ({blob: array} for every data-layer top it needs). Returns
        ({blob: value}, updated state): every blob, or with `outputs` (blob names) only those,
        computed by only the layers they need (Plan.subgraph). This is the one graph walk that
        training, `test`, `predict`, `export` and the Python API share.

        `inputs` may also give blobs that layers compute (say a decoder's initial state while
        generating step by step): the layers that write a given blob are skipped, and so are the
        layers only they needed.

        With `outputs`, each run of identical blocks (compiler/blocks.py) whose inner blobs are
        not asked for runs as one `jax.lax.scan` over its blocks (the same values, a program
        whose size does not grow with depth) when the Net was lowered with scan_blocks (off by
        default: on CPU, XLA compiled ResNet-50's scanned train step ~2x slower, see README)."""
        train = self.train if train is None else train
        given = {b for b in inputs if b in self.plan.blobs and b not in self._data_tops}
        layers = self.plan.layers if outputs is None else self.plan.subgraph(outputs)
        if given:
            layers = _prune(layers, given, outputs)
        blobs: dict = {b: inputs[b] for b in given}
        new_state: dict = {}
        runs = self._scanned(layers, outputs)
        sources = Sources() if sources is None else sources  # given: to see what fused
        done: set[str] = set()
        for pl in layers:
            if pl.name in done:
                continue
            if pl.unit.is_data:
                _feed(pl, inputs, blobs, outputs)
            elif pl.name in runs and self._scan(runs[pl.name], params, state, blobs, new_state,
                                                rng, train):
                done |= runs[pl.name].names
            else:
                self._step(pl, params, state, blobs, new_state, rng, train, sources)
        merged = {**state, **new_state}
        if outputs is not None:
            missing = [b for b in outputs if b not in blobs]
            if missing:
                raise LoweringError(f"input blob(s) {', '.join(missing)} were not given")
            blobs = {b: blobs[b] for b in outputs}
        return blobs, merged

    def _layer_rng(self, pl: PlannedLayer, rng):
        import jax

        return jax.random.fold_in(rng, self._rng_index[pl.name]) if rng is not None else None

    def _step(self, pl: PlannedLayer, params, state, blobs: dict, new_state: dict, rng, train,
              sources: Sources | None = None):
        """One layer: its tops into `blobs`, its updated state (if any) into `new_state`, what
        made them into `sources` (Context.source)."""
        p = _layer_params(pl, params, state)
        layer_rng = self._layer_rng(pl, rng)
        if train and pl.name in self._weight_noise:
            p = self._noisy(pl, p, layer_rng)
        lstate = _call(pl, p, blobs, state.get(pl.name, {}), layer_rng, train, self.kernels,
                       sources)
        if lstate:
            new_state[pl.name] = lstate

    # --- runs of identical blocks as one lax.scan ------------------------------------------------
    @property
    def runs(self) -> list[Run]:
        """The plan's runs of identical blocks (compiler/blocks.py); none with scan_blocks off."""
        runs = self.__dict__.get("_runs")
        if runs is None:
            runs = self.__dict__["_runs"] = find_runs(self.plan) if self.scan_blocks else []
        return runs

    def scanned_layers(self) -> dict[str, int]:
        """{layer: number of blocks of its run} for every layer a run holds (`netc time`)."""
        return {name: run.count for run in self.runs for name in run.names}

    def _scanned(self, layers: list[PlannedLayer], outputs) -> dict[str, Run]:
        """{first layer: run} of the runs to scan in this walk: every layer of the run runs and
        no blob inside it is asked for. Nothing is scanned when every blob is (outputs None)."""
        if outputs is None or not self.runs:
            return {}
        present = {pl.name for pl in layers}
        want = set(outputs)
        return {run.blocks[0][0].name: run for run in self.runs
                if run.names <= present and not run.internal & want}

    def _scan(self, run: Run, params, state, blobs: dict, new_state: dict, rng, train) -> bool:
        """The run as `lax.scan` over its blocks: the first block's layers applied to the carry,
        each block's parameters and state stacked along a new leading axis, each layer's key
        fold_in(rng, its own plan position) as unrolled. Writes the run's output into `blobs`
        and each layer's new state into `new_state`; False (nothing done) when the block's
        output is not of its input's dtype (then the run is walked layer by layer)."""
        import jax
        import jax.numpy as jnp

        def stack(*xs):
            return jnp.stack(xs)

        cols = list(zip(*run.blocks))  # per position in the block: that layer of every block
        p = [jax.tree_util.tree_map(stack, *(_layer_params(pl, params, state) for pl in col))
             for col in cols]
        st = [jax.tree_util.tree_map(stack, *(state.get(pl.name, {}) for pl in col))
              for col in cols]
        pos = jnp.asarray([[self._rng_index[pl.name] for pl in b] for b in run.blocks], jnp.int32)

        def body(carry, xs):
            p, st, pos = xs
            local = {run.input: carry}
            ys = [_call(pl, p[j], local, st[j],
                        None if rng is None else jax.random.fold_in(rng, pos[j]), train,
                        self.kernels)
                  for j, pl in enumerate(run.blocks[0])]
            out = local[run.body_output]
            if out.dtype != carry.dtype:
                raise _NotScannable
            return out, ys

        try:
            out, ys = jax.lax.scan(body, blobs[run.input], (p, st, pos))
        except _NotScannable:
            return False
        for k, block in enumerate(run.blocks):
            for pl, y in zip(block, ys):
                if y:
                    new_state[pl.name] = jax.tree_util.tree_map(lambda a, k=k: a[k], y)
        blobs[run.output] = out
        return True

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

    def loss(self, params: dict, state: dict, inputs: dict, *, rng=None, train: bool | None = None,
             outputs=None):
        """Caffe's objective: Σ loss_weight · Σ(top) over every top with a non-zero weight.
        The blobs returned: every blob, or with `outputs` only those and the loss tops (which
        lets runs of identical blocks scan; `sinks()` asks for what the whole net computes)."""
        import jax.numpy as jnp

        if outputs is not None:
            outputs = list(dict.fromkeys([*self.loss_blobs(), *outputs]))
        blobs, new_state = self.apply(params, state, inputs, rng=rng, train=train, outputs=outputs)
        total = jnp.zeros((), jnp.float32)
        for pl in self.plan.layers:
            for t, w in zip(pl.tops, pl.loss_weights):
                if w:
                    total = total + w * jnp.sum(wide(blobs[t]))
        return total, (blobs, new_state)

    def sinks(self) -> list[str]:
        """The blobs whose computation runs every layer with tops: the net's outputs, the loss
        tops, and what top-less layers (Silence) read. As `outputs` of apply or loss, the walk
        runs the same layers as with every blob asked for, without naming any blob inside a
        run of identical blocks (so those scan)."""
        sunk = [b for pl in self.plan.layers if not pl.tops for b in pl.bottoms]
        return list(dict.fromkeys([*self.plan.outputs, *self.loss_blobs(), *sunk]))

    def loss_blobs(self) -> list[str]:
        return [t for pl in self.plan.layers for t, w in zip(pl.tops, pl.loss_weights) if w]

    def metric_blobs(self) -> list[str]:
        """Scalar outputs worth reporting (losses, accuracies): Caffe prints every net output."""
        return self.plan.scalar_outputs()


def _feed(pl: PlannedLayer, inputs: dict, blobs: dict, outputs) -> None:
    """A data layer: its tops from `inputs` (each one required when every blob is wanted)."""
    for t in pl.tops:
        if t in inputs:
            blobs[t] = inputs[t]
        elif outputs is None:  # the whole net needs every input
            raise LoweringError(f"input blob '{t}' (from layer '{pl.name}') was not given")


def _call(pl: PlannedLayer, p: dict, blobs: dict, lstate: dict, layer_rng, train: bool,
          kernels: bool = False, sources: Sources | None = None) -> dict:
    """Apply one layer to its bottoms in `blobs` and write its tops there (and what made them
    into `sources`); its new state."""
    ctx = Context(train, layer_rng, lstate, {}, pl, kernels, sources)
    bottoms = _bottoms(pl, blobs)
    tops = pl.unit.apply(p, bottoms, ctx)
    made = Made(pl, p, bottoms, ctx.notes)
    for t, v in zip(pl.tops, tops):
        blobs[t] = v
        if sources is not None:
            sources.record(t, v, made)
    return ctx.new_state


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


def lower(plan: Plan, scan_blocks: bool | None = None, kernels: bool | None = None) -> Net:
    """The Net of `plan`, to run in this process. `scan_blocks` (default: off unless the
    environment sets NETC_SCAN_BLOCKS=1): runs of identical blocks run as one lax.scan where they
    can. `kernels` (default: on unless NETC_ONEDNN=0): layers may call native kernels where
    they are built (compiler/kernels/onednn.py); a Net made as Net(plan) never does."""
    import os

    from netc.compiler.kernels.onednn import enabled_by_env

    if not plan.ok:
        raise LoweringError("the plan has errors; run `netc check` for details")
    if scan_blocks is None:
        scan_blocks = os.environ.get(SCAN_ENV, "0").strip() == "1"
    return Net(plan, scan_blocks, enabled_by_env() if kernels is None else kernels)
