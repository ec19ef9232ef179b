"""Mixed precision (the solver's `precision`, runtime/precision.py): LeNet's step multiplies in
bfloat16 (its bfloat16 run reaching float32's accuracy with float32 master weights is
tests/test_train.py's, beside the float32 run it compares with); float16's dynamic loss scale
skips a step whose gradients overflow and halves, doubles after 2000 good steps; a resumed
bfloat16 run is bit-identical; recurrent layers train in bfloat16; `precision: bf16x` is a spec
error."""

from __future__ import annotations

import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MLP, MODELS, fast_xla_options, netc

from netc.runtime.callbacks import Callback
from netc.runtime.checkpoint import flatten, latest_checkpoint, load_checkpoint
from netc.runtime.precision import GROWTH_INTERVAL, INIT_SCALE
from netc.runtime.trainer import Solver, TrainConfig
from netc.spec.solver import SolverParameter

LENET = MODELS / "lenet.yaml"
# LeNet's bfloat16 training run (its accuracy against float32's at the same iteration, float32
# master weights in its checkpoint) is in tests/test_train.py, beside the float32 LeNet run it
# compares with.


def _step_hlo(precision: str) -> str:
    """The StableHLO of LeNet's train step (traced on shapes only: nothing is initialised)."""
    import netc
    from netc.runtime.solver import make_optimizer
    from netc.runtime.trainer import make_train_step

    net = netc.load(str(LENET), phase="TRAIN").net
    sp = SolverParameter(base_lr=0.01, lr_policy="fixed", precision=precision)
    opt = make_optimizer(sp, *net.multipliers())
    step = make_train_step(net, opt, 1, jax.random.PRNGKey(0), precision=precision)
    params, state = jax.eval_shape(net.init, jax.random.PRNGKey(0))
    x = {
        "data": jax.ShapeDtypeStruct((64, 1, 28, 28), jnp.float32),
        "label": jax.ShapeDtypeStruct((64,), jnp.int32),
    }
    return step.lower(params, state, jax.eval_shape(opt.init, params), x, 0).as_text()


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_the_step_multiplies_in_bfloat16(backend, monkeypatch):
    """The convolutions (im2col matmuls) and inner products of LeNet's step, forward and
    backward, take bfloat16 operands. Where the backend computes bfloat16 dots (traced as a GPU
    would: the backend's name is what the lowering asks) they are dot_generals with bfloat16
    results; on a CPU, whose XLA computes a bfloat16 dot in float32 anyway, netc widens the
    operands itself and rounds each result to bfloat16 once (compiler/layer.py cpu_dot_dtype)."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    hlo = _step_hlo("bfloat16")
    dots = re.findall(r"stablehlo\.dot_general[^\n]*-> tensor<[^>]*x(\w+)>", hlo)
    want = "bf16" if backend == "gpu" else "f32"
    assert len(dots) >= 8 and set(dots) == {want}, dots
    if backend == "cpu":  # the operands are bfloat16 values: widened just before the dots
        widened = re.findall(r"stablehlo\.convert[^\n]*tensor<[^>]*xbf16>\) -> tensor<[^>]*xf32>", hlo)
        assert len(widened) >= len(dots), (len(widened), len(dots))


class Warnings(Callback):
    def __init__(self):
        self.messages = []

    def on_warning(self, solver, e):
        self.messages.append((e.iter, e.data["message"]))


def _host(tree):
    return jax.tree_util.tree_map(np.array, tree)


def test_float16_skips_an_overflowing_step_and_halves_the_scale(tmp_path):
    seen = Warnings()
    s = Solver(
        TrainConfig(spec=str(MLP), out=str(tmp_path / "run"), max_iter=10, precision="float16"),
        callbacks=[seen],
        out=io.StringIO(),
        err=io.StringIO(),
    )
    try:
        s.step(1)
        ls = s.opt_state["loss_scale"]
        assert float(ls["scale"]) == INIT_SCALE and int(ls["good"]) == 1
        assert 0.5 < s.losses[-1] < 5  # the reported loss is not the scaled one
        # a scale so large that the scaled gradients overflow float16 (max 65504)
        s.opt_state["loss_scale"]["scale"] = jnp.float32(2.0**40)
        before = _host((s.params, s.state, s.opt_state["history"]))
        s.step(1)
        after = _host((s.params, s.state, s.opt_state["history"]))
        jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)  # skipped
        ls = s.opt_state["loss_scale"]
        assert float(ls["scale"]) == 2.0**39 and int(ls["good"]) == 0 and int(ls["skipped"]) == 1
        assert int(s.opt_state["iter"]) == 2  # the schedule still follows the iterations
        assert [(it, "skipped" in m) for it, m in seen.messages] == [(1, True)]
        # 2000 good steps in a row double the scale
        s.opt_state["loss_scale"].update(
            scale=jnp.float32(2.0**8), good=jnp.int32(GROWTH_INTERVAL - 1)
        )
        s.step(1)
        ls = s.opt_state["loss_scale"]
        assert float(ls["scale"]) == 2.0**9 and int(ls["good"]) == 0 and int(ls["skipped"]) == 1
        assert not np.array_equal(after[0]["ip1"]["weight"], np.array(s.params["ip1"]["weight"]))
        assert len(seen.messages) == 1
        # the checkpoint holds the scale, so a resumed run continues with it
        tree, meta = load_checkpoint(s.snapshot())
        assert meta["precision"] == "float16"
        assert tree["opt_state"]["loss_scale"] == {"scale": 2.0**9, "good": 0, "skipped": 1}
    finally:
        s.close()


def test_bfloat16_resume_is_bit_identical(tmp_path):
    """40 iterations straight vs 20, a checkpoint, and 20 more after resuming (dropout, shuffle:
    the MLP spec's random state is resumed too)."""

    def train(*args):
        r = netc("train", MLP, *args)
        assert r.returncode == 0, r.stderr

    ref, run = tmp_path / "ref", tmp_path / "run"
    train("--out", ref, "--max-iter", 40, "--precision", "bfloat16")
    train("--out", run, "--max-iter", 20, "--precision", "bfloat16")
    train("--resume", run, "--max-iter", 40)  # the run's precision is kept
    a, b = (load_checkpoint(latest_checkpoint(d)) for d in (ref, run))
    assert a[1]["iteration"] == b[1]["iteration"] == 40 and b[1]["precision"] == "bfloat16"
    ta, tb = flatten(a[0]), flatten(b[0])
    assert ta.keys() == tb.keys()
    assert [k for k in ta if not np.array_equal(ta[k], tb[k])] == []
    r = netc("train", MLP, "--resume", run, "--max-iter", 60, "--precision", "float16")
    assert r.returncode == 1 and "cannot resume a bfloat16 run in float16" in r.stderr


LSTM_NET = """
name: lstm
layers:
  - {name: x, type: Input, top: [x, cont, target],
     input_param: {shape: [{dim: [6, 4, 5]}, {dim: [6, 4]}, {dim: [6, 4, 3]}]}}
  - {name: lstm, type: LSTM, bottom: [x, cont], top: h, recurrent_param: {num_output: 8,
     weight_filler: {type: xavier}}}
  - {name: gru, type: GRU, bottom: [h, cont], top: g, recurrent_param: {num_output: 3,
     weight_filler: {type: xavier}}}
  - {name: loss, type: EuclideanLoss, bottom: [g, target], top: loss}
solver: {base_lr: 0.1, lr_policy: fixed}
"""


def test_recurrent_layers_train_in_bfloat16(tmp_path):
    import netc

    spec = tmp_path / "lstm.yaml"
    spec.write_text(LSTM_NET)
    rng = np.random.default_rng(0)
    x = {
        "x": rng.standard_normal((6, 4, 5), np.float32),
        "cont": np.ones((6, 4), np.float32),
        "target": rng.standard_normal((6, 4, 3), np.float32),
    }
    x["cont"][0] = 0
    out = {}
    for precision in ("float32", "bfloat16"):
        model = netc.load(str(spec), phase="TRAIN")
        opt_state, step = model.train_step(precision=precision)
        args = (model.params, model.state, opt_state, x, 0)
        lowered = step.lower(*args)
        # on a CPU the recurrence runs in float32 whatever the compute dtype (XLA CPU computes a
        # bfloat16 dot in float32: a bfloat16 scan converted h at every step, recurrent.py)
        loops = re.findall(r"stablehlo\.while\((.*)", lowered.as_text())
        assert loops and not any("bf16" in ln for ln in loops), loops
        p, s, o, loss = lowered.compile(compiler_options=fast_xla_options())(*args)
        out[precision] = (float(loss), _host(p))
        assert all(v.dtype == np.float32 for v in jax.tree_util.tree_leaves(out[precision][1]))
    (l32, p32), (l16, p16) = out["float32"], out["bfloat16"]
    assert np.isfinite(l16) and abs(l16 - l32) < 0.02 * abs(l32)
    moved32 = p32["lstm"]["W_hc"] - model.init(0)[0]["lstm"]["W_hc"]
    moved16 = p16["lstm"]["W_hc"] - model.init(0)[0]["lstm"]["W_hc"]
    assert np.abs(moved32).max() > 0
    np.testing.assert_allclose(moved16, moved32, atol=0.05 * np.abs(moved32).max())


def test_unknown_precision_is_a_spec_error(tmp_path):
    spec = tmp_path / "mlp.yaml"
    spec.write_text(
        MLP.read_text().replace("  random_seed: 7\n", "  random_seed: 7\n  precision: bf16x\n")
    )
    line = spec.read_text().splitlines().index("  precision: bf16x") + 1
    r = netc("check", spec)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (
        f"{spec}:{line}:3: error: solver.precision: 'bf16x' is not one of float32, "
        "bfloat16, float16 (did you mean 'bfloat16'?)"
    ) in r.stdout + r.stderr
