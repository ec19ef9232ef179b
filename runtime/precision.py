"""Mixed precision: the solver's ``precision`` (float32, bfloat16, float16) as one dtype policy.

The train step keeps float32 *master* parameters and optimizer state; inside the differentiated
function it casts the floating-point parameters and inputs to the compute dtype, so the forward
and backward run in it, and the gradients come out of the cast's VJP as float32 (their sum over
micro-batches, clipping and the update are float32). What loses too much in 8 (bfloat16) or 11
(float16) mantissa bits computes in float32 where the layers meet it, one place per concern:
losses and metrics read float32 bottoms (compiler/lower.py), softmax and the normalisation layers
(BatchNorm's statistics and running sums, LRN, MVN) widen their input and cast the result back
(``netc.compiler.layer.wide``). The test pass runs in the same compute dtype.

Inputs read as class indices (labels, token ids: a loss's or an Embed's ``label_fact``) are never
cast: a float label above 256 is not exact in bfloat16. The data pipeline gives them as int32
anyway.

float16's range is narrow (largest 65504, smallest normal 6.1e-5), so small gradients underflow:
the loss is multiplied by a dynamic scale before the backward and the gradients divided by it
after (the usual scheme of Micikevicius et al. 2018, PyTorch's GradScaler, jmp's
DynamicLossScale): the scale starts at 2**15; a step whose gradients are not all finite is
skipped (parameters, BatchNorm statistics and solver histories unchanged; the iteration counter
still advances, so the learning-rate schedule stays on Caffe's iteration numbers) and halves the
scale (not below 1); 2000 good steps in a row double it. The scale, the good-step count and the
number of skipped steps live in the optimizer state under ``loss_scale``, so a checkpoint holds
them and a resumed run is exact. bfloat16 has float32's range and needs no scaling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "Policy",
    "policy",
    "with_loss_scale",
    "loss_scale",
    "skip_if_nonfinite",
    "INIT_SCALE",
    "GROWTH_INTERVAL",
    "cpu_bfloat16_units",
]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
INIT_SCALE = 2.0**15
GROWTH_INTERVAL = 2000  # good steps in a row before the scale doubles
MIN_SCALE = 1.0
KEY = "loss_scale"  # the optimizer state's entry for float16


# the CPU flags (Linux /proc/cpuinfo) of bfloat16 arithmetic: AVX-512 BF16, AMX's bfloat16 tiles,
# and AVX-NE-CONVERT (with AVX-VNNI-INT8, the AVX2-VNNI-2 of oneDNN's ISA list)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "avx_ne_convert")


def cpu_bfloat16_units(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU has bfloat16 arithmetic (one of BF16_FLAGS among its flags); None where
    that cannot be read (not Linux). Without it XLA computes a bfloat16 net through float32
    with a cast at every op, so `precision: bfloat16` runs slower than float32: on a 2-core AVX2
    VM 0.32-0.94x (bench/results/cpu/bf16-widened-2026-12-02)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return any(f in flags for f in BF16_FLAGS)
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class Policy:
    """Which dtype a net computes in, and which of its inputs keep theirs."""

    name: str = "float32"
    keep: frozenset = frozenset()  # input blobs read as indices: never cast

    @property
    def dtype(self) -> Any:
        return DTYPES[self.name]

    @property
    def mixed(self) -> bool:
        return self.name != "float32"

    @property
    def scaled(self) -> bool:
        """Whether the loss is scaled dynamically (float16)."""
        return self.name == "float16"

    def _cast(self, x: Any) -> Any:
        return x.astype(self.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    def cast_params(self, tree: Any) -> Any:
        """Every floating-point leaf in the compute dtype (a no-op for float32)."""
        return jax.tree_util.tree_map(self._cast, tree) if self.mixed else tree

    def cast_inputs(self, inputs: dict) -> dict:
        """The floating-point inputs in the compute dtype, except the index blobs."""
        if not self.mixed:
            return inputs
        return {k: (v if k in self.keep else self._cast(v)) for k, v in inputs.items()}


def _index_blobs(plan: Any) -> frozenset:
    """The data-layer tops of `plan` some layer reads as class indices (labels, token ids)."""
    from netc.runtime.data import DataError, label_requirements

    out = set()
    for top in (t for pl in plan.layers if pl.unit.is_data for t in pl.tops):
        try:
            need = label_requirements(plan, top)
        except DataError:  # its readers disagree (the trainer reports that): keep it exact
            out.add(top)
            continue
        if need is not None and need.kind == "class":
            out.add(top)
    return frozenset(out)


def policy(name: str = "float32", plan: Any = None) -> Policy:
    """The policy for the solver's ``precision``; `plan` names the index inputs to keep."""
    if name not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "float32" or plan is None:
        return Policy(name)
    return Policy(name, _index_blobs(plan))


# --- float16's dynamic loss scale -----------------------------------------------------------------


def _scale_init() -> dict[str, Any]:
    return {
        "scale": jnp.asarray(INIT_SCALE, jnp.float32),
        "good": jnp.zeros((), jnp.int32),
        "skipped": jnp.zeros((), jnp.int32),
    }


def with_loss_scale(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """`optimizer` whose state also holds the loss scale (``state["loss_scale"]``: scale, good
    steps in a row, skipped steps so far); its update passes the scale through unchanged (the
    train step updates it, see :func:`skip_if_nonfinite`)."""

    def init(params):
        return {**optimizer.init(params), KEY: _scale_init()}

    def update(grads, state, params=None):
        inner = {k: v for k, v in state.items() if k != KEY}
        updates, new = optimizer.update(grads, inner, params)
        return updates, {**new, KEY: state[KEY]}

    return optax.GradientTransformation(init, update)


def loss_scale(opt_state: Any) -> Any:
    """The current loss scale (a float32 scalar), or None when the loss is not scaled."""
    if isinstance(opt_state, dict) and KEY in opt_state:
        return opt_state[KEY]["scale"]
    return None


def unscale(grads: Any, scale: Any) -> tuple[Any, Any]:
    """(grads / scale, whether every gradient is finite)."""
    grads = jax.tree_util.tree_map(lambda g: g / scale.astype(g.dtype), grads)
    finite = jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)])
    )
    return grads, finite


def _next_scale(s: dict[str, Any], finite: Any) -> dict[str, Any]:
    good = jnp.where(finite, s["good"] + 1, 0)
    grow = good >= GROWTH_INTERVAL
    scale = jnp.where(
        finite,
        jnp.where(grow, s["scale"] * 2.0, s["scale"]),
        jnp.maximum(s["scale"] * 0.5, MIN_SCALE),
    )
    return {
        "scale": scale,
        "good": jnp.where(grow, 0, good).astype(jnp.int32),
        "skipped": s["skipped"] + jnp.where(finite, 0, 1).astype(jnp.int32),
    }


def skip_if_nonfinite(finite: Any, old: tuple, new: tuple) -> tuple:
    """The step's (params, state, opt_state): `new` when the gradients were finite, else `old`
    (but for the iteration counter, which advances), with the loss scale updated."""
    keep = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, b, a), old, new)
    params, state, opt_state = keep
    opt_state = {**opt_state, "iter": new[2]["iter"], KEY: _next_scale(old[2][KEY], finite)}
    return params, state, opt_state
