"""compiler/threefry.py draws JAX's random bits in NumPy: keys, fold_in and uniform draws must be
JAX's bit for bit, and Net.init from them must give the trees JAX's own draws give, without
compiling an XLA program."""

from __future__ import annotations

import contextlib
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

from netc.compiler import fillers, threefry
from netc.compiler.lower import lower
from netc.runtime.context import load_context

SEEDS = (0, 1, 1234, 2**31 - 1, 2**31, 2**32 - 1)


def test_keys_and_fold_in_are_jaxs():
    for seed in SEEDS:
        assert np.array_equal(threefry.key(seed), np.asarray(jax.random.PRNGKey(seed)))
        for data in (0, 1, 0x1417, 2**31 - 1, 2**32 - 1):
            want = np.asarray(jax.random.fold_in(jax.random.PRNGKey(seed), data))
            assert np.array_equal(threefry.fold_in(threefry.key(seed), data), want), (seed, data)


@pytest.mark.parametrize(
    "n,lo,hi",
    [
        (1, 0.0, 1.0),
        (2, -0.3, 0.3),
        (25, -0.34641016, 0.34641016),
        (1001, -2.5e-3, 7.0),
        (4099, 1.0e4, 1.0e4 + 0.01),
    ],
)
def test_uniform_is_jaxs_bit_for_bit(n, lo, hi):
    key = threefry.fold_in(threefry.key(n), 7)
    want = np.asarray(jax.random.uniform(jnp.asarray(key), (n,), jnp.float32, lo, hi))
    got = threefry.uniform(key, n, lo, hi)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_fused_multiply_add_rounds_once():
    # x·y + z = 1 + 2^-23 + 2^-24 - 2^-70: just below the float32 midpoint above 1 + 2^-23, so
    # it rounds down; the float64 sum lands on the midpoint and would round (to even) up
    x = np.array([np.float32(2.0**-12 * (1 + 2.0**-23))], np.float32)
    y, z = np.float32(2.0**-12 * (1 - 2.0**-23)), np.float32(1 + 2.0**-23)
    assert threefry._fma32(x, y, z)[0] == z
    assert np.float32(np.float64(x[0]) * np.float64(y) + np.float64(z)) != z  # the trap


@contextlib.contextmanager
def xla_compiles():
    """The list of XLA compilations JAX logs while the block runs."""
    compiled: list[str] = []

    class Log(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Finished XLA compilation"):
                compiled.append(record.getMessage())

    handler, logger = Log(logging.DEBUG), logging.getLogger("jax")
    logger.addHandler(handler)
    jax.config.update("jax_log_compiles", True)
    try:
        yield compiled
    finally:
        jax.config.update("jax_log_compiles", False)
        logger.removeHandler(handler)


def test_net_init_from_numpy_equals_jax_and_compiles_nothing(monkeypatch):
    net = lower(load_context(str(ROOT / "models" / "lenet.yaml"), None).plan("TRAIN"))
    rng = jax.random.fold_in(jax.random.PRNGKey(3), 0x1417)
    with xla_compiles() as compiled:
        host = net.init(threefry.fold_in(threefry.key(3), 0x1417))
    assert compiled == []
    monkeypatch.setattr(threefry, "available", lambda: False)  # every draw by JAX
    assert fillers.host_key(rng) is None
    drawn = net.init(rng)
    assert jax.tree.structure(host) == jax.tree.structure(drawn)
    for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(drawn)):
        assert a.dtype == b.dtype and isinstance(a, jax.Array)
        np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))


@pytest.mark.parametrize("n", [1, 25, 4099, fillers.NORMAL_CHUNK, fillers.NORMAL_CHUNK + 1, 200_003])
def test_normal_is_jaxs_bit_for_bit(n):
    for seed in (0, 2**32 - 1):
        key = threefry.fold_in(threefry.key(seed), n)
        want = np.asarray(jax.random.normal(jnp.asarray(key), (n,), jnp.float32))
        got = fillers._host_normal(key, n, None)
        assert got.dtype == np.float32 and got.shape == (n,)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


GAUSSIAN_NET = """
name: gaussians
layers:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [2, 3, 12, 12]}}}
  - {name: c1, type: Convolution, bottom: data, top: c1,
     convolution_param: {num_output: 7, kernel_size: 3, weight_filler: {type: msra},
                         bias_filler: {type: gaussian, std: 0.5, mean: 1}}}
  - {name: c2, type: Convolution, bottom: c1, top: c2,
     convolution_param: {num_output: 5, kernel_size: 5, weight_filler: {type: msra,
                         variance_norm: FAN_OUT}}}
  - {name: ip, type: InnerProduct, bottom: c2, top: ip,
     inner_product_param: {num_output: 11, weight_filler: {type: gaussian, std: 0.01}}}
"""


def test_gaussian_fillers_draw_jaxs_values_with_one_program(tmp_path, monkeypatch):
    """msra and gaussian blobs of any count: JAX's own eager draws bit for bit, from raw and
    typed keys, compiling one program (the chunked erf⁻¹) for every blob instead of one per
    count."""
    spec = tmp_path / "g.yaml"
    spec.write_text(GAUSSIAN_NET)
    net = lower(load_context(str(spec), None).plan("TRAIN"))
    fillers._erf_inv_fn.cache_clear()
    with xla_compiles() as compiled:
        host = net.init(threefry.key(5))
        typed = net.init(jax.random.key(5))
    assert len(compiled) == 1 and "jit(<lambda>)" in compiled[0], compiled  # the erf⁻¹ chunks
    monkeypatch.setattr(threefry, "available", lambda: False)  # every draw by JAX
    drawn = net.init(jax.random.PRNGKey(5))
    for tree in (host, typed):
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(drawn), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a).view(np.uint32),
                                          np.asarray(b).view(np.uint32))
    assert float(np.asarray(host[0]["c1"]["bias"]).mean()) > 0.5  # the mean applied
