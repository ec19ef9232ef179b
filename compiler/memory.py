"""How much memory training a plan needs, estimated from its shapes alone (no JAX), and the limits
`netc check` and `netc train` hold it to.

    est = estimate(plan, "Adam")              # MemoryEstimate: bytes per part, the batch used
    est.summary()                             # "training memory ≈ 1.2 GiB at batch 64: params ..."
    check_memory(spec, plan)                  # errors / warnings into spec.diagnostics (netc check)
    refusal(plan, "SGD", available_bytes())   # None, or why `netc train` must not start

The model (float32 everywhere, as netc trains):

- params: every learned blob once (shared blobs once); frozen blobs (``lr_mult: 0``) included, since
  they sit in the parameter tree the step differentiates;
- gradients: one per learned blob (two with ``iter_size > 1``: the micro-batch's and the sum);
- solver state: ``histories`` blobs per learned blob, read from the solver registry
  (``SOLVER_TYPES[type].histories``: SGD, Nesterov, AdaGrad, RMSProp 1; AdaDelta, Adam, AdamW 2);
- layer state: blobs a layer updates itself (BatchNorm's statistics);
- activations kept for the backward pass, at the batch: what a layer's backward saves beyond its
  tops (a recurrent layer's per-step gate pre-activations and states: Layer.saved_elements), and
  every top of the forward pass, in-place
  tops included (JAX arrays are immutable: ReLU "in place" still makes a new buffer and the backward
  keeps the blob before and after it), plus the backward's working set, the gradients of the
  largest top and of the blob under it (2 × the largest top);
- inputs: one more copy of the data layers' tops (the host batch that the feed hands over; with
  ``iter_size > 1`` all micro-batches).

A net not meant for training (no solver, no loss) is held to its inference memory instead: params,
layer state, every forward top (the lowering returns them all) and the inputs.

Checked against reality (an SGD step on a CPU; `python bench/train_memory.py SPEC BATCH`):

- XLA's own buffer assignment (``jit(step).lower(...).compile().memory_analysis()``, arguments +
  temporaries): VGG16 at batch 2 / 8: 1.8 / 2.6 GiB estimated, 1.9 / 2.7 GiB by XLA (−2 %, −3 %);
  ResNet-50 (Caffe, BatchNorm+Scale+ReLU chains) 555 MiB / 1.3 GiB, XLA 565 MiB / 1.3 GiB (−2 %,
  −3 %). LeNet 15.7 MiB against 31.4 MiB: its small convolutions are lowered as im2col and the patch
  matrices (~12 MiB at batch 64) are not modelled.
- Peak RSS of three real steps, less the process before the net (Python + jaxlib, 0.21 GiB):
  VGG16 batch 2 / 8: 2.2 / 3.3 GiB (estimate 1.8 / 2.6); ResNet-50 batch 4 / 8: 1.3 / 1.8 GiB
  (estimate 0.8 / 1.3). The gap is near constant, 0.35–0.7 GiB, rather than a ratio: compiling the
  step (LeNet's step adds 0.22 GiB of RSS for its 16 MiB), Eigen's convolution scratch outside XLA's
  buffers, the allocator. `netc train models/lenet.yaml --max-iter 5` peaks at 0.55 GiB RSS in all.

Not counted: the process itself (~0.2–0.5 GiB), the TEST net's activations (run between training
steps, at their own batch), the checkpoint being written, workspace a convolution algorithm takes.
Treat the figure as what the net's own buffers take, a lower bound for the process: `netc train`
refuses what cannot fit even so, and a run within ~0.5 GiB of the limit may still run out.
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
    """The memory of one plan, in bytes per part (see the module docstring's model). The parts
    sum to `total`, the training memory; `inference` is what a forward pass alone holds (params,
    layer state, every top, the inputs), the figure for a net not meant for training."""

    batch: int | None  # the batch the activations are counted at; None: per sample (symbolic)
    solver_type: str
    histories: int
    params: int
    gradients: int
    solver_state: int
    layer_state: int
    activations: int  # kept for the backward: the forward tops + the backward's working set
    inputs: int
    forward: int  # the forward tops alone (part of `activations`)
    activation_layer: tuple[str, int] | None  # (layer, bytes of its tops): the largest
    param_layer: tuple[str, int] | None  # (layer, bytes of the blobs it owns): the largest

    @property
    def total(self) -> int:
        return self.fixed() + self.activations + self.inputs

    @property
    def inference(self) -> int:
        return self.fixed(training=False) + self.forward + self.inputs

    def fixed(self, training: bool = True) -> int:
        """What does not scale with the batch."""
        own = self.params + self.layer_state
        return own + (self.gradients + self.solver_state if training else 0)

    def scaled(self, training: bool = True) -> int:
        """What scales with the batch."""
        return (self.activations if training else self.forward) + self.inputs

    def at(self) -> str:
        return f"at batch {self.batch}" if self.batch is not None else "per sample"

    def summary(self, training: bool = True) -> str:
        if not training:
            return (f"inference memory ≈ {fmt_bytes(self.inference)} {self.at()}: params "
                    f"{fmt_bytes(self.params + self.layer_state)}, activations "
                    f"{fmt_bytes(self.forward)}, inputs {fmt_bytes(self.inputs)}")
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
                "inference": self.inference,
                "largest_activations": _named(self.activation_layer),
                "largest_params": _named(self.param_layer)}

    def batch_dominates(self, training: bool = True) -> bool:
        return self.scaled(training) >= self.fixed(training)

    def advice(self, limit: int, training: bool = True) -> str:
        """What to change so that the estimate fits in `limit` bytes: the batch (the largest that
        fits) when the activations dominate, else the layer whose parameters do."""
        act, par = self.activation_layer, self.param_layer
        if self.batch_dominates(training) and self.batch is not None:
            per_sample = self.scaled(training) / self.batch
            fits = int((limit - self.fixed(training)) // per_sample) if per_sample else 0
            what = (f"reduce the batch size ({self.batch}; at most {fits:,} would fit)" if fits >= 1
                    else f"reduce the batch size ({self.batch}) and the net: even batch 1 does not fit")
            if act is not None:
                what += f"; layer '{act[0]}' holds the largest activations ({fmt_bytes(act[1])})"
            return what
        if par is not None:
            return (f"shrink layer '{par[0]}', whose parameters dominate ({fmt_bytes(par[1])} of "
                    f"{fmt_bytes(self.params + self.layer_state)})"
                    + (f", or use a solver with fewer histories than {self.solver_type}'s "
                       f"{self.histories}" if training and self.histories > 1 else ""))
        return "reduce the batch size or the net"


def _named(pair):
    return None if pair is None else {"layer": pair[0], "bytes": pair[1]}


def _elements(shape) -> int:
    """Elements of a blob; a symbolic dimension (the batch "N") counts 1, i.e. per sample."""
    return math.prod(d if isinstance(d, int) else 1 for d in shape)


def _batch(plan) -> int | None:
    """The inputs' batch, read on each input's batch axis (axis 1 of a time-major T×N×… blob);
    None when it is symbolic (the estimate is then per sample) or no input has one."""
    size = plan.batch_size
    return size if isinstance(size, int) else None


def estimate(plan, solver_type: str = "SGD", *, iter_size: int = 1) -> MemoryEstimate:
    """The training memory of `plan` with `solver_type`, at the batch in its shapes (the data
    layers' batch_size, or --batch; per sample when the batch is symbolic)."""
    learned = state = 0
    owned: dict[str, int] = {}
    for _, _, owner, decl in plan.unique_params():
        size = decl.count * ITEMSIZE
        if decl.learned:
            learned += size
        else:
            state += size
        owned[owner[0]] = owned.get(owner[0], 0) + size
    acts = inputs = largest = kept = 0  # kept: what backward passes save beyond the tops
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
        saved = pl.unit.saved_elements(pl.bottom_shapes, pl.top_shapes) * ITEMSIZE
        kept += saved
        per_layer[pl.name] = per_layer.get(pl.name, 0) + saved
    forward, acts = acts, acts + kept + 2 * largest
    batch = _batch(plan)
    n = histories(solver_type)
    return MemoryEstimate(
        batch=batch, solver_type=solver_type, histories=n,
        params=learned, gradients=learned * (2 if iter_size > 1 else 1), solver_state=n * learned,
        layer_state=state, activations=acts, inputs=inputs * iter_size, forward=forward,
        activation_layer=max(per_layer.items(), key=lambda kv: kv[1], default=None),
        param_layer=max(owned.items(), key=lambda kv: kv[1], default=None))


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


def _warning_path(plan, est: MemoryEstimate, training: bool, diags) -> tuple:
    """Where a memory problem points: the data layer's batch_size when the activations dominate,
    else the layer whose parameters do."""
    if est.batch_dominates(training):
        for pl in plan.layers:
            if pl.unit.is_data:
                n = len(pl.path)
                for path in diags.positions:
                    if len(path) > n and path[-1] == "batch_size" and path[:n] == tuple(pl.path):
                        return path
                return pl.path
    name = est.param_layer[0] if est.param_layer else None
    return next((pl.path for pl in plan.layers if pl.name == name), ("layers",))


def check_memory(spec, plan, *, limit: int | None = None) -> MemoryEstimate:
    """Estimate `plan`'s memory with the spec's solver and report, in `spec.diagnostics`: an error
    when the parameters hold more than MAX_ELEMENTS elements, or when the net needs more than
    MAX_BYTES; a warning when it needs more than `limit` (default: this machine's memory). A net
    meant for training (a solver or a loss) is held to its training memory, any other net to its
    inference memory. Returns the estimate."""
    diags = spec.diagnostics
    est = estimate_for(spec, plan)
    limit = machine_memory() if limit is None else limit
    elements = (est.params + est.layer_state) // ITEMSIZE
    training = _meant_for_training(spec, plan)
    need = est.total if training else est.inference
    if elements > MAX_ELEMENTS:
        diags.error(f"the net has {elements:,} parameters, more than netc allows "
                    f"({MAX_ELEMENTS:,}, {fmt_bytes(MAX_BYTES)} as float32): "
                    + est.advice(MAX_BYTES, training), _warning_path(plan, est, training, diags))
    elif need > MAX_BYTES:
        diags.error(f"{est.summary(training)}; more than any machine netc runs on holds "
                    f"({fmt_bytes(MAX_BYTES)}): " + est.advice(MAX_BYTES, training),
                    _warning_path(plan, est, training, diags))
    elif limit is not None and need > limit:
        run = "netc train would refuse it here" if training else "it would not run here"
        diags.warning(f"{est.summary(training)}; more than this machine's memory "
                      f"({fmt_bytes(limit)}), so {run}: " + est.advice(limit, training),
                      _warning_path(plan, est, training, diags))
    return est


def refusal(plan, solver_type: str, available: int | None, *, iter_size: int = 1) -> str | None:
    """Why `netc train` must not start `plan` (its estimate exceeds `available` bytes), or None.
    Called before anything is allocated."""
    est = estimate(plan, solver_type, iter_size=iter_size)
    if available is None or est.total <= available:
        return None
    return (f"{est.summary()}; more than the {fmt_bytes(available)} this run can use, so "
            f"training would run out of memory: {est.advice(available)}")
