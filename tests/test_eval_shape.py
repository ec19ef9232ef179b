"""The shape rules are the one shape truth: every blob shape the plan infers equals the shape the
lowered JAX net produces (`jax.eval_shape`, so nothing is computed).

- every registered layer type (from the catalogue, so a new type without a config here fails);
- models/lenet.yaml in both phases;
- random legal chains/DAGs (hypothesis).
"""

from __future__ import annotations

import os
import tempfile

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest
import yaml
from conftest import MODELS
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from netc.compiler.catalogue import layer_models, units  # noqa: E402
from netc.compiler.lower import lower  # noqa: E402
from netc.compiler.plan import plan  # noqa: E402
from netc.spec.messages import NetState  # noqa: E402
from netc.spec.net import parse_spec  # noqa: E402


def parse(layers: list[dict]):
    folder = tempfile.mkdtemp(prefix="netc_shape_")
    path = os.path.join(folder, "spec.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"name": "shapes", "layers": layers}, f, sort_keys=False)
    return parse_spec(path, layer_models())


def inp(name: str, *shape: int) -> dict:
    return {"name": f"in_{name}", "type": "Input", "top": [name],
            "input_param": {"shape": {"dim": list(shape)}}}


def assert_shapes_agree(p, where: str) -> None:
    """eval_shape of the lowered net vs the plan's shape of every blob."""
    assert p.ok, [d.format() for d in p.diagnostics.errors]
    net = lower(p)
    inputs = {b: jax.ShapeDtypeStruct(p.blobs[b], jnp.float32) for b in p.inputs}
    params, state = jax.eval_shape(net.init, jax.random.PRNGKey(0))
    for (layer, role), decl in p.params.items():
        tree = params if decl.learned else state
        assert tree[layer][role].shape == decl.shape, f"{where}: {layer}/{role}"

    def run(params, state, inputs, key):
        blobs, _ = net.apply(params, state, inputs, rng=key)
        return blobs

    blobs = jax.eval_shape(run, params, state, inputs, jax.random.PRNGKey(0))
    assert set(blobs) == set(p.blobs), f"{where}: blobs {sorted(blobs)} vs plan {sorted(p.blobs)}"
    for name, shape in p.blobs.items():
        assert blobs[name].shape == tuple(shape), \
            f"{where}: blob '{name}': plan says {shape}, JAX gives {blobs[name].shape}"


# Small configurations per layer type (each a list of layers after the inputs it needs).
# A type registered in the catalogue but missing here fails test_every_type_has_a_config.
X4 = inp("x", 2, 3, 9, 8)
LABEL = inp("label", 2)


def _conv(kind, **param):
    return {"name": "c", "type": kind, "bottom": ["x"], "top": ["y"],
            "convolution_param": {"num_output": 6, **param}}


def _pool(**param):
    return {"name": "p", "type": "Pooling", "bottom": ["x"], "top": ["y"], "pooling_param": param}


CONFIGS: dict[str, list[list[dict]]] = {
    "Input": [[inp("x", 2, 3), inp("z", 1)],
              [{"name": "in", "type": "Input", "top": ["a", "b"],
                "input_param": {"shape": [{"dim": [2, 3]}, {"dim": [4]}]}}]],
    "Data": [[{"name": "d", "type": "Data", "top": ["data", "label"],
               "data_param": {"source": "netc:digits/train", "batch_size": 5}}],
             [{"name": "d", "type": "Data", "top": ["data"],
               "transform_param": {"crop_size": 20},
               "data_param": {"source": "netc:digits/test", "batch_size": 3}}]],
    "DenseImageData": [[{"name": "d", "type": "DenseImageData", "top": ["data", "label"],
                         "transform_param": {"crop_size": 6},
                         "dense_image_data_param": {"source": "list.txt", "batch_size": 2,
                                                    "new_height": 8, "new_width": 10}}]],
    "ImageData": [[{"name": "d", "type": "ImageData", "top": ["data", "label"],
                    "transform_param": {"crop_size": 6},
                    "image_data_param": {"source": "list.txt", "batch_size": 2, "new_height": 8,
                                         "new_width": 10, "is_color": False}}]],
    "Convolution": [
        [X4, _conv("Convolution", kernel_size=[3])],
        [X4, _conv("Convolution", kernel_size=[3, 2], stride=[2], pad=[1, 0], dilation=[2, 1],
                   group=3)],
        [inp("x", 2, 4, 7), _conv("Convolution", kernel_size=[2], stride=[3], group=2)],
        [inp("x", 1, 2, 5, 6, 4), _conv("Convolution", kernel_size=[2, 3, 1], pad=[1])],
        [inp("x", 2, 3, 4, 7), _conv("Convolution", kernel_size=[2], axis=2)],
    ],
    "Deconvolution": [
        [X4, _conv("Deconvolution", kernel_size=[4], stride=[2], pad=[1], bias_term=False)],
        [X4, _conv("Deconvolution", kernel_size=[3, 2], stride=[3, 1], dilation=[2], group=3)],
        [inp("x", 1, 2, 5), _conv("Deconvolution", kernel_size=[1], pad=[2], stride=[3])],
    ],
    "Pooling": [
        [X4, _pool(pool="MAX", kernel_size=[2], stride=[2])],
        [X4, _pool(pool="AVE", kernel_size=[3], stride=[2], pad=[1])],
        [X4, _pool(pool="MAX", kernel_size=[3, 2], stride=[3], pad=[2, 1], round_mode="FLOOR")],
        [X4, _pool(pool="AVE", global_pooling=True)],
        [inp("x", 1, 2, 7), _pool(pool="MAX", kernel_size=[3], stride=[2])],
        [inp("x", 1, 2, 5, 6, 7), _pool(pool="AVE", kernel_size=[2], stride=[2], pad=[1])],
    ],
    "InnerProduct": [
        [X4, {"name": "ip", "type": "InnerProduct", "bottom": ["x"], "top": ["y"],
              "inner_product_param": {"num_output": 7}}],
        [X4, {"name": "ip", "type": "InnerProduct", "bottom": ["x"], "top": ["y"],
              "inner_product_param": {"num_output": 5, "axis": 2, "transpose": True}}],
    ],
    "ReLU": [[X4, {"name": "r", "type": "ReLU", "bottom": ["x"], "top": ["x"]}],
             [X4, {"name": "r", "type": "ReLU", "bottom": ["x"], "top": ["y"],
                   "relu_param": {"negative_slope": 0.1}}]],
    "Sigmoid": [[X4, {"name": "s", "type": "Sigmoid", "bottom": ["x"], "top": ["y"]}]],
    "TanH": [[X4, {"name": "t", "type": "TanH", "bottom": ["x"], "top": ["x"]}]],
    "Dropout": [[X4, {"name": "d", "type": "Dropout", "bottom": ["x"], "top": ["x"],
                      "dropout_param": {"dropout_ratio": 0.3}}],
                [X4, {"name": "d", "type": "Dropout", "bottom": ["x"], "top": ["y"],
                      "dropout_param": {"spatial": True}}]],
    "GaussianNoise": [[X4, {"name": "g", "type": "GaussianNoise", "bottom": ["x"], "top": ["x"],
                            "gaussian_noise_param": {"std": 0.5}}]],
    "Softmax": [[X4, {"name": "s", "type": "Softmax", "bottom": ["x"], "top": ["y"]}],
                [X4, {"name": "s", "type": "Softmax", "bottom": ["x"], "top": ["y"],
                      "softmax_param": {"axis": -1}}]],
    "Flatten": [[X4, {"name": "f", "type": "Flatten", "bottom": ["x"], "top": ["y"]}],
                [X4, {"name": "f", "type": "Flatten", "bottom": ["x"], "top": ["y"],
                      "flatten_param": {"axis": 0, "end_axis": 2}}]],
    "Reshape": [[X4, {"name": "r", "type": "Reshape", "bottom": ["x"], "top": ["y"],
                      "reshape_param": {"shape": {"dim": [0, -1, 4]}}}],
                [X4, {"name": "r", "type": "Reshape", "bottom": ["x"], "top": ["y"],
                      "reshape_param": {"shape": {"dim": [3, 3]}, "axis": 2, "num_axes": 1}}]],
    "Concat": [[X4, inp("z", 2, 5, 9, 8),
                {"name": "c", "type": "Concat", "bottom": ["x", "z"], "top": ["y"]}],
               [X4, inp("z", 2, 3, 2, 8),
                {"name": "c", "type": "Concat", "bottom": ["x", "z", "x"], "top": ["y"],
                 "concat_param": {"axis": -2}}]],
    "Eltwise": [[X4, inp("z", 2, 3, 9, 8),
                 {"name": "e", "type": "Eltwise", "bottom": ["x", "z"], "top": ["y"],
                  "eltwise_param": {"operation": op}}] for op in ("SUM", "PROD", "MAX")],
    "Split": [[X4, {"name": "s", "type": "Split", "bottom": ["x"], "top": ["a", "b", "c"]}]],
    "SoftmaxWithLoss": [
        [inp("x", 2, 10), LABEL,
         {"name": "l", "type": "SoftmaxWithLoss", "bottom": ["x", "label"], "top": ["loss"]}],
        [inp("x", 2, 4, 3, 3), inp("label", 2, 1, 3, 3),
         {"name": "l", "type": "SoftmaxWithLoss", "bottom": ["x", "label"],
          "top": ["loss", "prob"]}],
    ],
    "EuclideanLoss": [[X4, inp("t", 2, 216),
                       {"name": "l", "type": "EuclideanLoss", "bottom": ["x", "t"],
                        "top": ["loss"]}]],
    "Accuracy": [
        [inp("x", 2, 10), LABEL,
         {"name": "a", "type": "Accuracy", "bottom": ["x", "label"], "top": ["acc"]}],
        [inp("x", 2, 4, 3), inp("label", 2, 3),
         {"name": "a", "type": "Accuracy", "bottom": ["x", "label"], "top": ["acc", "per"],
          "accuracy_param": {"top_k": 2}}],
    ],
}


def _merge_group_configs() -> None:
    """Layer groups keep their configs beside their parity tests, in tests/configs_<group>.py
    (a dict CONFIGS in the same format, built with the helpers `inp` / LABEL of that module)."""
    import glob
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    for path in sorted(glob.glob(os.path.join(here, "configs_*.py"))):
        spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for kind, configs in module.CONFIGS.items():
            CONFIGS.setdefault(kind, []).extend(configs)


_merge_group_configs()


def test_every_type_has_a_config():
    missing = sorted(set(units()) - set(CONFIGS))
    assert not missing, f"add shape configs to tests/test_eval_shape.py for: {missing}"


@pytest.mark.parametrize("kind", sorted(units()))
def test_type_shapes_match_eval_shape(kind):
    if kind not in CONFIGS:
        pytest.fail(f"no shape config for layer type {kind} (add one to CONFIGS)")
    for i, layers in enumerate(CONFIGS[kind]):
        assert any(layer["type"] == kind for layer in layers)
        spec = parse(layers)
        assert not spec.diagnostics.errors, [d.format() for d in spec.diagnostics.errors]
        for phase in ("TRAIN", "TEST"):
            assert_shapes_agree(plan(spec, NetState(phase=phase)), f"{kind} config {i} {phase}")


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_lenet_shapes_match_eval_shape(phase):
    spec = parse_spec(str(MODELS / "lenet.yaml"), layer_models())
    assert not spec.diagnostics.errors
    p = plan(spec, NetState(phase=phase))
    assert_shapes_agree(p, f"lenet {phase}")
    assert p.blobs["ip2"] == ((64 if phase == "TRAIN" else 100), 10)


# --------------------------------------------------------------------------------------------
# random legal DAGs


LEGIT = ("output would be empty",)


def _random_layer(draw, i: int, shapes: dict) -> dict:
    """Layer l{i} on a drawn blob of `shapes`, of a kind and with parameters that fit it."""
    name = f"l{i}"
    blob = draw(st.sampled_from(sorted(shapes)))
    s = shapes[blob]
    spatial = len(s) - 2
    kinds = ["ReLU", "Softmax", "Dropout", "Split", "Flatten", "Reshape", "InnerProduct"]
    if spatial >= 1:
        kinds += ["Convolution", "Convolution", "Pooling", "Pooling"]
    same = sorted(b for b in shapes if shapes[b] == s)
    concat_ok = sorted(b for b in shapes if len(shapes[b]) == len(s)
                       and shapes[b][0] == s[0] and shapes[b][2:] == s[2:])
    kinds += ["Eltwise"] * 3 * (len(same) > 1) + ["Concat"] * 3 * (len(concat_ok) > 1)
    kind = draw(st.sampled_from(kinds))
    top = f"b{i}"
    layer = {"name": name, "type": kind, "bottom": [blob], "top": [top]}
    if kind in ("ReLU", "Dropout"):
        if draw(st.booleans()):
            layer["top"] = [blob]  # in place
    elif kind == "Softmax":
        layer["softmax_param"] = {"axis": draw(st.integers(-len(s), len(s) - 1))}
    elif kind == "Split":
        layer["top"] = [f"b{i}_{j}" for j in range(draw(st.integers(1, 3)))]
    elif kind == "Flatten":
        a = draw(st.integers(0, len(s) - 1))
        layer["flatten_param"] = {"axis": a, "end_axis": draw(st.integers(a, len(s) - 1))}
    elif kind == "Reshape":
        layer["reshape_param"] = {"shape": {"dim": [0, -1]}}
    elif kind == "InnerProduct":
        layer["inner_product_param"] = {"num_output": draw(st.integers(1, 6)),
                                        "axis": draw(st.integers(1, len(s) - 1))}
    elif kind == "Convolution":
        g = draw(st.sampled_from([g for g in (1, 2) if s[1] % g == 0]))
        layer["convolution_param"] = {
            "num_output": g * draw(st.integers(1, 3)), "group": g,
            "kernel_size": [draw(st.integers(1, 3))], "stride": [draw(st.integers(1, 2))],
            "pad": [draw(st.integers(0, 1))], "dilation": [draw(st.integers(1, 2))]}
    elif kind == "Pooling":
        k = draw(st.integers(1, 3))
        if draw(st.integers(0, 5)) == 0:
            layer["pooling_param"] = {"pool": draw(st.sampled_from(["MAX", "AVE"])),
                                      "global_pooling": True}
        else:
            layer["pooling_param"] = {
                "pool": draw(st.sampled_from(["MAX", "AVE"])), "kernel_size": [k],
                "stride": [draw(st.integers(1, 3))], "pad": [draw(st.integers(0, k - 1))],
                "round_mode": draw(st.sampled_from(["CEIL", "FLOOR"]))}
    elif kind == "Eltwise":
        bots = draw(st.lists(st.sampled_from(same), min_size=2, max_size=3))
        layer["bottom"] = bots
        op = draw(st.sampled_from(["SUM", "PROD", "MAX"]))
        layer["eltwise_param"] = {"operation": op}
    elif kind == "Concat":
        layer["bottom"] = draw(st.lists(st.sampled_from(concat_ok), min_size=2, max_size=3))
    return layer


@st.composite
def random_net(draw):
    """A random DAG grown one layer at a time; each new layer is shaped from the plan's current
    blob shapes (so most draws are legal); returns the layer list."""
    ndim = draw(st.integers(1, 3))
    shape = [draw(st.integers(1, 3)), draw(st.integers(1, 4))]
    shape += [draw(st.integers(1, 10 if ndim < 3 else 5)) for _ in range(ndim)]
    layers = [inp("data", *shape)]
    shapes = {"data": tuple(shape)}
    for i in range(draw(st.integers(2, 8))):
        layers.append(_random_layer(draw, i, shapes))
        spec = parse(layers)
        p = plan(spec, NetState(phase="TRAIN"))
        errors = [d.format() for d in spec.diagnostics.errors]
        if errors:
            assert all(any(m in e for m in LEGIT) for e in errors), errors
            layers.pop()  # a legitimately empty output: try another layer
            continue
        shapes = dict(p.blobs)
    return layers


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(random_net())
def test_random_dags_shapes_match_eval_shape(layers):
    assume(len(layers) > 1)
    spec = parse(layers)
    assert not spec.diagnostics.errors, [d.format() for d in spec.diagnostics.errors]
    for phase in ("TRAIN", "TEST"):
        assert_shapes_agree(plan(spec, NetState(phase=phase)), f"random net {phase}: {layers}")
