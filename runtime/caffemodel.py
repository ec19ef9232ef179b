"""Caffe's binary weights (``.caffemodel``: a serialised NetParameter) → a netc checkpoint.

    blobs = read_caffemodel(data)              # [(layer name, layer type, [CaffeBlob, ...]), ...]
    tree, report = caffemodel_to_tree(blobs, plans)
    path = import_caffemodel("net.caffemodel", "net.yaml", "out/net.weights")

The reader is a small protocol-buffers wire-format decoder for the subset of caffe.proto it
needs, with the field numbers taken from BVLC caffe.proto:

    NetParameter      name = 1, layers = 2 (V1LayerParameter), layer = 100 (LayerParameter)
    LayerParameter    name = 1, type = 2 (string), blobs = 7
    V1LayerParameter  layer = 1 (V0LayerParameter), name = 4, type = 5 (enum), blobs = 6
    V0LayerParameter  name = 1, type = 2 (string), blobs = 50
    BlobProto         num = 1, channels = 2, height = 3, width = 4 (legacy 4-D shape),
                      data = 5 (float), diff = 6, shape = 7, double_data = 8, double_diff = 9
    BlobShape         dim = 1 (int64)

Everything else is skipped by its wire type. Repeated numbers are read packed or unpacked (both
are valid proto2 encodings). Nothing is evaluated: a Python pickle (a PyTorch / NumPy object
file) or an HDF5 snapshot is refused by its magic bytes before any parsing; lengths are checked
against the buffer, nesting is bounded.

Mapping (Caffe's Net::CopyTrainedLayersFrom): a caffemodel layer's blob i goes to the i-th
parameter blob that the netc layer of the same name declares (the declaration order is Caffe's:
weight, bias; BatchNorm mean, variance, scale factor; Scale weight, bias). Shapes must be equal,
or, for a blob that only has the legacy num/channels/height/width, equal to the net's shape
padded with leading 1s to 4 axes (Blob::ShapeEquals). A mis-shaped blob, a blob index the layer
does not have, or a wrong element count is an error naming the layer and the blob index; a
caffemodel layer with no netc layer of its name, and a netc layer the caffemodel has no blobs for,
are reported (warnings). SegNet's ``BN`` layer (imported as a Scale layer of the same name) stores
its scale and shift as 1×C×1×1: they load into the Scale layer's C-vectors.

BatchNorm's third blob is Caffe's scale factor: the stored statistics are the running sums, and
Caffe divides mean and variance by it (a factor of 0 means statistics 0). netc's BatchNorm keeps
the same three blobs and divides the same way, so they are copied unchanged (a fine-tuning run
then continues Caffe's moving averages exactly).

The checkpoint is the one `netc train` snapshots write (runtime/checkpoint.py): ``{"params":
{layer: {role: array}}, "state": {...}}`` (learned blobs in params, statistics in state), so
`netc test --weights`, `netc predict --weights` and `netc train --weights` read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from netc.errors import NetcError

__all__ = ["CaffemodelError", "CaffeBlob", "read_caffemodel", "caffemodel_to_tree",
           "ImportReport", "import_caffemodel", "MAX_BYTES"]

MAX_BYTES = 8 << 30
MAX_DEPTH = 8


class CaffemodelError(NetcError):
    """A .caffemodel that cannot be read, or whose blobs do not fit the net."""


@dataclass
class CaffeBlob:
    shape: tuple[int, ...]
    data: np.ndarray  # flat, float32 or float64
    legacy: bool  # the shape came from num/channels/height/width


# --- wire format ------------------------------------------------------------------------------------


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= end:
            raise CaffemodelError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CaffemodelError("varint longer than 10 bytes")


def _signed64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def _fields(buf: memoryview, start: int, end: int):
    """(field number, wire type, value) for each field of one message: value is an int for
    varint/fixed types, a (start, end) span for length-delimited ones."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CaffemodelError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            if pos + 8 > end:
                raise CaffemodelError("truncated 64-bit field")
            value, pos = (pos, pos + 8), pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if n > end - pos:
                raise CaffemodelError(f"field {number}: length {n} runs past the end of its "
                                      "message")
            value, pos = (pos, pos + n), pos + n
        elif wire == 5:
            if pos + 4 > end:
                raise CaffemodelError("truncated 32-bit field")
            value, pos = (pos, pos + 4), pos + 4
        else:
            raise CaffemodelError(f"field {number}: wire type {wire} (groups) is not used by "
                                  "caffe.proto")
        yield number, wire, value


def _string(buf: memoryview, span) -> str:
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise CaffemodelError("a string field is not UTF-8") from None


def _reals(buf: memoryview, wire: int, value, dtype: str, size: int, out: list) -> None:
    if wire == 2:  # packed
        a, b = value
        if (b - a) % size:
            raise CaffemodelError("packed numbers of a length that is not a whole count")
        out.append(np.frombuffer(buf[a:b], dtype=dtype))
    elif (wire, size) in ((5, 4), (1, 8)):
        out.append(np.frombuffer(buf[value[0]:value[1]], dtype=dtype))
    else:
        raise CaffemodelError(f"wire type {wire} for a {dtype} field")


def _blob(buf: memoryview, span) -> CaffeBlob:
    legacy = {}
    shape = None
    floats: list = []
    doubles: list = []
    for number, wire, value in _fields(buf, *span):
        if number in (1, 2, 3, 4) and wire == 0:
            legacy[number] = _signed64(value)
        elif number == 5:
            _reals(buf, wire, value, "<f4", 4, floats)
        elif number == 8:
            _reals(buf, wire, value, "<f8", 8, doubles)
        elif number == 7 and wire == 2:
            dims: list[int] = []
            for n2, w2, v2 in _fields(buf, *value):
                if n2 != 1:
                    continue
                if w2 == 2:  # packed
                    p, e = v2
                    while p < e:
                        d, p = _varint(buf, p, e)
                        dims.append(_signed64(d))
                elif w2 == 0:
                    dims.append(_signed64(v2))
            shape = tuple(dims)
    is_legacy = shape is None and bool(legacy)
    if shape is None:
        shape = tuple(legacy.get(i, 0) for i in (1, 2, 3, 4)) if legacy else ()
    if any(d < 0 for d in shape):
        raise CaffemodelError(f"negative dimension in blob shape {shape}")
    if floats and doubles:
        raise CaffemodelError("a blob with both float data and double_data")
    parts = floats or doubles
    data = (np.concatenate(parts) if len(parts) > 1 else parts[0]) if parts else np.zeros(0, "<f4")
    return CaffeBlob(shape, data, is_legacy)


def _layer(buf: memoryview, span, kind: str, depth: int = 0) -> tuple[str, str, list[CaffeBlob]]:
    from netc.spec.caffe_v1 import V1_TYPE_NUMBERS, V1_TYPES

    numbers = {"layer": (1, 2, 7), "v1": (4, 5, 6), "v0": (1, 2, 50)}[kind]
    name, type_, blobs = "", "", []
    for number, wire, value in _fields(buf, *span):
        if number == numbers[0] and wire == 2:
            name = _string(buf, value)
        elif number == numbers[1]:
            if kind == "v1" and wire == 0:
                type_ = V1_TYPES.get(V1_TYPE_NUMBERS.get(value, ""), f"V1 type {value}")
            elif wire == 2:
                type_ = _string(buf, value)
        elif number == numbers[2] and wire == 2:
            blobs.append(_blob(buf, value))
        elif kind == "v1" and number == 1 and wire == 2:  # a V0 layer inside a V1 one
            if depth >= MAX_DEPTH:
                raise CaffemodelError("layers nested too deeply")
            v0_name, v0_type, v0_blobs = _layer(buf, value, "v0", depth + 1)
            name, type_, blobs = name or v0_name, type_ or v0_type, blobs + v0_blobs
    return name, type_, blobs


_PICKLE = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _refuse_foreign(data: bytes, source: str) -> None:
    head = bytes(data[:8])
    if head[:2] in _PICKLE:
        raise CaffemodelError(f"{source}: this is a Python pickle, not a .caffemodel; netc "
                                  "never unpickles (it can run code)")
    if head[:4] == b"PK\x03\x04":
        raise CaffemodelError(f"{source}: this is a zip archive (a PyTorch .pt / .pth holds "
                              "pickles), not a .caffemodel; netc never unpickles")
    if head[:6] == b"\x93NUMPY":
        raise CaffemodelError(f"{source}: this is a NumPy .npy file, not a .caffemodel")
    if head == b"\x89HDF\r\n\x1a\n":
        raise CaffemodelError(f"{source}: this is an HDF5 file (Caffe's .caffemodel.h5 "
                              "snapshot format), which netc does not read; save the net as "
                              "BINARYPROTO")


def read_caffemodel(data: bytes, source: str = "caffemodel") -> list[tuple[str, str,
                                                                           list[CaffeBlob]]]:
    """(name, type, blobs) for each layer of a binary NetParameter, V1 (`layers`) and current
    (`layer`) alike, in file order. Raises CaffemodelError."""
    if len(data) > MAX_BYTES:
        raise CaffemodelError(f"{source}: {len(data):,} bytes, more than {MAX_BYTES:,}")
    _refuse_foreign(data, source)
    buf = memoryview(data)
    layers = []
    try:
        for number, wire, value in _fields(buf, 0, len(buf)):
            if number == 100 and wire == 2:
                layers.append(_layer(buf, value, "layer"))
            elif number == 2 and wire == 2:
                layers.append(_layer(buf, value, "v1"))
    except CaffemodelError as e:
        raise CaffemodelError(f"{source}: not a readable .caffemodel (binary NetParameter): "
                              f"{e}") from None
    if not layers:
        raise CaffemodelError(f"{source}: no layers found: not a .caffemodel (binary "
                              "NetParameter)?")
    return layers


# --- blobs → the net's parameters ------------------------------------------------------------------


@dataclass
class ImportReport:
    loaded: list[str] = field(default_factory=list)  # "layer/role"
    errors: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # caffemodel layers with no netc layer
    missing: list[str] = field(default_factory=list)  # netc blobs the caffemodel lacks

    def lines(self) -> list[str]:
        out = [f"weights: {len(self.loaded)} blob(s) imported"]
        out += [f"  error: {e}" for e in self.errors]
        out += [f"  warning: {u}" for u in self.unmatched]
        out += [f"  warning: {m}" for m in self.missing]
        return out


def _fmt(shape) -> str:
    return "×".join(str(d) for d in shape) if len(shape) else "scalar"


def _fits(blob, want: tuple, kind: str, count: int) -> bool:
    """Whether a caffemodel blob of its shape fills a net blob of shape `want`: the same shape, a
    V1 blob's 4-D shape padded with leading 1s, or SegNet's BN 1×C×1×1 into Scale's C."""
    if blob.shape == want:
        return True
    if blob.legacy and len(want) <= 4 and blob.shape == (1,) * (4 - len(want)) + want:
        return True
    squeezed = tuple(d for d in blob.shape if d != 1) == tuple(d for d in want if d != 1)
    return kind == "BN" and squeezed and count == int(np.prod(want, dtype=np.int64))


def caffemodel_to_tree(layers, plans) -> tuple[dict, dict, ImportReport]:
    """(params, state, report): the caffemodel's blobs placed by layer name into the net whose
    plans (one per phase; a layer in several is the same layer) are given."""
    decls: dict[str, list[tuple[str, Any]]] = {}
    for plan in plans:
        for pl in plan.layers:
            if pl.name in decls:
                continue
            decls[pl.name] = [(role, decl, pl.param_owner[role][0] == pl.name)
                              for role, decl in pl.params.items() if not decl.carry]
    params: dict = {}
    state: dict = {}
    report = ImportReport()
    seen: set[str] = set()
    for name, kind, blobs in layers:
        if not blobs:
            continue
        if name not in decls:
            report.unmatched.append(f"layer '{name}' ({kind}, {len(blobs)} blob(s)) has no layer "
                                    "of that name in the net; not imported")
            continue
        if name in seen:
            report.errors.append(f"layer '{name}' appears twice in the caffemodel")
            continue
        seen.add(name)
        roles = decls[name]
        for i, blob in enumerate(blobs):
            where = f"layer '{name}' blob {i}"
            if i >= len(roles):
                report.errors.append(f"{where} ({_fmt(blob.shape)}): the net's layer has only "
                                     f"{len(roles)} blob(s)")
                continue
            role, decl, owned = roles[i]
            where += f" ({role})"
            want = tuple(int(d) for d in decl.shape)
            count = int(np.prod(blob.shape, dtype=np.int64)) if blob.shape else 1
            if blob.data.size != count:
                report.errors.append(f"{where}: shape {_fmt(blob.shape)} holds {count} values "
                                     f"but the blob has {blob.data.size}")
                continue
            if not _fits(blob, want, kind, count):
                report.errors.append(f"{where}: shape {_fmt(blob.shape)} in the caffemodel, "
                                     f"{_fmt(want)} in the net")
                continue
            if not owned:  # a shared blob: the owner's copy is the one loaded
                continue
            value = blob.data.reshape(want).astype(np.float32)
            (params if decl.learned else state).setdefault(name, {})[role] = value
            report.loaded.append(f"{name}/{role}")
    for name, roles in decls.items():
        for role, decl, owned in roles:
            if owned and role not in (params.get(name) or {}) and role not in (
                    state.get(name) or {}):
                report.missing.append(f"layer '{name}' {role} {_fmt(decl.shape)}: not in the "
                                      "caffemodel (keeps its filler's values)")
    return params, state, report


def import_caffemodel(caffemodel: str, spec: str, out: str, err=None) -> tuple[Path,
                                                                                ImportReport]:
    """Read `caffemodel`, place its blobs into the net of `spec` (netc YAML), and save them as a
    netc checkpoint named `out` (``out.json`` + ``out.safetensors``; a trailing .json is
    dropped). Raises CaffemodelError (mis-shaped blobs, nothing matched) or NetcError (spec)."""
    from netc.files import FileRefused, read_regular
    from netc.runtime.checkpoint import META_SUFFIX, save_checkpoint
    from netc.runtime.context import load_context

    try:
        data = read_regular(caffemodel, MAX_BYTES)
    except FileRefused as e:
        raise CaffemodelError(f"{caffemodel}: cannot read this file: it {e.message}") from None
    except OSError as e:
        raise CaffemodelError(f"{caffemodel}: cannot read file: {e.strerror}") from None
    layers = read_caffemodel(data, caffemodel)
    plans = load_context(spec, None).weight_plans()
    params, state, report = caffemodel_to_tree(layers, plans)
    if err is not None:
        for line in report.lines():
            err.write(line + "\n")
    if report.errors:
        raise CaffemodelError(f"{caffemodel}: {len(report.errors)} blob(s) do not fit the net: "
                              + "; ".join(report.errors))
    if not report.loaded:
        raise CaffemodelError(f"{caffemodel}: no blob matched a layer of the net by name")
    target = Path(out)
    stem = target.name[: -len(META_SUFFIX)] if target.name.endswith(META_SUFFIX) else target.name
    path = save_checkpoint(target.parent, stem, {"params": params, "state": state},
                           {"iteration": 0, "source": "caffemodel",
                            "caffemodel": Path(caffemodel).name, "spec": Path(spec).name})
    return path, report
