"""`netc predict` and `netc test` (the commands, in-process): REFERENCE §3's worked examples with
given weights, round trips through a trained checkpoint, and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT, netc

from netc.runtime.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from netc.runtime.data import load_source

SPECS = ROOT / "tests" / "specs"
MLP = SPECS / "mlp.yaml"


def x_image() -> np.ndarray:
    x = -np.ones((9, 9), np.float32)
    for i in range(1, 8):
        x[i, i] = x[i, 8 - i] = 1
    return x


def test_x_through_conv_relu_ceil_pool(tmp_path):
    diag = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1]], np.float32)
    save_checkpoint(tmp_path, "xweights",
                    {"conv": {"weight": (diag / 9).reshape(1, 1, 3, 3),
                              "bias": np.zeros(1, np.float32)}}, {"iteration": 0})
    np.savez(tmp_path / "in.npz", data=x_image().reshape(1, 1, 9, 9))
    r = netc("predict", SPECS / "xconv.yaml", "--weights", tmp_path / "xweights.json",
                 tmp_path / "in.npz", "-o", tmp_path / "out.npz", "--blobs", "conv,relu,pool")
    assert r.returncode == 0, r.stderr
    assert "weights: loaded 2 blob(s), skipped 0" in r.stderr
    out = np.load(tmp_path / "out.npz")
    assert sorted(out.files) == ["conv", "pool", "relu"]
    conv = out["conv"][0, 0]
    assert conv.shape == (7, 7)
    np.testing.assert_allclose(conv[0], np.array([7, -1, 1, 3, 5, -1, 3]) / 9, atol=1e-6)
    np.testing.assert_allclose(np.diag(conv), np.array([7, 9, 9, 5, 9, 9, 7]) / 9, atol=1e-6)
    np.testing.assert_allclose(out["relu"][0, 0], np.maximum(conv, 0), atol=0)
    want = np.array([[9, 3, 5, 3], [3, 9, 3, 5], [5, 3, 9, 1], [3, 5, 1, 7]]) / 9
    assert out["pool"].shape == (1, 1, 4, 4)  # CEIL: 7 → 4 (FLOOR would give 3)
    np.testing.assert_allclose(out["pool"][0, 0], want, atol=1e-6)


def test_xor_exactly(tmp_path):
    np.savez(tmp_path / "w.npz", **{
        "hidden/weight": np.array([[1, 1], [1, 1]], np.float32),
        "hidden/bias": np.array([0, -1], np.float32),
        "out/weight": np.array([[1, -2]], np.float32),
        "out/bias": np.array([0], np.float32)})
    np.savez(tmp_path / "in.npz", data=np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32))
    r = netc("predict", SPECS / "xor.yaml", "--weights", tmp_path / "w.npz",
                 tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert r.returncode == 0, r.stderr
    out = np.load(tmp_path / "out.npz")
    assert out.files == ["out"]  # the default: the net's outputs
    assert np.array_equal(out["out"], np.array([[0], [1], [1], [0]], np.float32))


@pytest.fixture
def trained(trained_mlp_run):
    return trained_mlp_run  # mlp.yaml, 200 iterations (conftest)


def test_predict_matches_a_numpy_forward(tmp_path, trained):
    ds = load_source("netc:digits/test")
    x = ds.data[:100].astype(np.float32) / 256
    np.savez(tmp_path / "in.npz", data=x)
    r = netc("predict", MLP, "--weights", trained, tmp_path / "in.npz", "-o",
                 tmp_path / "out.npz")
    assert r.returncode == 0, r.stderr
    out = np.load(tmp_path / "out.npz")
    # no label given: the loss and accuracy outputs cannot run; the classifier's scores can
    assert out.files == ["ip2"]
    p, _ = load_checkpoint(latest_checkpoint(trained))
    p = p["params"]
    h = np.maximum(x.reshape(100, -1) @ p["ip1"]["weight"].T + p["ip1"]["bias"], 0)
    logits = h @ p["ip2"]["weight"].T + p["ip2"]["bias"]  # Dropout: the identity in TEST
    np.testing.assert_allclose(out["ip2"], logits, rtol=1e-5, atol=1e-5)
    assert (logits.argmax(1) == ds.label[:100]).mean() > 0.8
    # with labels, the net's own outputs
    np.savez(tmp_path / "in2.npz", data=x, label=ds.label[:100])
    r = netc("predict", MLP, "--weights", trained, tmp_path / "in2.npz", "-o",
                 tmp_path / "out2.npz")
    assert r.returncode == 0, r.stderr
    out2 = np.load(tmp_path / "out2.npz")
    assert sorted(out2.files) == ["accuracy", "loss"]
    assert float(out2["accuracy"]) == pytest.approx((logits.argmax(1) == ds.label[:100]).mean())


def test_netc_test_reproduces_the_trainers_final_test(trained):
    r = netc("test", MLP, "--weights", latest_checkpoint(trained))
    assert r.returncode == 0, r.stderr
    final = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()
             if '"test"' in x][-1]["metrics"]
    assert "TEST phase, 2 iterations (200 samples)" in r.stdout  # the solver's test_iter
    assert f"accuracy = {final['accuracy']:.6g}\n" in r.stdout
    assert f"loss = {final['loss']:.6g}\n" in r.stdout
    r = netc("test", MLP, "--weights", trained, "--iterations", 10)
    assert r.returncode == 0, r.stderr
    assert "10 iterations (1,000 samples)" in r.stdout
    acc = float(r.stdout.split("accuracy = ")[1].split()[0])
    assert 0.8 < acc <= 1.0


def test_predict_and_test_errors(tmp_path, trained):
    ck = latest_checkpoint(trained)
    np.savez(tmp_path / "typo.npz", dat=np.zeros((2, 1, 28, 28), np.float32))
    r = netc("predict", MLP, "--weights", ck, tmp_path / "typo.npz", "-o", tmp_path / "o.npz")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "array 'dat' is not an input blob of the net" in r.stderr and "'data'" in r.stderr
    np.savez(tmp_path / "shape.npz", data=np.zeros((2, 1, 14, 14), np.float32))
    r = netc("predict", MLP, "--weights", ck, tmp_path / "shape.npz", "-o", tmp_path / "o.npz")
    assert r.returncode == 1
    assert "array 'data' has shape (2, 1, 14, 14), but the net's blob 'data' is N×1×28×28" \
        in r.stderr
    np.savez(tmp_path / "ok.npz", data=np.zeros((2, 1, 28, 28), np.float32))
    r = netc("predict", MLP, "--weights", ck, tmp_path / "ok.npz", "-o", tmp_path / "o.npz",
                 "--blobs", "ip3")
    assert r.returncode == 1 and "the TEST net has no blob 'ip3'" in r.stderr
    r = netc("predict", MLP, "--weights", ck, tmp_path / "ok.npz", "-o", tmp_path / "o.npz",
                 "--blobs", "accuracy")
    assert r.returncode == 1 and "blob 'accuracy' needs the input(s) label" in r.stderr
    r = netc("predict", MLP, "--weights", tmp_path / "none.json", tmp_path / "ok.npz", "-o",
                 tmp_path / "o.npz")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    r = netc("test", SPECS / "xor.yaml", "--weights", ck)
    assert r.returncode == 1 and "the TEST net has no Data layer" in r.stderr
    # weights for another net: nothing matches
    r = netc("predict", SPECS / "xor.yaml", "--weights", ck, tmp_path / "ok.npz", "-o",
                 tmp_path / "o.npz")
    assert r.returncode == 1 and "Traceback" not in r.stderr
