"""compiler/xla.py: the XLA compile options netc gives its programs on a CPU reach the programs
that matter (the train step, the TEST forward, predict), only where they were measured, and
never override the user's XLA_FLAGS."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import ROOT

import netc
from netc.compiler import xla
from netc.runtime.feeds import make_eval_fn

BOGUS = "xla_cpu_netc_test_bogus_option"


def test_options_only_where_measured(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(xla, "_jaxlib_release", lambda: (0, 10))
    assert xla.compiler_options("cpu") == {"xla_cpu_use_fusion_emitters": False}
    assert xla.compiler_options("gpu") == {}
    monkeypatch.setattr(xla, "_jaxlib_release", lambda: (0, 11))  # not measured: XLA's defaults
    assert xla.compiler_options("cpu") == {}
    monkeypatch.setattr(xla, "_jaxlib_release", lambda: (0, 10))
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=true")  # the user's choice
    assert xla.compiler_options("cpu") == {}


def test_the_options_this_jaxlib_gets_are_known_to_it():
    """Whatever compiler_options() gives here compiles (an option XLA does not know fails the
    compile): the gate in KNOWN holds for the jaxlib the suite runs with."""
    f = xla.jit(lambda x: x * 2 + 1)
    np.testing.assert_array_equal(np.asarray(f(np.arange(3.0))), [1.0, 3.0, 5.0])


@pytest.fixture
def bogus(monkeypatch):
    """netc's options replaced by one XLA does not know: a program compiled with them fails,
    naming it, which shows they reached that program."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(xla, "_jaxlib_release", lambda: next(iter(xla.KNOWN)))
    monkeypatch.setattr(xla, "CPU_OPTIONS", {BOGUS: True})


def test_train_step_test_forward_and_predict_compile_with_them(bogus):
    model = netc.load(str(ROOT / "models" / "lenet.yaml"), phase="TRAIN", batch=2)
    params, state = model.init(jax.random.PRNGKey(0))
    x = np.zeros((2, 1, 28, 28), np.float32)
    inputs = {"data": x, "label": np.zeros(2, np.int32)}
    opt_state, step = model.train_step()
    with pytest.raises(Exception, match=BOGUS):
        step(params, state, opt_state, inputs, np.int32(0))
    with pytest.raises(Exception, match=BOGUS):
        make_eval_fn(model.net)(params, state, inputs)
    test = netc.load(str(ROOT / "models" / "lenet.yaml"), phase="TEST", batch=2)
    test.init(jax.random.PRNGKey(0))
    with pytest.raises(Exception, match=BOGUS):
        test.predict({"data": x})
