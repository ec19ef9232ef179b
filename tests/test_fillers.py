"""Caffe's fillers (include/caffe/filler.hpp; REFERENCE §1) and Net.init.

Bounds are checked exactly; moments statistically on ~2**18-element tensors with tolerances of
about 6 standard errors of the estimate (so a correct filler fails ~never, while a wrong scale —
e.g. Glorot's sqrt(6/(fan_in+fan_out)) instead of sqrt(3/fan_in) — is far outside them).
"""

from __future__ import annotations

import math
import os
import tempfile

import jax  # noqa: E402
import numpy as np
import pytest
import yaml
from conftest import SCRATCH, jit_fast

from netc.compiler.catalogue import layer_models  # noqa: E402
from netc.compiler.fillers import bilinear_kernel, fans, fill  # noqa: E402
from netc.compiler.lower import lower  # noqa: E402
from netc.compiler.plan import plan  # noqa: E402
from netc.spec.messages import FillerParameter, NetState  # noqa: E402
from netc.spec.net import parse_spec  # noqa: E402

KEY = jax.random.PRNGKey(1234)
BIG = (128, 64, 4, 8)  # 262,144 elements; fan_in 64·4·8 = 2048, fan_out 128·4·8 = 4096
FAN_IN, FAN_OUT = 2048, 4096


def draw(shape=BIG, **kw):
    return np.asarray(fill(KEY, FillerParameter(**kw), shape), np.float64)


def check_mean_std(w, mean, std, what):
    n = w.size
    assert abs(w.mean() - mean) < 6 * std / math.sqrt(n) + 1e-7, f"{what}: mean {w.mean()}"
    # the sample std's standard error is about std / sqrt(2n) (a little more for non-normal)
    assert abs(w.std() - std) < 6 * std / math.sqrt(n) + 1e-7, f"{what}: std {w.std()} vs {std}"


def test_fans_are_caffes():
    assert fans((20, 1, 5, 5)) == (25, 500)  # LeNet conv1: fan_in = count/num_output
    assert fans((500, 800)) == (800, 500)
    assert fans((10,)) == (1, 10)  # a bias: Caffe's fan_out of a 1-D blob is its count


@pytest.mark.parametrize("norm,n", [("FAN_IN", FAN_IN), ("FAN_OUT", FAN_OUT),
                                    ("AVERAGE", (FAN_IN + FAN_OUT) / 2)])
def test_xavier_is_uniform_sqrt_3_over_n(norm, n):
    w = draw(type="xavier", variance_norm=norm)
    s = math.sqrt(3 / n)
    assert fill(KEY, FillerParameter(type="xavier"), (2, 3)).dtype == np.float32
    assert w.shape == BIG
    assert np.all(w >= -s) and np.all(w <= s)  # exact bounds
    assert w.max() > s * (1 - 1e-3) and w.min() < -s * (1 - 1e-3)  # and they are reached
    check_mean_std(w, 0.0, s / math.sqrt(3), f"xavier {norm}")  # uniform(−s, s): std s/√3
    # uniform, not gaussian: each tenth of the range holds a tenth of the values
    hist, _ = np.histogram(w, bins=10, range=(-s, s))
    assert np.all(np.abs(hist / w.size - 0.1) < 6 * math.sqrt(0.09 / w.size))


def test_xavier_default_is_fan_in_not_glorot():
    w = draw(type="xavier")
    assert abs(w.std() - math.sqrt(1 / FAN_IN)) < 0.01 * math.sqrt(1 / FAN_IN)
    glorot = math.sqrt(6 / (FAN_IN + FAN_OUT)) / math.sqrt(3)
    assert abs(w.std() - glorot) > 0.1 * glorot


@pytest.mark.parametrize("norm,n", [("FAN_IN", FAN_IN), ("FAN_OUT", FAN_OUT),
                                    ("AVERAGE", (FAN_IN + FAN_OUT) / 2)])
def test_msra_is_gaussian_sqrt_2_over_n(norm, n):
    w = draw(type="msra", variance_norm=norm)
    std = math.sqrt(2 / n)
    check_mean_std(w, 0.0, std, f"msra {norm}")
    # gaussian: about 68.27% within one std, 4.55% beyond two
    assert abs(np.mean(np.abs(w) < std) - 0.6827) < 0.006
    assert abs(np.mean(np.abs(w) > 2 * std) - 0.0455) < 0.003


@pytest.mark.parametrize("mean,std", [(0.0, 0.01), (0.5, 2.0), (-1.0, 0.1)])
def test_gaussian_mean_std(mean, std):
    w = draw(type="gaussian", mean=mean, std=std)
    check_mean_std(w, mean, std, "gaussian")


def test_gaussian_default_is_standard_normal_and_sparse_keeps_sparse_over_num_outputs():
    check_mean_std(draw(type="gaussian"), 0.0, 1.0, "gaussian default")
    w = draw(type="gaussian", std=1.0, sparse=16)  # keep probability 16/128
    p = 16 / BIG[0]
    frac = np.mean(w != 0)
    assert abs(frac - p) < 6 * math.sqrt(p * (1 - p) / w.size), frac
    nz = w[w != 0]
    check_mean_std(nz, 0.0, 1.0, "sparse gaussian non-zeros")


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-0.3, 0.7), (2.0, 2.5)])
def test_uniform_min_max(lo, hi):
    w = draw(type="uniform", min=lo, max=hi)
    assert np.all(w >= lo) and np.all(w <= hi)
    assert w.min() < lo + 1e-3 * (hi - lo) and w.max() > hi - 1e-3 * (hi - lo)
    check_mean_std(w, (lo + hi) / 2, (hi - lo) / math.sqrt(12), "uniform")


def test_uniform_default_is_0_1():
    w = draw(type="uniform")
    assert w.min() >= 0 and w.max() <= 1 and abs(w.mean() - 0.5) < 0.01


@pytest.mark.parametrize("value", [0.0, 0.2, -3.5])
def test_constant(value):
    w = draw((7, 3), type="constant", value=value)
    assert np.all(w == np.float32(value))


def test_unset_filler_is_zeros():
    assert np.all(np.asarray(fill(KEY, None, (5, 4))) == 0)
    assert np.all(draw((5, 4)) == 0)  # FillerParameter() is constant 0


def test_positive_unitball_rows_sum_to_one():
    w = draw((6, 3, 2, 2), type="positive_unitball")
    assert np.all(w >= 0) and np.all(w <= 1)
    np.testing.assert_allclose(w.reshape(6, -1).sum(1), 1.0, rtol=1e-5)


def test_bilinear_4x4_is_factor_2_upsampling():
    row = np.array([0.25, 0.75, 0.75, 0.25])
    w = draw((3, 2, 4, 4), type="bilinear")
    for i in range(3):
        for j in range(2):  # Caffe fills every (input, output) channel pair alike
            np.testing.assert_allclose(w[i, j], np.outer(row, row), rtol=0, atol=1e-7)
    np.testing.assert_allclose(bilinear_kernel((1, 1, 4, 4))[0, 0], np.outer(row, row), atol=1e-7)


@pytest.mark.parametrize("k,row", [
    (1, [1.0]),
    (2, [0.5, 0.5]),  # BVLC/caffe#5713 fixed k = 2, 3, 6, 7, ...: before, k 2 gave [1, 0]
    (3, [0.5, 1.0, 0.5]),  # and k 3 gave [0.25, 0.75, 0.75]
    (5, [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]),
    (6, [1 / 6, 0.5, 5 / 6, 5 / 6, 0.5, 1 / 6]),
])
def test_bilinear_is_caffes_formula(k, row):
    """Caffe: f = ceil(k/2), c = (k − 1)/(2f), w(x, y) = (1 − |x/f − c|)(1 − |y/f − c|)."""
    f = math.ceil(k / 2)
    c = (k - 1) / (2 * f)
    direct = np.array([1 - abs(x / f - c) for x in range(k)])
    np.testing.assert_allclose(direct, row, atol=1e-12)
    w = draw((2, 1, k, k), type="bilinear")
    np.testing.assert_allclose(w[1, 0], np.outer(row, row), atol=1e-6)
    np.testing.assert_allclose(w[1, 0], w[1, 0].T)  # symmetric


# --------------------------------------------------------------------------------------------
# Net.init


NET = [
    {"name": "data", "type": "Input", "top": ["x"], "input_param": {"shape": {"dim": [2, 4, 8, 8]}}},
    {"name": "conv", "type": "Convolution", "bottom": ["x"], "top": ["c"],
     "convolution_param": {"num_output": 64, "kernel_size": [3], "group": 2,
                           "weight_filler": {"type": "xavier"},
                           "bias_filler": {"type": "constant", "value": 0.2}}},
    {"name": "plain", "type": "Convolution", "bottom": ["x"], "top": ["p"],
     "convolution_param": {"num_output": 3, "kernel_size": [1]}},
    {"name": "up", "type": "Deconvolution", "bottom": ["c"], "top": ["u"],
     "convolution_param": {"num_output": 64, "group": 64, "kernel_size": [4], "stride": [2],
                           "bias_term": False, "weight_filler": {"type": "bilinear"}}},
    {"name": "ip", "type": "InnerProduct", "bottom": ["c"], "top": ["y"],
     "inner_product_param": {"num_output": 50,
                             "weight_filler": {"type": "gaussian", "std": 0.01},
                             "bias_filler": {"type": "uniform", "min": -1, "max": 1}}},
    {"name": "ip2", "type": "InnerProduct", "bottom": ["y"], "top": ["z"],
     "inner_product_param": {"num_output": 40, "weight_filler": {"type": "msra",
                                                                  "variance_norm": "FAN_OUT"}}},
]


def build(layers):
    folder = tempfile.mkdtemp(prefix="netc_fill_", dir=SCRATCH)
    path = os.path.join(folder, "spec.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"name": "fillers", "layers": layers}, f, sort_keys=False)
    spec = parse_spec(path, layer_models())
    assert not spec.diagnostics.errors, [d.format() for d in spec.diagnostics.errors]
    return lower(plan(spec, NetState(phase="TRAIN")))


def test_net_init_gives_each_blob_its_declared_filler():
    net = build(NET)
    params, state = jit_fast(net.init)(jax.random.PRNGKey(0))  # one program, not op by op
    assert state == {}
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    assert set(p) == {"conv", "plain", "up", "ip", "ip2"}
    # conv: xavier on (64, 4/2, 3, 3): fan_in 18; bias constant 0.2
    w = p["conv"]["weight"]
    assert w.shape == (64, 2, 3, 3)
    s = math.sqrt(3 / 18)
    assert np.all(np.abs(w) <= s) and np.abs(w).max() > 0.9 * s
    assert abs(w.std() - s / math.sqrt(3)) < 0.1 * s / math.sqrt(3)
    np.testing.assert_array_equal(p["conv"]["bias"], np.full(64, np.float32(0.2)))
    # no filler given: constant 0 for weight and bias (Caffe's default)
    assert not np.any(p["plain"]["weight"]) and not np.any(p["plain"]["bias"])
    # deconvolution weight (C_in, C_out/group, 4, 4) = (64, 1, 4, 4), bilinear
    row = np.array([0.25, 0.75, 0.75, 0.25])
    assert p["up"]["weight"].shape == (64, 1, 4, 4)
    np.testing.assert_allclose(p["up"]["weight"], np.broadcast_to(np.outer(row, row),
                                                                  (64, 1, 4, 4)), atol=1e-7)
    assert "bias" not in p["up"]
    # ip: gaussian std 0.01 on (50, 64·6·6); bias uniform(−1, 1)
    w = p["ip"]["weight"]
    assert w.shape == (50, 64 * 6 * 6)
    check_mean_std(w, 0.0, 0.01, "ip gaussian")
    b = p["ip"]["bias"]
    assert b.shape == (50,) and np.all(np.abs(b) <= 1) and b.std() > 0.3
    # ip2: msra FAN_OUT on (40, 50): fan_out = count/shape[1] = 40
    w = p["ip2"]["weight"]
    assert abs(w.std() - math.sqrt(2 / 40)) < 0.1 * math.sqrt(2 / 40)
    assert not np.any(p["ip2"]["bias"])


def test_net_init_is_deterministic_per_seed_and_per_blob():
    net = build(NET)
    init = jit_fast(net.init)  # one program for the three keys
    a, _ = init(jax.random.PRNGKey(7))
    b, _ = init(jax.random.PRNGKey(7))
    c, _ = init(jax.random.PRNGKey(8))
    for layer in a:
        for role in a[layer]:
            np.testing.assert_array_equal(np.asarray(a[layer][role]), np.asarray(b[layer][role]))
    assert np.any(np.asarray(a["conv"]["weight"]) != np.asarray(c["conv"]["weight"]))
    assert np.any(np.asarray(a["ip"]["weight"]) != np.asarray(c["ip"]["weight"]))
    # two blobs with the same filler and shape draw from different streams
    twins = build([NET[0]] + [
        {"name": n, "type": "Convolution", "bottom": ["x"], "top": [n],
         "convolution_param": {"num_output": 4, "kernel_size": [3],
                               "weight_filler": {"type": "gaussian"}}} for n in ("c1", "c2")])
    t, _ = jit_fast(twins.init)(jax.random.PRNGKey(7))
    assert np.all(np.asarray(t["c1"]["weight"]) != np.asarray(t["c2"]["weight"]))
    # each blob's key comes from its (layer, role) name: removing a layer changes nobody else
    smaller = build([layer for layer in NET if layer["name"] != "plain"])
    d, _ = jit_fast(smaller.init)(jax.random.PRNGKey(7))
    for layer in d:
        for role in d[layer]:
            np.testing.assert_array_equal(np.asarray(d[layer][role]), np.asarray(a[layer][role]))
