"""Caffe's solvers (SGDSolver::ApplyUpdate and its subclasses) as an optax GradientTransformation.

netc implements Caffe's update rule itself instead of using ``optax.sgd``: Caffe keeps the
*learning rate inside* the momentum buffer (``history = momentum * history + lr * grad``), so a
learning-rate drop takes effect gradually as the old, larger steps decay away, while optax and
PyTorch keep ``lr`` outside the buffer (``w -= lr * (momentum * buf + grad)``) and a drop acts at
once. The two agree only while the rate is constant, so a Caffe schedule replayed through optax
trains a different model.

The order is Caffe's: ClipGradients (global L2 norm) -> Normalize (1 / iter_size; the trainer
passes the *sum* of its micro-batch gradients) -> Regularize (L2 or L1, ``weight_decay *
decay_mult``) -> ComputeUpdateValue (``local_rate = lr(iter) * lr_mult``). The optimizer state is a
dict of arrays only (``iter``: int32 scalar; ``history``, and ``history2`` for AdaDelta / Adam /
AdamW, shaped like the params), so it checkpoints as flat tensors and the schedule runs inside
``jit``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from netc.spec.solver import SolverParameter

# Solvers that keep a second history blob (Caffe's history_[param_id + net_params.size()]).
_TWO_HISTORIES = ("AdaDelta", "Adam", "AdamW")


@functools.lru_cache(maxsize=64)
def _resolved(sp: SolverParameter) -> SolverParameter:
    return sp.resolved()


def learning_rate(sp: SolverParameter, it: Any) -> Any:
    """Caffe's SGDSolver::GetLearningRate at iteration ``it`` (0 for the first update), times
    netc's linear warmup factor.

    A Python int gives a Python float (computed in float64); a JAX integer (traced inside ``jit``
    or not) gives a scalar array of JAX's default float dtype.
    """
    r = _resolved(sp)
    if isinstance(it, bool | np.bool_):
        raise TypeError("learning_rate wants an integer iteration, not a bool")
    if isinstance(it, int | np.integer):
        xp, n = np, np.int64(it)
        t = np.float64(it)
    else:
        xp, n = jnp, jnp.asarray(it)
        if not jnp.issubdtype(n.dtype, jnp.integer):
            raise TypeError(f"learning_rate wants an integer iteration, got {n.dtype}")
        t = n.astype(jnp.result_type(float))

    base, gamma, power = r.base_lr, r.gamma, r.power
    policy = r.lr_policy
    if policy == "fixed":
        rate = base + 0.0 * t
    elif policy == "step":
        rate = base * xp.power(gamma, (n // r.stepsize).astype(t.dtype))
    elif policy == "exp":
        rate = base * xp.power(gamma, t)
    elif policy == "inv":
        rate = base * xp.power(1.0 + gamma * t, -power)
    elif policy == "multistep":
        # Caffe advances current_step by one whenever iter >= stepvalue[current_step]; it visits
        # every iteration and stepvalue is strictly increasing (validated), so current_step is
        # the number of stepvalues <= iter.
        steps = xp.asarray(r.stepvalue, dtype=n.dtype).reshape((-1,) + (1,) * xp.ndim(n))
        rate = base * xp.power(gamma, xp.sum(steps <= n, axis=0).astype(t.dtype))
    elif policy == "poly":
        # 1 - iter/max_iter, written as (max_iter - iter)/max_iter: exact near the end in float32
        rate = base * xp.power((r.max_iter - n).astype(t.dtype) / r.max_iter, power)
    elif policy == "sigmoid":
        rate = base * (1.0 / (1.0 + xp.exp(-gamma * (t - r.stepsize))))
    elif policy == "cosine":
        # 0.5 * (1 + cos(pi * x)) == sin(pi/2 * (1 - x))**2, which keeps float32 accuracy near the
        # end of the schedule (x = min(iter, max_iter) / max_iter).
        left = (r.max_iter - xp.minimum(n, r.max_iter)).astype(t.dtype) / r.max_iter
        rate = base * xp.square(xp.sin(0.5 * math.pi * left))
    else:  # pragma: no cover - the spec validator refuses other names
        raise ValueError(f"unknown lr_policy '{policy}'")

    if r.warmup_iter > 0:
        s = r.warmup_start_factor
        factor = xp.where(t < r.warmup_iter, s + (1.0 - s) * t / r.warmup_iter, 1.0)
        rate = rate * factor
    if xp is np:
        return float(rate)
    return rate.astype(t.dtype)


def _flat_floats(tree: Any, what: str) -> tuple[list[float], Any]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = []
    for x in leaves:
        v = float(x)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{what} must be finite and >= 0, got {v}")
        out.append(v)
    return out, treedef


def make_optimizer(
    sp: SolverParameter, lr_mult: Any, decay_mult: Any
) -> optax.GradientTransformation:
    """Caffe's solver ``sp.type`` (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam, netc's AdamW)
    with its schedule, clipping, iter_size normalisation and regularisation.

    ``lr_mult`` and ``decay_mult`` are pytrees of Python floats shaped like the params (nested
    dicts ``{layer: {role: ...}}``). ``update(grads, state, params)`` needs ``params`` and returns
    updates to *add* to them (``optax.apply_updates``). A leaf whose ``lr_mult`` is 0 gets an
    update of ``-0.0`` (so it stays bit-identical), keeps its history untouched and is left out of
    the clipping norm (Caffe computes no gradient for it, so its diff is 0).
    """
    r = sp.resolved()
    kind = r.type
    lrm, treedef = _flat_floats(lr_mult, "lr_mult")
    dcm, dtreedef = _flat_floats(decay_mult, "decay_mult")
    if dtreedef != treedef:
        raise ValueError(
            f"lr_mult and decay_mult have different structures: {treedef} vs {dtreedef}"
        )
    momentum, momentum2 = r.momentum, r.momentum2
    delta, rms_decay = r.delta, r.rms_decay
    weight_decay, l1 = r.weight_decay, r.regularization_type == "L1"
    clip, iter_size = r.clip_gradients, r.iter_size

    def check(tree: Any, what: str) -> list[Any]:
        leaves, td = jax.tree_util.tree_flatten(tree)
        if td != treedef:
            raise ValueError(f"{what} do not have the structure of lr_mult: {td} vs {treedef}")
        return leaves

    def init(params: Any) -> dict[str, Any]:
        check(params, "params")
        state = {
            "iter": jnp.zeros((), jnp.int32),
            "history": jax.tree_util.tree_map(jnp.zeros_like, params),
        }
        if kind in _TWO_HISTORIES:
            state["history2"] = jax.tree_util.tree_map(jnp.zeros_like, params)
        return state

    def update(grads: Any, state: dict[str, Any], params: Any = None) -> tuple[Any, dict]:
        if params is None:
            raise ValueError("Caffe's solvers need params in update(grads, state, params)")
        g = check(grads, "grads")
        w = check(params, "params")
        h = check(state["history"], "state['history']")
        h2 = check(state["history2"], "state['history2']") if kind in _TWO_HISTORIES else None
        it = state["iter"]
        rate = learning_rate(r, it)
        active = [i for i, m in enumerate(lrm) if m != 0.0]

        # ClipGradients: scale every diff by clip / ||g|| when the global L2 norm exceeds clip.
        if clip >= 0 and active:
            sumsq = sum(
                jnp.sum(jnp.square(g[i]), dtype=jnp.promote_types(g[i].dtype, jnp.float32))
                for i in active
            )
            norm = jnp.sqrt(sumsq)
            scale = jnp.where(norm > clip, clip / jnp.where(norm > 0, norm, 1.0), 1.0)
        else:
            scale = None

        if kind in ("Adam", "AdamW"):
            t = (it + 1).astype(rate.dtype)
            correction = jnp.sqrt(1.0 - jnp.power(momentum2, t)) / (1.0 - jnp.power(momentum, t))

        new_u, new_h = [], []
        new_h2 = [] if h2 is not None else None
        for i in range(len(w)):
            wi, hi = w[i], h[i]
            h2i = h2[i] if h2 is not None else None
            if lrm[i] == 0.0:
                new_u.append(jnp.full_like(wi, -0.0))
                new_h.append(hi)
                if new_h2 is not None:
                    new_h2.append(h2i)
                continue
            gi = g[i]
            if scale is not None:
                gi = gi * scale.astype(gi.dtype)
            if iter_size != 1:  # Normalize
                gi = gi * (1.0 / iter_size)
            local_decay = weight_decay * dcm[i]
            decay_term = None
            if local_decay:  # Regularize (AdamW: decoupled, applied after the Adam step)
                decay_term = local_decay * (jnp.sign(wi) if l1 else wi)
                if kind != "AdamW":
                    gi = gi + decay_term
            local_rate = (rate * lrm[i]).astype(gi.dtype)

            if kind == "SGD":
                hi = momentum * hi + local_rate * gi
                step = hi
            elif kind == "Nesterov":
                h_old = hi
                hi = momentum * hi + local_rate * gi
                step = (1.0 + momentum) * hi - momentum * h_old
            elif kind == "AdaGrad":
                hi = hi + gi * gi
                step = local_rate * (gi / (jnp.sqrt(hi) + delta))
            elif kind == "RMSProp":
                hi = rms_decay * hi + (1.0 - rms_decay) * (gi * gi)
                step = local_rate * (gi / (jnp.sqrt(hi) + delta))
            elif kind == "AdaDelta":
                hi = momentum * hi + (1.0 - momentum) * (gi * gi)
                u = gi * jnp.sqrt((h2i + delta) / (hi + delta))
                h2i = momentum * h2i + (1.0 - momentum) * (u * u)
                step = local_rate * u
            elif kind in ("Adam", "AdamW"):
                hi = momentum * hi + (1.0 - momentum) * gi
                h2i = momentum2 * h2i + (1.0 - momentum2) * (gi * gi)
                adam = correction.astype(gi.dtype) * (hi / (jnp.sqrt(h2i) + delta))
                if kind == "AdamW" and decay_term is not None:
                    adam = adam + decay_term
                step = local_rate * adam
            else:  # pragma: no cover - the spec validator refuses other names
                raise ValueError(f"unknown solver type '{kind}'")

            new_u.append((-step).astype(wi.dtype))
            new_h.append(hi.astype(h[i].dtype))
            if new_h2 is not None:
                new_h2.append(h2i.astype(h2[i].dtype))

        unflat = functools.partial(jax.tree_util.tree_unflatten, treedef)
        new_state = {"iter": it + jnp.ones((), it.dtype), "history": unflat(new_h)}
        if new_h2 is not None:
            new_state["history2"] = unflat(new_h2)
        return unflat(new_u), new_state

    return optax.GradientTransformation(init, update)
