"""Caffe's solver semantics: the schedule, every update rule against a plain numpy transcription of
Caffe's C++ loops, lr_mult 0, jit, and the SolverParameter validator."""

from __future__ import annotations

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pydantic
import pytest
from conftest import jit_fast

from netc.runtime.solver import learning_rate, make_optimizer
from netc.spec.solver import SolverParameter
from netc.spec.yaml_io import read_yaml


def sp(**kw) -> SolverParameter:
    kw.setdefault("base_lr", 0.1)
    kw.setdefault("lr_policy", "fixed")
    return SolverParameter(**kw)


def jitted_update(opt, **jit_kw):
    """opt's update and its application as one jitted step(params, state, grads), the trainer's
    shape of it (compiled with the suite's fast XLA options: one small program per test)."""

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jit_fast(step, **jit_kw)


# --- (a) a hand-computed Caffe SGD run across a learning-rate step ------------------------------


def test_sgd_momentum_across_lr_step_by_hand():
    # w0 = 1, constant gradient g = 1, momentum 0.9, lr_policy step: stepsize 2, gamma 0.1
    #   lr(0) = lr(1) = 0.1, lr(2) = lr(3) = 0.01
    # Caffe: h = 0.9 h + lr g ; w -= h
    #   it 0: h = 0.1                        w = 0.9
    #   it 1: h = 0.09   + 0.1  = 0.19       w = 0.71
    #   it 2: h = 0.171  + 0.01 = 0.181      w = 0.529
    #   it 3: h = 0.1629 + 0.01 = 0.1729     w = 0.3561
    # optax.sgd (lr outside the buffer): b = 0.9 b + g ; w -= lr b
    #   b = 1, 1.9, 2.71, 3.439 ; steps 0.1, 0.19, 0.0271, 0.03439 ; w = 0.64851
    caffe_expected = [0.9, 0.71, 0.529, 0.3561]
    optax_expected = [0.9, 0.71, 0.6829, 0.64851]

    s = sp(base_lr=0.1, lr_policy="step", stepsize=2, gamma=0.1, momentum=0.9)
    params = {"ip": {"w": jnp.asarray(1.0, jnp.float32)}}
    grads = {"ip": {"w": jnp.asarray(1.0, jnp.float32)}}
    opt = make_optimizer(s, {"ip": {"w": 1.0}}, {"ip": {"w": 1.0}})
    state, step = opt.init(params), jitted_update(opt)
    got = []
    for _ in range(4):
        params, state = step(params, state, grads)
        got.append(float(params["ip"]["w"]))
    np.testing.assert_allclose(got, caffe_expected, rtol=1e-6)
    np.testing.assert_allclose(float(state["history"]["ip"]["w"]), 0.1729, rtol=1e-6)
    assert int(state["iter"]) == 4

    ref = optax.sgd(optax.piecewise_constant_schedule(0.1, {2: 0.1}), momentum=0.9)
    p2 = {"ip": {"w": jnp.asarray(1.0, jnp.float32)}}
    st2, step2 = ref.init(p2), jitted_update(ref)
    got2 = []
    for _ in range(4):
        p2, st2 = step2(p2, st2, grads)
        got2.append(float(p2["ip"]["w"]))
    np.testing.assert_allclose(got2, optax_expected, rtol=1e-6)
    assert abs(got[-1] - got2[-1]) > 0.25  # the two rules really differ after the step


# --- (b) every solver type against a numpy transcription of Caffe's C++ -------------------------

SHAPES = {
    "conv1": {"weight": (3, 4), "bias": (3,)},
    "fc": {"weight": (5, 2), "bias": (5,)},
    "frozen": {"weight": (2, 2)},
}
LR_MULT = {
    "conv1": {"weight": 1.0, "bias": 2.0},
    "fc": {"weight": 0.5, "bias": 1.0},
    "frozen": {"weight": 0.0},
}
DECAY_MULT = {
    "conv1": {"weight": 1.0, "bias": 0.0},
    "fc": {"weight": 2.0, "bias": 0.5},
    "frozen": {"weight": 1.0},
}
NAMES = [(layer, role) for layer in sorted(SHAPES) for role in sorted(SHAPES[layer])]


def caffe_reference(s: SolverParameter, w0: dict, grad_seq: list[dict]):
    """Caffe's Solver::Step / SGDSolver::ApplyUpdate, transcribed loop by loop (float64).

    Caffe computes no gradient for a parameter with lr_mult 0, so its diff is 0."""
    kind = s.type
    base, gamma, mom = s.base_lr, s.gamma or 0.0, s.momentum or 0.0
    wd, delta = s.weight_decay or 0.0, s.delta
    w = {n: np.array(w0[n[0]][n[1]], np.float64) for n in NAMES}
    hist = {n: np.zeros_like(w[n]) for n in NAMES}
    hist2 = {n: np.zeros_like(w[n]) for n in NAMES}
    clipped = []
    for it, grads in enumerate(grad_seq):
        diff = {
            n: (
                np.zeros_like(w[n])
                if LR_MULT[n[0]][n[1]] == 0
                else np.array(grads[n[0]][n[1]], np.float64).copy()
            )
            for n in NAMES
        }
        # GetLearningRate
        if s.lr_policy == "fixed":
            rate = base
        elif s.lr_policy == "step":
            rate = base * gamma ** (it // s.stepsize)
        else:
            raise AssertionError(s.lr_policy)
        # ClipGradients
        if s.clip_gradients >= 0:
            sumsq = sum(float(np.sum(diff[n] ** 2)) for n in NAMES)
            l2 = math.sqrt(sumsq)
            clipped.append(l2 > s.clip_gradients)
            if l2 > s.clip_gradients:
                for n in NAMES:
                    diff[n] *= s.clip_gradients / l2
        for n in NAMES:
            lr_mult, decay_mult = LR_MULT[n[0]][n[1]], DECAY_MULT[n[0]][n[1]]
            # Normalize
            if s.iter_size != 1:
                diff[n] *= 1.0 / s.iter_size
            # Regularize
            local_decay = wd * decay_mult
            reg = local_decay * (w[n] if s.regularization_type == "L2" else np.sign(w[n]))
            if local_decay and kind != "AdamW":
                diff[n] += reg
            # ComputeUpdateValue
            lr = rate * lr_mult
            g = diff[n]
            if kind == "SGD":
                hist[n] = lr * g + mom * hist[n]
                upd = hist[n].copy()
            elif kind == "Nesterov":
                old = hist[n].copy()
                hist[n] = lr * g + mom * hist[n]
                upd = (1 + mom) * hist[n] - mom * old
            elif kind == "AdaGrad":
                hist[n] = hist[n] + g**2
                upd = lr * (g / (np.sqrt(hist[n]) + delta))
            elif kind == "RMSProp":
                hist[n] = (1 - s.rms_decay) * g**2 + s.rms_decay * hist[n]
                upd = lr * (g / (np.sqrt(hist[n]) + delta))
            elif kind == "AdaDelta":
                hist[n] = (1 - mom) * g**2 + mom * hist[n]
                u = g * np.sqrt((hist2[n] + delta) / (hist[n] + delta))
                hist2[n] = (1 - mom) * u**2 + mom * hist2[n]
                upd = lr * u
            elif kind in ("Adam", "AdamW"):
                b1, b2 = mom, s.momentum2
                t = it + 1
                corr = math.sqrt(1 - b2**t) / (1 - b1**t)
                hist[n] = (1 - b1) * g + b1 * hist[n]
                hist2[n] = (1 - b2) * g**2 + b2 * hist2[n]
                step = corr * hist[n] / (np.sqrt(hist2[n]) + delta)
                if kind == "AdamW" and local_decay:
                    step = step + reg
                upd = lr * step
            else:
                raise AssertionError(kind)
            # Net::Update: data -= diff
            w[n] = w[n] - upd
    return w, clipped


TYPE_SETTINGS = {
    "SGD": dict(base_lr=0.05, momentum=0.9),
    "Nesterov": dict(base_lr=0.05, momentum=0.9),
    "AdaGrad": dict(base_lr=0.05),
    "RMSProp": dict(base_lr=0.01, rms_decay=0.9),
    "AdaDelta": dict(base_lr=1.0, momentum=0.95, delta=1e-6),
    "Adam": dict(base_lr=0.01, momentum=0.9, momentum2=0.99),
    "AdamW": dict(base_lr=0.01, momentum=0.9, momentum2=0.99),
}
CONFIGS = {
    # L2 decay, global-norm clipping on the summed gradient, iter_size 2, fixed rate
    "l2_clip_itersize": dict(
        weight_decay=0.01, regularization_type="L2", clip_gradients=5.5, iter_size=2
    ),
    # L1 decay and a step schedule (the rate changes mid-run)
    "l1_step": dict(
        weight_decay=0.02, regularization_type="L1", lr_policy="step", stepsize=3, gamma=0.5
    ),
}
GRAD_SCALES = [0.4, 1.6, 0.7, 1.3, 0.5, 1.5, 1.0]
N_ITERS = len(GRAD_SCALES)


def _problem(seed: int, dtype):
    rng = np.random.default_rng(seed)
    w0 = {
        layer: {role: rng.normal(size=shape).astype(dtype) for role, shape in roles.items()}
        for layer, roles in SHAPES.items()
    }
    w0["conv1"]["bias"][0] = 0.0  # sign(0) = 0 for L1
    grad_seq = []
    for scale in GRAD_SCALES:  # gradient norms around clip_gradients: some clipped, some not
        grad_seq.append(
            {
                layer: {
                    role: (scale * rng.normal(size=shape)).astype(dtype)
                    for role, shape in roles.items()
                }
                for layer, roles in SHAPES.items()
            }
        )
    return w0, grad_seq


def _run(s: SolverParameter, w0, grad_seq, dtype):
    opt = make_optimizer(s, LR_MULT, DECAY_MULT)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), w0)
    state, step = opt.init(params), jitted_update(opt)
    for grads in grad_seq:
        params, state = step(params, state, jax.tree_util.tree_map(jnp.asarray, grads))
    return params, state


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("kind", sorted(TYPE_SETTINGS))
def test_solver_matches_caffe_reference(kind, config):
    kw = {**TYPE_SETTINGS[kind], **CONFIGS[config]}
    s = sp(type=kind, **kw)
    w0, grad_seq = _problem(zlib.crc32(f"{kind}{config}".encode()), np.float64)
    ref, clipped = caffe_reference(s, w0, grad_seq)
    if s.clip_gradients >= 0:  # the clip value is chosen so that clipping sometimes happens
        assert any(clipped) and not all(clipped), clipped
    with jax.enable_x64(True):
        got, state = _run(s, w0, grad_seq, jnp.float64)
        assert int(state["iter"]) == N_ITERS
        moved = 0
        for layer, role in NAMES:
            g = np.asarray(got[layer][role])
            assert g.dtype == np.float64
            np.testing.assert_allclose(
                g,
                ref[(layer, role)],
                rtol=1e-6,
                atol=1e-12,
                err_msg=f"{kind} {config} {layer}.{role}",
            )
            moved += not np.array_equal(g, w0[layer][role])
        assert moved == len(NAMES) - 1  # every leaf but the frozen one changed


@pytest.mark.parametrize("kind", ["SGD", "Adam", "AdaDelta"])
def test_solver_float32_close_to_reference(kind):
    s = sp(type=kind, **TYPE_SETTINGS[kind], **CONFIGS["l2_clip_itersize"])
    w0, grad_seq = _problem(7, np.float32)
    ref, _ = caffe_reference(s, w0, grad_seq)
    got, state = _run(s, w0, grad_seq, jnp.float32)
    for layer, role in NAMES:
        g = np.asarray(got[layer][role])
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, ref[(layer, role)], rtol=2e-5, atol=1e-6)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(state["history"]))


# --- (c) every lr_policy against its formula -----------------------------------------------------

ITERS = [0, 1, 2, 3, 7, 10, 49, 50, 51, 99]
POLICIES = [
    (dict(lr_policy="fixed"), lambda i: 0.1),
    (dict(lr_policy="step", stepsize=10, gamma=0.5), lambda i: 0.1 * 0.5 ** (i // 10)),
    (dict(lr_policy="exp", gamma=0.99), lambda i: 0.1 * 0.99**i),
    (dict(lr_policy="inv", gamma=1e-3, power=0.75), lambda i: 0.1 * (1 + 1e-3 * i) ** -0.75),
    (
        dict(lr_policy="multistep", gamma=0.1, stepvalue=[3, 10, 50]),
        lambda i: 0.1 * 0.1 ** sum(i >= v for v in (3, 10, 50)),
    ),
    (dict(lr_policy="poly", power=2.0, max_iter=100), lambda i: 0.1 * (1 - i / 100) ** 2),
    (
        dict(lr_policy="sigmoid", gamma=0.1, stepsize=50),
        lambda i: 0.1 / (1 + math.exp(-0.1 * (i - 50))),
    ),
    (
        dict(lr_policy="cosine", max_iter=100),
        lambda i: 0.1 * 0.5 * (1 + math.cos(math.pi * i / 100)),
    ),
    (
        dict(lr_policy="step", stepsize=10, gamma=0.5, warmup_iter=4, warmup_start_factor=0.2),
        lambda i: 0.1 * 0.5 ** (i // 10) * (0.2 + 0.8 * i / 4 if i < 4 else 1.0),
    ),
]


@pytest.mark.parametrize("kw,formula", POLICIES, ids=[p[0]["lr_policy"] for p in POLICIES])
def test_lr_policy_formula(kw, formula):
    s = sp(base_lr=0.1, **kw)
    expected = np.array([formula(i) for i in ITERS])
    got_py = np.array([learning_rate(s, i) for i in ITERS])
    assert all(isinstance(learning_rate(s, i), float) for i in ITERS[:2])
    np.testing.assert_allclose(got_py, expected, rtol=1e-12)
    # traced: each iteration a JAX int32 scalar (vmap: one compiled program for all of ITERS)
    jitted = jit_fast(jax.vmap(lambda i: learning_rate(s, i)))
    got_jit = np.asarray(jitted(jnp.asarray(ITERS, jnp.int32)), np.float64)
    np.testing.assert_allclose(got_jit, expected, rtol=1e-6)


def test_multistep_boundaries_match_caffe_current_step_loop():
    s = sp(base_lr=1.0, lr_policy="multistep", gamma=0.5, stepvalue=[3, 7, 8])
    # by hand: iters 2, 3, 4, 6, 7, 8, 9 -> 1, .5, .5, .5, .25, .125, .125
    got = [learning_rate(s, i) for i in (2, 3, 4, 6, 7, 8, 9)]
    assert got == [1.0, 0.5, 0.5, 0.5, 0.25, 0.125, 0.125]
    # Caffe's stateful GetLearningRate, called once per iteration from 0
    current_step = 0
    for it in range(20):
        if current_step < len(s.stepvalue) and it >= s.stepvalue[current_step]:
            current_step += 1
        assert learning_rate(s, it) == 1.0 * 0.5**current_step
        assert float(learning_rate(s, jnp.int32(it))) == 0.5**current_step


def test_warmup_starts_at_factor_and_cosine_clamps():
    # The default start factor 1 / (warmup_iter + 1): iteration i of the warmup gets (i+1)/(W+1),
    # never 0; the cosine decays from the end of the warmup (iteration 5) to max_iter.
    s = sp(base_lr=0.2, lr_policy="cosine", max_iter=10, warmup_iter=5)
    assert learning_rate(s, 0) == pytest.approx(0.2 / 6, rel=1e-15)
    assert learning_rate(s, 4) == pytest.approx(0.2 * 5 / 6, rel=1e-15)
    assert learning_rate(s, 5) == 0.2
    assert learning_rate(s, 7) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 2 / 5)))
    assert learning_rate(s, 10) == pytest.approx(0.0, abs=1e-15)
    assert learning_rate(s, 15) == pytest.approx(0.0, abs=1e-15)
    # A start factor of 0, written, starts from 0.
    assert (
        learning_rate(
            sp(
                base_lr=0.2, lr_policy="cosine", max_iter=10, warmup_iter=5, warmup_start_factor=0.0
            ),
            0,
        )
        == 0.0
    )


# --- (d) lr_mult 0 -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["SGD", "Adam", "AdamW", "AdaDelta"])
def test_lr_mult_zero_leaf_is_bit_identical(kind):
    s = sp(type=kind, base_lr=0.1, weight_decay=0.1, momentum=0.9, clip_gradients=1.0)
    frozen = jnp.asarray([[-0.0, 0.0], [1.5, -3.25e-20]], jnp.float32)
    params = {"a": {"w": jnp.ones((2, 2), jnp.float32)}, "b": {"w": frozen}}
    lr_mult = {"a": {"w": 1.0}, "b": {"w": 0.0}}
    opt = make_optimizer(s, lr_mult, {"a": {"w": 1.0}, "b": {"w": 1.0}})
    state, step = opt.init(params), jitted_update(opt)
    grads_b = jnp.asarray([[1e30, jnp.nan], [-1.0, jnp.inf]], jnp.float32)
    grads = {"a": {"w": jnp.full((2, 2), 0.1, jnp.float32)}, "b": {"w": grads_b}}
    for _ in range(3):
        params, state = step(params, state, grads)
    out = np.asarray(params["b"]["w"])
    assert np.array_equal(out.view(np.uint32), np.asarray(frozen).view(np.uint32))
    assert not np.array_equal(np.asarray(params["a"]["w"]), np.ones((2, 2)))
    assert np.all(np.isfinite(np.asarray(params["a"]["w"])))  # b's nan stays out of the clip norm
    assert np.all(np.asarray(state["history"]["b"]["w"]) == 0)


# --- (e) jit with donated buffers; the state is arrays only -------------------------------------


@pytest.mark.parametrize("kind", ["Nesterov", "Adam"])
def test_update_inside_jit_with_donation(kind):
    """The update jitted with its parameters and state donated (as the trainer's step is) follows
    Caffe's rule, the float64 transcription above (a step schedule, decay, clipping, iter_size);
    its state is arrays only."""
    s = sp(
        type=kind,
        **TYPE_SETTINGS[kind],
        lr_policy="step",
        stepsize=2,
        gamma=0.5,
        weight_decay=5e-4,
        clip_gradients=10.0,
        iter_size=2,
    )
    w0, grad_seq = _problem(11, np.float32)
    ref, _ = caffe_reference(s, w0, grad_seq)
    opt = make_optimizer(s, LR_MULT, DECAY_MULT)
    jitted = jitted_update(opt, donate_argnums=(0, 1))
    pj = jax.tree_util.tree_map(jnp.asarray, w0)
    sj = opt.init(pj)
    for g in grad_seq:
        pj, sj = jitted(pj, sj, jax.tree_util.tree_map(jnp.asarray, g))
    for layer, role in NAMES:
        np.testing.assert_allclose(
            np.asarray(pj[layer][role]),
            ref[(layer, role)],
            rtol=2e-5,
            atol=1e-6,
            err_msg=f"{kind} {layer}.{role}",
        )
    assert not np.allclose(np.asarray(pj["fc"]["weight"]), w0["fc"]["weight"])
    assert sj["iter"].dtype == jnp.int32 and int(sj["iter"]) == N_ITERS
    leaves = jax.tree_util.tree_leaves(sj)
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)
    assert set(sj) == ({"iter", "history", "history2"} if kind == "Adam" else {"iter", "history"})


# --- (f) SolverParameter validation --------------------------------------------------------------


def test_unknown_field_rejected():
    with pytest.raises(pydantic.ValidationError, match="lr_polcy"):
        SolverParameter(base_lr=0.1, lr_policy="fixed", lr_polcy="step")


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(lr_policy="step", gamma=0.1), "lr_policy 'step' needs stepsize"),
        (dict(lr_policy="step", stepsize=100), "lr_policy 'step' needs gamma"),
        (dict(lr_policy="inv", gamma=0.1), "lr_policy 'inv' needs power"),
        (dict(lr_policy="multistep", gamma=0.1), "lr_policy 'multistep' needs stepvalue"),
        (dict(lr_policy="multistep", gamma=0.1, stepvalue=[5, 3]), "strictly increasing"),
        (dict(lr_policy="poly", power=1.0), "lr_policy 'poly' needs max_iter"),
        (dict(lr_policy="cosine", max_iter=0), "lr_policy 'cosine' needs max_iter"),
        (dict(lr_policy="sigmoid", gamma=0.1), "lr_policy 'sigmoid' needs stepsize"),
        (dict(lr_policy="fixed", type="AdaGrad", momentum=0.9), "momentum cannot be used"),
        (dict(lr_policy="fixed", type="Adam", solver_type="ADAM"), "solver_type"),
        (dict(lr_policy="fixed", net="a.yaml", train_net="b.yaml"), "not both"),
        (dict(base_lr=None, lr_policy="fixed"), "base_lr is required"),
        (dict(lr_policy=None), "lr_policy is required"),
    ],
)
def test_validator_messages(kw, message):
    kw.setdefault("base_lr", 0.1)
    with pytest.raises(pydantic.ValidationError, match=message):
        SolverParameter(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        dict(type="adam"),  # exact Caffe spelling only
        dict(lr_policy="Step"),
        dict(regularization_type="L3"),
        dict(base_lr="0.01"),  # no numbers from strings
        dict(iter_size=0),
        dict(momentum=1.0),
        dict(base_lr=math.nan),
    ],
)
def test_bad_values_rejected(kw):
    with pytest.raises(pydantic.ValidationError):
        sp(**kw)


def test_yaml_exponent_floats_and_resolved_defaults():
    doc = read_yaml(
        "base_lr: 1e-3\nweight_decay: 5e-4\nlr_policy: step\nstepsize: 100000\ngamma: 0.1\n"
        "solver_type: NESTEROV\nmax_iter: 450000\n"
    )
    s = SolverParameter.model_validate(doc.data)
    assert type(s.base_lr) is float and s.base_lr == 0.001
    assert type(s.weight_decay) is float and s.weight_decay == 0.0005
    assert s.momentum is None and s.set_fields() >= {"base_lr", "solver_type"}
    r = s.resolved()
    assert r.momentum == 0.0 and r.display == 0 and r.type == "Nesterov"
    assert s.solver == "Nesterov"
    assert SolverParameter(base_lr=1, lr_policy="fixed").base_lr == 1.0  # an int is a float too
    assert isinstance(SolverParameter(base_lr=1, lr_policy="fixed").base_lr, float)
