"""MAX pooling whose windows tile the input (kernel == stride, no pad): the reshape + first-max
mask lowering (compiler/layers/pooling.py _max_tiled) in 1-D and 3-D, with ties, against Caffe's
loop; and LeNet's convolution lowering choice (conv1 by im2col, conv2 by oneDNN)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from test_parity import build, inputs_layer, run_netc

from netc.compiler.report import check_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kernel,size", [((3,), (9,)), ((2, 2, 2), (4, 2, 6))])
def test_tiled_max_pooling_nd_routes_ties_to_the_first_max(kernel, size):
    """Values 0/1 make most windows tie: only the first maximum in raster order (Caffe's `>`)
    gets the gradient, in any number of spatial axes."""
    rng = np.random.default_rng(len(kernel))
    x = rng.integers(0, 2, size=(2, 3, *size)).astype(np.float32)
    layer = {
        "name": "pool",
        "type": "Pooling",
        "bottom": ["x"],
        "top": ["y"],
        "pooling_param": {"pool": "MAX", "kernel_size": list(kernel), "stride": list(kernel)},
    }
    net = build([inputs_layer({"x": x.shape}), layer])
    out_shape = net.plan.blobs["y"]
    cot = rng.standard_normal(out_shape).astype(np.float32)
    outs, _, gx = run_netc(net, {}, {"x": x}, ["y"], [cot])
    want = np.zeros_like(x)
    for pos in itertools.product(*[range(d) for d in out_shape]):
        corner = tuple(o * k for o, k in zip(pos[2:], kernel))
        box = pos[:2] + tuple(slice(c, c + k) for c, k in zip(corner, kernel))
        win = x[box]
        assert outs[0][pos] == win.max()
        first = np.unravel_index(np.argmax(win), win.shape)  # np.argmax: the first maximum
        want[pos[:2] + tuple(c + f for c, f in zip(corner, first))] += cot[pos]
    np.testing.assert_allclose(gx["x"], want, rtol=1e-6, atol=1e-6)


def test_lenet_conv1_by_im2col_and_conv2_by_onednn():
    """A one-channel input with a small patch matrix stays im2col + matmul (oneDNN's per-call
    cost loses there: Convolution._use_kernel); other 2-D convolutions go to oneDNN."""
    _, p = check_file(str(ROOT / "models" / "lenet.yaml"), shown="TRAIN")
    convs = {pl.name: pl.resolved for pl in p.layers if pl.type == "Convolution"}
    assert (convs["conv1"].kernel, convs["conv1"].im2col) == ("", True)
    assert convs["conv2"].kernel == "onednn"
