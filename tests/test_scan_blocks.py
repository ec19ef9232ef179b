"""Runs of identical blocks lowered as one lax.scan (compiler/blocks.py, Net.apply): which blocks
are found, that the scanned net computes exactly what the unrolled one does (loss, every
gradient, BatchNorm state; TRAIN with dropout, TEST), and that its program stops growing with
depth. The nets are bench/compile_depth.py's generated ResNets (8 channels, 8×8, batch 2)."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, SCRATCH, jit_fast

from netc.compiler.blocks import find_runs
from netc.compiler.lower import lower
from netc.compiler.report import check_file

sys.path.insert(0, str(ROOT / "bench"))
from compile_depth import resnet50_spec, resnet_spec, write  # noqa: E402

PROJECTION = {"p_a", "p_a_bn", "p_a_sc", "p_b", "p_short", "p"}


def planned(spec: dict, phase: str = "TRAIN"):
    _, plan = check_file(write(spec, SCRATCH), shown=phase)
    assert plan.ok, [d.format() for d in plan.diagnostics.errors]
    return plan


def arrays(net, seed: int = 0):
    """Random params (fc non-zero, so every gradient is), BatchNorm statistics and inputs, drawn
    in numpy from the plan's declarations (Net.init's fillers would compile per shape)."""
    r = np.random.default_rng(seed)
    params: dict = {}
    state: dict = {}
    for (layer, role), decl in net.plan.params.items():
        value = 0.5 * r.standard_normal(decl.shape)
        if role == "variance":
            value = 1 + np.abs(value)
        elif role == "scale_factor":
            value = np.ones(decl.shape)
        (params if decl.learned else state).setdefault(layer, {})[role] = jnp.asarray(
            value, jnp.float32
        )
    x = {
        "data": r.standard_normal((2, 3, 8, 8)).astype(np.float32),
        "label": np.array([1, 3], np.float32),
    }
    return params, state, x


def grad_fn(net, x, train: bool):
    def objective(params, state):
        total, (_, new_state) = net.loss(
            params, state, x, rng=jax.random.PRNGKey(7), train=train, outputs=net.sinks()
        )
        return total, new_state

    return jax.value_and_grad(objective, has_aux=True)


def n_eqns(jaxpr) -> int:
    """Equations of `jaxpr`, those of the sub-programs (scan bodies, pjit) included."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for v in eqn.params.values():
            for sub in v if isinstance(v, tuple | list) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += n_eqns(inner)
    return total


def has_scan(jaxpr) -> bool:
    return "scan[" in str(jaxpr)


@pytest.fixture(scope="module")
def deep():
    plan = planned(resnet_spec(3))
    return plan, lower(plan, scan_blocks=True), lower(plan, scan_blocks=False)


def test_identity_blocks_are_found_and_the_projection_block_is_not(deep):
    plan, net, unrolled = deep
    (run,) = net.runs
    assert run.count == 3 and run.size == 10  # conv-bn-scale-relu-dropout-conv-bn-scale-sum-relu
    assert not run.names & PROJECTION
    assert run.output == "b2" and {"b0", "b1", "b0_a"} <= run.internal
    assert unrolled.runs == [] and net.scanned_layers()["b1_a"] == 3


def test_resnet50_runs():
    """ResNet-50 (Caffe's deploy net): 3, 4, 6, 3 bottleneck blocks, the first of each stage a
    projection block, the others identity blocks with in-place BatchNorm / Scale / ReLU."""
    plan = planned(resnet50_spec(2))
    assert [(r.count, r.size) for r in find_runs(plan)] == [(2, 13), (3, 13), (5, 13), (2, 13)]


@pytest.mark.parametrize("train", [True, False], ids=["TRAIN", "TEST"])
def test_scan_equals_unrolled(deep, train):
    plan, net, unrolled = deep
    params, state, x = arrays(net)
    assert has_scan(jax.make_jaxpr(grad_fn(net, x, train))(params, state))
    (loss, new), grads = jit_fast(grad_fn(net, x, train))(params, state)
    (loss_u, new_u), grads_u = jit_fast(grad_fn(unrolled, x, train))(params, state)
    np.testing.assert_allclose(loss, loss_u, rtol=1e-5)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(new_u)
    for tree, ref in ((grads, grads_u), (new, new_u)):
        for path, a in jax.tree_util.tree_leaves_with_path(tree):
            b = dict(jax.tree_util.tree_leaves_with_path(ref))[path]
            np.testing.assert_allclose(
                a,
                b,
                rtol=1e-5,
                atol=1e-5 * float(jnp.max(jnp.abs(b))),
                err_msg=jax.tree_util.keystr(path),
            )
    if train:  # the statistics moved, and the dropout masks are those of the unrolled net
        assert not np.allclose(new["b2_a_bn"]["mean"], state["b2_a_bn"]["mean"])
        assert float(jnp.abs(grads["b2_a"]["weight"]).max()) > 0


def test_program_size_does_not_grow_with_depth():
    counts = {}
    for n in (2, 8):
        plan = planned(resnet_spec(n))
        for scan in (True, False):
            net = lower(plan, scan_blocks=scan)
            params, state, x = arrays(net)
            counts[n, scan] = n_eqns(jax.make_jaxpr(grad_fn(net, x, True))(params, state).jaxpr)
    unrolled_growth = counts[8, False] - counts[2, False]
    scan_growth = counts[8, True] - counts[2, True]
    # ~ 6 × a block's forward and backward (~160 equations each since BatchNorm + Scale + ReLU
    # fold into one function, compiler/layers/norm.py batch_norm_affine)
    assert unrolled_growth > 600, counts
    assert scan_growth < 0.1 * unrolled_growth, counts  # only stacking and unstacking


def test_a_different_block_splits_the_run():
    """Block b2's first conv has 4 outputs instead of 8: two runs, b0–b1 and b3–b4."""
    plan = planned(resnet_spec(5, odd=2), "TEST")
    net = lower(plan, scan_blocks=True)
    runs = net.runs
    assert [(r.count, r.input, r.output) for r in runs] == [(2, "p", "b1"), (2, "b2", "b4")]
    assert not any(name.startswith("b2_") and name != "b2_relu" for r in runs for name in r.names)
    params, state, x = arrays(net)
    out = jit_fast(lambda p, s: net.apply(p, s, x, outputs=["fc"])[0]["fc"])(params, state)
    unrolled = lower(plan, scan_blocks=False)
    ref = jit_fast(lambda p, s: unrolled.apply(p, s, x, outputs=["fc"])[0]["fc"])(params, state)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_what_is_asked_for_decides(deep, monkeypatch):
    """Every blob asked for (outputs None) or a blob inside the run: unrolled; the train step
    asks only for the net's sinks and scans. Scanning is off by default; NETC_SCAN_BLOCKS=1
    turns it on."""
    plan, net, _ = deep
    params, state, x = arrays(net)

    def forward(outputs):
        return jax.make_jaxpr(lambda p, s: net.apply(p, s, x, outputs=outputs, train=False)[0])(
            params, state
        )

    assert has_scan(forward(["fc"])) and has_scan(forward(["b2", "fc"]))
    assert not has_scan(forward(None)) and not has_scan(forward(["b1", "fc"]))
    monkeypatch.delenv("NETC_SCAN_BLOCKS", raising=False)
    assert lower(plan).runs == []
    monkeypatch.setenv("NETC_SCAN_BLOCKS", "1")
    assert lower(plan).scan_blocks and len(lower(plan).runs) == 1
