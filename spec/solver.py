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

- ``lr_policy: cosine`` -- ``base_lr * 0.5 * (1 + cos(pi * min(iter, max_iter) / max_iter))``.
- ``warmup_iter`` / ``warmup_start_factor`` -- a linear warmup multiplied onto any policy: during
  the first ``warmup_iter`` iterations the rate is scaled by
  ``warmup_start_factor + (1 - warmup_start_factor) * iter / warmup_iter``.
- ``type: AdamW`` -- Caffe's Adam with decoupled weight decay (Loshchilov & Hutter):
  ``w -= local_rate * (adam_step + weight_decay * decay_mult * w)``; the decay is not added to the
  gradient first (``regularization_type: L1`` decouples ``sign(w)`` the same way).

Inline nets (``net_param``, ``train_net_param``, ``test_net_param``) are not accepted: name the net
file in ``net`` / ``train_net`` / ``test_net``. Caffe-fork fields (``eval_type``, ``plateau_winsize``,
...) are not part of BVLC Caffe and are refused like any unknown field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from netc.spec.messages import Message, NetState, NonNegInt, PosInt, Repeated

LrPolicy = Literal["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid", "cosine"]
SolverType = Literal["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam", "AdamW"]
DeprecatedSolverType = Literal["SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM"]

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

NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # a decay rate: 1 would never forget


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

    # --- the schedule ----------------------------------------------------------------------------
    base_lr: NonNegFloat | None = None
    display: NonNegInt | None = None  # Caffe's getter: 0 (never)
    average_loss: PosInt = 1
    max_iter: NonNegInt | None = None  # Caffe's getter: 0
    iter_size: PosInt = 1
    lr_policy: LrPolicy | None = None
    gamma: NonNegFloat | None = None
    power: float | None = None
    stepsize: PosInt | None = None
    stepvalue: Repeated(NonNegInt) = ()
    # netc extension: linear warmup multiplied onto any policy.
    warmup_iter: NonNegInt = 0
    warmup_start_factor: Annotated[float, Field(ge=0, le=1)] = 0.0

    # --- the update rule -------------------------------------------------------------------------
    momentum: Fraction | None = None  # Caffe's getter: 0
    weight_decay: NonNegFloat | None = None  # Caffe's getter: 0
    regularization_type: Literal["L2", "L1"] = "L2"
    clip_gradients: float = -1.0
    type: SolverType = "SGD"
    delta: NonNegFloat = 1e-8
    momentum2: Fraction = 0.999
    rms_decay: Fraction = 0.99
    solver_type: DeprecatedSolverType | None = None  # deprecated; Caffe's default is SGD

    # --- snapshots and the rest ------------------------------------------------------------------
    snapshot: NonNegInt = 0
    snapshot_prefix: str | None = None
    snapshot_diff: bool = False
    snapshot_format: Literal["HDF5", "BINARYPROTO"] = "BINARYPROTO"
    snapshot_after_train: bool = True
    solver_mode: Literal["CPU", "GPU"] = "GPU"  # accepted, ignored: JAX picks the device
    device_id: NonNegInt = 0
    random_seed: Annotated[int, Field(ge=-1, le=2**63 - 1)] = -1
    debug_info: bool = False
    layer_wise_reduce: bool = True

    @property
    def solver(self) -> str:
        """The effective solver type: ``type``, or the deprecated ``solver_type`` upgraded."""
        if self.solver_type is not None and "type" not in self.model_fields_set:
            return SOLVER_TYPE_NAMES[self.solver_type]
        return self.type

    @model_validator(mode="after")
    def _check(self) -> SolverParameter:
        if self.net is not None and self.train_net is not None:
            raise ValueError("give the train net once: 'net' or 'train_net', not both")
        if self.solver_type is not None and "type" in self.model_fields_set:
            raise ValueError(
                "solver_type (deprecated enum) and type cannot both be given; use type"
            )
        if self.base_lr is None:
            raise ValueError("base_lr is required (Caffe would train with a rate of 0)")
        if self.lr_policy is None:
            raise ValueError(
                "lr_policy is required: one of " + ", ".join(repr(p) for p in POLICY_NEEDS)
            )
        policy = self.lr_policy
        for need in POLICY_NEEDS[policy]:
            value = getattr(self, need)
            if value is None or value == () or (need == "max_iter" and value == 0):
                raise ValueError(f"lr_policy '{policy}' needs {need}")
        if policy == "multistep":
            sv = self.stepvalue
            if any(b <= a for a, b in zip(sv, sv[1:])):
                raise ValueError(
                    f"stepvalue must be strictly increasing for lr_policy 'multistep', got {list(sv)}"
                )
        solver = self.solver
        if solver in ("AdaGrad", "RMSProp") and self.momentum:
            raise ValueError(f"momentum cannot be used with type '{solver}' (Caffe refuses it)")
        return self

    def resolved(self) -> SolverParameter:
        """A copy holding the values Caffe's getters return for fields the spec left out:
        ``momentum`` / ``weight_decay`` / ``gamma`` / ``power`` 0, ``display`` / ``max_iter`` 0, and ``type`` upgraded from
        the deprecated ``solver_type``. String fields stay ``None``."""
        fill = {
            "momentum": 0.0,
            "weight_decay": 0.0,
            "gamma": 0.0,
            "power": 0.0,
            "display": 0,
            "max_iter": 0,
        }
        update = {k: v for k, v in fill.items() if getattr(self, k) is None}
        if self.solver != self.type:
            update["type"] = self.solver
            update["solver_type"] = None
        return self.model_copy(update=update)
