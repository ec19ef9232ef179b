"""`netc.runtime.export` / `netc.runtime.exported`: deploy-forward export with jax.export, and a
loader that runs it in a fresh process without netc's spec or compiler."""

import json
import shutil
import subprocess
import sys
import textwrap

import flatbuffers  # noqa: E402, F401 - a declared dependency of export
import jax  # noqa: E402
import numpy as np
import pytest
from conftest import MODELS

from netc.compiler.catalogue import layer_models  # noqa: E402
from netc.compiler.lower import lower  # noqa: E402
from netc.compiler.plan import plan  # noqa: E402
from netc.runtime.checkpoint import save_checkpoint, sha256_file  # noqa: E402
from netc.runtime.export import ExportError, export_model  # noqa: E402
from netc.runtime.exported import ExportedError, load_exported, run_exported  # noqa: E402
from netc.spec.messages import NetState  # noqa: E402
from netc.spec.net import parse_spec  # noqa: E402


def _net(spec_path):
    spec = parse_spec(str(spec_path), layer_models())
    assert not spec.diagnostics.errors, [d.format() for d in spec.diagnostics.errors]
    # without native kernels: an exported program is pure XLA (it must run anywhere), the same
    # program as this Net's, so their outputs are compared bit for bit
    return lower(plan(spec, NetState(phase="TEST")), kernels=False)


def _reference(net, params, state, x, output, extra=None):
    """The jitted net.apply's value of `output` for data `x` (net.apply itself is checked against
    PyTorch by the parity tests; an eager run here cost ~15 s of per-op compiles for no more)."""
    inputs = {"data": x, **(extra or {})}
    return np.asarray(jax.jit(lambda i: net.apply(params, state, i)[0][output])(inputs))


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    net = _net(MODELS / "lenet.yaml")
    params, state = net.init(jax.random.PRNGKey(0))
    ckpt = save_checkpoint(root / "run", "lenet_iter_0", {"params": params, "state": state}, {},
                           iteration=0)
    out = root / "lenet-export"
    manifest_path = export_model(MODELS / "lenet.yaml", ckpt, out)
    return {"net": net, "params": params, "state": state, "dir": out, "root": root,
            "ckpt": ckpt, "manifest": json.loads(manifest_path.read_text())}


def test_manifest(lenet):
    m = lenet["manifest"]
    assert m["format"] == "netc.exported" and m["version"] == 1
    assert m["inputs"] == [{"name": "data", "shape": ["b", 1, 28, 28], "dtype": "float32"}]
    assert m["outputs"] == [{"name": "ip2", "shape": ["b", 10], "dtype": "float32"}]
    assert {"cpu", "cuda"} <= set(m["platforms"])
    assert m["layout"] == "NCHW"
    assert m["transform_param"] == {"data": {"scale": 0.00390625}}
    assert m["source"]["layers"] == ["conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2"]
    assert m["source"]["iteration"] == 0
    assert m["jax_version"] == jax.__version__ and m["netc_version"]
    assert isinstance(m["calling_convention_version"], int)
    files = sorted(p.name for p in lenet["dir"].iterdir())
    assert files == ["manifest.json", "model.jaxexport"]
    assert m["files"] == {"model.jaxexport": {
        "sha256": sha256_file(lenet["dir"] / "model.jaxexport"),
        "size": (lenet["dir"] / "model.jaxexport").stat().st_size}}
    exported, _ = load_exported(lenet["dir"])
    assert set(exported.platforms) == set(m["platforms"])


FRESH = textwrap.dedent("""
    import hashlib, json, pathlib, sys
    import numpy as np
    from netc.runtime.exported import load_exported, run_exported
    assert "netc.compiler" not in sys.modules and "netc.spec" not in sys.modules
    art, io = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    xs = np.load(io / "inputs.npz")
    loaded = load_exported(art)
    out = {k: run_exported(loaded, {"data": xs[k]})["ip2"] for k in xs.files}
    out["direct_7"] = run_exported(art, {"data": xs["7"].astype(np.float64)})["ip2"]
    # the plain-jax recipe of netc.runtime.exported's docstring
    from jax import export
    manifest = json.loads((art / "manifest.json").read_text())
    blob = (art / "model.jaxexport").read_bytes()
    assert hashlib.sha256(blob).hexdigest() == manifest["files"]["model.jaxexport"]["sha256"]
    out["plain_7"] = np.asarray(export.deserialize(bytearray(blob)).call({"data": xs["7"]})["ip2"])
    assert "netc.compiler" not in sys.modules and "netc.spec" not in sys.modules, \\
        sorted(m for m in sys.modules if m.startswith("netc"))
    np.savez(io / "outputs.npz", **out)
""")


def test_fresh_process_matches_net_apply(lenet, tmp_path):
    rng = np.random.RandomState(1)
    xs = {str(n): rng.rand(n, 1, 28, 28).astype(np.float32) for n in (1, 7)}
    np.savez(tmp_path / "inputs.npz", **xs)
    r = subprocess.run([sys.executable, "-c", FRESH, str(lenet["dir"]), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "outputs.npz")
    for k, x in xs.items():
        jitted = _reference(lenet["net"], lenet["params"], lenet["state"], x, "ip2",
                            {"label": np.zeros(len(x), np.int32)})
        assert got[k].shape == (len(x), 10)
        np.testing.assert_array_equal(got[k], jitted)  # same XLA program: bit for bit
    np.testing.assert_array_equal(got["direct_7"], got["7"])  # float64 input converted
    np.testing.assert_array_equal(got["plain_7"], got["7"])


def _copy(lenet, tmp_path):
    d = tmp_path / "art"
    shutil.copytree(lenet["dir"], d)
    return d


def test_tampered_model_is_refused(lenet, tmp_path):
    d = _copy(lenet, tmp_path)
    model = d / "model.jaxexport"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    model.write_bytes(bytes(data))
    with pytest.raises(ExportedError, match=r"model\.jaxexport: sha256 .* refusing"):
        load_exported(d)
    with pytest.raises(ExportedError, match=r"model\.jaxexport"):
        run_exported(d, {"data": np.zeros((1, 1, 28, 28), np.float32)})


def test_tampered_manifest_hash_is_refused(lenet, tmp_path):
    d = _copy(lenet, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    digest = m["files"]["model.jaxexport"]["sha256"]
    m["files"]["model.jaxexport"]["sha256"] = ("0" if digest[0] != "0" else "1") + digest[1:]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ExportedError, match=r"model\.jaxexport: sha256 .* does not match"):
        load_exported(d)


def test_missing_or_unsafe_files_are_refused(lenet, tmp_path):
    d = _copy(lenet, tmp_path)
    (d / "model.jaxexport").unlink()
    with pytest.raises(ExportedError, match=r"model\.jaxexport: missing"):
        load_exported(d)
    d2 = _copy(lenet, tmp_path / "2")
    m = json.loads((d2 / "manifest.json").read_text())
    m["files"]["../secret"] = {"sha256": "0" * 64}
    (d2 / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ExportedError, match="plain names"):
        load_exported(d2)
    with pytest.raises(ExportedError, match="manifest.json: missing"):
        load_exported(tmp_path)


def test_inputs_are_checked(lenet):
    loaded = load_exported(lenet["dir"])
    with pytest.raises(ExportedError, match="missing input.*'data'"):
        run_exported(loaded, {"image": np.zeros((1, 1, 28, 28), np.float32)})
    with pytest.raises(ExportedError, match="axis 2 must be 28"):
        run_exported(loaded, {"data": np.zeros((2, 1, 27, 28), np.float32)})
    with pytest.raises(ExportedError, match="expected 4 axes"):
        run_exported(loaded, {"data": np.zeros((1, 28, 28), np.float32)})
    with pytest.raises(ExportedError, match="cannot be converted"):
        run_exported(loaded, {"data": np.zeros((1, 1, 28, 28), np.complex64)})


def test_chosen_outputs_and_weight_errors(lenet, tmp_path):
    params, state = lenet["params"], lenet["state"]
    m = json.loads(export_model(MODELS / "lenet.yaml", {"params": params, "state": state},
                                tmp_path / "feat", outputs=["ip1"], platforms=("cpu",)).read_text())
    assert [o["name"] for o in m["outputs"]] == ["ip1"] and m["platforms"] == ["cpu"]
    assert m["source"]["layers"] == ["conv1", "pool1", "conv2", "pool2", "ip1", "relu1"]
    with pytest.raises(ExportError, match="output 'loss' .*loss/metric"):
        export_model(MODELS / "lenet.yaml", lenet["ckpt"], tmp_path / "x", outputs=["loss"])
    broken = {"params": {k: v for k, v in params.items() if k != "conv2"}, "state": state}
    with pytest.raises(ExportError, match="no parameter 'conv2/weight'"):
        export_model(MODELS / "lenet.yaml", broken, tmp_path / "y")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="other files"):
        export_model(MODELS / "lenet.yaml", lenet["ckpt"], tmp_path / "busy")


DEPLOY = """
name: tiny-deploy
layers:
  - name: input
    type: Input
    top: [data, label]
    input_param: {shape: [{dim: [-1, 3, 8, 8]}, {dim: [-1]}]}
  - name: conv
    type: Convolution
    bottom: data
    top: conv
    convolution_param: {num_output: 4, kernel_size: 3, weight_filler: {type: xavier}}
  - name: relu
    type: ReLU
    bottom: conv
    top: conv
  - name: fc
    type: InnerProduct
    bottom: conv
    top: fc
    inner_product_param: {num_output: 5, weight_filler: {type: xavier}}
  - name: prob
    type: Softmax
    bottom: fc
    top: prob
  - name: loss
    type: SoftmaxWithLoss
    bottom: [fc, label]
    top: loss
"""


def test_deploy_spec_with_input_layer(write_spec, tmp_path):
    path = write_spec(DEPLOY, "deploy.yaml")
    net = _net(path)
    params, state = net.init(jax.random.PRNGKey(3))
    tree = {**params, **state}  # a plain {layer: {role: array}} tree works too
    m = json.loads(export_model(path, tree, tmp_path / "art").read_text())
    assert m["inputs"] == [{"name": "data", "shape": ["b", 3, 8, 8], "dtype": "float32"}]
    assert m["outputs"] == [{"name": "prob", "shape": ["b", 5], "dtype": "float32"}]
    assert m["transform_param"] == {}
    x = np.random.RandomState(2).randn(3, 3, 8, 8).astype(np.float32)
    got = run_exported(tmp_path / "art", {"data": x})["prob"]
    jitted = _reference(net, params, state, x, "prob", {"label": np.zeros(3, np.int32)})
    np.testing.assert_array_equal(got, jitted)
