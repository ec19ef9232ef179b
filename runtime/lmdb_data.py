"""Caffe's LMDB databases (``Data`` layer, ``backend: LMDB``) as a netc data source.

A Caffe database maps keys to serialised ``Datum`` messages; Caffe's Data layer reads them in key
order (an LMDB cursor from the first key). The field numbers are BVLC caffe.proto's::

    Datum  channels = 1, height = 2, width = 3 (int32), data = 4 (bytes: uint8 C×H×W),
           label = 5 (int32), float_data = 6 (repeated float), encoded = 7 (bool: `data` holds
           an image file, PNG or JPEG)

They are decoded with the wire reader of :mod:`netc.runtime.caffemodel` (no generated protobuf
code). Raw records become uint8 C×H×W (float32 for ``float_data``), as stored. Encoded records are
decoded with Pillow the way Caffe decodes them with OpenCV (``DecodeDatumToCVMatNative``): a grey
image gives 1 channel, a colour one 3 in OpenCV's BGR order (4, BGRA, with alpha), so a net
trained by Caffe on the same database sees the same pixels.

Memory: :func:`load_lmdb` makes one pass over the database that keeps every key (packed in one
bytes buffer) and every label (int32), and checks that raw records agree on C×H×W. The pixels are
not kept: :class:`DatumArray` reads the records a batch needs when it is indexed, in the reading
thread's own read transaction. A database of a million images costs some tens of MB here, not
its size.

Caffe's other backend, LevelDB, is recognised (its CURRENT and MANIFEST files) and refused by
name. numpy, Pillow and `lmdb` (the optional extra ``netc[caffe]``) only; no JAX.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from netc.runtime.caffemodel import CaffemodelError, _fields, _reals, _signed64
from netc.runtime.data import DataError, Dataset

__all__ = [
    "DatumArray",
    "database_kind",
    "decode_datum",
    "leveldb_refusal",
    "lmdb_sample_shape",
    "load_database",
    "load_lmdb",
]

INSTALL = "pip install 'netc[caffe]' (the lmdb package)"


def database_kind(path: str | Path) -> str | None:
    """ "LMDB" or "LEVELDB" for a folder holding one of Caffe's databases, else None."""
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / "data.mdb").is_file():
        return "LMDB"
    if (p / "CURRENT").is_file() and any(p.glob("MANIFEST-*")):
        return "LEVELDB"
    return None


def leveldb_refusal(name: str) -> str:
    return (
        f"{name}: a LevelDB database (Caffe's backend: LEVELDB), which netc does not read; "
        "convert it to LMDB (Caffe's convert_imageset / convert_mnist_data with "
        "--backend=lmdb) or to an .npz file"
    )


def _lmdb() -> Any:
    try:
        import lmdb
    except ImportError:
        raise DataError(
            f"reading Caffe's LMDB databases needs the lmdb package: {INSTALL}"
        ) from None
    return lmdb


def _open(path: Path, name: str) -> Any:
    lmdb = _lmdb()
    if not (path / "data.mdb").is_file():
        raise DataError(f"{name}: not an LMDB database (no data.mdb in the folder)")
    try:  # read-only and without the lock file: a database on a read-only disk opens too
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False, max_readers=64)
    except lmdb.Error as e:
        raise DataError(f"{name}: cannot open the LMDB database: {e}") from None


# --- Datum ----------------------------------------------------------------------------------------


def _datum_fields(value: bytes) -> dict[str, Any]:
    buf = memoryview(value)
    out: dict[str, Any] = {"dims": {}, "floats": []}
    for number, wire, v in _fields(buf, 0, len(buf)):
        if number in (1, 2, 3) and wire == 0:
            out["dims"][number] = _signed64(v)
        elif number == 4 and wire == 2:
            out["data"] = buf[v[0] : v[1]]
        elif number == 5 and wire == 0:
            out["label"] = _signed64(v)
        elif number == 6:
            _reals(buf, wire, v, "<f4", 4, out["floats"])
        elif number == 7 and wire == 0:
            out["encoded"] = bool(v)
    return out


def _dims(f: dict[str, Any]) -> tuple[int, int, int]:
    return tuple(f["dims"].get(i, 0) for i in (1, 2, 3))


def decode_datum(value: bytes, where: str = "record") -> tuple[np.ndarray, int]:
    """(pixels C×H×W, label) of one serialised Datum: uint8 for `data`, float32 for
    `float_data`, an encoded image decoded as Caffe decodes it. Raises DataError."""
    try:
        f = _datum_fields(value)
    except CaffemodelError as e:
        raise DataError(f"{where}: not a Caffe Datum: {e}") from None
    label = int(f.get("label", 0))
    if f.get("encoded"):
        return _decode_image(bytes(f.get("data", b"")), where), label
    c, h, w = _dims(f)
    if min(c, h, w) < 1:
        raise DataError(f"{where}: a raw Datum without its channels/height/width ({c}×{h}×{w})")
    raw = f.get("data")
    if raw is not None and len(raw):
        if len(raw) != c * h * w:
            raise DataError(
                f"{where}: {len(raw):,} bytes of data for {c}×{h}×{w} = {c * h * w:,} pixels"
            )
        return np.frombuffer(raw, dtype=np.uint8).reshape(c, h, w).copy(), label
    floats = np.concatenate(f["floats"]) if f["floats"] else np.zeros(0, np.float32)
    if floats.size != c * h * w:
        raise DataError(
            f"{where}: {floats.size:,} float_data values for {c}×{h}×{w} = {c * h * w:,} values"
        )
    return floats.astype(np.float32).reshape(c, h, w), label


def _decode_image(data: bytes, where: str) -> np.ndarray:
    """An encoded image as OpenCV's imdecode(IMREAD_UNCHANGED) gives it, channels first:
    grey 1×H×W; colour BGR; with alpha BGRA (8-bit images only)."""
    from PIL import Image  # a netc dependency

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # noqa: BLE001 - any undecodable file is reported the same way
        raise DataError(f"{where}: the encoded image cannot be decoded: {e}") from None
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode not in ("L", "RGB", "RGBA"):
        raise DataError(
            f"{where}: an encoded {img.mode} image; netc decodes 8-bit grey, RGB and RGBA images"
        )
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        return a[None].copy()
    order = [2, 1, 0, 3][: a.shape[2]]  # RGB(A) -> BGR(A), OpenCV's order
    return np.ascontiguousarray(a[:, :, order].transpose(2, 0, 1))


def lmdb_sample_shape(path: str | Path, name: str) -> tuple[int, ...]:
    """C×H×W of the first record of an LMDB database (for `netc check`). Raises DataError."""
    env = _open(Path(path), name)
    try:
        with env.begin() as txn:
            cur = txn.cursor()
            item = (bytes(cur.key()), bytes(cur.value())) if cur.first() else None
    finally:
        env.close()
    if item is None:
        raise DataError(f"{name}: the database is empty (0 records)")
    return tuple(int(d) for d in decode_datum(item[1], f"{name}: record {item[0]!r}")[0].shape)


# --- the source -----------------------------------------------------------------------------------


def _kind(f: dict[str, Any]) -> str:
    if f.get("encoded"):
        return "encoded"
    return "bytes" if f.get("data") is not None and len(f["data"]) else "floats"


def _scan(env: Any, name: str) -> tuple[list[bytes], np.ndarray]:
    """Every key in LMDB order and every label; raw records must agree on kind and C×H×W."""
    keys: list[bytes] = []
    labels: list[int] = []
    first: tuple | None = None
    with env.begin() as txn:
        for key, value in txn.cursor():
            try:
                f = _datum_fields(value)
            except CaffemodelError as e:
                raise DataError(f"{name}: record {bytes(key)!r}: not a Caffe Datum: {e}") from None
            kind = _kind(f)
            this = (kind == "floats", None if kind == "encoded" else _dims(f))
            if first is None:
                first = this
            elif this[0] != first[0] or None not in (this[1], first[1]) and this[1] != first[1]:
                raise DataError(_mismatch(name, key, this, first))
            keys.append(bytes(key))
            labels.append(int(f.get("label", 0)))
    return keys, np.asarray(labels, dtype=np.int64)


def _mismatch(name: str, key: bytes, this: tuple, first: tuple) -> str:
    def said(t: tuple) -> str:
        kind = "float_data" if t[0] else "bytes"
        return kind if t[1] is None else f"{kind} {'×'.join(map(str, t[1]))}"

    return (
        f"{name}: record {key!r} holds {said(this)}, the first record {said(first)}; netc "
        "needs every record of one kind and size"
    )


class DatumArray:
    """The pixels of an LMDB database's records as a read-only N×C×H×W array whose elements
    are read when it is indexed (an int, a slice or an array of ints along axis 0): numpy's
    basic protocol as far as netc's data pipeline uses it (shape, ndim, dtype, len, indexing)."""

    def __init__(
        self, env: Any, name: str, keys: list[bytes], shape: tuple[int, ...], dtype: np.dtype
    ):
        self._env, self.name = env, name
        self._blob = b"".join(keys)  # the keys, packed: one buffer, not a million objects
        self._ends = np.cumsum([len(k) for k in keys], dtype=np.int64)
        self.shape = (len(keys), *shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def key(self, i: int) -> bytes:
        start = int(self._ends[i - 1]) if i else 0
        return self._blob[start : int(self._ends[i])]

    def __getitem__(self, index: Any) -> np.ndarray:
        n = self.shape[0]
        if isinstance(index, (int, np.integer)):
            if not -n <= index < n:
                raise IndexError(f"index {index} is out of bounds for {n} records")
            return self._read(np.asarray([int(index) % n]))[0]
        if isinstance(index, slice):
            idx = np.arange(*index.indices(n))
        else:
            idx = np.asarray(index)
            if idx.dtype.kind not in "iu" or idx.ndim != 1:
                raise TypeError("a DatumArray is indexed by an int, a slice or a 1-D int array")
            if idx.size and (idx.min() < -n or idx.max() >= n):
                raise IndexError(f"an index is out of bounds for {n} records")
            idx = idx % n
        return self._read(idx)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        with self._env.begin() as txn:  # one read transaction per batch, in the caller's thread
            for j, i in enumerate(idx):
                key = self.key(int(i))
                where = f"{self.name}: record {key!r}"
                x, _ = decode_datum(txn.get(key), where)
                if x.shape != out.shape[1:]:
                    raise DataError(
                        f"{where} is {'×'.join(map(str, x.shape))}, the first record "
                        f"{'×'.join(map(str, out.shape[1:]))}; netc needs one size"
                    )
                out[j] = x
        return out

    def __repr__(self) -> str:
        return f"DatumArray({self.name!r}, shape={self.shape}, dtype={self.dtype})"


def load_lmdb(path: str | Path, name: str, need_label: bool = True) -> Dataset:
    """A Caffe LMDB database as a Dataset: ``data`` a :class:`DatumArray` (pixels read per
    batch), ``label`` the records' int32 labels (read by one pass at load). Raises DataError."""
    env = _open(Path(path), name)
    keys, labels = _scan(env, name)
    if not keys:
        raise DataError(f"{name}: the data set is empty (0 samples)")
    with env.begin() as txn:
        first, _ = decode_datum(txn.get(keys[0]), f"{name}: record {keys[0]!r}")
    if labels.min() < -(2**31) or labels.max() >= 2**31:
        raise DataError(
            f"{name}: labels range over [{labels.min()}, {labels.max()}], which "
            "does not fit in int32"
        )
    data = DatumArray(env, name, keys, first.shape, first.dtype)
    label = labels.astype(np.int32)
    label.setflags(write=False)
    return Dataset(name, data, label if need_label else None)


def load_database(path: Path, name: str, need_label: bool = True) -> Dataset:
    """The folder `path` as a data source: an LMDB database, else a clear refusal."""
    kind = database_kind(path)
    if kind == "LMDB":
        return load_lmdb(path, name, need_label)
    if kind == "LEVELDB":
        raise DataError(leveldb_refusal(name))
    raise DataError(
        f"{name}: is a directory, but not one of Caffe's LMDB databases (no "
        "data.mdb); netc reads .npz files (arrays 'data' and 'label') and LMDB "
        "databases"
    )
