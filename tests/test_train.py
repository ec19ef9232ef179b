"""`netc train` end to end: LeNet's accuracy on the built-in digits (float32, and bfloat16 against
the same float32 run), the run directory, errors, fine-tuning with --weights. The command runs
in-process (click's runner: the same options, output and exit status);
test_run_directory_and_metrics runs the console script as a user does."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, netc, run_netc

from netc.runtime.checkpoint import (
    flatten,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from netc.spec.yaml_io import read_yaml

MLP = ROOT / "tests" / "specs" / "mlp.yaml"
LENET = ROOT / "models" / "lenet.yaml"


def events(run_dir: Path, kind: str | None = None) -> list[dict]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if kind is None or r["event"] == kind]


def assert_clean_error(r, code: int = 1) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr


# LeNet with Caffe's lenet_solver (the spec's solver: section: SGD, lr 0.01, momentum 0.9, inv
# policy, batch 64), run for 500 iterations instead of REFERENCE §4's 2,000: the test accuracy
# reaches the bar by iteration 400-500 and then stays flat (measured 2026-11-30, test every 100:
# seeds 1 / 2 / 3 give 0.968 / 0.970 / 0.968 at 500 and 0.969 / 0.970 / 0.968 at 600, seed 1
# 0.968 at 2,000), so the shorter run meets the same bar with the same margin. Snapshotted every 60 iterations so that the bfloat16 run
# below (60 iterations) compares with this run's weights at its own iteration.
LENET_ITERS, LENET_EVERY = 500, 60
# the bfloat16 checks (runtime/precision.py): after 60 iterations both precisions measured
# 0.905-0.907 (seed 1), so both must pass 0.88
BF16_ITERS, BF16_BAR = 60, 0.88


def lenet_solver(path: Path) -> Path:
    """models/lenet.yaml's own solver section (test_interval 500), snapshotting every
    LENET_EVERY."""
    solver = read_yaml(LENET.read_text()).data["solver"]
    solver.update(max_iter=LENET_ITERS, snapshot=LENET_EVERY)
    path.write_text(json.dumps(solver))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def lenet_float32(tmp_path_factory):
    """One float32 LeNet run (seed 1): the 96% test and the bfloat16 comparison read it."""
    tmp = tmp_path_factory.mktemp("lenet32")
    out, t0 = tmp / "lenet", time.perf_counter()
    r = netc(
        "train", LENET, "--solver", lenet_solver(tmp / "solver.yaml"), "--out", out, "--seed", 1
    )
    assert r.returncode == 0, r.stderr
    return out, r, time.perf_counter() - t0


@pytest.fixture(scope="module")
def lenet_bfloat16(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lenet16")
    out = tmp / "lenet"
    r = netc(
        "train",
        LENET,
        "--solver",
        lenet_solver(tmp / "solver.yaml"),
        "--out",
        out,
        "--seed",
        1,
        "--max-iter",
        BF16_ITERS,
        "--precision",
        "bfloat16",
    )
    assert r.returncode == 0, r.stderr
    return out


def test_lenet_reaches_96_percent_on_digits(lenet_float32):
    """REFERENCE §4: Caffe's LeNet solver on the 4,000/1,000 MNIST subset reaches about 96%
    (after 2,000 iterations of batch 64 there; here the same solver's first 500, see
    LENET_ITERS): the test accuracy at the end is >= 0.96, from chance at iteration 0; the
    display, the inv policy's rate and the run directory are Caffe's."""
    out, r, wall = lenet_float32
    tests = events(out, "test")
    assert [t["iter"] for t in tests] == [0, LENET_ITERS]  # test_interval 500
    final = tests[-1]["metrics"]
    done = events(out, "done")[0]
    print(
        f"\nLeNet {LENET_ITERS} iterations: test accuracy {final['accuracy']:.4f}, loss "
        f"{final['loss']:.4f}; wall {wall:.1f} s, {done['samples_per_s']:.0f} samples/s training"
    )
    assert final["accuracy"] >= 0.96
    assert tests[0]["metrics"]["accuracy"] < 0.3  # it really learned
    # Caffe's display: every 100 iterations, smoothed loss and the inv-policy learning rate
    train = events(out, "train")
    assert [e["iter"] for e in train] == list(range(0, LENET_ITERS, 100))
    assert train[0]["lr"] == pytest.approx(0.01)
    assert train[4]["lr"] == pytest.approx(0.01 * (1 + 1e-4 * 400) ** -0.75)
    assert train[-1]["loss"] < 0.2 < train[0]["loss"]
    # the run directory
    assert (out / "spec.yaml").read_text() == LENET.read_text()
    solver = json.loads((out / "solver.json").read_text())
    assert solver["max_iter"] == LENET_ITERS and solver["random_seed"] == 1
    assert (solver["type"], solver["base_lr"], solver["lr_policy"]) == ("SGD", 0.01, "inv")
    ck = latest_checkpoint(out)
    assert ck is not None and ck.name == f"lenet_iter_{LENET_ITERS}.json"
    tree, meta = load_checkpoint(ck)
    assert meta["iteration"] == LENET_ITERS and meta["seed"] == 1
    assert tree["params"]["conv1"]["weight"].shape == (20, 1, 5, 5)
    assert int(tree["opt_state"]["iter"]) == LENET_ITERS
    # non-TTY output: plain display lines and a summary
    assert "Iteration 100 (" in r.stdout and "loss = " in r.stdout
    assert "samples/s" in r.stdout and "best test: accuracy = " in r.stdout
    assert "\r" not in r.stdout


def test_lenet_bfloat16_reaches_the_float32_bar(lenet_float32, lenet_bfloat16):
    """Mixed precision (tests/test_precision.py has the rest): LeNet in bfloat16 reaches the
    accuracy float32 reaches in the same iterations (the float32 run's snapshot at BF16_ITERS,
    scored by `netc test` on the same 1,000 TEST images as the run's own test)."""
    f32 = lenet_float32[0] / f"lenet_iter_{BF16_ITERS}.json"
    r = netc("test", LENET, "--weights", f32, "--json")
    assert r.returncode == 0, r.stderr
    bf16 = events(lenet_bfloat16, "test")[-1]
    assert bf16["iter"] == BF16_ITERS
    got = {"float32": json.loads(r.stdout)["metrics"], "bfloat16": bf16["metrics"]}
    for p, m in got.items():
        print(f"\nLeNet {p}, {BF16_ITERS} iterations: accuracy {m['accuracy']:.4f}")
    assert got["float32"]["accuracy"] >= BF16_BAR
    assert got["bfloat16"]["accuracy"] >= BF16_BAR
    assert abs(got["bfloat16"]["loss"] - got["float32"]["loss"]) < 0.1


def test_lenet_bfloat16_master_weights_stay_float32(lenet_float32, lenet_bfloat16):
    run = lenet_bfloat16
    tree, meta = load_checkpoint(latest_checkpoint(run))
    assert meta["precision"] == "bfloat16" and meta["iteration"] == BF16_ITERS
    assert json.loads((run / "solver.json").read_text())["precision"] == "bfloat16"
    dtypes = {
        k: v.dtype
        for k, v in flatten(tree).items()
        if k.split("/")[0] != "opt_state" or not k.endswith("iter")
    }
    assert dtypes and set(dtypes.values()) == {np.dtype(np.float32)}, dtypes
    # and it did not simply train in float32: the weights differ from the float32 run's at the
    # same iteration
    f32, f32_meta = load_checkpoint(lenet_float32[0] / f"lenet_iter_{BF16_ITERS}.json")
    assert f32_meta["iteration"] == BF16_ITERS and f32_meta["precision"] == "float32"
    assert not np.array_equal(tree["params"]["conv1"]["weight"], f32["params"]["conv1"]["weight"])


def test_run_directory_and_metrics(tmp_path):
    """The console script in a subprocess, as a user runs it."""
    out = tmp_path / "run"
    r = run_netc("train", MLP, "--max-iter", 250, "--out", out)
    assert r.returncode == 0, r.stderr
    kinds = [e["event"] for e in events(out)]
    assert kinds[0] == "test" and kinds[-1] == "done"
    assert [e["iter"] for e in events(out, "snapshot")] == [100, 200, 250]
    assert [e["iter"] for e in events(out, "test")] == [0, 250]
    assert sorted(p.name for p in out.glob("mlp_iter_*.safetensors")) == [
        "mlp_iter_100.safetensors",
        "mlp_iter_200.safetensors",
        "mlp_iter_250.safetensors",
    ]
    _, meta = load_checkpoint(out / "mlp_iter_200.json")
    assert meta["seed"] == 7  # the solver's random_seed
    assert meta["data_position"][0]["index"] == (200 * 32) % 4000
    assert meta["solver_type"] == "SGD" and len(meta["arch_digest"]) == 64


def test_seed_option_changes_the_run(tmp_path):
    def final(seed, name):
        out = tmp_path / name
        r = netc("train", MLP, "--max-iter", 20, "--out", out, "--seed", seed)
        assert r.returncode == 0, r.stderr
        return load_checkpoint(latest_checkpoint(out))[0]["params"]["ip1"]["weight"]

    # (the same seed repeating bit for bit is test_resume.py's uninterrupted-vs-resumed check)
    a, c = final(1, "a"), final(2, "c")
    assert not np.array_equal(a, c)


def test_weights_fine_tuning_reports_skipped_layers(tmp_path):
    src = tmp_path / "src"
    r = netc("train", MLP, "--max-iter", 30, "--out", src)
    assert r.returncode == 0, r.stderr
    # a 12-class head: ip2 no longer fits, ip1 does
    spec = tmp_path / "mlp12.yaml"
    spec.write_text(MLP.read_text().replace("num_output: 10", "num_output: 12"))
    out = tmp_path / "ft"
    r = netc("train", spec, "--weights", src / "mlp_iter_30.json", "--max-iter", 0, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "weights: loaded 2 blob(s), skipped 2" in r.stdout
    assert "skipped ip2/weight: shape 10×32 in the weights, 12×32 in the net" in r.stdout
    assert "skipped ip2/bias: shape 10 in the weights, 12 in the net" in r.stdout
    tree, meta = load_checkpoint(out / "mlp_iter_0.json")
    old, _ = load_checkpoint(src / "mlp_iter_30.json")
    assert meta["iteration"] == 0
    assert np.array_equal(tree["params"]["ip1"]["weight"], old["params"]["ip1"]["weight"])
    assert tree["params"]["ip2"]["weight"].shape == (12, 32)
    assert not np.any(tree["opt_state"]["history"]["ip1"]["weight"])  # fresh solver state
    # nothing matches: refused
    r = netc(
        "train", spec, "--weights", src / "missing.json", "--max-iter", 0, "--out", tmp_path / "x"
    )
    assert_clean_error(r)


BROKEN = """\
name: broken
layers:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [1, 2]}}}
  - {name: ip, type: InnerProduct, bottom: dta, top: ip, inner_product_param: {num_output: 1}}
"""


@pytest.mark.parametrize(
    "command",
    [
        ["train"],
        ["test", "--weights", "w.json"],
        ["predict", "--weights", "w.json", "in.npz", "-o", "out.npz"],
    ],
)
def test_spec_errors_are_file_line_col(tmp_path, command):
    spec = tmp_path / "broken.yaml"
    spec.write_text(BROKEN)
    args = [command[0], spec, *command[1:]]
    r = netc(*args, cwd=tmp_path)
    assert_clean_error(r)
    assert f"{spec}:4:" in r.stderr and "unknown blob 'dta'" in r.stderr


def test_input_only_net_cannot_be_trained(tmp_path):
    spec = tmp_path / "inputs.yaml"
    spec.write_text("""\
name: inputs
layers:
  - {name: data, type: Input, top: [data, target], input_param: {shape: [{dim: [4, 2]}, {dim: [4, 1]}]}}
  - {name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {num_output: 1}}
  - {name: loss, type: EuclideanLoss, bottom: [ip, target], top: loss}
solver: {base_lr: 0.1, lr_policy: fixed, max_iter: 10}
""")
    r = netc("train", spec, "--out", tmp_path / "run")
    assert_clean_error(r)
    assert "the TRAIN net is fed by Input layers, which hold no data" in r.stderr
    # and a net without a solver
    r = netc("train", ROOT / "tests" / "specs" / "xor.yaml", "--out", tmp_path / "run2")
    assert_clean_error(r)
    assert "no solver" in r.stderr


def test_bad_data_gives_the_data_error(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, data=np.zeros((8, 1, 28, 28), np.uint8), label=np.arange(8) + 5)  # 12 > 9
    r = netc("train", MLP, "--data", bad, "--out", tmp_path / "run")
    assert_clean_error(r)
    assert f"{bad}: labels range over [5, 12], outside [0, 10)" in r.stderr
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, data=np.zeros((8, 1, 14, 14), np.uint8), label=np.zeros(8, np.int64))
    r = netc("train", MLP, "--data", wrong, "--out", tmp_path / "run2")
    assert_clean_error(r)
    assert (
        "layer 'ip1': its weight is 32×196 in the TRAIN net but 32×784 in the TEST net" in r.stderr
        and "--data replaced only the TRAIN Data layer's source" in r.stderr
    )
    # the spec is re-planned for the new source: the shapes follow the data
    r = netc("train", MLP, "--data", tmp_path / "nope.npz", "--out", tmp_path / "run3")
    assert_clean_error(r)
    assert "nope.npz" in r.stderr


def test_data_override_trains_on_the_given_source(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "mine.npz"
    np.savez(
        src,
        data=rng.integers(0, 255, (64, 1, 28, 28), dtype=np.uint8),
        label=rng.integers(0, 10, 64),
    )
    out = tmp_path / "run"
    r = netc("train", MLP, "--data", src, "--max-iter", 5, "--out", out)
    assert r.returncode == 0, r.stderr
    _, meta = load_checkpoint(latest_checkpoint(out))
    assert meta["data_position"][0] == {"epoch": 2, "index": 32, "size": 64}
    assert meta["data"] == str(src)


def test_weights_npz_and_plain_checkpoint(tmp_path):
    """--weights accepts a checkpoint of {layer: {role: array}} as well as a run's snapshot."""
    w = np.full((32, 784), 0.01, np.float32)
    save_checkpoint(tmp_path, "plain", {"ip1": {"weight": w}}, {"iteration": 0})
    out = tmp_path / "ft"
    r = netc("train", MLP, "--weights", tmp_path / "plain.json", "--max-iter", 0, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "weights: loaded 1 blob(s), skipped 3" in r.stdout
    assert "skipped ip2/weight: not in the weights" in r.stdout
    tree, _ = load_checkpoint(out / "mlp_iter_0.json")
    assert np.array_equal(tree["params"]["ip1"]["weight"], w)


def test_iter_size_accumulates_like_one_big_batch(tmp_path):
    """iter_size 2 × batch 16 reads the same samples as batch 32 and, with the gradient sum
    divided by iter_size (Caffe's Normalize), makes the same updates up to rounding."""
    base = MLP.read_text().replace("dropout_ratio: 0.2", "dropout_ratio: 0.0")
    big = tmp_path / "big.yaml"
    big.write_text(base)
    small = tmp_path / "small.yaml"
    small.write_text(
        base.replace("batch_size: 32", "batch_size: 16").replace(
            "  base_lr: 0.05", "  iter_size: 2\n  base_lr: 0.05"
        )
    )
    finals = []
    for spec in (big, small):
        out = tmp_path / spec.stem
        r = netc("train", spec, "--max-iter", 40, "--out", out)
        assert r.returncode == 0, r.stderr
        assert "batch 32" in r.stdout
        tree, meta = load_checkpoint(latest_checkpoint(out))
        assert meta["data_position"][0]["index"] == 40 * 32
        finals.append(tree["params"])
    for layer in ("ip1", "ip2"):
        for role in ("weight", "bias"):
            np.testing.assert_allclose(
                finals[1][layer][role], finals[0][layer][role], rtol=1e-4, atol=1e-6
            )
    assert not np.array_equal(finals[0]["ip1"]["weight"], np.zeros((32, 784)))


def test_out_directory_with_checkpoints_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    assert netc("train", MLP, "--max-iter", 1, "--out", out).returncode == 0
    r = netc("train", MLP, "--max-iter", 1, "--out", out)
    assert_clean_error(r)
    assert f"--resume {out}" in r.stderr
