"""Tests for netc.runtime.checkpoint: safe (no pickle), verified and crash-atomic checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from netc.runtime import checkpoint as ckpt
from netc.runtime.checkpoint import (
    CheckpointError,
    flatten,
    keep_last,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    sha256_file,
    unflatten,
    verify_checkpoint,
    write_bytes_atomic,
    write_json_atomic,
)


def _tree():
    rng = np.random.default_rng(0)
    return {
        "params": {
            "conv1/7x7_s2": {
                "w": rng.standard_normal((4, 3, 7, 7)).astype(np.float32),
                "b": np.arange(4, dtype=np.float32),
            },
            "inception_3a/1x1": {"w": np.ones((2, 2), np.float16)},
            "100%/sure": {"x": np.array([1, 2], np.int64)},
            "relu1": {},  # a layer without parameters
        },
        "opt": {"step": np.array(7, dtype=np.int32), "mask": np.array([True, False])},
        "rng": np.array([0, 42], dtype=np.uint32),
        "seed0d": np.array(123456789, dtype=np.uint32),
        "scale": np.float64(0.5),
    }


def _assert_same_tree(a, b):
    assert isinstance(a, dict) and isinstance(b, dict)
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], dict):
            _assert_same_tree(a[k], b[k])
        else:
            x, y = np.asarray(a[k]), np.asarray(b[k])
            assert x.dtype == y.dtype, (k, x.dtype, y.dtype)
            assert x.shape == y.shape, (k, x.shape, y.shape)
            np.testing.assert_array_equal(x, y)


def _tmp_files(d: Path):
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name)


# ------------------------------------------------------------------ flatten / unflatten


def test_flatten_escapes_slashes_and_percent_exactly():
    a, b, c, e = (np.zeros(1, np.float32) for _ in range(4))
    flat = flatten({"conv1/7x7_s2": {"w": a}, "a%2Fb": {"c": b}, "x": {"": c}, "": e})
    assert set(flat) == {"conv1%2F7x7_s2/w", "a%252Fb/c", "x/", ""}
    back = unflatten(flat)
    assert set(back) == {"conv1/7x7_s2", "a%2Fb", "x", ""}
    assert set(back["conv1/7x7_s2"]) == {"w"}
    assert set(back["a%2Fb"]) == {"c"}
    assert set(back["x"]) == {""}


def test_flatten_unflatten_round_trip_keeps_dtypes_and_shapes():
    tree = _tree()
    flat = flatten(tree)
    assert flat["opt/step"].shape == () and flat["opt/step"].dtype == np.int32
    assert flat["seed0d"].shape == () and flat["seed0d"].dtype == np.uint32
    assert "params/relu1" not in flat  # empty dicts hold no array
    back = unflatten(flat, ["params/relu1"])
    _assert_same_tree(tree, back)


def test_flatten_rejects_bad_trees():
    with pytest.raises(TypeError, match="keys must be strings"):
        flatten({1: np.zeros(1)})
    with pytest.raises(TypeError, match="lists and tuples"):
        flatten({"a": [np.zeros(1)]})
    with pytest.raises(TypeError, match="cannot be stored"):
        flatten({"a": np.array(["text"])})
    with pytest.raises(TypeError, match="must be a dict"):
        flatten([np.zeros(1)])
    with pytest.raises(ValueError, match="conflicts"):
        unflatten({"a": np.zeros(1), "a/b": np.zeros(1)})


# ------------------------------------------------------------------ round trip


def test_save_load_round_trip(tmp_path):
    tree = _tree()
    meta = {"iteration": 100, "data_position": [3, 17], "solver": "SGD", "spec_sha256": "ab" * 32}
    jp = save_checkpoint(tmp_path, "iter_000100", tree, meta)
    assert jp == tmp_path / "iter_000100.json"
    tp = tmp_path / "iter_000100.safetensors"
    assert tp.is_file()
    assert _tmp_files(tmp_path) == []

    record = json.loads(jp.read_text())
    assert record["format"] == "netc.checkpoint"
    assert record["version"] == 1
    assert record["iteration"] == 100
    assert record["tensors_file"] == "iter_000100.safetensors"
    assert record["size"] == tp.stat().st_size
    assert record["sha256"] == hashlib.sha256(tp.read_bytes()).hexdigest() == sha256_file(tp)
    assert record["empty_dicts"] == ["params/relu1"]
    assert record["meta"] == meta

    # The .json, the .safetensors and the stem all name the same checkpoint.
    for name in (jp, tp, tmp_path / "iter_000100", str(jp)):
        loaded, lmeta = load_checkpoint(name)
        _assert_same_tree(tree, loaded)
        assert lmeta == meta
    loaded, _ = load_checkpoint(jp)
    assert loaded["params"]["relu1"] == {}
    assert loaded["params"]["conv1/7x7_s2"]["w"].flags.writeable


def test_round_trip_exotic_dtypes_and_jax_arrays(tmp_path):
    import jax
    import jax.numpy as jnp
    import ml_dtypes

    key = jax.random.key_data(jax.random.PRNGKey(3))
    tree = {
        "bf16": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3),
        "bf16_0d": np.array(1.5, dtype=ml_dtypes.bfloat16),
        "c64": np.array([1 + 2j, 3 - 4j], np.complex64),
        "key": key,
        "jax_i32_0d": jnp.asarray(5, dtype=jnp.int32),
        "big_endian": np.arange(5, dtype=">f4"),
        "strided": np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2],
        "empty": np.zeros((0, 3), np.float32),
    }
    save_checkpoint(tmp_path, "x", tree, {"iteration": 1})
    loaded, _ = load_checkpoint(tmp_path / "x")
    assert loaded["bf16"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert loaded["bf16"].shape == (2, 3)
    np.testing.assert_array_equal(loaded["bf16"].astype(np.float32), np.arange(6).reshape(2, 3))
    assert loaded["bf16_0d"].shape == () and float(loaded["bf16_0d"]) == 1.5
    assert loaded["c64"].dtype == np.complex64
    np.testing.assert_array_equal(loaded["c64"], tree["c64"])
    assert loaded["key"].dtype == np.uint32
    np.testing.assert_array_equal(loaded["key"], np.asarray(key))
    assert loaded["jax_i32_0d"].dtype == np.int32 and loaded["jax_i32_0d"].shape == ()
    assert int(loaded["jax_i32_0d"]) == 5
    assert loaded["big_endian"].dtype == np.float32
    np.testing.assert_array_equal(loaded["big_endian"], np.arange(5))
    np.testing.assert_array_equal(loaded["strided"], tree["strided"])
    assert loaded["empty"].shape == (0, 3)


def test_iteration_is_required_and_meta_must_be_json(tmp_path):
    with pytest.raises(ValueError, match="iteration"):
        save_checkpoint(tmp_path, "a", {"x": np.zeros(1)}, {})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, "a", {"x": np.zeros(1)}, {"iteration": 1, "bad": object()})
    with pytest.raises(ValueError, match="invalid checkpoint stem"):
        save_checkpoint(tmp_path, "../a", {"x": np.zeros(1)}, {"iteration": 1})
    assert list(tmp_path.iterdir()) == []  # nothing written on bad input
    # iteration keyword, numpy scalars in meta
    jp = save_checkpoint(tmp_path, "a", {"x": np.zeros(1)}, {"loss": np.float32(0.25)}, iteration=4)
    _, meta = load_checkpoint(jp)
    assert meta == {"loss": 0.25, "iteration": 4}


# ------------------------------------------------------------------ damage is refused


def test_flipped_byte_is_refused(tmp_path):
    jp = save_checkpoint(tmp_path, "c", _tree(), {"iteration": 1})
    tp = tmp_path / "c.safetensors"
    data = bytearray(tp.read_bytes())
    data[len(data) // 2] ^= 0x01
    tp.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(jp)
    msg = str(ei.value)
    assert str(tp) in msg
    assert "sha256 mismatch, the file is damaged or was modified" in msg
    assert not verify_checkpoint(jp)
    assert latest_checkpoint(tmp_path) is None


def test_truncated_tensors_file_is_refused(tmp_path):
    jp = save_checkpoint(tmp_path, "c", _tree(), {"iteration": 1})
    tp = tmp_path / "c.safetensors"
    size = tp.stat().st_size
    with open(tp, "r+b") as f:
        f.truncate(size - 10)
    with pytest.raises(CheckpointError, match="size mismatch") as ei:
        load_checkpoint(jp)
    assert str(tp) in str(ei.value)
    assert f"expected {size} bytes, found {size - 10}" in str(ei.value)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(tmp_path / "nope")
    assert str(ei.value) == f"{tmp_path / 'nope.json'}: no such checkpoint"

    (tmp_path / "metrics.json").write_text(json.dumps({"loss": [1.0, 0.5]}))
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(tmp_path / "metrics.json")
    assert str(ei.value).startswith(f"{tmp_path / 'metrics.json'}: not a netc checkpoint (missing ")
    assert "'sha256'" in str(ei.value)

    jp = save_checkpoint(tmp_path, "c", {"x": np.zeros(2)}, {"iteration": 1})
    (tmp_path / "c.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no such checkpoint tensors file"):
        load_checkpoint(jp)
    assert list_checkpoints(tmp_path) == [jp]  # committed, but not valid
    assert latest_checkpoint(tmp_path) is None


def test_pickle_payload_is_never_unpickled(tmp_path):
    """A tensors file with a valid digest but pickle inside is rejected, not executed."""
    jp = save_checkpoint(tmp_path, "c", {"x": np.zeros(2)}, {"iteration": 1})
    tp = tmp_path / "c.safetensors"
    marker = tmp_path / "pwned"
    import pickle

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    payload = pickle.dumps(Evil())
    tp.write_bytes(payload)
    record = json.loads(jp.read_text())
    record["sha256"] = hashlib.sha256(payload).hexdigest()
    record["size"] = len(payload)
    jp.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(jp)
    assert not marker.exists()


# ------------------------------------------------------------------ listing / latest / pruning


def test_list_sorted_by_iteration_with_prefix(tmp_path):
    for it in (30, 5, 200):
        save_checkpoint(tmp_path, f"snap_{it}", {"x": np.full(3, it)}, {"iteration": it})
    save_checkpoint(tmp_path, "best", {"x": np.zeros(3)}, {"iteration": 50})
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "spec.json").write_text("[1, 2]")
    (tmp_path / "junk.json").write_text("not json {")
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["snap_5.json", "snap_30.json", "best.json", "snap_200.json"]
    names = [p.name for p in list_checkpoints(tmp_path, prefix="snap_")]
    assert names == ["snap_5.json", "snap_30.json", "snap_200.json"]
    assert latest_checkpoint(tmp_path) == tmp_path / "snap_200.json"
    assert latest_checkpoint(tmp_path, prefix="best") == tmp_path / "best.json"
    assert list_checkpoints(tmp_path / "missing") == []
    assert latest_checkpoint(tmp_path / "missing") is None


def test_latest_skips_damaged_newest(tmp_path):
    save_checkpoint(tmp_path, "it_1", {"x": np.full(1000, 1.0)}, {"iteration": 1})
    save_checkpoint(tmp_path, "it_2", {"x": np.full(1000, 2.0)}, {"iteration": 2})
    assert latest_checkpoint(tmp_path) == tmp_path / "it_2.json"
    with open(tmp_path / "it_2.safetensors", "r+b") as f:
        f.truncate(100)
    latest = latest_checkpoint(tmp_path)
    assert latest == tmp_path / "it_1.json"
    tree, meta = load_checkpoint(latest)
    assert meta["iteration"] == 1
    np.testing.assert_array_equal(tree["x"], np.full(1000, 1.0))


def test_keep_last(tmp_path):
    for it in range(1, 6):
        save_checkpoint(tmp_path, f"it_{it}", {"x": np.full(2, it)}, {"iteration": it})
    write_json_atomic(tmp_path / "metrics.json", {"a": 1})
    removed = keep_last(tmp_path, 2)
    assert [p.name for p in removed] == ["it_1.json", "it_2.json", "it_3.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "it_4.json",
        "it_4.safetensors",
        "it_5.json",
        "it_5.safetensors",
        "metrics.json",
    ]
    assert keep_last(tmp_path, 2) == []
    with pytest.raises(ValueError):
        keep_last(tmp_path, -1)


# ------------------------------------------------------------------ simulated crashes


def _fail_replace_on(monkeypatch, suffix: str):
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith(suffix):
            raise OSError("simulated crash")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(ckpt.os, "replace", replace)


def test_crash_between_tensors_and_json_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, "it_1", {"x": np.full(10, 1.0)}, {"iteration": 1})
    _fail_replace_on(monkeypatch, ".json")
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, "it_2", {"x": np.full(10, 2.0)}, {"iteration": 2})
    monkeypatch.undo()
    # The tensors file of it_2 was committed, its JSON never was.
    assert (tmp_path / "it_2.safetensors").is_file()
    assert not (tmp_path / "it_2.json").exists()
    assert list_checkpoints(tmp_path) == [tmp_path / "it_1.json"]
    latest = latest_checkpoint(tmp_path)
    assert latest == tmp_path / "it_1.json"
    tree, meta = load_checkpoint(latest)
    assert meta["iteration"] == 1
    np.testing.assert_array_equal(tree["x"], np.full(10, 1.0))
    assert _tmp_files(tmp_path) == []
    # A later save under the same stem completes normally.
    save_checkpoint(tmp_path, "it_2", {"x": np.full(10, 2.0)}, {"iteration": 2})
    assert latest_checkpoint(tmp_path) == tmp_path / "it_2.json"


def test_crash_before_tensors_commit_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, "it_1", {"x": np.full(10, 1.0)}, {"iteration": 1})
    _fail_replace_on(monkeypatch, ".safetensors")
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, "it_2", {"x": np.full(10, 2.0)}, {"iteration": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["it_1.json", "it_1.safetensors"]
    assert latest_checkpoint(tmp_path) == tmp_path / "it_1.json"


def test_reused_stem_crash_never_pairs_old_json_with_new_tensors(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, "it_1", {"x": np.full(10, 1.0)}, {"iteration": 1})
    save_checkpoint(tmp_path, "last", {"x": np.full(10, 2.0)}, {"iteration": 2})
    assert latest_checkpoint(tmp_path) == tmp_path / "last.json"
    _fail_replace_on(monkeypatch, "last.json")
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, "last", {"x": np.full(10, 3.0)}, {"iteration": 3})
    monkeypatch.undo()
    # The old "last" was un-committed before its tensors were replaced.
    assert not (tmp_path / "last.json").exists()
    latest = latest_checkpoint(tmp_path)
    assert latest == tmp_path / "it_1.json"
    assert load_checkpoint(latest)[1]["iteration"] == 1
    # Overwriting a stem without a crash works.
    save_checkpoint(tmp_path, "last", {"x": np.full(10, 4.0)}, {"iteration": 4})
    tree, meta = load_checkpoint(tmp_path / "last")
    assert meta["iteration"] == 4 and tree["x"][0] == 4.0


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temp_files_ignored_and_cleaned(tmp_path):
    save_checkpoint(tmp_path, "it_1", {"x": np.full(10, 1.0)}, {"iteration": 1})
    dead = _dead_pid()
    stray = [
        f".it_2.json.tmp-{dead}-0badf00d",
        f".it_2.safetensors.tmp-{dead}-deadbeef",
        f".metrics.json.tmp-{dead}-01234567",
    ]
    for name in stray:
        (tmp_path / name).write_bytes(b'{"format": "netc.checkpoint", "iteration": 99')
    live = f".other.json.tmp-{os.getppid()}-abcdef01"  # a live process (pytest's parent)
    (tmp_path / live).write_bytes(b"partial")
    assert list_checkpoints(tmp_path) == [tmp_path / "it_1.json"]
    assert latest_checkpoint(tmp_path) == tmp_path / "it_1.json"
    save_checkpoint(tmp_path, "it_2", {"x": np.full(10, 2.0)}, {"iteration": 2})
    assert _tmp_files(tmp_path) == [live]  # dead writers' leftovers removed, live one kept
    assert latest_checkpoint(tmp_path) == tmp_path / "it_2.json"


def test_atomic_helpers(tmp_path, monkeypatch):
    p = tmp_path / "spec.yaml"
    assert write_bytes_atomic(p, b"one") == p
    assert p.read_bytes() == b"one"
    write_bytes_atomic(p, b"two")
    assert p.read_bytes() == b"two"
    q = write_json_atomic(tmp_path / "m.json", {"loss": np.float32(1.5), "step": np.int64(3)})
    assert json.loads(q.read_text()) == {"loss": 1.5, "step": 3}
    assert q.read_text().endswith("\n")
    assert sha256_file(p) == hashlib.sha256(b"two").hexdigest()
    _fail_replace_on(monkeypatch, "spec.yaml")
    with pytest.raises(OSError):
        write_bytes_atomic(p, b"three")
    assert p.read_bytes() == b"two"  # old content intact
    assert _tmp_files(tmp_path) == []  # temp removed on failure


# ------------------------------------------------------------------ real SIGKILL


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from netc.runtime.checkpoint import (
        keep_last, latest_checkpoint, load_checkpoint, save_checkpoint, write_json_atomic)

    run_dir = sys.argv[1]
    last = latest_checkpoint(run_dir)
    it = 0 if last is None else load_checkpoint(last)[1]["iteration"] + 1
    big = np.empty(5_000_000, np.float32)  # 20 MB
    while True:
        # ~1 MB of metrics rewritten in place every iteration: never seen half-written.
        write_json_atomic(f"{run_dir}/metrics.json", {"it": it, "loss": [it] * 200_000}, indent=None)
        big.fill(it)
        tree = {"net": {"conv1/7x7_s2": {"w": big}}, "step": np.array(it, np.int32),
                "key": np.array([it, it + 1], np.uint32)}
        save_checkpoint(run_dir, f"iter_{it:06d}", tree, {"iteration": it, "pos": it * 10})
        print(it, flush=True)
        keep_last(run_dir, 3)
        it += 1
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_at_random_moments_leaves_a_valid_checkpoint(tmp_path):
    rnd = random.Random(1234)
    previous = -1
    for trial in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            first = proc.stdout.readline()  # the first save of this run is complete
            assert first.strip().isdigit(), proc.stderr.read() if proc.poll() is not None else first
            time.sleep(rnd.uniform(0.0, 0.3) if trial else 0.0)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        printed = [int(first)] + [int(x) for x in rest.split()]
        assert printed[0] == previous + 1  # the writer resumed after the last valid checkpoint

        latest = latest_checkpoint(tmp_path)
        assert latest is not None
        tree, meta = load_checkpoint(latest)
        it = meta["iteration"]
        # Every save reported as done is durable; at most one more may have been committed.
        assert it in (printed[-1], printed[-1] + 1)
        assert meta["pos"] == it * 10
        assert tree["step"].dtype == np.int32 and int(tree["step"]) == it
        np.testing.assert_array_equal(tree["key"], np.array([it, it + 1], np.uint32))
        w = tree["net"]["conv1/7x7_s2"]["w"]
        assert w.shape == (5_000_000,) and w.dtype == np.float32
        assert w[0] == it and w[-1] == it and np.all(w == it)
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        assert metrics["it"] in (it, it + 1) and metrics["loss"] == [metrics["it"]] * 200_000
        # Leftover temp files can only be the killed writer's; earlier ones were cleaned up.
        for name in os.listdir(tmp_path):
            if ".tmp-" in name:
                assert f".tmp-{proc.pid}-" in name, name
        # Every committed checkpoint verifies, not only the newest.
        for p in list_checkpoints(tmp_path):
            assert verify_checkpoint(p), p
        previous = it
