"""`netc export` and `netc predict --exported` (the commands, in-process) on a trained run: the
artifact's outputs equal `netc predict` of the spec for batches 1 and 7; tampering is refused."""

import numpy as np
from conftest import MLP, netc


def test_export_round_trip_equals_predict(tmp_path, trained_mlp_run):
    ckpt = sorted(trained_mlp_run.glob("*_iter_200.json"))
    assert ckpt, sorted(p.name for p in trained_mlp_run.iterdir())
    art = tmp_path / "artifact"
    r = netc("export", MLP, "--weights", ckpt[0], "-o", art, "--platform", "cpu",
                 "--platform", "cuda")
    assert r.returncode == 0, r.stderr
    assert (art / "model.jaxexport").exists() and (art / "manifest.json").exists()
    rng = np.random.default_rng(0)
    for batch in (1, 7):
        x = rng.random((batch, 1, 28, 28), dtype=np.float32)
        np.savez(tmp_path / "in.npz", data=x)
        r1 = netc("predict", MLP, tmp_path / "in.npz", "--weights", ckpt[0], "-o",
                      tmp_path / "a.npz", "--blobs", "ip2")
        assert r1.returncode == 0, r1.stderr
        r2 = netc("predict", "--exported", art, tmp_path / "in.npz", "-o", tmp_path / "b.npz")
        assert r2.returncode == 0, r2.stderr
        a, b = np.load(tmp_path / "a.npz")["ip2"], np.load(tmp_path / "b.npz")["ip2"]
        assert a.shape == b.shape == (batch, 10)
        # Baked-in weights let XLA fold constants, so the float32 sums may be ordered differently
        # from the spec's jitted forward: equal to 1e-5 of the output's scale.
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    # Tampering: one flipped byte in the model is refused before deserialisation.
    model = art / "model.jaxexport"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    r = netc("predict", "--exported", art, tmp_path / "in.npz", "-o", tmp_path / "c.npz")
    assert r.returncode == 1 and "sha256" in r.stderr and "Traceback" not in r.stderr


def test_predict_usage_errors(tmp_path):
    r = netc("predict", "--exported", tmp_path, MLP, tmp_path / "x.npz", "-o", tmp_path / "o.npz")
    assert r.returncode == 2 and "with --exported give only INPUT.npz" in r.stderr
    r = netc("predict", MLP, tmp_path / "x.npz", "-o", tmp_path / "o.npz")
    assert r.returncode == 2 and "--weights is required" in r.stderr
