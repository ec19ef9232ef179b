"""How much memory training a plan needs, estimated from its shapes alone (no JAX), and the limits
`netc check` and `netc train` hold it to.

    est = estimate(plan, "Adam")              # MemoryEstimate: bytes per part, the batch used
    est.summary()                             # "training memory ≈ 1.2 GiB at batch 64: params ..."
    check_memory(spec, plans)                 # errors / warnings into spec.diagnostics (netc check)
    refusal(plan, "SGD", available_bytes())   # None, or why `netc train` must not start

The model (float32 everywhere, as netc trains):

- params: every learned blob once (shared blobs once); frozen blobs (``lr_mult: 0``) included, since
  they sit in the parameter tree the step differentiates;
- gradients: one per learned blob (two with ``iter_size > 1``: the micro-batch's and the sum);
- solver state: ``histories`` blobs per learned blob, read from the solver registry
  (``SOLVER_TYPES[type].histories``: SGD, Nesterov, AdaGrad, RMSProp 1; AdaDelta, Adam, AdamW 2);
- layer state: blobs a layer updates itself (BatchNorm's statistics);
- activations kept for the backward pass, at the batch: every top of the forward pass, in-place
  tops included (JAX arrays are immutable: ReLU "in place" still makes a new buffer and the backward
  keeps the blob before and after it), plus the backward's working set, the gradients of the
  largest top and of the blob under it (2 × the largest top);
- inputs: one more copy of the data layers' tops (the host batch that the feed hands over; with
  ``iter_size > 1`` all micro-batches).

Checked against XLA's own buffer assignment (``jit(step).lower(...).compile().memory_analysis()``,
an SGD step on CPU at batch 2): VGG16 8 % under, ResNet-50 (Caffe, BatchNorm+Scale+ReLU chains)
within 5 %; LeNet 2× under, since its small convolutions are lowered as im2col and their patch
matrices are not modelled (a few MiB there). Not counted: the process itself (Python, jaxlib and
XLA's compiled code: ~0.3–0.5 GiB of RSS on a CPU), the TEST net's activations (run between training
steps, at their own batch) and the checkpoint being written. XLA may recompute or fuse what the
model counts as kept, and convolution algorithms may take workspace it does not count; treat the
figure as good to a few tens of percent, not to the byte.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from netc.compiler.layer import MAX_ELEMENTS

__all__ = ["MAX_BYTES", "MemoryEstimate", "available_bytes", "check_memory", "estimate", "estimate_for",
           "fmt_bytes", "machine_memory", "refusal"]

ITEMSIZE = 4  # float32
# No machine netc runs on holds more than this (4 TiB; the largest accelerators hold under 200 GiB):
# a net whose training needs more is an error, not a warning, in `netc check`.
MAX_BYTES = MAX_ELEMENTS * ITEMSIZE
# When the solver type is unknown to the registry (no `histories`), assume the most a built-in keeps.
DEFAULT_HISTORIES = 2


def fmt_bytes(n: float) -> str:
    """1.2 GiB, 512 B: binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def histories(solver_type: str) -> int:
    """History blobs per parameter that `solver_type` keeps (the solver registry's entry)."""
    from netc.spec.solver import SOLVER_TYPES

    info = SOLVER_TYPES.get(solver_type)
    n = getattr(info, "histories", None)
    return DEFAULT_HISTORIES if n is None else n


@dataclass(frozen=True)
class MemoryEstimate:
    """The training memory of one plan, in bytes per part (see the module docstring's model)."""

    batch: int | None  # the batch the activations are counted at; None: per sample (symbolic)
    solver_type: str
    histories: int
    params: int
    gradients: int
    solver_state: int
    layer_state: int
    activations: int
    inputs: int
    activation_layer: tuple[str, int] | None  # (layer, bytes of its tops): the largest
    param_layer: tuple[str, int] | None  # (layer, bytes of the blobs it owns): the largest
    per_sample: int  # activations + inputs of one sample: what one less sample of batch saves

    @property
    def total(self) -> int:
        return (self.params + self.gradients + self.solver_state + self.layer_state
                + self.activations + self.inputs)

    @property
    def fixed(self) -> int:
        """What does not scale with the batch."""
        return self.params + self.gradients + self.solver_state + self.layer_state

    def at(self) -> str:
        return f"at batch {self.batch}" if self.batch is not None else "per sample"

    def summary(self) -> str:
        parts = [f"params {fmt_bytes(self.params)}",
                 f"solver state {fmt_bytes(self.solver_state)} ({self.solver_type})",
                 f"gradients {fmt_bytes(self.gradients)}"]
        if self.layer_state:
            parts.append(f"layer state {fmt_bytes(self.layer_state)}")
        parts.append(f"activations {fmt_bytes(self.activations)}")
        parts.append(f"inputs {fmt_bytes(self.inputs)}")
        return f"training memory ≈ {fmt_bytes(self.total)} {self.at()}: " + ", ".join(parts)

    def to_json(self) -> dict:
        return {"total": self.total, "batch": self.batch, "per_sample": self.batch is None,
                "solver_type": self.solver_type, "histories": self.histories,
                "params": self.params, "solver_state": self.solver_state,
                "gradients": self.gradients, "layer_state": self.layer_state,
                "activations": self.activations, "inputs": self.inputs,
                "largest_activations": _named(self.activation_layer),
                "largest_params": _named(self.param_layer)}

    def advice(self, limit: int) -> str:
        """What to change so that the estimate fits in `limit` bytes: the batch (the largest that
        fits) when the activations dominate, else the layer whose parameters do."""
        act, par = self.activation_layer, self.param_layer
        if self.activations + self.inputs >= self.fixed and self.batch is not None:
            fits = (limit - self.fixed) // self.per_sample if self.per_sample else 0
            what = (f"reduce the batch size ({self.batch}; at most {fits:,} would fit)" if fits >= 1
                    else f"reduce the batch size ({self.batch}) and the net: even batch 1 does not fit")
            if act is not None:
                what += f"; layer '{act[0]}' holds the largest activations ({fmt_bytes(act[1])})"
            return what
        if par is not None:
            return (f"shrink layer '{par[0]}', whose parameters dominate ({fmt_bytes(par[1])} of "
                    f"{fmt_bytes(self.params + self.layer_state)})"
                    + (f", or use a solver with fewer histories than {self.solver_type}'s "
                       f"{self.histories}" if self.histories > 1 else ""))
        return "reduce the batch size or the net"


def _named(pair):
    return None if pair is None else {"layer": pair[0], "bytes": pair[1]}


def _elements(shape) -> int:
    """Elements of a blob; a symbolic dimension (the batch "N") counts 1, i.e. per sample."""
    return math.prod(d if isinstance(d, int) else 1 for d in shape)


def _batch(plan) -> int | None:
    dims = [plan.blobs[b][0] for b in plan.inputs if len(plan.blobs[b])]
    if not dims or any(not isinstance(d, int) for d in dims):
        return None
    return max(dims)


def estimate(plan, solver_type: str = "SGD", *, iter_size: int = 1) -> MemoryEstimate:
    """The training memory of `plan` with `solver_type`, at the batch in its shapes (the data
    layers' batch_size, or --batch; per sample when the batch is symbolic)."""
    learned = state = 0
    owned: dict[str, int] = {}
    seen = set()
    for pl in plan.layers:
        for role, decl in pl.params.items():
            owner = pl.param_owner[role]
            if owner in seen:
                continue
            seen.add(owner)
            size = decl.count * ITEMSIZE
            if decl.learned:
                learned += size
            else:
                state += size
            owned[owner[0]] = owned.get(owner[0], 0) + size
    acts = inputs = largest = 0
    per_layer: dict[str, int] = {}
    rewritten = set()  # blobs some in-place layer writes: one more buffer each, however long the chain
    for pl in plan.layers:
        for t, s, inplace in zip(pl.tops, pl.top_shapes, pl.in_place):
            size = _elements(s) * ITEMSIZE
            if inplace and t in rewritten:
                continue
            rewritten.update([t] if inplace else [])
            acts += size
            per_layer[pl.name] = per_layer.get(pl.name, 0) + size
            largest = max(largest, size)
            inputs += size if pl.unit.is_data else 0
    acts += 2 * largest
    batch = _batch(plan)
    n = histories(solver_type)
    return MemoryEstimate(
        batch=batch, solver_type=solver_type, histories=n,
        params=learned, gradients=learned * (2 if iter_size > 1 else 1), solver_state=n * learned,
        layer_state=state, activations=acts, inputs=inputs * iter_size,
        activation_layer=max(per_layer.items(), key=lambda kv: kv[1], default=None),
        param_layer=max(owned.items(), key=lambda kv: kv[1], default=None),
        per_sample=(acts + inputs * iter_size) // (batch or 1))


# --- the machine ------------------------------------------------------------------------------


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (POSIX sysconf), or None where it cannot tell."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def available_bytes(device=None) -> int | None:
    """What a run can use: the accelerator's memory when `device` (a jax Device) reports a limit
    (GPU, TPU), else the machine's physical memory (CPU)."""
    if device is not None:
        try:
            stats = device.memory_stats() or {}
        except Exception:  # a backend without memory_stats
            stats = {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    return machine_memory()


# --- the limits -------------------------------------------------------------------------------


def _solver_type(spec) -> str:
    solver = getattr(spec, "solver", None)
    if solver is None:
        return "SGD"
    try:
        return solver.resolved().type
    except Exception:  # an invalid solver is reported elsewhere
        return getattr(solver, "type", None) or "SGD"


def estimate_for(spec, plan) -> MemoryEstimate:
    """`estimate` with the spec's own solver (type and iter_size); SGD when it has none."""
    solver = getattr(spec, "solver", None)
    iter_size = int(getattr(solver, "iter_size", 1) or 1) if solver is not None else 1
    return estimate(plan, _solver_type(spec), iter_size=iter_size)


def _meant_for_training(spec, plan) -> bool:
    return getattr(spec, "solver", None) is not None or plan.has_loss


def _batch_path(plan, est: MemoryEstimate, diags) -> tuple:
    """Where the warning points: the data layer's batch_size when the activations dominate,
    else the layer whose parameters dominate."""
    if est.activations + est.inputs >= est.fixed:
        for pl in plan.layers:
            if pl.unit.is_data:
                for path in diags.positions:
                    if path[:len(pl.path)] == tuple(pl.path) and path and path[-1] == "batch_size":
                        return path
                return pl.path
    name = est.param_layer[0] if est.param_layer else None
    return next((pl.path for pl in plan.layers if pl.name == name), ("layers",))


def check_memory(spec, plan, *, solver_type: str | None = None, limit: int | None = None,
                 iter_size: int = 1) -> MemoryEstimate:
    """Estimate `plan`'s training memory and report, in `spec.diagnostics`: an error when the
    parameters hold more than MAX_ELEMENTS elements, or a net meant for training (a solver or a
    loss) needs more than MAX_BYTES; a warning when it needs more than `limit` (default: this
    machine's memory). Returns the estimate."""
    diags = spec.diagnostics
    est = (estimate_for(spec, plan) if solver_type is None
           else estimate(plan, solver_type, iter_size=iter_size))
    limit = machine_memory() if limit is None else limit
    elements = (est.params + est.layer_state) // ITEMSIZE
    training = _meant_for_training(spec, plan)
    need = est.total if training else est.params + est.layer_state
    what = est.summary() if training else f"its parameters need {fmt_bytes(need)}"
    path = _batch_path(plan, est, diags)
    if elements > MAX_ELEMENTS:
        diags.error(f"the net has {elements:,} parameters, more than netc allows "
                    f"({MAX_ELEMENTS:,}, {fmt_bytes(MAX_BYTES)} as float32): "
                    + est.advice(MAX_BYTES), path)
    elif need > MAX_BYTES:
        diags.error(f"{what}; more than any machine netc runs on holds ({fmt_bytes(MAX_BYTES)}): "
                    + est.advice(MAX_BYTES), path)
    elif limit is not None and need > limit:
        diags.warning(f"{what}; more than this machine's memory ({fmt_bytes(limit)}), so netc "
                      f"train would refuse it here: " + est.advice(limit), path)
    return est


def refusal(plan, solver_type: str, available: int | None, *, iter_size: int = 1) -> str | None:
    """Why `netc train` must not start `plan` (its estimate exceeds `available` bytes), or None.
    Called before anything is allocated."""
    est = estimate(plan, solver_type, iter_size=iter_size)
    if available is None or est.total <= available:
        return None
    return (f"{est.summary()}; more than the {fmt_bytes(available)} this run can use, so "
            f"training would run out of memory: {est.advice(available)}")
