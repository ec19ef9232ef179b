"""Adaptive pooling (pooling_param.output_size, a netc extension): forward values and gradients
equal PyTorch's adaptive_{avg,max}_pool{1,2,3}d (float64 autograd reference) on random sizes,
divisible, non-divisible (overlapping bins) and larger-than-input outputs alike; shape inference
and the spec errors."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch.nn.functional as F
import yaml
from conftest import SCRATCH
from test_parity import compare_many, inputs_layer

from netc.compiler.catalogue import layer_models
from netc.compiler.layers.pooling import adaptive_bins
from netc.compiler.plan import plan
from netc.spec.messages import NetState
from netc.spec.net import parse_spec

TORCH = {("AVE", 1): F.adaptive_avg_pool1d, ("AVE", 2): F.adaptive_avg_pool2d,
         ("AVE", 3): F.adaptive_avg_pool3d, ("MAX", 1): F.adaptive_max_pool1d,
         ("MAX", 2): F.adaptive_max_pool2d, ("MAX", 3): F.adaptive_max_pool3d}


def layer(pool, output_size, **more):
    return {"name": "pool", "type": "Pooling", "bottom": ["x"], "top": ["y"],
            "pooling_param": {"pool": pool, "output_size": list(output_size), **more}}


def case(pool, size, out):
    """A compare_many case: torch's adaptive pooling as the reference, (2, 3, *out) planned."""
    ref_fn = TORCH[(pool, len(size))]

    def ref(_, x):
        return [ref_fn(x["x"], tuple(out))]

    return (f"adaptive {pool} {size} → {out}", layer(pool, out), {"x": (2, 3, *size)}, ref,
            {"blob_shapes": {"y": (2, 3, *out)}})


def test_bins_are_pytorchs():
    assert adaptive_bins(10, 3) == ((0, 4), (3, 7), (6, 10))  # overlapping
    assert adaptive_bins(2, 7) == ((0, 1), (0, 1), (0, 1), (0, 2), (1, 2), (1, 2), (1, 2))
    assert adaptive_bins(12, 4) == ((0, 3), (3, 6), (6, 9), (9, 12))
    assert adaptive_bins(5, 5) == tuple((i, i + 1) for i in range(5))


SIZES_2D = [((7, 7), (7, 7)), ((12, 8), (4, 2)), ((10, 11), (3, 4)), ((2, 3), (7, 7)),
            ((5, 9), (1, 1)), ((13, 6), (5, 6))]


def _random_case(seed):
    """Random input and output sizes per axis, 1-D to 3-D: most are not divisible."""
    rng = np.random.default_rng(100 + seed)
    n = [2, 2, 1, 3, 2, 1][seed]
    size = tuple(int(v) for v in rng.integers(1, 12 if n < 3 else 7, size=n))
    out = tuple(int(v) for v in rng.integers(1, 9 if n < 3 else 5, size=n))
    return case("AVE" if seed % 2 else "MAX", size, out)


def test_matches_torch():
    """2-D equal, divisible, overlapping, larger-than-input and 1×1 outputs (AVE and MAX), random
    1-D to 3-D sizes, and one output_size value for every axis, all in one program."""
    cases = [case(pool, size, out) for pool in ("AVE", "MAX") for size, out in SIZES_2D]
    cases += [_random_case(seed) for seed in range(6)]
    one = layer("AVE", [6])
    cases.append(("adaptive AVE (6)", one, {"x": (2, 3, 9, 13)},
                  lambda _, x: [F.adaptive_avg_pool2d(x["x"], 6)],
                  {"blob_shapes": {"y": (2, 3, 6, 6)}}))
    compare_many(cases, np.random.default_rng(7))


def _plan_errors(layers):
    folder = tempfile.mkdtemp(prefix="netc_adaptive_", dir=SCRATCH)
    path = os.path.join(folder, "spec.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"name": "adaptive", "layers": layers}, f, sort_keys=False)
    spec = parse_spec(path, layer_models())
    if spec.diagnostics.errors:
        return [d.format() for d in spec.diagnostics.errors]
    p = plan(spec, NetState(phase="TEST"))
    return [d.format() for d in p.diagnostics.errors]


@pytest.mark.parametrize("extra,needle", [
    ({"kernel_size": [2]}, "do not set kernel_size"),
    ({"stride": [2]}, "do not set stride"),
    ({"global_pooling": True}, "do not set global_pooling"),
    ({"pool": "STOCHASTIC"}, "adaptive pooling (output_size) is MAX or AVE, not STOCHASTIC"),
    ({"output_size": [2, 3, 4]}, "output_size has 3 values; give 1 or 2"),
])
def test_spec_errors(extra, needle):
    spec_layer = layer("AVE", [2])
    spec_layer["pooling_param"].update(extra)
    errors = _plan_errors([inputs_layer({"x": (1, 3, 8, 8)}), spec_layer])
    assert any(needle in e for e in errors), errors


def test_no_mask_top():
    spec_layer = layer("MAX", [2])
    spec_layer["top"] = ["y", "mask"]
    errors = _plan_errors([inputs_layer({"x": (1, 3, 8, 8)}), spec_layer])
    assert any("no argmax mask" in e for e in errors), errors
