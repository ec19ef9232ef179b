"""netc's Python API (exported from the package root as `netc.load`, `netc.Model`, ...).

    import netc
    model = netc.load("models/lenet.yaml", weights="runs/lenet-.../")   # TEST phase
    model.check()["params"]                 # the `netc check` report, as data
    probs = model.predict({"data": x})      # {blob: numpy array}: the deploy outputs
    params, state = model.init(jax.random.PRNGKey(0))
    blobs, state = model.apply(params, state, {"data": x}, outputs=["ip2"])   # jit-able

`load` validates and plans the spec at once (errors raise `netc.NetcError` with the same
FILE:LINE:COL lines `netc check` prints). Nothing imports JAX until a method needs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from netc.runtime.errors import RunError

__all__ = ["Model", "load"]


class Model:
    """A planned spec for one phase: its shapes and parameters, and pure JAX functions over it.
    `params` / `state` hold loaded weights (or None until `init`/`load(weights=...)`)."""

    def __init__(self, context, phase: str, batch: int | None = None):
        self.context = context
        self.phase = phase
        self.plan = context.plan(phase, batch)
        self._net = None
        self.params: dict | None = None
        self.state: dict | None = None

    # --- what the spec says ------------------------------------------------------------------
    @property
    def spec(self):
        return self.context.spec

    @property
    def inputs(self) -> list[str]:
        return list(self.plan.inputs)

    @property
    def outputs(self) -> list[str]:
        return list(self.plan.outputs)

    @property
    def shapes(self) -> dict[str, tuple]:
        """Every blob's shape (the batch axis holds the symbol "N" unless a batch was given; see
        `batch_axes`)."""
        return dict(self.plan.blobs)

    @property
    def batch_axes(self) -> dict[str, int | None]:
        """The axis of each blob that indexes samples: 0, or 1 for time-major T×N×… blobs; None
        for a blob without one (a layer merged the batch away, an input of fixed shape)."""
        return {b: self.plan.batch_axis(b) for b in self.plan.blobs}

    def check(self) -> dict:
        """The `netc check --format json` report of this spec and phase, as a dict."""
        from netc.compiler.report import check_file, check_report

        spec, plan = check_file(self.context.path, batch=self.plan.batch, shown=self.phase)
        return check_report(spec, plan)

    # --- JAX ----------------------------------------------------------------------------------
    @property
    def net(self):
        if self._net is None:
            from netc.compiler.lower import lower

            self._net = lower(self.plan)
        return self._net

    def init(self, key=None) -> tuple[dict, dict]:
        """Fresh (params, state) from the spec's fillers; `key` a JAX PRNG key or an int seed
        (default 0). Also kept as `self.params` / `self.state`."""
        import jax

        key = jax.random.PRNGKey(key or 0) if key is None or isinstance(key, int) else key
        self.params, self.state = self.net.init(key)
        return self.params, self.state

    def apply(self, params: Mapping, state: Mapping, inputs: Mapping, *,
              outputs: Sequence[str] | None = None, train: bool = False, rng=None):
        """`({blob: array}, new_state)`: the forward on `inputs` (all blobs, or only `outputs`
        computed by the layers they need). Pure: wrap it in `jax.jit` freely."""
        return self.net.apply(params, state, inputs, rng=rng, train=train, outputs=outputs)

    def loss(self, params: Mapping, state: Mapping, inputs: Mapping, *, rng=None,
             train: bool = True):
        """Caffe's objective `(Σ loss_weight · Σ top, (blobs, new_state))`. Pure."""
        return self.net.loss(params, state, inputs, rng=rng, train=train)

    def train_step(self, seed: int = 0, precision: str | None = None):
        """`(opt_state, step)`: the jitted step `netc train` runs with the spec's solver,
        `step(params, state, opt_state, inputs, it) -> (params, state, opt_state, loss)`,
        donating its first three arguments. It computes in `precision` (float32, bfloat16,
        float16; default: the solver's), with float32 params and optimizer state either way.
        Needs params (init() or weights) and a solver."""
        import jax

        from netc.runtime.solver import make_optimizer
        from netc.runtime.trainer import make_train_step

        if self.context.solver is None:
            raise RunError(f"{self.context.path}: no solver: add a `solver:` section or pass "
                           "solver= to netc.load")
        if self.params is None:
            self.init()
        sp = self.context.solver.resolved()
        if precision is not None:
            from netc.runtime.precision import DTYPES

            if precision not in DTYPES:
                raise RunError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
            sp = sp.model_copy(update={"precision": precision})
        optimizer = make_optimizer(sp, *self.net.multipliers())
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x57E9)
        return optimizer.init(self.params), make_train_step(
            self.net, optimizer, int(sp.iter_size), key, precision=sp.precision)

    def load_weights(self, weights: str, err=None) -> None:
        """Copy every blob of a checkpoint / run directory / .npz that matches by layer name
        and shape (Caffe's CopyTrainedLayersFrom); raises NetcError when nothing matches."""
        from netc.runtime.weights import init_with_weights

        self.params, self.state = init_with_weights(self.net, weights, err)

    def predict(self, inputs: Mapping[str, Any], outputs: Sequence[str] | None = None
                ) -> dict[str, np.ndarray]:
        """The inference forward on numpy inputs (keys: input blob names; the batch on each
        blob's batch axis, `batch_axes`: axis 0, or axis 1 of a time-major T×N×… input) with the
        loaded weights; returns {blob: numpy array} for `outputs` (default: the deploy outputs,
        as `netc predict` and `netc export` choose them)."""
        from netc.runtime.commands.predict import check_inputs, choose_outputs, forward

        if self.params is None:
            raise RunError("the model has no weights: pass weights= to netc.load, or call "
                           "init() / load_weights() first")
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        check_inputs(self.plan, arrays, "predict()")
        blobs = choose_outputs(self.plan, list(outputs) if outputs else None, set(arrays),
                               "predict()")
        return forward(self.net, self.params, self.state, arrays, blobs)

    def __repr__(self) -> str:
        trainable, frozen = self.plan.param_counts()
        return (f"<netc.Model {self.spec.name or self.context.path!r} {self.phase}: "
                f"{len(self.plan.layers)} layers, {trainable:,} trainable parameters>")


def load(spec: str, *, phase: str = "TEST", batch: int | None = None,
         weights: str | None = None, solver: str | None = None) -> Model:
    """Load, validate and plan `spec` (a netc YAML file) for `phase` ("TRAIN" or "TEST");
    `batch` fixes the batch size; `weights` loads a checkpoint, a run directory (its newest
    checkpoint) or an .npz of layer/role arrays. Raises netc.NetcError on any problem."""
    from netc.runtime.context import load_context

    phase = phase.upper()
    if phase not in ("TRAIN", "TEST"):
        raise RunError(f"phase must be TRAIN or TEST, got {phase!r}")
    model = Model(load_context(spec, solver), phase, batch)
    if weights is not None:
        model.load_weights(weights)
    return model
