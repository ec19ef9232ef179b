"""The public Python API: the README's example runs as written; load / check / apply / predict,
the Solver with callbacks, and errors as netc.NetcError."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import MLP, MODELS, ROOT, jit_fast
from test_zoo import numpy_params

import netc


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    (tmp_path / "models").symlink_to(MODELS)
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "test at 0 {'accuracy': " in out  # the callback saw the Solver's test event
    assert (tmp_path / "runs" / "api-demo" / "lenet_iter_20.json").exists()


def test_import_netc_loads_no_jax():
    code = ("import sys, netc; m = netc.load('models/lenet.yaml'); m.check(); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('jax', 'jaxlib', 'optax')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_load_errors_are_netc_errors(tmp_path):
    with pytest.raises(netc.NetcError, match="no such file"):
        netc.load(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers:\n  - {name: x, type: Input, top: x, input_param: {shape: {dim: [1, 3]}}}\n"
                   "  - {name: fc, type: InnerProduct, bottom: y, top: fc,\n"
                   "     inner_product_param: {num_output: 2}}\n")
    with pytest.raises(netc.NetcError) as e:
        netc.load(str(bad))
    assert f"{bad}:3:" in e.value.text() and "unknown blob 'y'" in e.value.text()
    with pytest.raises(netc.NetcError, match="phase must be TRAIN or TEST"):
        netc.load(str(MODELS / "lenet.yaml"), phase="DEPLOY")
    with pytest.raises(netc.NetcError, match="no weights"):
        netc.load(str(MODELS / "lenet.yaml")).predict({"data": np.zeros((1, 1, 28, 28))})


def test_apply_runs_only_the_layers_the_outputs_need():
    """In the TRAIN phase (its Data layer gives a label) `outputs=["ip2"]` needs the data alone
    and computes ip2 as the whole forward does. Both forwards jitted with FAST_XLA (LeNet's eager
    forward cost 5 s of per-op compiles): a forward that ran the loss would fail to trace without
    the label all the same. Weights from NumPy (init's fillers run in the README example)."""
    model = netc.load(str(MODELS / "lenet.yaml"), phase="TRAIN", batch=2)
    params, state = numpy_params(model.net, np.random.default_rng(1))  # no filler compiled
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    some = jit_fast(lambda p, s, i: model.apply(p, s, i, outputs=["ip2"])[0])
    blobs = some(params, state, {"data": x})
    assert list(blobs) == ["ip2"] and blobs["ip2"].shape == (2, 10)  # no label needed
    every = jit_fast(lambda p, s, i: model.apply(p, s, i)[0])
    everything = every(params, state, {"data": x, "label": np.zeros(2, np.int32)})
    assert "loss" in everything
    np.testing.assert_array_equal(np.asarray(everything["ip2"]), np.asarray(blobs["ip2"]))
    with pytest.raises(netc.NetcError, match="label"):
        model.apply(params, state, {"data": x}, outputs=["loss"])
    assert model.check()["params"] == {"trainable": 431_080, "non_trainable": 0}


class Recorder(netc.Callback):
    def __init__(self, stop_at: int | None = None):
        self.kinds: list[tuple[str, int]] = []
        self.stop_at = stop_at

    def __call__(self, solver, event):
        self.kinds.append((event.kind, event.iter))
        super().__call__(solver, event)

    def on_iteration(self, solver, event):
        if self.stop_at is not None and event.iter + 1 == self.stop_at:
            solver.request_stop("early stop")


def test_a_callback_sees_every_event_and_can_stop_the_run(tmp_path):
    rec = Recorder(stop_at=30)
    out, err = io.StringIO(), io.StringIO()
    code = netc.train(str(MLP), max_iter=60, out=str(tmp_path / "run"), progress=False,
                      callbacks=[rec], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    kinds = [k for k, _ in rec.kinds]
    assert kinds[0] == "start" and kinds.count("iteration") == 30
    assert ("test", 0) in rec.kinds and ("stop", 30) in rec.kinds
    assert ("checkpoint", 30) in rec.kinds and ("snapshot", 30) in rec.kinds
    assert "early stop: stopped at iteration 30" in out.getvalue()
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "stop" and log[-1]["reason"] == "early stop"


def test_solver_step_test_snapshot_restore(tmp_path):
    cfg = netc.TrainConfig(str(MLP), max_iter=40, out=str(tmp_path / "a"), progress=False)
    solver = netc.Solver(cfg, out=io.StringIO(), err=io.StringIO())
    solver.step(10)
    assert solver.iter == 10
    first = solver.snapshot()
    scores = solver.test()
    assert set(scores) == {"accuracy", "loss"}
    solver.step(5)
    after = {k: np.array(v) for k, v in solver.params["ip1"].items()}
    solver.restore(first)
    assert solver.iter == 10
    solver.step(5)  # the same five iterations again: same data, same dropout keys
    for k, v in solver.params["ip1"].items():
        np.testing.assert_array_equal(np.asarray(v), after[k])
    solver.close()


def test_weights_from_a_run_directory_in_predict_and_export(tmp_path, trained_mlp_run):
    from conftest import netc as run_cli

    x = np.random.default_rng(3).random((5, 1, 28, 28)).astype(np.float32)
    model = netc.load(str(MLP), weights=str(trained_mlp_run))
    via_api = model.predict({"data": x})
    assert list(via_api) == ["ip2"] and via_api["ip2"].shape == (5, 10)
    np.savez(tmp_path / "in.npz", data=x)
    r = run_cli("export", MLP, "--weights", trained_mlp_run, "-o", tmp_path / "art",
                "--platform", "cpu")
    assert r.returncode == 0, r.stderr
    r = run_cli("predict", "--exported", tmp_path / "art", tmp_path / "in.npz", "-o",
                tmp_path / "out.npz")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["ip2"], via_api["ip2"], rtol=1e-5,
                               atol=1e-6)
