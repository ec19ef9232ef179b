"""netc.runtime.data: bundled digits, sources and their errors, transforms, batching, resume."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from netc.compiler.layer import LabelFact
from netc.runtime import data as D
from netc.runtime.data import BUILTIN, BatchStream, DataError, Dataset, check_dataset, load_source
from netc.spec.messages import TransformationParameter as T

# --- helpers -------------------------------------------------------------------------------------


def images(n=6, c=3, h=4, w=5):
    """uint8 images whose pixels encode (sample, channel, row, col) so crops are traceable."""
    x = np.arange(n * c * h * w, dtype=np.int64).reshape(n, c, h, w) % 251
    return x.astype(np.uint8)


def ds_of(data, label=None, name="mem"):
    if label is None:
        label = np.arange(len(data), dtype=np.int32)
    return Dataset(name, np.asarray(data), None if label is False else np.asarray(label))


def stream(ds, **kw):
    kw.setdefault("transform", None)
    kw.setdefault("train", True)
    kw.setdefault("seed", 0)
    kw.setdefault("shuffle", False)
    kw.setdefault("prefetch", 2)
    return BatchStream(ds, **kw)


def take(s, k):
    return [next(s) for _ in range(k)]


def message(exc_info) -> str:
    return str(exc_info.value)


# --- bundled digits ------------------------------------------------------------------------------


def test_builtin_digits_shapes_dtypes_and_balance():
    assert {n for n, b in BUILTIN.items() if b.resource is not None} == {"digits"}
    tr, te = load_source("netc:digits/train"), load_source("netc:digits/test")
    assert tr.name == "netc:digits/train" and te.name == "netc:digits/test"
    assert tr.data.shape == (4000, 1, 28, 28) and tr.data.dtype == np.uint8
    assert tr.label.shape == (4000,) and tr.label.dtype == np.int32
    assert te.data.shape == (1000, 1, 28, 28) and te.data.dtype == np.uint8
    assert te.label.shape == (1000,) and te.label.dtype == np.int32
    assert len(tr) == 4000 and len(te) == 1000
    assert np.bincount(tr.label).tolist() == [400] * 10
    assert np.bincount(te.label).tolist() == [100] * 10
    assert tr.data.min() == 0 and tr.data.max() == 255
    # stored in mixed order: a sequential reader sees many classes in its first batch
    assert len(set(tr.label[:32].tolist())) >= 8 and len(set(te.label[:32].tolist())) >= 8
    # class means differ: real digits, labels attached to the right images
    means = np.stack([tr.data[tr.label == c].mean(0) for c in range(10)])
    dist = np.sqrt(((means[:, None] - means[None]) ** 2).mean(axis=(2, 3, 4)))
    assert dist[~np.eye(10, dtype=bool)].min() > 10
    assert not tr.data.flags.writeable
    check_dataset(tr, sample_shape=(1, 28, 28), num_classes=10)
    check_dataset(te, sample_shape=(1, 28, 28), num_classes=10)


def test_builtin_unknown_names():
    with pytest.raises(DataError) as e:
        load_source("netc:cifar/train")
    assert message(e) == (
        "netc:cifar/train: unknown built-in data source; "
        "available: netc:digits/train, netc:digits/test, netc:mnist/train, netc:mnist/test, "
        "netc:fashion-mnist/train, netc:fashion-mnist/test, netc:cifar10/train, netc:cifar10/test"
    )
    with pytest.raises(DataError) as e:
        load_source("netc:digits/val")
    assert message(e) == (
        "netc:digits/val: unknown split 'val' of built-in data set 'digits'; "
        "available: netc:digits/train, netc:digits/test"
    )


# --- user files ----------------------------------------------------------------------------------


def test_user_npz_relative_to_base_dir_then_cwd(tmp_path, monkeypatch):
    spec_dir, cwd = tmp_path / "spec", tmp_path / "cwd"
    spec_dir.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    np.savez(spec_dir / "a.npz", data=np.ones((3, 4), np.float32), label=np.array([0, 1, 2]))
    np.savez(cwd / "b.npz", data=np.zeros((2, 1, 2, 2), np.int16), label=np.array([1, 0]))
    a = load_source("a.npz", base_dir=spec_dir)
    assert a.name == str(spec_dir / "a.npz") and a.data.shape == (3, 4) and len(a) == 3
    b = load_source("b.npz", base_dir=spec_dir)  # not in spec_dir: found in the CWD
    assert b.name == str(cwd / "b.npz") and b.label.tolist() == [1, 0]
    assert load_source(str(spec_dir / "a.npz")).data.shape == (3, 4)


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        load_source(str(tmp_path / "nope.npz"))
    assert message(e) == f"{tmp_path / 'nope.npz'}: no such file"
    with pytest.raises(DataError) as e:
        load_source("nope.npz", base_dir=tmp_path / "spec")
    assert message(e) == f"nope.npz: no such file (looked in: {tmp_path / 'spec'}, {tmp_path})"


def test_not_an_npz(tmp_path):
    (tmp_path / "t.npz").write_text("hello")
    with pytest.raises(DataError) as e:
        load_source(str(tmp_path / "t.npz"))
    assert message(e) == f"{tmp_path / 't.npz'}: not a valid .npz file (not a zip archive)"

    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError) as e:
        load_source(str(tmp_path / "broken.npz"))
    assert message(e).startswith(f"{tmp_path / 'broken.npz'}: not a valid .npz file (")

    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(DataError) as e:
        load_source(str(tmp_path / "one.npy"))
    assert message(e) == (
        f"{tmp_path / 'one.npy'}: is a .npy file holding one array; netc expects an .npz "
        "archive with arrays 'data' and 'label' (np.savez)"
    )

    (tmp_path / "p.pkl").write_bytes(b"\x80\x05\x95junk")  # a pickle's opening bytes
    with pytest.raises(DataError) as e:
        load_source(str(tmp_path / "p.pkl"))
    assert message(e) == (
        f"{tmp_path / 'p.pkl'}: is a Python pickle, which netc refuses to load (pickle); "
        "save the arrays with np.savez"
    )

    with pytest.raises(DataError) as e:
        load_source(str(tmp_path))
    assert message(e) == (
        f"{tmp_path}: is a directory, but not one of Caffe's LMDB databases (no data.mdb); "
        "netc reads .npz files (arrays 'data' and 'label') and LMDB databases"
    )


def test_object_array_is_refused(tmp_path):
    f = tmp_path / "obj.npz"
    label = np.array([1, "two", None], dtype=object)
    np.savez(f, allow_pickle=True, data=np.zeros((3, 2), np.float32), label=label)
    with pytest.raises(DataError) as e:
        load_source(str(f))
    assert message(e) == (
        f"{f}: array 'label' contains object arrays, which netc refuses to load (pickle)"
    )


def test_missing_arrays(tmp_path):
    f = tmp_path / "m.npz"
    np.savez(f, x=np.zeros((2, 2)), y=np.zeros(2))
    with pytest.raises(DataError) as e:
        load_source(str(f))
    assert message(e) == f"{f}: no arrays named 'data' and 'label' (the file holds: 'x', 'y')"

    np.savez(f, data=np.zeros((2, 2)), labels=np.zeros(2))
    with pytest.raises(DataError) as e:
        load_source(str(f))
    assert message(e) == f"{f}: no array named 'label' (the file holds: 'data', 'labels')"
    ds = load_source(str(f), need_label=False)
    assert ds.label is None
    with pytest.raises(DataError) as e:
        check_dataset(ds, sample_shape=None, num_classes=10)
    assert message(e) == f"{f}: no array named 'label'"
    check_dataset(ds, sample_shape=(2,), num_classes=None, need_label=False)
    (batch,) = take(stream(ds, batch_size=2), 1)
    assert set(batch) == {"data"}

    np.savez(f)
    with pytest.raises(DataError) as e:
        load_source(str(f))
    assert message(e) == f"{f}: no arrays named 'data' and 'label' (the file holds: no arrays)"


def _save_and_load(tmp_path, data, label):
    f = tmp_path / "d.npz"
    np.savez(f, data=data, label=label)
    return f, load_source(str(f))


def test_check_dataset_errors(tmp_path):
    f, ds = _save_and_load(tmp_path, np.zeros((0, 1, 2, 2), np.uint8), np.zeros(0, np.int32))
    with pytest.raises(DataError) as e:
        check_dataset(ds, sample_shape=None, num_classes=None)
    assert message(e) == f"{f}: the data set is empty (0 samples)"

    f, ds = _save_and_load(tmp_path, np.zeros((3, 1, 2, 2), np.uint8), np.zeros(4, np.int32))
    with pytest.raises(DataError) as e:
        check_dataset(ds, sample_shape=None, num_classes=None)
    assert message(e) == f"{f}: 'data' has 3 samples but 'label' has 4"

    f, ds = _save_and_load(tmp_path, np.zeros((3, 1, 28, 28), np.uint8), np.zeros(3, np.int32))
    with pytest.raises(DataError) as e:
        check_dataset(ds, sample_shape=(3, 32, 32), num_classes=10)
    assert message(e) == (
        f"{f}: each sample has shape (1, 28, 28), but the spec expects (3, 32, 32) (before crop)"
    )

    f, ds = _save_and_load(tmp_path, np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.int32))
    with pytest.raises(DataError) as e:
        check_dataset(ds, sample_shape=None, num_classes=None)
    assert message(e) == f"{f}: 'data' must have shape N×C×H×W or N×D, got shape (3, 28, 28)"

    f, ds = _save_and_load(tmp_path, np.array([["a"], ["b"]]), np.zeros(2, np.int32))
    with pytest.raises(DataError) as e:
        check_dataset(ds, sample_shape=None, num_classes=None)
    assert message(e) == f"{f}: 'data' has dtype <U1; netc needs a real or integer dtype"

    # the label's shape per sample is what its readers need (Caffe: the count); N×1 is one
    fact = LabelFact("loss", 1, (), 10, None, "class", "predictions ip are 3×10 with classes on axis 1")
    f, ds = _save_and_load(tmp_path, np.zeros((3, 2)), np.zeros((3, 1), np.int32))
    check_dataset(ds, sample_shape=None, labels=fact)
    f, ds = _save_and_load(tmp_path, np.zeros((3, 2)), np.zeros((3, 2), np.int32))
    with pytest.raises(DataError) as e:
        check_dataset(ds, sample_shape=None, labels=fact)
    assert message(e) == (
        f"{f}: 'label' holds 2 per sample, but layer 'loss' needs one value per sample "
        "(predictions ip are 3×10 with classes on axis 1)"
    )


def test_label_errors(tmp_path):
    x = np.zeros((4, 2), np.float32)
    f, ds = _save_and_load(tmp_path, x, np.array([0.0, 1.0, 2.5, 3.0]))
    with pytest.raises(DataError) as e:
        check_dataset(ds, sample_shape=(2,), num_classes=10)
    assert message(e) == f"{f}: labels must be integers, but label[2] = 2.5"

    f, ds = _save_and_load(tmp_path, x, np.array(["a", "b", "c", "d"]))
    with pytest.raises(DataError) as e:
        check_dataset(ds, sample_shape=(2,), num_classes=10)
    assert message(e) == f"{f}: labels must be integers, but 'label' has dtype <U1"

    # whole-valued float labels are accepted and arrive as int32
    f, ds = _save_and_load(tmp_path, x, np.array([0.0, 1.0, 2.0, 3.0]))
    check_dataset(ds, sample_shape=(2,), num_classes=4)
    (batch,) = take(stream(ds, batch_size=4), 1)
    assert batch["label"].dtype == np.int32 and batch["label"].tolist() == [0, 1, 2, 3]

    f, ds = _save_and_load(tmp_path, x, np.array([0, 3, 10, 7], np.int64))
    with pytest.raises(DataError) as e:
        check_dataset(ds, sample_shape=(2,), num_classes=10)
    assert message(e) == (
        f"{f}: labels range over [0, 10], outside [0, 10) for a classifier with 10 outputs"
    )
    f, ds = _save_and_load(tmp_path, x, np.array([-1, 3, 5, 7], np.int64))
    with pytest.raises(DataError) as e:
        check_dataset(ds, sample_shape=(2,), num_classes=10)
    assert message(e) == (
        f"{f}: labels range over [-1, 7], outside [0, 10) for a classifier with 10 outputs"
    )
    check_dataset(ds, sample_shape=(2,), num_classes=10, ignore_label=-1)


def test_nan_and_inf_in_data(tmp_path):
    x = np.zeros((5, 1, 2, 2), np.float32)
    x[3, 0, 1, 0] = np.inf
    x[4, 0, 0, 0] = np.nan
    f, ds = _save_and_load(tmp_path, x, np.zeros(5, np.int32))
    with pytest.raises(DataError) as e:
        check_dataset(ds, sample_shape=(1, 2, 2), num_classes=1)
    assert message(e) == f"{f}: 'data' contains NaN or infinite values (first in sample 3)"


def test_transform_errors():
    ds = ds_of(images())
    with pytest.raises(DataError) as e:
        stream(ds, batch_size=2, transform=T(mean_file="mean.binaryproto"))
    assert message(e) == (
        "mem: transform_param.mean_file ('mean.binaryproto') is not supported by netc; "
        "use mean_value (one value, or one per channel)"
    )
    with pytest.raises(DataError) as e:
        stream(ds, batch_size=2, transform=T(mean_value=[1.0, 2.0]))
    assert message(e) == (
        "mem: transform_param.mean_value has 2 values; give one, or one per channel (3)"
    )
    with pytest.raises(DataError) as e:
        stream(ds, batch_size=2, transform=T(crop_size=5))
    assert message(e) == "mem: crop 5×5 is larger than the images (4×5)"
    with pytest.raises(DataError) as e:
        stream(ds_of(np.zeros((3, 4))), batch_size=2, transform=T(crop_size=2))
    assert message(e) == (
        "mem: crop and mirror need image data N×C×H×W, but samples have shape (4,)"
    )
    assert D.transformed_shape((3, 4, 5), T(crop_size=3)) == (3, 3, 3)
    assert D.transformed_shape((3, 4, 5), T(crop_h=2, crop_w=4)) == (3, 2, 4)
    assert D.transformed_shape((3, 4, 5), None) == (3, 4, 5)


# --- transform math ------------------------------------------------------------------------------


def test_mean_then_scale_single_and_per_channel():
    x = images()
    ds = ds_of(x)
    (b,) = take(stream(ds, batch_size=6, transform=T(mean_value=[10.0], scale=0.5)), 1)
    assert b["data"].dtype == np.float32 and b["data"].shape == (6, 3, 4, 5)
    np.testing.assert_array_equal(b["data"], (x.astype(np.float32) - 10) * np.float32(0.5))

    mean = np.array([1.0, 20.0, 300.0], np.float32).reshape(1, 3, 1, 1)
    (b,) = take(stream(ds, batch_size=6, transform=T(mean_value=[1.0, 20.0, 300.0], scale=2.0)), 1)
    np.testing.assert_array_equal(b["data"], (x.astype(np.float32) - mean) * 2)

    (b,) = take(stream(ds, batch_size=6, transform=None), 1)
    np.testing.assert_array_equal(b["data"], x.astype(np.float32))
    assert b["label"].dtype == np.int32 and b["label"].tolist() == list(range(6))

    v = np.arange(12, dtype=np.float64).reshape(4, 3)  # N×D data: one mean per feature
    (b,) = take(stream(ds_of(v), batch_size=4, transform=T(mean_value=[1.0, 2.0, 3.0])), 1)
    np.testing.assert_array_equal(b["data"], (v - [1, 2, 3]).astype(np.float32))


def test_centre_crop_in_test_and_no_mirror():
    x = images(h=6, w=7)
    ds = ds_of(x)
    (b,) = take(stream(ds, batch_size=6, train=False, transform=T(crop_size=3, mirror=True)), 1)
    np.testing.assert_array_equal(b["data"], x[:, :, 1:4, 2:5].astype(np.float32))
    (b,) = take(stream(ds, batch_size=6, train=False, transform=T(crop_h=2, crop_w=6)), 1)
    np.testing.assert_array_equal(b["data"], x[:, :, 2:4, 0:6].astype(np.float32))


def _find_window(sample, crop):
    """(h_off, w_off, flipped) of `crop` in `sample`, which must be unique."""
    c, h, w = sample.shape
    ch, cw = crop.shape[1:]
    hits = [
        (i, j, flip)
        for i in range(h - ch + 1)
        for j in range(w - cw + 1)
        for flip in (False, True)
        if np.array_equal(
            sample[:, i : i + ch, j : j + cw][..., ::-1]
            if flip
            else sample[:, i : i + ch, j : j + cw],
            crop,
        )
    ]
    assert len(hits) == 1
    return hits[0]


def test_random_crop_and_mirror_are_deterministic_by_seed():
    n = 40
    x = (np.random.default_rng(5).integers(0, 256, size=(n, 2, 6, 6))).astype(np.uint8)
    ds = ds_of(x)
    t = T(crop_size=4, mirror=True)

    def run(seed, batch_size, k):
        with stream(ds, batch_size=batch_size, transform=t, seed=seed) as s:
            return np.concatenate([b["data"] for b in take(s, k)])

    a, a2, other = run(3, 8, 5), run(3, 8, 5), run(4, 8, 5)
    np.testing.assert_array_equal(a, a2)
    assert not np.array_equal(a, other)
    # the choices depend on (seed, epoch, place in epoch) only, not on how batches are cut
    np.testing.assert_array_equal(run(3, 5, 8), a)
    windows = [_find_window(x[i].astype(np.float32), a[i]) for i in range(n)]
    assert len({(i, j) for i, j, _ in windows}) > 4  # several offsets in 0..2
    assert {f for _, _, f in windows} == {False, True}  # both flipped and not
    # the next epoch draws again
    e1 = run(3, 8, 10)[n:]
    assert not np.array_equal(e1, a)
    # mirror only: same sample content, some reversed along W
    with stream(ds, batch_size=n, transform=T(mirror=True), seed=3) as s:
        (b,) = take(s, 1)
    flipped = [np.array_equal(b["data"][i], x[i, :, :, ::-1]) for i in range(n)]
    same = [np.array_equal(b["data"][i], x[i]) for i in range(n)]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)


# --- batching ------------------------------------------------------------------------------------


def test_wrap_around_without_shuffle():
    ds = ds_of(images(n=5))
    with stream(ds, batch_size=3) as s:
        labels = [b["label"].tolist() for b in take(s, 4)]
        assert s.position() == {"epoch": 2, "index": 2, "size": 5}
    assert labels == [[0, 1, 2], [3, 4, 0], [1, 2, 3], [4, 0, 1]]
    with stream(ds_of(images(n=2)), batch_size=5) as s:  # a batch larger than the data set
        assert next(s)["label"].tolist() == [0, 1, 0, 1, 0]
        assert s.position() == {"epoch": 2, "index": 1, "size": 2}


def test_shuffle_uses_one_permutation_per_epoch():
    n, seed = 7, 11
    ds = ds_of(images(n=n))
    perm = [np.random.default_rng([seed, e]).permutation(n) for e in range(3)]
    assert not np.array_equal(perm[0], perm[1])
    with stream(ds, batch_size=n, seed=seed, shuffle=True) as s:
        for e in range(3):
            assert next(s)["label"].tolist() == perm[e].tolist()
    with stream(ds, batch_size=4, seed=seed, shuffle=True) as s:
        got = np.concatenate([b["label"] for b in take(s, 5)])
    np.testing.assert_array_equal(got, np.concatenate(perm)[:20])


def _assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for bx, by in zip(xs, ys):
        np.testing.assert_array_equal(bx["data"], by["data"])
        np.testing.assert_array_equal(bx["label"], by["label"])


def _wait_full(s, depth):
    deadline = time.monotonic() + 5
    while s._queue.qsize() < depth and time.monotonic() < deadline:
        time.sleep(0.005)
    assert s._queue.qsize() == depth


@pytest.mark.parametrize("k", [3, 60])  # 60: the compared batches cross the epoch boundary
def test_resume_reproduces_the_uninterrupted_stream(k):
    ds = load_source("netc:digits/train")
    kw = dict(
        batch_size=64,
        transform=T(scale=1 / 256, mean_value=[33.0], crop_size=24, mirror=True),
        train=True,
        seed=7,
        shuffle=True,
        prefetch=4,
    )
    with BatchStream(ds, **kw) as ref:
        reference = take(ref, k + 6)
    with BatchStream(ds, **kw) as s:
        take(s, k)
        _wait_full(s, 4)  # the worker is 4 batches ahead of the consumer
        pos = json.loads(json.dumps(s.position()))
    assert pos == {"epoch": k * 64 // 4000, "index": k * 64 % 4000, "size": 4000}
    with BatchStream(ds, **kw, position=pos) as resumed:
        _assert_same_batches(take(resumed, 6), reference[k:])
    with BatchStream(ds, **{**kw, "prefetch": 0}, position=pos) as sync:
        _assert_same_batches(take(sync, 6), reference[k:])


def test_resume_rejects_a_position_for_another_data_set():
    ds = ds_of(images(n=5))
    with pytest.raises(DataError) as e:
        stream(ds, batch_size=2, position={"epoch": 0, "index": 3, "size": 6})
    assert (
        message(e) == "mem: the saved position is for a data set of 6 samples, but this one has 5"
    )
    with pytest.raises(ValueError):
        stream(ds, batch_size=2, position={"epoch": 0, "index": 5})


def test_worker_exception_surfaces_in_next(monkeypatch):
    calls = {"n": 0}
    real = D._Producer.batch

    def flaky(self, epoch, index):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk on fire")
        return real(self, epoch, index)

    monkeypatch.setattr(D._Producer, "batch", flaky)
    s = stream(ds_of(images(n=5)), batch_size=2, prefetch=4)
    take(s, 2)
    with pytest.raises(OSError, match="disk on fire"):
        next(s)
    with pytest.raises(OSError, match="disk on fire"):
        next(s)
    assert not s._thread.is_alive()
    s.close()


def test_close_stops_the_thread_and_context_manager():
    before = threading.active_count()
    with stream(ds_of(images(n=5)), batch_size=2, prefetch=3) as s:
        next(s)
        thread = s._thread
        assert thread.daemon and thread.is_alive()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        next(s)
    s.close()  # idempotent
    assert threading.active_count() <= before


def test_check_path_builtin_shapes_match_the_bundled_arrays():
    """`netc check` knows the built-in sets' shapes without numpy (compiler/layers/data.py's
    catalogue, the one list); they must equal the bundled arrays (one truth, checked here)."""
    from netc.compiler.layers.data import BUILTIN_SOURCES
    from netc.runtime.data import load_source

    assert set(BUILTIN_SOURCES) == {s for n, b in BUILTIN.items() for s in b.sources(n)}
    bundled = {s for n, b in BUILTIN.items() if b.resource is not None for s in b.sources(n)}
    for name, split in BUILTIN_SOURCES.items():
        if name not in bundled:  # downloaded on first use: tests/test_datasets_download.py
            continue
        ds = load_source(name)
        assert len(ds) == split.samples, name
        assert tuple(ds.data.shape[1:]) == split.sample_shape, name
        assert tuple(ds.label.shape[1:]) == split.label_shape, name
        assert int(ds.label.max()) + 1 == split.classes and int(ds.label.min()) == 0, name


def test_builtin_catalogue_is_known_without_numpy_or_jax():
    """`netc check` reads the catalogue in a process that never imports numpy's data or JAX."""
    import subprocess
    import sys

    code = (
        "import sys; from netc.compiler.layers.data import BUILTIN_SOURCES; "
        "s = BUILTIN_SOURCES['netc:digits/train']; "
        "assert s.sample_shape == (1, 28, 28) and s.classes == 10; "
        "assert 'jax' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
