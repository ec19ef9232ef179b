"""Caffe's LMDB databases as Data sources (runtime/lmdb_data.py).

The databases here are written with the `lmdb` package, their records serialised by the protobuf
library from a Datum message class this file builds from caffe.proto's field numbers (BVLC
caffe.proto: channels 1, height 2, width 3, data 4, label 5, float_data 6, encoded 7), so netc's
own wire reader is checked against an independent encoder. Raw uint8 records, float_data records
and PNG-encoded records (decoded to OpenCV's BGR order, as Caffe decodes them) read back exactly,
in LMDB key order; pixels are read per batch; transform_param applies as for an in-memory array;
labels are checked as for other sources; a LevelDB is refused by name and line; and a tiny net
trains from a database through `netc train`.
"""

from __future__ import annotations

import io
import json

import lmdb
import numpy as np
import pytest
from conftest import netc
from PIL import Image

from netc.runtime import lmdb_data
from netc.runtime.data import BatchStream, DataError, Dataset, load_source
from netc.spec.messages import TransformationParameter

N, C, H, W = 24, 1, 6, 6


def datum_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="datum_test.proto", package="datumtest", syntax="proto2"
    )
    m = fdp.message_type.add(name="Datum")
    for name, number, ftype, label in [
        ("channels", 1, F.TYPE_INT32, F.LABEL_OPTIONAL),
        ("height", 2, F.TYPE_INT32, F.LABEL_OPTIONAL),
        ("width", 3, F.TYPE_INT32, F.LABEL_OPTIONAL),
        ("data", 4, F.TYPE_BYTES, F.LABEL_OPTIONAL),
        ("label", 5, F.TYPE_INT32, F.LABEL_OPTIONAL),
        ("float_data", 6, F.TYPE_FLOAT, F.LABEL_REPEATED),
        ("encoded", 7, F.TYPE_BOOL, F.LABEL_OPTIONAL),
    ]:
        m.field.add(name=name, number=number, type=ftype, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("datumtest.Datum"))


Datum = datum_class()


def write_lmdb(path, records: dict[bytes, bytes]) -> None:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in records.items():
            txn.put(key, value)
    env.close()


def raw_datum(x: np.ndarray, label: int) -> bytes:
    c, h, w = x.shape
    return Datum(channels=c, height=h, width=w, data=x.tobytes(), label=label).SerializeToString()


def png_datum(rgb: np.ndarray, label: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return Datum(data=buf.getvalue(), encoded=True, label=label).SerializeToString()


@pytest.fixture(scope="module")
def raw_db(tmp_path_factory):
    """N records 1×6×6 uint8, labels 0..3, written in reverse key order (LMDB sorts keys): the
    class of each is readable from its pixels, so a net can learn it."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, N)
    x = rng.integers(0, 40, (N, C, H, W)).astype(np.uint8)
    for i, k in enumerate(labels):
        x[i, 0, k, :] = 250  # class k: row k is bright
    path = tmp_path_factory.mktemp("lmdb") / "train_lmdb"
    keys = [f"{i:08d}_img".encode() for i in range(N)]
    write_lmdb(path, {keys[i]: raw_datum(x[i], int(labels[i])) for i in reversed(range(N))})
    return path, x, labels


def test_raw_records_read_back_exactly_in_key_order(raw_db):
    path, x, labels = raw_db
    ds = load_source(str(path))
    assert isinstance(ds.data, lmdb_data.DatumArray)
    assert ds.data.shape == (N, C, H, W) and ds.data.dtype == np.uint8 and len(ds) == N
    np.testing.assert_array_equal(ds.data[np.arange(N)], x)
    np.testing.assert_array_equal(ds.data[5], x[5])
    np.testing.assert_array_equal(ds.data[3:9:2], x[3:9:2])
    np.testing.assert_array_equal(ds.data[np.array([7, 0, 7])], x[[7, 0, 7]])
    assert ds.label.dtype == np.int32
    np.testing.assert_array_equal(ds.label, labels)
    assert ds.data.key(0) == b"00000000_img" and ds.data.key(N - 1) == f"{N - 1:08d}_img".encode()


def test_pixels_are_read_per_access_not_at_load(raw_db, monkeypatch):
    """The load keeps keys and labels; a batch decodes only its own records."""
    path, x, _ = raw_db
    decoded = []
    real = lmdb_data.decode_datum
    monkeypatch.setattr(lmdb_data, "decode_datum", lambda v, w="": decoded.append(w) or real(v, w))
    ds = load_source(str(path))
    assert len(decoded) == 1  # the first record, for the shape and dtype
    ds.data[np.array([2, 11, 19])]
    assert len(decoded) == 4


def test_encoded_png_records_decode_as_caffe_does(tmp_path):
    """A colour PNG becomes 3×H×W in OpenCV's BGR order, a grey one 1×H×W."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (3, 5, 7, 3)).astype(np.uint8)
    write_lmdb(tmp_path / "color", {f"{i}".encode(): png_datum(rgb[i], i) for i in range(3)})
    ds = load_source(str(tmp_path / "color"))
    assert ds.data.shape == (3, 3, 5, 7)
    np.testing.assert_array_equal(ds.data[np.arange(3)], rgb[..., ::-1].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(ds.label, [0, 1, 2])

    grey = rng.integers(0, 256, (2, 4, 4)).astype(np.uint8)
    write_lmdb(tmp_path / "grey", {b"a": png_datum(grey[0], 1), b"b": png_datum(grey[1], 0)})
    ds = load_source(str(tmp_path / "grey"))
    np.testing.assert_array_equal(ds.data[np.arange(2)], grey[:, None])


def test_float_data_records():
    v = np.arange(12, dtype=np.float32).reshape(3, 2, 2) / 7
    rec = Datum(channels=3, height=2, width=2, float_data=v.ravel().tolist(), label=-2)
    got, label = lmdb_data.decode_datum(rec.SerializeToString())
    assert got.dtype == np.float32 and label == -2
    np.testing.assert_array_equal(got, v)


def test_transform_applies_as_for_an_array(raw_db):
    """Crop, mirror, scale and mean on a database equal the same stream over its pixels loaded
    into memory (the same seed: the same order, offsets and flips)."""
    path, _, _ = raw_db
    ds = load_source(str(path))
    eager = Dataset("eager", np.asarray(ds.data), ds.label)
    t = TransformationParameter(crop_size=4, mirror=True, scale=0.5, mean_value=(10.0,))
    kw = dict(batch_size=10, transform=t, train=True, seed=3, shuffle=True, prefetch=0)
    with BatchStream(ds, **kw) as a, BatchStream(eager, **kw) as b:
        for _ in range(4):  # past the end of the epoch: batches wrap
            x, y = next(a), next(b)
            assert x["data"].shape == (10, 1, 4, 4)
            np.testing.assert_array_equal(x["data"], y["data"])
            np.testing.assert_array_equal(x["label"], y["label"])


def test_damaged_and_mixed_records_are_named(tmp_path):
    x = np.zeros((1, 2, 2), np.uint8)
    write_lmdb(tmp_path / "bad", {b"k1": raw_datum(x, 0), b"k2": b"\x22\x05ab"})
    with pytest.raises(DataError) as e:
        load_source(str(tmp_path / "bad"))
    assert str(e.value) == (
        f"{tmp_path / 'bad'}: record b'k2': not a Caffe Datum: field 4: "
        "length 5 runs past the end of its message"
    )
    write_lmdb(
        tmp_path / "mixed",
        {b"a": raw_datum(x, 0), b"b": raw_datum(np.zeros((1, 3, 2), np.uint8), 1)},
    )
    with pytest.raises(DataError) as e:
        load_source(str(tmp_path / "mixed"))
    assert str(e.value) == (
        f"{tmp_path / 'mixed'}: record b'b' holds bytes 1×3×2, the first "
        "record bytes 1×2×2; netc needs every record of one kind and size"
    )


def test_leveldb_is_refused_by_name(tmp_path):
    db = tmp_path / "train_leveldb"
    db.mkdir()
    (db / "CURRENT").write_text("MANIFEST-000001\n")
    (db / "MANIFEST-000001").write_bytes(b"")
    with pytest.raises(DataError) as e:
        load_source(str(db))
    assert str(e.value).startswith(
        f"{db}: a LevelDB database (Caffe's backend: LEVELDB), which "
        "netc does not read; convert it to LMDB"
    )
    spec = tmp_path / "net.yaml"
    spec.write_text(SPEC.format(source=db.name, backend="LEVELDB", classes=4))
    r = netc("check", spec)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (
        f"{spec}:7:51: error: layer 'db' (Data): data_param.source: source 'train_leveldb': a "
        "LevelDB database (Caffe's backend: LEVELDB), which netc does not read"
    ) in r.stderr


SPEC = """\
name: lmdb_net
layers:
  - name: db
    type: Data
    top: [data, label]
    transform_param: {{scale: 0.004}}
    data_param: {{batch_size: 8, backend: {backend}, source: {source}}}
  - {{name: ip, type: InnerProduct, bottom: data, top: ip,
     inner_product_param: {{num_output: {classes}, weight_filler: {{type: xavier}}}}}}
  - {{name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}}
solver: {{base_lr: 0.5, lr_policy: fixed, max_iter: 40, display: 1, snapshot: 0, random_seed: 1}}
"""


def test_check_reads_the_shape_from_the_database(raw_db, tmp_path):
    path, _, _ = raw_db
    spec = tmp_path / "net.yaml"
    spec.write_text(SPEC.format(source=path, backend="LMDB", classes=4))
    r = netc("check", spec)
    assert r.returncode == 0, r.stderr
    assert "8×1×6×6" in r.stdout
    r = netc("check", spec, "--input-shape", "data=N,1,5,6")
    assert r.returncode == 1
    assert (
        f"{spec}:5:11: error: layer 'db' (Data): --input-shape data=N,1,5,6: the layer gives "
        "8×1×6×6"
    ) in r.stderr


def test_netc_train_learns_from_an_lmdb(raw_db, tmp_path):
    path, _, _ = raw_db
    spec = tmp_path / "net.yaml"
    spec.write_text(SPEC.format(source=path, backend="LMDB", classes=4))
    out = tmp_path / "run"
    r = netc("train", spec, "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    losses = [
        e["loss"]
        for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if e.get("event") == "train" and "loss" in e
    ]
    assert losses and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_labels_are_checked_as_for_other_sources(raw_db, tmp_path):
    """Labels 0..3 do not fit a classifier of 3 outputs: refused before training starts."""
    path, _, labels = raw_db
    spec = tmp_path / "net.yaml"
    spec.write_text(SPEC.format(source=path, backend="LMDB", classes=3))
    r = netc("train", spec, "--out", tmp_path / "run", "--no-progress")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (
        f"error: {path}: labels range over [0, {labels.max()}], outside [0, 3) for a "
        "classifier with 3 outputs"
    ) in r.stderr


def test_without_the_lmdb_package_the_message_says_what_to_install(raw_db, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lmdb", None)  # `import lmdb` raises ImportError
    with pytest.raises(DataError) as e:
        load_source(str(raw_db[0]))
    assert str(e.value) == (
        "reading Caffe's LMDB databases needs the lmdb package: pip install "
        "'netc[caffe]' (the lmdb package)"
    )
