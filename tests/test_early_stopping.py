"""Early stopping (the solver's `early_stopping`): the spec errors, the callback's rule, a real run
that stops, keeps the best test's parameters in RUN_DIR/best/ and makes them the run's result
(`netc test --weights RUN_DIR`), and a resume that stops where the uninterrupted run did."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import MLP, netc

from netc.runtime.callbacks import EarlyStopping, Event
from netc.runtime.checkpoint import (
    flatten,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from netc.runtime.rundir import prune_best, run_result
from netc.runtime.trainer import Solver, TrainConfig
from netc.spec.solver import EarlyStopping as EarlyStoppingSpec

# tests/specs/mlp.yaml tested every 50 iterations, no snapshots but the last; accuracy peaks at
# iteration 200 (0.93), then 0.92 at 250 and 300: patience 2 stops the run at 300.
ES_MLP = (
    MLP.read_text()
    .replace(
        "test_interval: 500", "test_interval: 50\n  early_stopping: {metric: accuracy, patience: 2}"
    )
    .replace("snapshot: 100", "snapshot: 0")
)


# --- the rule ----------------------------------------------------------------------------------


class FakeSolver:
    def __init__(self):
        self.saved, self.stop = [], None
        self.settings = SimpleNamespace(run_dir=Path("/nonexistent"))

    def save_weights(self, folder, **meta):
        self.saved.append((folder, meta))

    def request_stop(self, reason, detail=None, *, finish=False, **info):
        self.stop = (reason, detail, finish, info)


def feed(values, **spec):
    cb, solver = EarlyStopping(EarlyStoppingSpec(**spec)), FakeSolver()
    for i, v in enumerate(values):
        if solver.stop is None:
            cb(solver, Event("test", 10 * i, {"metrics": {spec["metric"]: v}}))
    return cb, solver


def test_rule_max_patience_and_min_delta():
    cb, s = feed([0.5, 0.7, 0.69, 0.7, 0.71, 0.6], metric="accuracy", patience=3, min_delta=0.02)
    # 0.71 is not better than 0.7 by more than 0.02: three passes without improvement
    assert (cb.best, cb.best_iter) == (0.7, 10) and s.stop is not None
    assert s.stop[0] == "early stopping" and s.stop[2] is True
    assert s.stop[3]["best"] == {"metric": "accuracy", "value": 0.7, "iter": 10}
    assert s.stop[1] == (
        "accuracy has not risen by more than 0.02 from its best, 0.7 at "
        "iteration 10, in 3 tests (patience 3)"
    )
    assert [m["early_stopping"]["value"] for _, m in s.saved] == [0.5, 0.7]


def test_rule_min_mode_from_the_name_and_nan():
    cb, s = feed([2.0, 1.5, float("nan"), 1.6, 1.4, 1.45], metric="loss", patience=3)
    assert cb.mode == "min" and (cb.best, cb.best_iter) == (1.4, 40) and s.stop is None
    assert cb.bad == 1  # NaN is never an improvement
    cb, s = feed([1.0, 2.0], metric="loss", mode="max", patience=0)
    assert cb.best_iter == 10 and s.stop is None
    cb, s = feed([1.0, 1.0], metric="top5", patience=0)  # max by default; patience 0: at once
    assert cb.mode == "max" and s.stop is not None and cb.bad == 1


def test_state_round_trip():
    cb, _ = feed([0.1, 0.3, 0.2], metric="accuracy", patience=5)
    other = EarlyStopping(EarlyStoppingSpec(metric="accuracy", patience=5))
    other.load_state_dict(json.loads(json.dumps(cb.state_dict())))
    assert (other.best, other.best_iter, other.bad) == (0.3, 10, 1)


def test_prune_best(tmp_path):
    best = tmp_path / "best"
    for it in (100, 200, 300):
        save_checkpoint(best, f"m_iter_{it}", {"w": np.zeros(2)}, {"iteration": it})
    prune_best(tmp_path, keep_from=200)
    assert [p.name for p in list_checkpoints(best)] == ["m_iter_200.json", "m_iter_300.json"]
    prune_best(tmp_path, keep_until=250)
    assert [p.name for p in list_checkpoints(best)] == ["m_iter_200.json"]
    assert run_result(tmp_path) == best / "m_iter_200.json"


# --- spec errors -------------------------------------------------------------------------------


def check_lines(path: Path) -> list[str]:
    from netc.compiler.report import check_file

    spec, _ = check_file(str(path))
    return [d.format() for d in spec.diagnostics.sorted() if d.severity == "error"]


def test_metric_not_a_test_output(tmp_path):
    spec = tmp_path / "mlp.yaml"
    spec.write_text(ES_MLP.replace("{metric: accuracy,", "{metric: acuracy,"))
    line = next(i for i, t in enumerate(ES_MLP.splitlines(), 1) if "early_stopping" in t)
    assert check_lines(spec) == [
        f"{spec}:{line}:20: error: solver.early_stopping.metric: 'acuracy' is not a scalar output "
        "of the TEST net (its scalar outputs are accuracy, loss) (did you mean 'accuracy'?)"
    ]
    r = netc("train", spec, "--out", tmp_path / "run")
    assert r.returncode == 1 and "'acuracy' is not a scalar output" in r.stderr
    assert f"{spec}:{line}:20: error" in r.stderr and "Traceback" not in r.stderr


def test_metric_error_points_into_the_solver_file(tmp_path):
    (tmp_path / "net.yaml").write_text(ES_MLP[: ES_MLP.index("solver:")])
    solver = tmp_path / "solver.yaml"
    solver.write_text(
        textwrap.dedent("""\
        net: net.yaml
        base_lr: 0.01
        lr_policy: fixed
        test_iter: 1
        test_interval: 10
        early_stopping:
          metric: los
    """)
    )
    assert check_lines(solver) == [
        f"{solver}:7:3: error: early_stopping.metric: 'los' is not a scalar output of the TEST "
        "net (its scalar outputs are accuracy, loss) (did you mean 'loss'?)"
    ]
    r = netc("train", tmp_path / "net.yaml", "--solver", solver, "--out", tmp_path / "run")
    assert r.returncode == 1 and f"{solver}:7:3: error: early_stopping.metric" in r.stderr


def test_needs_test_passes(tmp_path):
    spec = tmp_path / "mlp.yaml"
    spec.write_text(ES_MLP.replace("  test_interval: 50\n", ""))
    (err,) = check_lines(spec)
    assert err.endswith(
        "error: solver.early_stopping: early_stopping needs test passes to "
        "watch: set test_iter and test_interval"
    )


# --- a real run ----------------------------------------------------------------------------------


def solve(spec: Path, out: Path | None, **kw) -> tuple[int, str]:
    text = io.StringIO()
    out = str(out) if out is not None else None
    code = Solver(
        TrainConfig(str(spec), out=out, progress=False, **kw), out=text, err=io.StringIO()
    ).solve()
    return code, text.getvalue()


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """The uninterrupted run: it stops early at iteration 300 (max_iter 1500)."""
    root = tmp_path_factory.mktemp("es")
    spec = root / "mlp.yaml"
    spec.write_text(ES_MLP)
    code, text = solve(spec, root / "run")
    return SimpleNamespace(spec=spec, run=root / "run", code=code, text=text, root=root)


def records(run: Path, event: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_run_stops_and_keeps_the_best(stopped):
    tests = records(stopped.run, "test")
    acc = [t["metrics"]["accuracy"] for t in tests]
    best = int(np.argmax(acc))  # the first of the maxima
    assert stopped.code == 0
    assert [t["iter"] for t in tests] == list(range(0, 50 * len(tests), 50))
    # stopped exactly `patience` tests after the best, with no better one in between
    assert len(tests) - 1 - best == 2 and tests[-1]["iter"] == 300
    (stop,) = records(stopped.run, "stop")
    assert stop["reason"] == "early stopping" and stop["iter"] == 300
    assert stop["best"] == {"metric": "accuracy", "value": acc[best], "iter": tests[best]["iter"]}
    (done,) = records(stopped.run, "done")
    assert done["iter"] == 300 and done["result_iter"] == tests[best]["iter"]
    assert "early stopping: stopped at iteration 300: accuracy has not risen" in stopped.text
    assert f"result: {stopped.run}/best/mlp_iter_200.json (iteration 200" in stopped.text
    (kept,) = list_checkpoints(stopped.run / "best")
    assert read_checkpoint_meta(kept)["iteration"] == tests[best]["iter"]
    assert latest_checkpoint(stopped.run).name == "mlp_iter_300.json"  # the last state, to resume


def test_weights_run_dir_is_the_best(stopped):
    best_tree, _ = load_checkpoint(run_result(stopped.run))
    last_tree, _ = load_checkpoint(latest_checkpoint(stopped.run))
    assert not np.array_equal(
        best_tree["params"]["ip1"]["weight"], last_tree["params"]["ip1"]["weight"]
    )
    assert set(best_tree) == {"params", "state"}  # no optimizer state: not a resume point
    r = netc("test", stopped.spec, "--weights", stopped.run)
    assert r.returncode == 0, r.stderr
    best_acc = max(t["metrics"]["accuracy"] for t in records(stopped.run, "test"))
    assert f"accuracy = {best_acc:.6g}\n" in r.stdout
    assert "(the best test, kept by early stopping)" in r.stderr


def test_resume_stops_where_the_uninterrupted_run_did(stopped):
    run = stopped.root / "resumed"
    spec = stopped.root / "snap.yaml"
    spec.write_text(ES_MLP.replace("snapshot: 0", "snapshot: 100"))
    first = Solver(
        TrainConfig(str(spec), out=str(run), progress=False), out=io.StringIO(), err=io.StringIO()
    )
    try:  # interrupted after the checkpoint at 200 (taken before the test at 200) was written
        first.step(201)
    finally:
        first.close()
    state = read_checkpoint_meta(latest_checkpoint(run))["meta"]["callbacks"]["early_stopping"]
    assert (state["best_iter"], state["bad"]) == (200, 0)  # the state after the test at 200
    code, _ = solve(spec, None, resume=str(run))
    assert code == 0
    assert [r["iter"] for r in records(run, "stop")] == [300]
    a, _ = load_checkpoint(run_result(run))
    b, _ = load_checkpoint(run_result(stopped.run))
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)
    last_a, _ = load_checkpoint(latest_checkpoint(run))
    last_b, _ = load_checkpoint(latest_checkpoint(stopped.run))
    assert np.array_equal(last_a["params"]["ip2"]["weight"], last_b["params"]["ip2"]["weight"])


def test_export_of_the_run_dir_is_the_best(stopped):
    from safetensors.numpy import load_file

    out = stopped.root / "export"
    r = netc("export", stopped.spec, "--weights", stopped.run, "--format", "safetensors", "-o", out)
    assert r.returncode == 0, r.stderr
    best, _ = load_checkpoint(run_result(stopped.run))
    exported = load_file(str(out / "weights.safetensors"))
    assert exported.keys() == {"ip1/weight", "ip1/bias", "ip2/weight", "ip2/bias"}
    for key, value in exported.items():
        layer, role = key.split("/")
        np.testing.assert_array_equal(value, best["params"][layer][role])
    assert json.loads((out / "manifest.json").read_text())["source"]["iteration"] == 200
