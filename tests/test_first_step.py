"""Time to first step: the train step is compiled in a thread while the iteration-0 test
compiles and runs (Solver._compile_step_aside): the run compiles it once, and training is
unchanged by it."""

from __future__ import annotations

import io
import logging

import jax
import numpy as np
from conftest import MLP

import netc


class _Compiles(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.names: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Finished XLA compilation of "):
            self.names.append(msg.split(" of ", 1)[1].split(" in ")[0])


def _train(tmp_path, name, aside: bool):
    cfg = netc.TrainConfig(str(MLP), max_iter=3, out=str(tmp_path / name), progress=False,
                           tensorboard=False)
    solver = netc.Solver(cfg, out=io.StringIO(), err=io.StringIO())
    if not aside:
        solver._compile_step_aside = lambda: None
    solver.solve()
    return solver


def test_step_compiled_aside_once_and_training_unchanged(tmp_path):
    handler = _Compiles()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    old = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    try:
        with_aside = _train(tmp_path, "a", aside=True)
    finally:
        jax.config.update("jax_log_compiles", old)
        logger.removeHandler(handler)
    assert with_aside._aside is not None and not with_aside._aside.is_alive()
    assert handler.names.count("jit(step)") == 1, handler.names
    plain = _train(tmp_path, "b", aside=False)
    assert plain._aside is None
    for a, b in zip(jax.tree.leaves(with_aside.params), jax.tree.leaves(plain.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert with_aside.last_test == plain.last_test


def test_loaded_weights_skip_their_fillers(tmp_path, monkeypatch):
    """init_with_weights draws only the blobs the weights do not supply, and gives the same
    trees as drawing everything and copying the weights over it."""
    import netc.compiler.fillers as fillers
    from netc.runtime.weights import apply_weights, init_with_weights

    model = netc.load(str(MLP), phase="TEST")
    params, state = model.init(7)
    dropped = next(iter(params))
    partial = {k: v for k, v in params.items() if k != dropped}
    path = tmp_path / "w.npz"
    np.savez(path, **{f"{layer}/{role}": np.asarray(v) + 1 for layer, roles in partial.items()
                      for role, v in roles.items()})
    drawn = []
    real = fillers.fill

    def counting(key, *a, **k):  # eval_shape's abstract trace (a Tracer key) draws nothing
        if not isinstance(key, jax.core.Tracer):
            drawn.append(a[1])
        return real(key, *a, **k)

    monkeypatch.setattr(fillers, "fill", counting)
    got = init_with_weights(model.net, str(path), rng=jax.random.PRNGKey(7))
    assert sorted(drawn) == sorted(np.shape(v) for v in params[dropped].values())
    monkeypatch.setattr(fillers, "fill", real)
    from netc.runtime.weights import read_weights

    want = apply_weights(params, state, *read_weights(str(path)))[:2]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(got) == jax.tree.structure(want)
