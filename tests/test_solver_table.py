"""The solver tables: a solver type is one registered rule (shown with a test-only SignSGD), the
lr policies and the warmup against optax's schedules, solver errors located at the field that
needs fixing, and warnings for the Caffe fields netc accepts but does not act on."""

from __future__ import annotations

import ast
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pydantic
import pytest

from netc.compiler.catalogue import layer_models
from netc.runtime import solver as runtime_solver
from netc.runtime.solver import (
    SOLVERS,
    SolverRule,
    learning_rate,
    make_optimizer,
    register_solver,
    unregister_solver,
)
from netc.spec.net import parse_spec
from netc.spec.solver import SOLVER_TYPES, SolverParameter

NET = """
name: tiny
layers:
  - {name: d, type: Input, top: [x, y], input_param: {shape: [{dim: [4, 3]}, {dim: [4]}]}}
  - {name: ip, type: InnerProduct, bottom: x, top: ip, inner_product_param: {num_output: 2}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, y], top: loss}
"""
BUILTIN = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam", "AdamW"]


def diagnostics(write_spec, solver_yaml: str, severity: str) -> list[str]:
    path = write_spec(NET + "solver:\n" + solver_yaml)
    spec = parse_spec(str(path), layer_models(), display_name="spec.yaml")
    return [d.format() for d in spec.diagnostics.items if d.severity == severity]


# --- one entry per solver type -------------------------------------------------------------------


def test_builtin_rules_and_spec_names_are_one_table():
    assert list(SOLVERS) == BUILTIN == list(SOLVER_TYPES)
    for name, rule in SOLVERS.items():
        assert SOLVER_TYPES[name] == rule.info
    histories = {n: r.histories for n, r in SOLVERS.items()}
    assert histories["SGD"] == ("history",) and histories["Adam"] == ("history", "history2")
    assert [n for n, r in SOLVERS.items() if r.decoupled_decay] == ["AdamW"]


def _sign_sgd(g, hs, local_rate, ctx):
    return local_rate * jnp.sign(g), hs


SIGN_SGD = SolverRule("SignSGD", "test only: w -= lr * sign(g)", reads=(), histories=(),
                      update=_sign_sgd)


@pytest.fixture
def sign_sgd():
    register_solver(SIGN_SGD)
    try:
        yield SIGN_SGD
    finally:
        unregister_solver("SignSGD")


def test_registered_solver_trains_validates_and_goes_away(sign_sgd, write_spec):
    # Validation knows it (in a spec, and in the JSON schema editors read).
    assert diagnostics(write_spec, "  {base_lr: 0.1, lr_policy: fixed, type: SignSGD}\n",
                       "error") == []
    assert "SignSGD" in SolverParameter.model_json_schema()["properties"]["type"]["enum"]
    # It reads no momentum, so momentum is refused (without claiming Caffe refuses it).
    with pytest.raises(pydantic.ValidationError) as err:
        SolverParameter(base_lr=0.1, lr_policy="fixed", type="SignSGD", momentum=0.9)
    assert err.value.errors()[0]["msg"] == (
        "momentum cannot be used with type 'SignSGD': its update has no momentum term")

    # It trains: minimise ||w - target||^2 with w -= 0.1 * sign(g), weight decay coupled.
    s = SolverParameter(base_lr=0.1, lr_policy="step", stepsize=20, gamma=0.5, type="SignSGD",
                        weight_decay=0.01)
    target = jnp.asarray([1.0, -2.0, 0.5], jnp.float32)
    opt = make_optimizer(s, {"l": {"w": 1.0, "b": 0.0}}, {"l": {"w": 1.0, "b": 1.0}})
    params = {"l": {"w": jnp.zeros(3, jnp.float32), "b": jnp.ones(2, jnp.float32)}}
    state = opt.init(params)
    assert set(state) == {"iter"}  # no histories

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: jnp.sum((p["l"]["w"] - target) ** 2)
                         + jnp.sum(p["l"]["b"] ** 2))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    w_before = np.asarray(params["l"]["w"])
    params, state = step(params, state)
    # First step by hand: g = 2 (0 - target) + 0.01 * 0, sign(g) = -sign(target).
    np.testing.assert_array_equal(np.asarray(params["l"]["w"]),
                                  w_before + np.float32(0.1) * np.sign(np.asarray(target)))
    for _ in range(59):
        params, state = step(params, state)
    assert float(jnp.max(jnp.abs(params["l"]["w"] - target))) < 0.05
    assert np.array_equal(np.asarray(params["l"]["b"]), np.ones(2, np.float32))  # lr_mult 0

    # Unregistered: gone from validation and from the runtime.
    unregister_solver("SignSGD")
    assert "SignSGD" not in SOLVERS and "SignSGD" not in SOLVER_TYPES
    assert diagnostics(write_spec, "  {base_lr: 0.1, lr_policy: fixed, type: SignSGD}\n",
                       "error") == [
        "spec.yaml:7:36: error: solver.type: 'SignSGD' is not one of SGD, Nesterov, AdaGrad, "
        "RMSProp, AdaDelta, Adam, AdamW (did you mean 'SGD'?)"]


def test_register_refuses_a_second_rule_of_the_same_name(sign_sgd):
    register_solver(SIGN_SGD)  # the same rule again is harmless
    other = SolverRule("SignSGD", "another", reads=(), histories=(), update=_sign_sgd)
    with pytest.raises(ValueError, match="already registered"):
        register_solver(other)
    with pytest.raises(ValueError, match="already registered"):
        register_solver(SolverRule("Adam", "mine", (), ("history",), _sign_sgd))
    with pytest.raises(ValueError, match="distinct and not 'iter'"):
        register_solver(SolverRule("Odd", "x", (), ("iter",), _sign_sgd))
    with pytest.raises(ValueError, match="reads unknown fields"):
        register_solver(SolverRule("Odd", "x", ("gamma",), (), _sign_sgd))
    assert "Odd" not in SOLVERS and "Odd" not in SOLVER_TYPES


def test_unknown_type_lists_the_valid_names_with_a_hint(write_spec):
    assert diagnostics(write_spec, "  base_lr: 0.1\n  lr_policy: fixed\n  type: Adamm\n",
                       "error") == [
        "spec.yaml:9:3: error: solver.type: 'Adamm' is not one of SGD, Nesterov, AdaGrad, RMSProp, "
        "AdaDelta, Adam, AdamW (did you mean 'Adam'?)"]


def test_no_function_in_runtime_solver_is_longer_than_60_lines():
    tree = ast.parse(inspect.getsource(runtime_solver))
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > 60]
    assert long == []


# --- schedules against optax ---------------------------------------------------------------------

WARMUPS = [(5, 50, 0.0), (5, 50, None), (10, 37, 0.25), (1, 8, None), (20, 21, 0.5), (3, 100, 1.0)]


def _start(w: int, s: float | None) -> float:
    return 1.0 / (w + 1) if s is None else s


@pytest.mark.parametrize("w,m,s", WARMUPS)
def test_warmup_cosine_is_optax_warmup_cosine_decay(w, m, s):
    base = 0.3
    kw = {} if s is None else {"warmup_start_factor": s}
    sp = SolverParameter(base_lr=base, lr_policy="cosine", max_iter=m, warmup_iter=w, **kw)
    iters = list(range(m + 6))
    with jax.enable_x64(True):
        ref = optax.warmup_cosine_decay_schedule(
            init_value=_start(w, s) * base, peak_value=base, warmup_steps=w, decay_steps=m)
        expected = np.array([float(ref(jnp.asarray(i, jnp.int64))) for i in iters])
    got = np.array([learning_rate(sp, i) for i in iters])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    jitted = jax.jit(lambda i: learning_rate(sp, i))
    got32 = np.array([float(jitted(jnp.asarray(i, jnp.int32))) for i in iters])
    np.testing.assert_allclose(got32, expected, rtol=1e-6, atol=1e-7)
    assert (got[0] == 0.0) == (s == 0.0)  # iteration 0 is wasted only when asked for
    assert got[w] == base and got[m] < 1e-16


@pytest.mark.parametrize("w,m,s", WARMUPS)
@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_warmup_poly_is_optax_linear_then_polynomial(w, m, s, power):
    base = 0.3
    kw = {} if s is None else {"warmup_start_factor": s}
    sp = SolverParameter(base_lr=base, lr_policy="poly", power=power, max_iter=m, warmup_iter=w,
                         **kw)
    iters = list(range(m + 6))
    with jax.enable_x64(True):
        ref = optax.join_schedules(
            [optax.linear_schedule(_start(w, s) * base, base, w),
             optax.polynomial_schedule(base, 0.0, power, m - w)], [w])
        expected = np.array([float(ref(jnp.asarray(i, jnp.int64))) for i in iters])
    got = np.array([learning_rate(sp, i) for i in iters])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_default_start_factor_is_one_over_warmup_plus_one():
    sp = SolverParameter(base_lr=1.0, lr_policy="fixed", warmup_iter=4)
    assert sp.warmup_start_factor is None and sp.resolved().warmup_start_factor == 0.2
    got = [learning_rate(sp, i) for i in range(7)]
    np.testing.assert_allclose(got, [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0], rtol=1e-15)


def test_step_policies_keep_absolute_iterations_under_warmup():
    sp = SolverParameter(base_lr=1.0, lr_policy="multistep", gamma=0.1, stepvalue=[3, 8],
                         warmup_iter=4, warmup_start_factor=0.0)
    got = [learning_rate(sp, i) for i in (0, 2, 3, 4, 7, 8)]
    np.testing.assert_allclose(got, [0.0, 0.5, 0.1 * 0.75, 0.1, 0.1, 0.01], rtol=1e-12)


def test_poly_holds_zero_after_max_iter():
    sp = SolverParameter(base_lr=1.0, lr_policy="poly", power=2.0, max_iter=10)
    assert [learning_rate(sp, i) for i in (10, 11, 30)] == [0.0, 0.0, 0.0]
    assert learning_rate(sp, 9) == pytest.approx(0.01, rel=1e-14)


# --- errors located at the field to fix ---------------------------------------------------------


@pytest.mark.parametrize(
    "solver,expected",
    [
        ("  base_lr: 0.1\n  gamma: 0.1\n  lr_policy: step\n",
         "spec.yaml:9:3: error: solver.lr_policy: lr_policy 'step' needs stepsize"),
        ("  base_lr: 0.1\n  gamma: 0.1\n  lr_policy: sigmoid\n",
         "spec.yaml:9:3: error: solver.lr_policy: lr_policy 'sigmoid' needs stepsize"),
        ("  base_lr: 0.1\n  lr_policy: multistep\n  gamma: 0.1\n",
         "spec.yaml:8:3: error: solver.lr_policy: lr_policy 'multistep' needs stepvalue"),
        ("  base_lr: 0.1\n  power: 1.0\n  lr_policy: poly\n",
         "spec.yaml:9:3: error: solver.lr_policy: lr_policy 'poly' needs max_iter"),
        ("  base_lr: 0.1\n  max_iter: 0\n  lr_policy: cosine\n",
         "spec.yaml:9:3: error: solver.lr_policy: lr_policy 'cosine' needs max_iter"),
        ("  base_lr: 0.1\n  lr_policy: multistep\n  gamma: 0.1\n  stepvalue: [5, 3]\n",
         "spec.yaml:10:3: error: solver.stepvalue: stepvalue must be strictly increasing for "
         "lr_policy 'multistep', got [5, 3]"),
        ("  base_lr: 0.1\n  lr_policy: cosine\n  max_iter: 10\n  warmup_iter: 10\n",
         "spec.yaml:10:3: error: solver.warmup_iter: warmup_iter (10) must be less than max_iter "
         "(10): lr_policy 'cosine' decays from warmup_iter to max_iter"),
        ("  base_lr: 0.1\n  lr_policy: fixed\n  type: AdaGrad\n  momentum: 0.9\n",
         "spec.yaml:10:3: error: solver.momentum: momentum cannot be used with type 'AdaGrad': its "
         "update has no momentum term (Caffe refuses it too)"),
        ("  base_lr: 0.1\n  lr_policy: fixed\n  solver_type: ADAM\n  type: Adam\n",
         "spec.yaml:9:3: error: solver.solver_type: solver_type (deprecated enum) and type cannot "
         "both be given; use type"),
    ],
)
def test_solver_errors_point_at_the_field(write_spec, solver, expected):
    assert diagnostics(write_spec, solver, "error") == [expected]


def test_solver_file_errors_point_at_the_field(write_spec):
    write_spec(NET, "net.yaml")
    path = write_spec("net: net.yaml\nbase_lr: 0.1\nmax_iter: 5\nlr_policy: step\ngamma: 0.1\n",
                      "solver.yaml")
    spec = parse_spec(str(path), layer_models(), display_name="solver.yaml")
    assert [d.format() for d in spec.diagnostics.errors] == [
        "solver.yaml:4:1: error: lr_policy: lr_policy 'step' needs stepsize"]


# --- fields netc accepts but does not act on ----------------------------------------------------


def test_ignored_fields_warn_where_written(write_spec):
    solver = ("  base_lr: 0.1\n  lr_policy: fixed\n  solver_mode: GPU\n  snapshot_format: HDF5\n"
              "  debug_info: true\n  device_id: 1\n  snapshot_diff: true\n"
              "  layer_wise_reduce: false\n  test_compute_loss: true\n  weights: a.caffemodel\n"
              "  net: other.yaml\n  test_net: [t.yaml]\n")
    assert diagnostics(write_spec, solver, "error") == []
    assert diagnostics(write_spec, solver, "warning") == [
        "spec.yaml:9:3: warning: solver.solver_mode: has no effect in netc: netc runs on whatever "
        "JAX backend is installed (a GPU or TPU when JAX has one, else the CPU); there is no "
        "CPU/GPU switch",
        "spec.yaml:12:3: warning: solver.device_id: has no effect in netc: JAX places the run on "
        "its default device (choose it with CUDA_VISIBLE_DEVICES or JAX_PLATFORMS)",
        "spec.yaml:10:3: warning: solver.snapshot_format: has no effect in netc: netc writes its "
        "snapshots as safetensors + JSON",
        "spec.yaml:13:3: warning: solver.snapshot_diff: has no effect in netc: netc snapshots "
        "weights and solver state, never gradients",
        "spec.yaml:11:3: warning: solver.debug_info: has no effect in netc: netc prints no "
        "per-layer data/diff norms",
        "spec.yaml:14:3: warning: solver.layer_wise_reduce: has no effect in netc: netc trains on "
        "one device; there is no gradient reduction to overlap",
        "spec.yaml:15:3: warning: solver.test_compute_loss: has no effect in netc: the test pass "
        "reports every scalar output of the TEST net, losses included",
        "spec.yaml:16:3: warning: solver.weights: has no effect in netc: give the weights to start "
        "from with netc train --weights FILE",
        "spec.yaml:17:3: warning: solver.net: has no effect in netc: a solver: section trains the "
        "net of the document it is in",
        "spec.yaml:18:3: warning: solver.test_net: has no effect in netc: netc tests the TEST "
        "phase of the training net (include/exclude rules)",
    ]


def test_defaults_and_cpu_mode_draw_no_warning(write_spec):
    solver = ("  base_lr: 0.1\n  lr_policy: fixed\n  solver_mode: CPU\n  debug_info: false\n"
              "  device_id: 0\n  layer_wise_reduce: true\n")
    assert diagnostics(write_spec, solver, "warning") == []


def test_solver_file_names_its_net_without_a_warning(write_spec):
    write_spec(NET, "net.yaml")
    path = write_spec("net: net.yaml\nbase_lr: 0.1\nlr_policy: fixed\nsnapshot_format: HDF5\n",
                      "solver.yaml")
    spec = parse_spec(str(path), layer_models(), display_name="solver.yaml")
    assert [d.format() for d in spec.diagnostics.items] == [
        "solver.yaml:4:1: warning: snapshot_format: has no effect in netc: netc writes its "
        "snapshots as safetensors + JSON"]


def test_record_says_what_netc_does():
    sp = SolverParameter(base_lr=0.1, lr_policy="fixed", solver_type="ADAM", warmup_iter=3,
                         snapshot_format="HDF5", solver_mode="GPU", debug_info=True, device_id=2)
    doc = sp.record(backend="cpu")
    assert doc["snapshot_format"] == "safetensors" and doc["solver_mode"] == "cpu"
    assert doc["type"] == "Adam" and doc["solver_type"] is None
    assert doc["warmup_start_factor"] == 0.25 and doc["momentum"] == 0.0
    assert doc["debug_info"] is False and "device_id" not in doc
    assert math.isclose(doc["base_lr"], 0.1)
