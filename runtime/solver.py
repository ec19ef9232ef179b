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

Each solver type is one :class:`SolverRule` in :data:`SOLVERS` (Caffe has one class per type,
each overriding ComputeUpdateValue); each lr_policy is one function in :data:`LR_POLICIES`. A new
solver is one call::

    register_solver(SolverRule(
        "SignSGD", "sign descent: w -= lr * sign(g)", reads=(), histories=(),
        update=lambda g, hs, local_rate, ctx: (local_rate * jnp.sign(g), hs)))

which also makes ``type: SignSGD`` valid in specs (``netc.spec.solver.SOLVER_TYPES``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from netc.spec.solver import (
    SOLVER_TYPES,
    SolverParameter,
    SolverTypeInfo,
    register_solver_type,
    unregister_solver_type,
)

# --- the update rules ------------------------------------------------------------------------------


class UpdateContext(NamedTuple):
    """What an update rule may read besides the gradient, its histories and its rate."""

    w: Any  # the parameter (before the update)
    sp: SolverParameter  # the resolved solver (momentum, momentum2, delta, rms_decay, ...)
    t: Any  # the 1-based iteration as a float scalar (Adam's bias correction)
    decay: Any  # decoupled_decay rules: weight_decay * decay_mult * (w or sign(w)), else None


@dataclass(frozen=True)
class SolverRule:
    """One solver type: Caffe's ComputeUpdateValue for one parameter.

    ``update(g, hs, local_rate, ctx) -> (step, new_hs)``: ``g`` is the clipped, normalised and
    (unless ``decoupled_decay``) regularised gradient, ``hs`` the tuple of this parameter's
    histories (one per name in ``histories``), ``local_rate = lr(iter) * lr_mult``; the parameter
    moves by ``-step``. ``reads`` names the hyper-parameters it uses (see
    :class:`netc.spec.solver.SolverTypeInfo`)."""

    name: str
    summary: str
    reads: tuple[str, ...]
    histories: tuple[str, ...]
    update: Callable[[Any, tuple, Any, UpdateContext], tuple[Any, tuple]]
    decoupled_decay: bool = False

    @property
    def info(self) -> SolverTypeInfo:
        return SolverTypeInfo(self.name, self.summary, self.reads, len(self.histories))


def _sgd(g, hs, rate, c):
    h = c.sp.momentum * hs[0] + rate * g
    return h, (h,)


def _nesterov(g, hs, rate, c):
    m = c.sp.momentum
    h = m * hs[0] + rate * g
    return (1.0 + m) * h - m * hs[0], (h,)


def _adagrad(g, hs, rate, c):
    h = hs[0] + g * g
    return rate * (g / (jnp.sqrt(h) + c.sp.delta)), (h,)


def _rmsprop(g, hs, rate, c):
    d = c.sp.rms_decay
    h = d * hs[0] + (1.0 - d) * (g * g)
    return rate * (g / (jnp.sqrt(h) + c.sp.delta)), (h,)


def _adadelta(g, hs, rate, c):
    m, delta = c.sp.momentum, c.sp.delta
    h = m * hs[0] + (1.0 - m) * (g * g)
    u = g * jnp.sqrt((hs[1] + delta) / (h + delta))
    h2 = m * hs[1] + (1.0 - m) * (u * u)
    return rate * u, (h, h2)


def _adam(g, hs, rate, c):
    b1, b2 = c.sp.momentum, c.sp.momentum2
    correction = jnp.sqrt(1.0 - jnp.power(b2, c.t)) / (1.0 - jnp.power(b1, c.t))
    m = b1 * hs[0] + (1.0 - b1) * g
    v = b2 * hs[1] + (1.0 - b2) * (g * g)
    step = correction.astype(g.dtype) * (m / (jnp.sqrt(v) + c.sp.delta))
    if c.decay is not None:  # AdamW: the decay joins the Adam step, outside the moments
        step = step + c.decay
    return rate * step, (m, v)


_ONE, _TWO = ("history",), ("history", "history2")
SOLVERS: dict[str, SolverRule] = {}


def register_solver(rule: SolverRule) -> SolverRule:
    """Add a solver type: its update rule here and its name (``type:``) to the spec validator."""
    if rule.name in SOLVERS and SOLVERS[rule.name] != rule:
        raise ValueError(f"solver type {rule.name!r} is already registered")
    if "iter" in rule.histories or len(set(rule.histories)) != len(rule.histories):
        raise ValueError(f"{rule.name}: history names must be distinct and not 'iter'")
    register_solver_type(rule.info)
    SOLVERS[rule.name] = rule
    return rule


def unregister_solver(name: str) -> None:
    SOLVERS.pop(name, None)
    unregister_solver_type(name)


def _builtin(name: str, histories: tuple[str, ...], update: Callable, decoupled: bool = False):
    """A built-in rule: its summary and the hyper-parameters it reads are the spec's entry (the
    spec must know the built-in names without importing JAX)."""
    info = SOLVER_TYPES[name]
    return SolverRule(name, info.summary, info.reads, histories, update, decoupled)


for _rule in (
    _builtin("SGD", _ONE, _sgd),
    _builtin("Nesterov", _ONE, _nesterov),
    _builtin("AdaGrad", _ONE, _adagrad),
    _builtin("RMSProp", _ONE, _rmsprop),
    _builtin("AdaDelta", _TWO, _adadelta),
    _builtin("Adam", _TWO, _adam),
    _builtin("AdamW", _TWO, _adam, decoupled=True),
):
    register_solver(_rule)


# --- the learning-rate schedule -------------------------------------------------------------------


def _after_warmup(r: SolverParameter, n: Any, xp: Any, dtype: Any) -> Any:
    """poly/cosine's remaining fraction ``1 - x``, x = (clip(iter, W, M) - W) / (M - W), as
    (M - clip(iter, W, M)) / (M - W): exact near the end in float32."""
    w, m = r.warmup_iter, r.max_iter
    return (m - xp.clip(n, w, m)).astype(dtype) / (m - w)


def _multistep(r, n, t, xp):
    # Caffe advances current_step by one whenever iter >= stepvalue[current_step]; it visits every
    # iteration and stepvalue is strictly increasing (validated), so current_step is the number of
    # stepvalues <= iter.
    steps = xp.asarray(r.stepvalue, dtype=n.dtype).reshape((-1,) + (1,) * xp.ndim(n))
    return r.base_lr * xp.power(r.gamma, xp.sum(steps <= n, axis=0).astype(t.dtype))


def _cosine(r, n, t, xp):
    # 0.5 * (1 + cos(pi * x)) == sin(pi/2 * (1 - x))**2, which keeps float32 accuracy near the end.
    return r.base_lr * xp.square(xp.sin(0.5 * math.pi * _after_warmup(r, n, xp, t.dtype)))


# lr_policy -> rate(r, n, t, xp): r the resolved solver, n the integer iteration, t the same as a
# float, xp numpy or jax.numpy (Caffe's SGDSolver::GetLearningRate, plus netc's cosine).
LR_POLICIES: dict[str, Callable[[SolverParameter, Any, Any, Any], Any]] = {
    "fixed": lambda r, n, t, xp: r.base_lr + 0.0 * t,
    "step": lambda r, n, t, xp: r.base_lr * xp.power(r.gamma, (n // r.stepsize).astype(t.dtype)),
    "exp": lambda r, n, t, xp: r.base_lr * xp.power(r.gamma, t),
    "inv": lambda r, n, t, xp: r.base_lr * xp.power(1.0 + r.gamma * t, -r.power),
    "multistep": _multistep,
    "poly": lambda r, n, t, xp: r.base_lr * xp.power(_after_warmup(r, n, xp, t.dtype), r.power),
    "sigmoid": lambda r, n, t, xp: r.base_lr * (1.0 / (1.0 + xp.exp(-r.gamma * (t - r.stepsize)))),
    "cosine": _cosine,
}


@functools.lru_cache(maxsize=64)
def _resolved(sp: SolverParameter) -> SolverParameter:
    return sp.resolved()


def _iteration(it: Any) -> tuple[Any, Any, Any]:
    """(xp, n, t): numpy for a Python/numpy integer, jax.numpy for a JAX one."""
    if isinstance(it, bool | np.bool_):
        raise TypeError("learning_rate wants an integer iteration, not a bool")
    if isinstance(it, int | np.integer):
        return np, np.int64(it), np.float64(it)
    n = jnp.asarray(it)
    if not jnp.issubdtype(n.dtype, jnp.integer):
        raise TypeError(f"learning_rate wants an integer iteration, got {n.dtype}")
    return jnp, n, n.astype(jnp.result_type(float))


def learning_rate(sp: SolverParameter, it: Any) -> Any:
    """The learning rate at iteration ``it`` (0 for the first update): Caffe's
    SGDSolver::GetLearningRate, times netc's linear warmup factor.

    Warmup (``warmup_iter`` W > 0, ``warmup_start_factor`` s, default 1 / (W + 1)): the policy's
    rate is scaled by ``s + (1 - s) * it / W`` for ``it < W`` -- linear from ``s * base_lr`` at
    iteration 0 to ``base_lr`` at iteration W, so with the default s iteration ``it`` gets
    ``(it + 1) / (W + 1)`` and the first update is not wasted at rate 0 (nanoGPT's rule).
    ``poly`` and ``cosine`` decay over [W, max_iter] and hold 0 after max_iter; cosine with
    warmup is optax's ``warmup_cosine_decay_schedule(s * base_lr, base_lr, W, max_iter)``. The
    other policies count Caffe's absolute iterations.

    A Python int gives a Python float (computed in float64); a JAX integer (traced inside ``jit``
    or not) gives a scalar array of JAX's default float dtype.
    """
    r = _resolved(sp)
    xp, n, t = _iteration(it)
    rate = LR_POLICIES[r.lr_policy](r, n, t, xp)
    if r.warmup_iter > 0:
        s = r.warmup_start_factor
        factor = xp.where(t < r.warmup_iter, s + (1.0 - s) * t / r.warmup_iter, 1.0)
        rate = rate * factor
    if xp is np:
        return float(rate)
    return rate.astype(t.dtype)


# --- the optimizer ----------------------------------------------------------------------------------


def _flat_floats(tree: Any, what: str) -> tuple[list[float], Any]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = []
    for x in leaves:
        v = float(x)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{what} must be finite and >= 0, got {v}")
        out.append(v)
    return out, treedef


def _clip_scale(g: list[Any], active: list[int], clip: float) -> Any:
    """ClipGradients: the factor clip / ||g|| when the global L2 norm exceeds clip, else 1 (None
    when clipping is off)."""
    if clip < 0 or not active:
        return None
    sumsq = sum(
        jnp.sum(jnp.square(g[i]), dtype=jnp.promote_types(g[i].dtype, jnp.float32)) for i in active
    )
    norm = jnp.sqrt(sumsq)
    return jnp.where(norm > clip, clip / jnp.where(norm > 0, norm, 1.0), 1.0)


class _CaffeSolver:
    """SGDSolver::ApplyUpdate over flat lists of leaves, for one rule and its multipliers."""

    def __init__(self, sp: SolverParameter, lr_mult: Any, decay_mult: Any):
        self.r = sp.resolved()
        self.rule = SOLVERS[self.r.type]
        self.lrm, self.treedef = _flat_floats(lr_mult, "lr_mult")
        self.dcm, dtreedef = _flat_floats(decay_mult, "decay_mult")
        if dtreedef != self.treedef:
            raise ValueError(
                f"lr_mult and decay_mult have different structures: {self.treedef} vs {dtreedef}"
            )

    def leaves(self, tree: Any, what: str) -> list[Any]:
        leaves, td = jax.tree_util.tree_flatten(tree)
        if td != self.treedef:
            raise ValueError(f"{what} do not have the structure of lr_mult: {td} vs {self.treedef}")
        return leaves

    def init(self, params: Any) -> dict[str, Any]:
        """Zeros made in NumPy and transferred (each jnp.zeros_like was an XLA program to compile
        per blob shape, or one jitted program for the whole state: LeNet 0.3 s compiling)."""
        self.leaves(params, "params")
        state: dict[str, Any] = {"iter": np.zeros((), np.int32)}
        for name in self.rule.histories:
            state[name] = jax.tree_util.tree_map(lambda w: np.zeros(np.shape(w), w.dtype), params)
        return jax.device_put(state)

    def leaf(self, i: int, g: Any, w: Any, hs: tuple, rate: Any, t: Any, scale: Any):
        """Normalize, Regularize and ComputeUpdateValue for leaf ``i``: (update, new_hs)."""
        r = self.r
        if scale is not None:
            g = g * scale.astype(g.dtype)
        if r.iter_size != 1:  # Normalize
            g = g * (1.0 / r.iter_size)
        local_decay = r.weight_decay * self.dcm[i]
        decay = None
        if local_decay:  # Regularize (coupled: added to the gradient, unless the rule decouples)
            decay = local_decay * (jnp.sign(w) if r.regularization_type == "L1" else w)
            if not self.rule.decoupled_decay:
                g, decay = g + decay, None
        local_rate = (rate * self.lrm[i]).astype(g.dtype)
        step, new_hs = self.rule.update(g, hs, local_rate, UpdateContext(w, r, t, decay))
        return (-step).astype(w.dtype), tuple(h.astype(old.dtype) for h, old in zip(new_hs, hs))

    def update(self, grads: Any, state: dict[str, Any], params: Any = None) -> tuple[Any, dict]:
        if params is None:
            raise ValueError("Caffe's solvers need params in update(grads, state, params)")
        names = self.rule.histories
        g, w = self.leaves(grads, "grads"), self.leaves(params, "params")
        hists = [self.leaves(state[k], f"state['{k}']") for k in names]
        it = state["iter"]
        rate = learning_rate(self.r, it)
        t = (it + 1).astype(rate.dtype)
        scale = _clip_scale(g, [i for i, m in enumerate(self.lrm) if m != 0.0],
                            self.r.clip_gradients)
        new_u, new_h = [], [[] for _ in names]
        for i in range(len(w)):
            hs = tuple(h[i] for h in hists)
            if self.lrm[i] == 0.0:  # frozen: an update of -0.0 keeps w bit-identical
                u = jnp.full_like(w[i], -0.0)
            else:
                u, hs = self.leaf(i, g[i], w[i], hs, rate, t, scale)
            new_u.append(u)
            for out, h in zip(new_h, hs):
                out.append(h)
        unflat = functools.partial(jax.tree_util.tree_unflatten, self.treedef)
        new_state = {"iter": it + jnp.ones((), it.dtype)}
        new_state.update({k: unflat(h) for k, h in zip(names, new_h)})
        return unflat(new_u), new_state


def make_optimizer(
    sp: SolverParameter, lr_mult: Any, decay_mult: Any
) -> optax.GradientTransformation:
    """Caffe's solver ``sp.type`` (any rule in :data:`SOLVERS`: SGD, Nesterov, AdaGrad, RMSProp,
    AdaDelta, Adam, netc's AdamW, ...) with its schedule, clipping, iter_size normalisation and
    regularisation.

    ``lr_mult`` and ``decay_mult`` are pytrees of Python floats shaped like the params (nested
    dicts ``{layer: {role: ...}}``). ``update(grads, state, params)`` needs ``params`` and returns
    updates to *add* to them (``optax.apply_updates``). A leaf whose ``lr_mult`` is 0 gets an
    update of ``-0.0`` (so it stays bit-identical), keeps its history untouched and is left out of
    the clipping norm (Caffe computes no gradient for it, so its diff is 0).

    With ``precision: float16`` the state also holds the dynamic loss scale (``loss_scale``,
    runtime/precision.py), which the train step reads and advances.
    """
    solver = _CaffeSolver(sp, lr_mult, decay_mult)
    optimizer = optax.GradientTransformation(solver.init, solver.update)
    if sp.precision == "float16":
        from netc.runtime.precision import with_loss_scale

        optimizer = with_loss_scale(optimizer)
    return optimizer


# --- constraints -------------------------------------------------------------------------------------


def with_max_norm(optimizer: optax.GradientTransformation,
                  max_norms: dict) -> optax.GradientTransformation:
    """``optimizer`` followed by max-norm constraints (ParamSpec.max_norm; Srivastava et al.
    2014): ``max_norms`` is ``{layer: {role: c}}`` (``Net.max_norms``). After each update, every
    slice along axis 0 of a constrained parameter -- one output unit's incoming weights: a row of
    InnerProduct's N_out x K weight, a filter of Convolution's C_out x C_in x kh x kw, one Embed
    vector -- whose L2 norm exceeds ``c`` is scaled back to norm ``c`` (up to float rounding);
    the other slices keep the optimizer's update bit for bit. Without constraints: ``optimizer``
    itself."""
    if not max_norms:
        return optimizer

    def constrain(u: Any, w: Any, c: float) -> Any:
        new = w + u
        axes = tuple(range(1, new.ndim))
        norm = jnp.sqrt(jnp.sum(jnp.square(new), axis=axes, keepdims=True))
        over = norm > c
        projected = new * (c / jnp.where(over, norm, 1.0)).astype(new.dtype)
        return jnp.where(over, projected - w, u)

    def update(grads, state, params=None):
        updates, state = optimizer.update(grads, state, params)
        updates = {layer: {role: (constrain(u, params[layer][role], max_norms[layer][role])
                                  if role in max_norms.get(layer, {}) else u)
                           for role, u in roles.items()}
                   for layer, roles in updates.items()}
        return updates, state

    return optax.GradientTransformation(optimizer.init, update)
