"""Caffe's SolverParameter as a frozen pydantic model (names, defaults and meaning from
BVLC/caffe's src/caffe/proto/caffe.proto).

Fields that caffe.proto declares without a default are ``None`` here, so that "not written" stays
visible (protobuf's ``has_*``); :meth:`SolverParameter.resolved` returns a copy with the values
Caffe's getters would return (``momentum`` 0, ``weight_decay`` 0, ``type`` from the deprecated
``solver_type`` enum, ...). The model validator refuses what Caffe would refuse at run time (a
``step`` policy without ``stepsize``, momentum with AdaGrad, ...) and what would silently train with
a learning rate of zero (a policy that needs ``gamma`` without one). ``stepvalue`` must be strictly
increasing: Caffe's multistep advances one step per iteration at most, so repeated or unsorted
values do not mean what they seem to there.

netc extensions (everything else is plain Caffe):

- ``lr_policy: cosine`` -- ``base_lr * 0.5 * (1 + cos(pi * x))`` with
  ``x = (min(max(iter, warmup_iter), max_iter) - warmup_iter) / (max_iter - warmup_iter)``: the
  decay starts where the warmup ends and holds 0 after ``max_iter``. ``poly`` runs on the same
  ``x`` (``base_lr * (1 - x)^power``; without warmup that is Caffe's formula).
- ``warmup_iter`` / ``warmup_start_factor`` -- a linear warmup multiplied onto any policy (see
  :data:`WARMUP_RULE`): optax's ``warmup_cosine_decay_schedule(init_value=warmup_start_factor *
  base_lr, peak_value=base_lr, warmup_steps=warmup_iter, decay_steps=max_iter)`` exactly, for
  ``cosine``; ``poly`` likewise with a polynomial decay. The step-like policies (step, multistep,
  exp, inv, sigmoid) keep Caffe's absolute iteration numbers: ``stepvalue: [30000]`` means
  iteration 30,000 with or without a warmup.
- ``early_stopping`` -- stop when a TEST metric stops improving and keep the best parameters
  (:data:`EARLY_STOPPING_RULE`; runtime/callbacks.py's EarlyStopping).
- ``type: AdamW`` -- Caffe's Adam with decoupled weight decay (Loshchilov & Hutter):
  ``w -= local_rate * (adam_step + weight_decay * decay_mult * w)``; the decay is not added to the
  gradient first (``regularization_type: L1`` decouples ``sign(w)`` the same way).

Solver types come from one registry, :data:`SOLVER_TYPES` (name -> :class:`SolverTypeInfo`):
validation accepts exactly its names. The built-in entries are here (pure data, so ``netc check``
imports no JAX); ``netc.runtime.solver.register_solver`` adds a new type -- its update rule and its
entry here -- in one call.

Fields Caffe has but netc does not act on (``solver_mode``, ``snapshot_format``, ``debug_info``,
``device_id``, ...) are accepted so that Caffe solver files load; set to anything but their default
they draw a warning that says what netc does instead (:meth:`SolverParameter.ignored_fields`), and
:meth:`SolverParameter.record` is what a run records as its solver.

Inline nets (``net_param``, ``train_net_param``, ``test_net_param``) are not accepted: name the net
file in ``net`` / ``train_net`` / ``test_net``. Caffe-fork fields (``eval_type``, ``plateau_winsize``,
...) are not part of BVLC Caffe and are refused like any unknown field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from netc.spec.errors import did_you_mean
from netc.spec.messages import Message, NetState, NonNegInt, PosInt, Repeated

LrPolicy = Literal["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid", "cosine"]
DeprecatedSolverType = Literal["SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM"]
Precision = Literal["float32", "bfloat16", "float16"]
PRECISION_RULE = (
    "netc extension: the dtype the train step and the test pass compute in. bfloat16 / float16 "
    "cast the parameters and the floating-point inputs inside the step; the parameters, the "
    "optimizer state, BatchNorm statistics, losses and the gradients' sum stay float32. float16 "
    "also scales the loss dynamically (from 2**15, halved and the update skipped when a gradient "
    "is not finite, doubled after 2000 good steps; runtime/precision.py).")

# The hyper-parameters of the update rules (the fields a SolverTypeInfo may list in `reads`).
UPDATE_HYPERS = ("momentum", "momentum2", "delta", "rms_decay")


@dataclass(frozen=True)
class SolverTypeInfo:
    """What the spec language knows of a solver type: its ``type:`` name, one line for docs and
    errors, and which of :data:`UPDATE_HYPERS` its update rule reads (``momentum`` given to a type
    that does not read it is refused, as Caffe refuses it for AdaGrad and RMSProp), and how many
    history blobs per parameter its state holds (``histories``: the optimizer-state part of
    ``netc check``'s memory estimate; ``register_solver`` fills it from the rule)."""

    name: str
    summary: str
    reads: tuple[str, ...] = ()
    histories: int | None = None  # history blobs per parameter (optimizer state); None: unknown

    def __post_init__(self) -> None:
        unknown = set(self.reads) - set(UPDATE_HYPERS)
        if unknown:
            raise ValueError(f"solver type {self.name!r} reads unknown fields {sorted(unknown)}")


# Every solver type `type:` accepts, by name (runtime/solver.py's SOLVERS holds their rules).
SOLVER_TYPES: dict[str, SolverTypeInfo] = {
    info.name: info
    for info in (
        SolverTypeInfo("SGD", "Caffe's SGD: history = momentum*history + lr*g; w -= history",
                       ("momentum",), 1),
        SolverTypeInfo("Nesterov", "Nesterov's accelerated gradient, Caffe's form", ("momentum",), 1),
        SolverTypeInfo("AdaGrad", "AdaGrad (Duchi et al.)", ("delta",), 1),
        SolverTypeInfo("RMSProp", "RMSProp with rms_decay (Tieleman & Hinton)", ("delta", "rms_decay"),
                       1),
        SolverTypeInfo("AdaDelta", "AdaDelta (Zeiler), times the learning rate as in Caffe",
                       ("momentum", "delta"), 2),
        SolverTypeInfo("Adam", "Adam (Kingma & Ba): momentum = beta1, momentum2 = beta2",
                       ("momentum", "momentum2", "delta"), 2),
        SolverTypeInfo("AdamW", "netc: Adam with decoupled weight decay (Loshchilov & Hutter)",
                       ("momentum", "momentum2", "delta"), 2),
    )
}


def register_solver_type(info: SolverTypeInfo) -> None:
    """Make ``type: info.name`` valid. Use ``netc.runtime.solver.register_solver``, which also
    registers the update rule; this half alone is for code that only validates specs."""
    if info.name in SOLVER_TYPES and SOLVER_TYPES[info.name] != info:
        raise ValueError(f"solver type {info.name!r} is already registered")
    SOLVER_TYPES[info.name] = info


def unregister_solver_type(name: str) -> None:
    SOLVER_TYPES.pop(name, None)


# Caffe's UpgradeSolverType: the deprecated enum name -> the `type` string.
SOLVER_TYPE_NAMES: dict[str, str] = {
    "SGD": "SGD",
    "NESTEROV": "Nesterov",
    "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta",
    "ADAM": "Adam",
}

# Which of gamma / power / stepsize / stepvalue / max_iter each policy reads.
POLICY_NEEDS: dict[str, tuple[str, ...]] = {
    "fixed": (),
    "step": ("stepsize", "gamma"),
    "exp": ("gamma",),
    "inv": ("gamma", "power"),
    "multistep": ("stepvalue", "gamma"),
    "poly": ("max_iter", "power"),
    "sigmoid": ("stepsize", "gamma"),
    "cosine": ("max_iter",),
}
# Policies that decay over [warmup_iter, max_iter] (the others count Caffe's absolute iterations).
DECAY_AFTER_WARMUP = ("poly", "cosine")

WARMUP_RULE = (
    "netc extension: the first warmup_iter iterations scale the policy's rate by "
    "f(i) = s + (1 - s) * i / warmup_iter (s = warmup_start_factor), rising linearly from s at "
    "iteration 0 to 1 at iteration warmup_iter; poly and cosine then decay over "
    "[warmup_iter, max_iter] (optax.warmup_cosine_decay_schedule with init_value s * base_lr). "
    "s defaults to 1 / (warmup_iter + 1), so f(i) = (i + 1) / (warmup_iter + 1) and no "
    "iteration is wasted at rate 0; write warmup_start_factor: 0 to start from 0."
)

# Fields netc accepts (so Caffe solver files load) but does not act on: field -> (is it set to
# something netc should mention?, what netc does instead). `section` is true for a `solver:`
# section inside a net document, false for a separate solver file.
_IGNORED: dict[str, tuple[Any, str]] = {
    "solver_mode": (lambda sp, section: sp.solver_mode == "GPU" and "solver_mode" in sp.model_fields_set,
                    "netc runs on whatever JAX backend is installed (a GPU or TPU when JAX has "
                    "one, else the CPU); there is no CPU/GPU switch"),
    "device_id": (lambda sp, section: sp.device_id != 0,
                  "JAX places the run on its default device (choose it with "
                  "CUDA_VISIBLE_DEVICES or JAX_PLATFORMS)"),
    "snapshot_format": (lambda sp, section: "snapshot_format" in sp.model_fields_set,
                        "netc writes its snapshots as safetensors + JSON"),
    "snapshot_diff": (lambda sp, section: sp.snapshot_diff,
                      "netc snapshots weights and solver state, never gradients"),
    "debug_info": (lambda sp, section: sp.debug_info,
                   "netc prints no per-layer data/diff norms"),
    "layer_wise_reduce": (lambda sp, section: not sp.layer_wise_reduce,
                          "netc trains on one device; there is no gradient reduction to overlap"),
    "test_compute_loss": (lambda sp, section: sp.test_compute_loss,
                          "the test pass reports every scalar output of the TEST net, losses "
                          "included"),
    "weights": (lambda sp, section: bool(sp.weights),
                "give the weights to start from with netc train --weights FILE"),
    "net": (lambda sp, section: section and sp.net is not None,
            "a solver: section trains the net of the document it is in"),
    "train_net": (lambda sp, section: sp.train_net is not None,
                  "name the net in `net` (a solver file) or put the solver: section in the net"),
    "test_net": (lambda sp, section: bool(sp.test_net),
                 "netc tests the TEST phase of the training net (include/exclude rules)"),
}

NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # a decay rate: 1 would never forget


def _refuse(field: str, message: str, value: Any) -> ValidationError:
    """A validation error located at `field` (so that FILE:LINE:COL points at it, not at the
    solver as a whole)."""
    error = PydanticCustomError("solver", "{message}", {"message": message})
    return ValidationError.from_exception_data(
        "SolverParameter", [InitErrorDetails(type=error, loc=(field,), input=value)]
    )


SCHEDULED_SAMPLING_RULE = (
    "netc extension (Bengio et al. 2015): at iteration i each position t >= 1 of the `input` "
    "blob keeps its true token with probability eps_i and otherwise takes the model's own "
    "prediction of it (from `output` at t - 1: sampled from its softmax, or its argmax); "
    "eps_i = max(epsilon_min, k - c*i) (linear), k**i (exponential, 0 < k < 1) or "
    "k / (k + exp(i / k)) (inverse_sigmoid, k >= 1). The predictions come from `passes` "
    "teacher-forced forward passes without gradient, each feeding the previous pass's mix: one "
    "pass is Duckworth et al.'s parallel scheduled sampling; T passes equal Bengio's sequential "
    "procedure for sequences of T steps. Without this section training is teacher-forced."
)


class ScheduledSampling(Message):
    """The solver's `scheduled_sampling` section (see SCHEDULED_SAMPLING_RULE)."""

    input: str = Field(description="The blob of token ids the model's predictions replace (a top "
                       "of a data layer), e.g. a decoder's input sequence.")
    output: str = Field(description="The scores (logits or probabilities, classes on the last "
                        "axis) whose value at step t - 1 predicts the input at step t.")
    schedule: Literal["linear", "exponential", "inverse_sigmoid"] = "inverse_sigmoid"
    k: Annotated[float, Field(gt=0)] = 1.0
    c: NonNegFloat = 0.0
    epsilon_min: Annotated[float, Field(ge=0, le=1)] = 0.0
    decode: Literal["SAMPLE", "ARGMAX"] = "SAMPLE"
    passes: PosInt = 1

    @model_validator(mode="after")
    def _check(self) -> ScheduledSampling:
        if self.schedule == "exponential" and not self.k < 1:
            raise _refuse("k", f"the exponential schedule eps = k**i needs 0 < k < 1, got {self.k}",
                          self.k)
        if self.schedule == "inverse_sigmoid" and self.k < 1:
            raise _refuse("k", "the inverse_sigmoid schedule eps = k / (k + exp(i / k)) needs "
                          f"k >= 1, got {self.k}", self.k)
        if self.schedule == "linear" and "c" not in self.model_fields_set:
            raise _refuse("c", "the linear schedule eps = max(epsilon_min, k - c*i) needs c (the "
                          "decrease per iteration)", None)
        return self

    def teacher_prob(self, it):
        """eps_i: the probability of keeping the true token at iteration `it` (a Python float
        for an int, a traced value inside jit — numpy-style functions of `it` only)."""
        import math

        if isinstance(it, int):
            if self.schedule == "linear":
                return max(self.epsilon_min, min(1.0, self.k - self.c * it))
            if self.schedule == "exponential":
                return self.k ** it
            return self.k / (self.k + math.exp(min(it / self.k, 700.0)))
        import jax.numpy as jnp

        i = jnp.asarray(it, jnp.float32)
        if self.schedule == "linear":
            return jnp.clip(self.k - self.c * i, self.epsilon_min, 1.0)
        if self.schedule == "exponential":
            return jnp.power(self.k, i)
        return self.k / (self.k + jnp.exp(jnp.minimum(i / self.k, 80.0)))


EARLY_STOPPING_RULE = (
    "netc extension: after every test pass the TEST net's scalar output `metric` (an Accuracy "
    "or loss top) is compared with the best value so far; a value better by more than "
    "min_delta is the new best, and its parameters are written to RUN_DIR/best/ (netc test, "
    "predict and export given the run directory use them). After `patience` test passes "
    "without such an improvement the run stops (a final snapshot, the summary names the "
    "winning iteration). mode: max or min; by default min for a metric whose name contains "
    "'loss', else max. The state (best value, its iteration, the passes without improvement) "
    "is in every checkpoint, so a resumed run stops where the uninterrupted one would."
)


class EarlyStopping(Message):
    """The solver's `early_stopping` section (see EARLY_STOPPING_RULE)."""

    metric: str = Field(description="A scalar output blob of the TEST net: accuracy, loss, ...")
    mode: Literal["max", "min"] | None = None
    patience: NonNegInt = 3
    min_delta: NonNegFloat = 0.0

    @property
    def resolved_mode(self) -> str:
        """`mode`, or min for a metric named like a loss and max otherwise."""
        if self.mode is not None:
            return self.mode
        return "min" if "loss" in self.metric.lower() else "max"


def _solver_type_schema(schema: dict[str, Any]) -> None:
    schema["enum"] = list(SOLVER_TYPES)


class SolverParameter(Message):
    """caffe.proto's SolverParameter (field names and defaults as there), plus netc's
    ``warmup_iter`` / ``warmup_start_factor``, ``lr_policy: cosine`` and ``type: AdamW``."""

    # --- nets (exactly one train net: `net` or `train_net`) ------------------------------------
    net: str | None = None
    train_net: str | None = None
    test_net: Repeated(str) = ()
    train_state: NetState | None = None
    test_state: Repeated(NetState) = ()
    weights: Repeated(str) = ()  # caffemodel(s) to initialise from (fine-tuning)

    # --- testing ---------------------------------------------------------------------------------
    test_iter: Repeated(NonNegInt) = ()
    test_interval: NonNegInt = 0
    test_compute_loss: bool = False
    test_initialization: bool = True
    early_stopping: EarlyStopping | None = Field(None, description=EARLY_STOPPING_RULE)

    # --- the schedule ----------------------------------------------------------------------------
    base_lr: NonNegFloat | None = None
    display: NonNegInt | None = None  # Caffe's getter: 0 (never)
    average_loss: PosInt = 1
    max_iter: NonNegInt | None = None  # Caffe's getter: 0
    iter_size: PosInt = 1
    lr_policy: LrPolicy | None = Field(None, description=(
        "Caffe's learning-rate policy; netc adds cosine. poly and cosine decay over "
        "[warmup_iter, max_iter]; the others use absolute iteration numbers."))
    gamma: NonNegFloat | None = None
    power: float | None = None
    stepsize: PosInt | None = None
    stepvalue: Repeated(NonNegInt) = ()
    # netc extension: linear warmup multiplied onto any policy.
    warmup_iter: NonNegInt = Field(0, description=WARMUP_RULE)
    warmup_start_factor: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="The warmup's factor at iteration 0 (default 1 / (warmup_iter + 1)). "
        + WARMUP_RULE)

    # --- the update rule -------------------------------------------------------------------------
    momentum: Fraction | None = None  # Caffe's getter: 0
    weight_decay: NonNegFloat | None = None  # Caffe's getter: 0
    regularization_type: Literal["L2", "L1"] = "L2"
    clip_gradients: float = -1.0
    type: str = Field("SGD", description="The solver type (the registered names: SGD, Nesterov, "
                      "AdaGrad, RMSProp, AdaDelta, Adam, netc's AdamW, ...).",
                      json_schema_extra=_solver_type_schema)
    delta: NonNegFloat = 1e-8
    momentum2: Fraction = 0.999
    rms_decay: Fraction = 0.99
    solver_type: DeprecatedSolverType | None = None  # deprecated; Caffe's default is SGD

    # --- sequence training (netc extension) --------------------------------------------------------
    scheduled_sampling: ScheduledSampling | None = Field(None, description=SCHEDULED_SAMPLING_RULE)

    # --- mixed precision (netc extension) ------------------------------------------------------------
    precision: Precision = Field("float32", description=PRECISION_RULE)

    # --- snapshots and the rest (see ignored_fields) ---------------------------------------------
    snapshot: NonNegInt = 0
    snapshot_prefix: str | None = None
    snapshot_diff: bool = False
    snapshot_format: Literal["HDF5", "BINARYPROTO"] = "BINARYPROTO"
    snapshot_after_train: bool = True
    solver_mode: Literal["CPU", "GPU"] = "GPU"
    device_id: NonNegInt = 0
    random_seed: Annotated[int, Field(ge=-1, le=2**63 - 1)] = -1
    debug_info: bool = False
    layer_wise_reduce: bool = True

    @field_validator("type")
    @classmethod
    def _registered_type(cls, value: str) -> str:
        if value not in SOLVER_TYPES:
            names = list(SOLVER_TYPES)
            raise ValueError(
                f"'{value}' is not one of {', '.join(names)}{did_you_mean(value, names)}"
            )
        return value

    @property
    def solver(self) -> str:
        """The effective solver type: ``type``, or the deprecated ``solver_type`` upgraded."""
        if self.solver_type is not None and "type" not in self.model_fields_set:
            return SOLVER_TYPE_NAMES[self.solver_type]
        return self.type

    @model_validator(mode="after")
    def _check(self) -> SolverParameter:
        if self.net is not None and self.train_net is not None:
            raise _refuse("train_net", "give the train net once: 'net' or 'train_net', not both",
                          self.train_net)
        if self.solver_type is not None and "type" in self.model_fields_set:
            raise _refuse("solver_type", "solver_type (deprecated enum) and type cannot both be "
                          "given; use type", self.solver_type)
        if self.base_lr is None:
            raise ValueError("base_lr is required (Caffe would train with a rate of 0)")
        if self.lr_policy is None:
            raise ValueError(
                "lr_policy is required: one of " + ", ".join(repr(p) for p in POLICY_NEEDS)
            )
        self._check_policy()
        solver = self.solver
        if self.momentum and "momentum" not in SOLVER_TYPES[solver].reads:
            caffe = " (Caffe refuses it too)" if solver in SOLVER_TYPE_NAMES.values() else ""
            raise _refuse("momentum", f"momentum cannot be used with type '{solver}': its update "
                          f"has no momentum term{caffe}", self.momentum)
        return self

    @model_validator(mode="after")
    def _check_early_stopping(self) -> SolverParameter:
        if self.early_stopping is not None and not (self.test_interval and self.test_iter):
            raise _refuse("early_stopping", "early_stopping needs test passes to watch: set "
                          "test_iter and test_interval", None)
        return self

    def _check_policy(self) -> None:
        """The fields the policy reads are there (the error points at ``lr_policy``)."""
        policy = self.lr_policy
        for need in POLICY_NEEDS[policy]:
            value = getattr(self, need)
            if value is None or value == () or (need == "max_iter" and value == 0):
                raise _refuse("lr_policy", f"lr_policy '{policy}' needs {need}", policy)
        if policy == "multistep":
            sv = self.stepvalue
            if any(b <= a for a, b in zip(sv, sv[1:])):
                raise _refuse("stepvalue", "stepvalue must be strictly increasing for lr_policy "
                              f"'multistep', got {list(sv)}", list(sv))
        if policy in DECAY_AFTER_WARMUP and self.warmup_iter >= self.max_iter:
            raise _refuse("warmup_iter", f"warmup_iter ({self.warmup_iter}) must be less than "
                          f"max_iter ({self.max_iter}): lr_policy '{policy}' decays from "
                          "warmup_iter to max_iter", self.warmup_iter)

    def ignored_fields(self, section: bool = True) -> list[tuple[str, str]]:
        """(field, message) for every field written with a value netc does not act on; the
        message says what netc does instead. ``section``: the solver is a ``solver:`` section of a
        net document (``net`` is then ignored too), not a separate solver file."""
        return [
            (name, f"has no effect in netc: {instead}")
            for name, (written, instead) in _IGNORED.items()
            if written(self, section)
        ]

    def record(self, backend: str | None = None) -> dict[str, Any]:
        """The solver as a run should record it (solver.json): the resolved values (the
        effective type, warmup_start_factor, ...) with what netc really does in place of the
        fields it ignores: ``snapshot_format: safetensors``, ``solver_mode``: the JAX backend
        the run used (``backend``, e.g. ``jax.default_backend()``), ``device_id`` / ``weights`` /
        ``net`` left out, ``snapshot_diff`` / ``debug_info`` / ``test_compute_loss`` false."""
        doc = self.resolved().model_dump(mode="json")
        doc.update(snapshot_format="safetensors", solver_mode=backend, snapshot_diff=False,
                   debug_info=False, test_compute_loss=False)
        for name in ("device_id", "layer_wise_reduce", "weights", "train_net", "test_net"):
            doc.pop(name)
        return doc

    def resolved(self) -> SolverParameter:
        """A copy holding the values Caffe's getters return for fields the spec left out:
        ``momentum`` / ``weight_decay`` / ``gamma`` / ``power`` 0, ``display`` / ``max_iter`` 0,
        ``type`` upgraded from the deprecated ``solver_type``, and ``warmup_start_factor``
        1 / (warmup_iter + 1). String fields stay ``None``."""
        fill = {
            "momentum": 0.0,
            "weight_decay": 0.0,
            "gamma": 0.0,
            "power": 0.0,
            "display": 0,
            "max_iter": 0,
            "warmup_start_factor": 1.0 / (self.warmup_iter + 1),
        }
        update = {k: v for k, v in fill.items() if getattr(self, k) is None}
        if self.solver != self.type:
            update["type"] = self.solver
            update["solver_type"] = None
        return self.model_copy(update=update)
