"""`netc export --format safetensors | onnx | prototxt | stablehlo --platforms` (the CLI,
in-process): the shared manifest (kind, files with sha256), the safetensors weights keyed
layer/blob read back by safetensors' own loader, digest checks before loading, the ONNX file run in
onnxruntime equal to netc, the prototxt read back as the same net, netc extensions refused."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from conftest import MODELS, ROOT, netc

from netc.runtime.checkpoint import save_checkpoint

XOR = ROOT / "tests" / "specs" / "xor.yaml"
LENET = MODELS / "lenet.yaml"


def _checkpoint(spec, tmp_path, seed=0):
    """A checkpoint of random weights for `spec` ({params, state} as the trainer saves them)."""
    import jax

    from netc.compiler.catalogue import layer_models
    from netc.compiler.lower import Net
    from netc.compiler.plan import plan
    from netc.spec.messages import NetState
    from netc.spec.net import parse_spec

    net = Net(plan(parse_spec(str(spec), layer_models()), NetState(phase="TEST")))
    rng = np.random.default_rng(seed)

    def fill(s):
        if len(s.shape) >= 2:
            return (rng.standard_normal(s.shape) / math.sqrt(math.prod(s.shape[1:]))).astype(np.float32)
        return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)

    params, state = jax.tree_util.tree_map(fill, jax.eval_shape(net.init, jax.random.PRNGKey(0)))
    path = save_checkpoint(tmp_path / "run", "ck", {"params": params, "state": state},
                           {"iteration": 3})
    return path, net, params, state


def _manifest_ok(folder, kind, model_file):
    m = json.loads((folder / "manifest.json").read_text())
    assert m["format"] == "netc.exported" and m["kind"] == kind and m["model_file"] == model_file
    data = (folder / model_file).read_bytes()
    assert m["files"] == {model_file: {"sha256": hashlib.sha256(data).hexdigest(),
                                       "size": len(data)}}
    assert m["source"]["spec_sha256"] and m["source"]["iteration"] == 3
    return m


def test_safetensors_keyed_layer_blob(tmp_path):
    from safetensors.numpy import load_file

    from netc.runtime.exported import ExportedError, load_exported, load_weights

    ckpt, _, params, _ = _checkpoint(LENET, tmp_path)
    out = tmp_path / "st"
    r = netc("export", LENET, "--weights", ckpt, "--format", "safetensors", "-o", out)
    assert r.returncode == 0, r.stderr
    m = _manifest_ok(out, "safetensors", "weights.safetensors")
    flat = load_file(str(out / "weights.safetensors"))  # safetensors' own reader
    want = {f"{layer}/{role}": v for layer, roles in params.items() for role, v in roles.items()}
    assert sorted(flat) == sorted(want) == sorted(m["tensors"])
    for k, v in want.items():
        np.testing.assert_array_equal(flat[k], v)
    tree, _ = load_weights(out)
    np.testing.assert_array_equal(tree["conv1"]["weight"], params["conv1"]["weight"])
    with pytest.raises(ExportedError, match="not a StableHLO one"):
        load_exported(out)
    # one flipped byte: refused before parsing, naming the file and the digest
    f = out / "weights.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(ExportedError, match=r"weights\.safetensors: sha256 .* does not match"):
        load_weights(out)


def test_safetensors_layer_names_with_slash(tmp_path):
    """GoogLeNet's layers are called conv1/7x7_s2: the key is that name, "/", the blob."""
    from netc.runtime.exported import load_weights

    spec = tmp_path / "net.yaml"
    spec.write_text("name: s\nlayers:\n"
                    "  - {name: data, type: Input, top: data, input_param: {shape: {dim: [1, 3]}}}\n"
                    "  - {name: a/b, type: InnerProduct, bottom: data, top: y, "
                    "inner_product_param: {num_output: 2}}\n")
    ckpt, _, params, _ = _checkpoint(spec, tmp_path)
    r = netc("export", spec, "--weights", ckpt, "--format", "safetensors", "-o", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    tree, _ = load_weights(tmp_path / "o")
    assert set(tree) == {"a/b"} and set(tree["a/b"]) == {"weight", "bias"}
    np.testing.assert_array_equal(tree["a/b"]["bias"], params["a/b"]["bias"])


def test_onnx_cli_runs_in_onnxruntime(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import jax

    ckpt, net, params, state = _checkpoint(LENET, tmp_path)
    out = tmp_path / "onnx"
    r = netc("export", LENET, "--weights", ckpt, "--format", "onnx", "-o", out)
    assert r.returncode == 0, r.stderr
    m = _manifest_ok(out, "onnx", "model.onnx")
    assert m["inputs"] == [{"name": "data", "shape": ["N", 1, 28, 28], "dtype": "float32"}]
    assert m["outputs"] == [{"name": "ip2", "shape": ["N", 10], "dtype": "float32"}]
    assert m["opset"] >= 17
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    # the initializers are the checkpoint's weights, keyed layer/blob
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(inits["conv1/weight"], params["conv1"]["weight"])
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    (got,) = sess.run(["ip2"], {"data": x})
    ref = np.asarray(jax.jit(lambda v: net.apply(params, state, {"data": v}, train=False,
                                                 outputs=["ip2"])[0]["ip2"])(x))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_onnx_refusal_is_a_clean_error(tmp_path):
    pytest.importorskip("onnx")
    spec = tmp_path / "net.yaml"
    spec.write_text("name: s\nlayers:\n"
                    "  - {name: data, type: Input, top: data, input_param: {shape: {dim: [1, 2, 4, 4]}}}\n"
                    "  - {name: norm, type: MVN, bottom: data, top: y}\n"
                    "  - {name: r, type: ReLU, bottom: y, top: z}\n")
    ckpt, *_ = _checkpoint(spec, tmp_path)
    r = netc("export", spec, "--weights", ckpt, "--format", "onnx", "-o", tmp_path / "o")
    assert r.returncode == 1 and "layer 'norm' (MVN)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_prototxt_round_trip(tmp_path):
    from netc.spec.prototxt import prototxt_to_data
    from netc.spec.yaml_io import read_yaml

    out = tmp_path / "lenet.prototxt"
    r = netc("export", LENET, "--format", "prototxt", "-o", out)
    assert r.returncode == 0, r.stderr
    back = prototxt_to_data(out.read_text())
    orig = read_yaml(LENET.read_text()).data
    assert back["name"] == orig["name"]
    assert [(x["name"], x["type"]) for x in back["layers"]] == \
        [(x["name"], x["type"]) for x in orig["layers"]]
    conv = next(x for x in back["layers"] if x["name"] == "conv1")
    assert conv["convolution_param"]["num_output"] == 20
    solver = (tmp_path / "lenet_solver.prototxt").read_text()
    assert solver.startswith('net: "lenet.prototxt"\n') and "base_lr:" in solver
    # a netc extension is refused by name
    ext = tmp_path / "same.yaml"
    ext.write_text("name: s\nlayers:\n"
                   "  - {name: data, type: Input, top: data, input_param: {shape: {dim: [1, 2, 8, 8]}}}\n"
                   "  - {name: c, type: Convolution, bottom: data, top: c, convolution_param: "
                   "{num_output: 2, kernel_size: 3, pad_mode: SAME}}\n")
    r = netc("export", ext, "--format", "prototxt", "-o", tmp_path / "same.prototxt")
    assert r.returncode == 1 and "pad_mode" in r.stderr and "netc extension" in r.stderr
    assert not (tmp_path / "same.prototxt").exists()
    r = netc("export", ext, "--format", "prototxt", "--weights", "x", "-o", tmp_path / "y")
    assert r.returncode == 2 and "takes no" in r.stderr


def test_stablehlo_platforms_and_compatibility(tmp_path):
    from netc.runtime.exported import run_exported

    ckpt, *_ = _checkpoint(XOR, tmp_path)
    out = tmp_path / "hlo"
    r = netc("export", XOR, "--weights", ckpt, "--platforms", "cpu,cuda", "-o", out)
    assert r.returncode == 0, r.stderr
    m = _manifest_ok(out, "stablehlo", "model.jaxexport")
    assert m["platforms"] == ["cpu", "cuda"]
    c = m["compatibility"]
    assert c["calling_convention_version"] == m["calling_convention_version"]
    assert c["guaranteed_until"] > c["exported_on"]
    y = run_exported(out, {"data": np.ones((5, 2), np.float32)})
    assert y["out"].shape == (5, 1)
    r = netc("export", XOR, "--weights", ckpt, "--platforms", "cpu,gpu", "-o", tmp_path / "x")
    assert r.returncode == 2 and "unknown platform 'gpu'" in r.stderr
    r = netc("export", XOR, "--weights", ckpt, "--format", "onnx", "--platforms", "cpu",
             "-o", tmp_path / "x")
    assert r.returncode == 2 and "for --format stablehlo" in r.stderr
    r = netc("export", XOR, "--format", "onnx", "-o", tmp_path / "x")
    assert r.returncode == 2 and "--weights is required" in r.stderr
    (tmp_path / "afile").write_text("")
    r = netc("export", XOR, "--weights", ckpt, "-o", tmp_path / "afile")
    assert r.returncode == 1 and "not a folder" in r.stderr and "Traceback" not in r.stderr
