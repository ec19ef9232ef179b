"""Data input for Caffe's ``Data`` layer: sources, checks, transforms and a prefetching stream.

A source is either a built-in data set (``netc:digits/train``, ``netc:digits/test``; the one
catalogue is ``netc.compiler.layers.data.BUILTIN``) or a user ``.npz`` file holding two arrays:
``data`` (N×C×H×W or N×D, any real or integer dtype) and ``label`` (N×…: one class per sample,
a label map H×W per sample for dense prediction, or real-valued targets). Files are read with
``allow_pickle=False``: netc never unpickles.

An ``.npz`` may instead hold arrays named as the Data layer's tops (Caffe's HDF5Data convention;
``load_source(..., keys=tops)``): each top reads its array, all of them indexed by samples on
axis 0 (token ids N×T, lengths N, images N×C×H×W, ...). The first is the transformed one: it is
float32 when it is an image batch N×C×H×W or a transform_param is given, as the data of a
data/label source always is; every other array keeps its kind (integers int32, reals float32).

Text sources (``text:PATH``, ``netc:hamlet``) are loaded by :mod:`netc.runtime.seqdata`
(``load_source`` returns its ``TextCorpus``), which also has their stream.

What a label must be is the consumer's business: :func:`label_requirements` asks the layers that
read a label blob (their ``label_fact``) and merges their answers; :func:`check_dataset` checks a
data set against that fact (shape per sample, class range, ``ignore_label``).

:class:`BatchStream` reproduces Caffe's Data layer + DataTransformer:

* batches wrap around the end of the data set (a batch may span the epoch boundary);
* with ``shuffle`` epoch ``e`` reads the samples in ``default_rng([seed, e]).permutation(N)``,
  otherwise in stored order;
* each sample becomes ``(x - mean_value) * scale``, cropped (random offsets in TRAIN, centred in
  TEST) and, in TRAIN only, mirrored at random. The random choices for the sample at place ``i``
  of epoch ``e`` depend on ``(seed, e, i)`` alone, so a resumed stream repeats them exactly;
* a label map (H×W or 1×H×W per sample, the images' H×W) is cropped and mirrored with its image:
  the same offsets, the same flip; mean and scale apply to the data only.

Batches are prepared on a daemon thread into a queue of depth ``prefetch``;
:meth:`BatchStream.position` is the position of the next batch the *consumer* receives, which is
what a checkpoint must store.

numpy only: this module does not import JAX.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from netc.compiler.layer import LabelFact, fmt_shape
from netc.compiler.layers.data import (
    BUILTIN,
    BUILTIN_PREFIX,
    CSV_PREFIX,
    BuiltinDataset,
    crop_dims,
    is_label_map,
    is_text_source,
    transformed_label_shape,
)
from netc.compiler.layers.image_data import FOLDER_PREFIX
from netc.compiler.transform import GEOMETRIC, check_label_map, extensions, transform_shape
from netc.errors import NetcError
from netc.files import FileRefused, open_regular
from netc.runtime.augment import Augmenter, value_range
from netc.spec.errors import SpecError
from netc.spec.messages import TransformationParameter

__all__ = [
    "BUILTIN",
    "BatchStream",
    "BuiltinDataset",
    "DataError",
    "Dataset",
    "check_dataset",
    "check_named",
    "check_ids",
    "label_requirements",
    "load_source",
    "transformed_shape",
]

# SeedSequence entropy word that separates the augmentation stream from the permutation stream.
_AUGMENT_TAG = 0x6E657463  # "netc"
# Samples per chunk when scanning float data for NaN/inf (bounds the temporary's size).
_SCAN_CHUNK = 4096


class DataError(NetcError):
    """A problem with a data source; the message starts with the file (or source) name."""


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Arrays of one source, read-only. ``name`` is the source or file path used in messages.

    A source read by top names has ``arrays`` (every array, in the tops' order; ``data`` is then
    the first of them and ``label`` None); a data/label source has none."""

    name: str
    data: np.ndarray
    label: np.ndarray | None
    arrays: tuple[tuple[str, np.ndarray], ...] = ()

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def by_name(self) -> bool:
        return bool(self.arrays)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape[1:])

    def columns(self) -> list[tuple[str, np.ndarray]]:
        """(key, array) of each array a batch holds, the transformed one first: the arrays read
        by top names, or ``data`` and (when present) ``label``."""
        if self.arrays:
            return list(self.arrays)
        return [("data", self.data)] + ([("label", self.label)] if self.label is not None else [])

    def __repr__(self) -> str:
        if self.arrays:
            held = ", ".join(f"{k}={a.dtype}{list(a.shape)}" for k, a in self.arrays)
            return f"Dataset(name={self.name!r}, {held})"
        label = "None" if self.label is None else f"{self.label.dtype}{list(self.label.shape)}"
        return (
            f"Dataset(name={self.name!r}, data={self.data.dtype}{list(self.data.shape)}, "
            f"label={label})"
        )


# --- loading -------------------------------------------------------------------------------------


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=8)
def _load_builtin(name: str, split: str) -> Dataset:
    info = BUILTIN[name]
    data_key, label_key = info.splits[split].data_key, info.splits[split].label_key
    source = f"{BUILTIN_PREFIX}{name}/{split}"
    if info.resource is None:  # downloaded on first use
        from netc.runtime.datasets_remote import load_remote

        arrays = load_remote(name, keys=(data_key, label_key))
        return Dataset(source, _readonly(arrays[data_key]), _readonly(arrays[label_key]))
    ref = resources.files("netc.runtime").joinpath(info.resource)
    try:
        with ref.open("rb") as f, np.load(f, allow_pickle=False) as z:
            data, label = z[data_key], z[label_key]
    except FileNotFoundError as exc:
        raise DataError(
            f"{source}: the bundled file netc/runtime/{info.resource} is missing from this "
            "installation"
        ) from exc
    return Dataset(source, _readonly(data), _readonly(label))


def _load_builtin_source(source: str) -> Dataset:
    rest = source[len(BUILTIN_PREFIX) :]
    name, _, split = rest.partition("/")
    available = ", ".join(s for n, b in BUILTIN.items() for s in b.sources(n))
    if name not in BUILTIN:
        raise DataError(f"{source}: unknown built-in data source; available: {available}")
    if split not in BUILTIN[name].splits:
        raise DataError(
            f"{source}: unknown split {split!r} of built-in data set {name!r}; "
            f"available: {', '.join(BUILTIN[name].sources(name))}"
        )
    return _load_builtin(name, split)


def _resolve(source: str, base_dir: str | Path | None) -> Path:
    path = Path(source).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [Path(base_dir) / path] if base_dir is not None else []
        candidates.append(Path.cwd() / path)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    where = (
        ""
        if path.is_absolute()
        else f" (looked in: {', '.join(str(c.parent) for c in candidates)})"
    )
    raise DataError(f"{source}: no such file{where}")


def _read_member(z: Any, key: str, file: str) -> np.ndarray:
    try:
        value = z[key]
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise DataError(
                f"{file}: array {key!r} contains object arrays, which netc refuses to load (pickle)"
            ) from exc
        raise DataError(f"{file}: array {key!r} could not be read: {exc}") from exc
    except Exception as exc:  # zlib.error, BadZipFile, EOFError, ... from a damaged member
        raise DataError(f"{file}: array {key!r} could not be read: {exc}") from exc
    if not isinstance(value, np.ndarray):
        raise DataError(f"{file}: member {key!r} is not a .npy array")
    if value.dtype.hasobject:  # defensive: np.load refuses these already
        raise DataError(
            f"{file}: array {key!r} contains object arrays, which netc refuses to load (pickle)"
        )
    return value


def load_source(
    source: str,
    *,
    base_dir: str | Path | None = None,
    need_label: bool = True,
    keys: tuple[str, ...] | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    """Load a data source: ``netc:NAME/SPLIT``, a path to an ``.npz`` file, or a text source.

    A relative path is looked up in ``base_dir`` (the spec file's folder) and then in the
    current directory. The file must hold ``data`` and (unless ``need_label`` is false)
    ``label``; with ``keys`` (a layer's tops read by name), the arrays named so instead. A text
    source (``text:PATH``, ``netc:hamlet``) gives a :class:`netc.runtime.seqdata.TextCorpus`.
    ``csv:PATH`` is a table, ``folder:PATH`` a folder of images (one subfolder per class), and
    with ``options`` (an ImageData layer's: new_height, new_width, is_color, root_folder, split)
    ``source`` is read as images (:mod:`netc.runtime.image_sources`). Raises :class:`DataError`.
    """
    if is_text_source(source):
        from netc.runtime.seqdata import load_text

        return load_text(source, base_dir=base_dir)
    if source.startswith(BUILTIN_PREFIX):
        return _load_builtin_source(source)
    if source.startswith(CSV_PREFIX):
        from netc.runtime.image_sources import load_csv

        return load_csv(source, base_dir=base_dir)
    if options is not None or source.startswith(FOLDER_PREFIX):
        from netc.runtime.image_sources import load_images

        return load_images(source, base_dir=base_dir, **(options or {}))
    path = _resolve(source, base_dir)
    if path.is_dir():  # Caffe's databases are folders: an LMDB is read, a LevelDB refused
        from netc.runtime.lmdb_data import load_database

        return load_database(path, str(path), need_label)
    return _load_npz(path, need_label, keys)


def _load_npz(path: Path, need_label: bool, keys: tuple[str, ...] | None) -> Dataset:
    """An .npz file's arrays: data and label, or those named `keys`."""
    file = str(path)
    try:
        f = open_regular(path)
    except FileRefused as exc:
        raise DataError(f"{file}: cannot be read: it {exc.message}") from None
    except OSError as exc:
        raise DataError(f"{file}: cannot be read: {exc.strerror or exc}") from exc
    try:
        _check_magic(f.read(6), file)
        f.seek(0)
        try:  # the file checked above, not the path again (it could be replaced meanwhile)
            z = np.load(f, allow_pickle=False)
        except Exception as exc:
            raise DataError(f"{file}: not a valid .npz file ({exc})") from exc
        with z:
            return _read_npz(z, file, need_label) if keys is None else _read_named(z, file, keys)
    finally:
        f.close()


def _check_magic(magic: bytes, file: str) -> None:
    """DataError unless the first bytes of `file` are a zip archive's (an .npz)."""
    if magic.startswith(b"\x93NUMPY"):
        raise DataError(
            f"{file}: is a .npy file holding one array; netc expects an .npz archive with "
            "arrays 'data' and 'label' (np.savez)"
        )
    if magic[:1] == b"\x80":
        raise DataError(
            f"{file}: is a Python pickle, which netc refuses to load (pickle); save the arrays "
            "with np.savez"
        )
    if not magic.startswith(b"PK"):
        raise DataError(f"{file}: not a valid .npz file (not a zip archive)")


def _read_named(z: Any, file: str, keys: tuple[str, ...]) -> Dataset:
    """The arrays named `keys` (a Data layer's tops), in that order, as one Dataset."""
    present = list(z.files)
    missing = [k for k in keys if k not in present]
    if missing:
        names = ", ".join(repr(k) for k in missing)
        held = ", ".join(repr(k) for k in present) if present else "no arrays"
        raise DataError(f"{file}: no array named {names} (the file holds: {held}); a Data layer "
                        "whose tops are not data/label reads the arrays named as its tops")
    arrays = []
    for k in dict.fromkeys(keys):
        a = _read_member(z, k, file)
        if a.ndim == 0:
            raise DataError(f"{file}: array {k!r} is a scalar; each top's array needs a sample "
                            "axis (axis 0)")
        if a.dtype.kind not in "biuf":
            raise DataError(f"{file}: array {k!r} has dtype {a.dtype}; netc needs a real or "
                            "integer dtype")
        arrays.append((k, _readonly(a)))
    counts = {k: int(a.shape[0]) for k, a in arrays}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k!r} {n:,}" for k, n in counts.items())
        raise DataError(f"{file}: the arrays must have the same number of samples (axis 0): "
                        f"{listed}")
    if arrays[0][1].shape[0] == 0:
        raise DataError(f"{file}: the data set is empty (0 samples)")
    return Dataset(file, arrays[0][1], None, tuple(arrays))


def _read_npz(z: Any, file: str, need_label: bool) -> Dataset:
    present = list(z.files)
    wanted = ["data", "label"] if need_label else ["data"]
    missing = [k for k in wanted if k not in present]
    if missing:
        names = " and ".join(repr(k) for k in missing)
        held = ", ".join(repr(k) for k in present) if present else "no arrays"
        plural = "arrays" if len(missing) > 1 else "array"
        raise DataError(f"{file}: no {plural} named {names} (the file holds: {held})")
    data = _read_member(z, "data", file)
    label = _read_member(z, "label", file) if "label" in present else None
    return Dataset(file, _readonly(data), None if label is None else _readonly(label))


# --- checks --------------------------------------------------------------------------------------


def _shape(shape: tuple[int, ...]) -> str:
    return str(tuple(int(d) for d in shape))


def label_requirements(plan: Any, label_top: str) -> LabelFact | None:
    """What the layers of ``plan`` that read blob ``label_top`` as labels need of it, from their
    ``label_fact`` (None: no layer reads it as labels, e.g. an unused label top).

    Several readers (a loss and an accuracy) must agree on the kind of label (class indices or
    real targets) and on its count per sample; their facts merge into one: ``classes`` is the
    smallest of theirs, ``ignore_label`` is kept only when every reader ignores that same value
    (a value one reader ignores and another counts is an error for the other). Raises
    :class:`DataError` when the readers disagree.
    """
    facts = []
    for pl in plan.layers:
        fact = pl.unit.label_fact(list(pl.bottom_shapes))
        if fact is not None and fact.bottom < len(pl.bottoms) and pl.bottoms[fact.bottom] == label_top:
            facts.append(fact)
    if len(facts) <= 1:
        return facts[0] if facts else None
    first = facts[0]
    for other in facts[1:]:
        if (other.kind, other.count) != (first.kind, first.count):
            raise DataError(
                f"label '{label_top}': layer '{first.layer}' reads it as {_kind(first)} and layer "
                f"'{other.layer}' as {_kind(other)}"
            )
    classes = [f.classes for f in facts if f.classes is not None]
    ignores = {f.ignore_label for f in facts}
    ignore = next(iter(ignores)) if len(ignores) == 1 else None
    rule = "; ".join(f"'{f.layer}': {f.rule}" for f in facts)
    if len(ignores) > 1:
        only = ", ".join(f"{f.ignore_label} on '{f.layer}'" for f in facts if f.ignore_label is not None)
        rule += f"; ignore_label {only} only"
    return LabelFact(", ".join(f.layer for f in facts), first.bottom, first.shape,
                     min(classes) if classes else None, ignore, first.kind, rule)


def _kind(fact: LabelFact) -> str:
    what = "class indices" if fact.kind == "class" else "real-valued targets"
    per = "one" if not fact.shape else fmt_shape(fact.shape)
    return f"{what} ({per} per sample)"


def check_dataset(
    ds: Dataset,
    *,
    sample_shape: tuple[int, ...] | None,
    num_classes: int | None = None,
    ignore_label: int | None = None,
    need_label: bool = True,
    labels: LabelFact | None = None,
    transform: TransformationParameter | None = None,
) -> None:
    """Raise :class:`DataError` unless ``ds`` is usable.

    ``sample_shape``: the shape of one sample *before* crop that the spec expects (None: any).
    ``labels``: what the net's readers of the label need (:func:`label_requirements`): the
    label's shape per sample *after* ``transform`` (a label map is cropped with its image), its
    kind, and ``classes`` / ``ignore_label``, which ``num_classes`` / ``ignore_label`` override.
    Without ``labels`` any label shape N×… is accepted; class labels must be integers in
    [0, num_classes), except ``ignore_label``.
    """
    name, data, label = ds.name, ds.data, ds.label
    _check_data_array(name, data)
    n = data.shape[0]
    if label is None:
        if need_label:
            raise DataError(f"{name}: no array named 'label'")
    elif label.ndim == 0 or label.shape[0] != n:
        got = "a scalar" if label.ndim == 0 else str(label.shape[0])
        raise DataError(f"{name}: 'data' has {n} samples but 'label' has {got}")
    if sample_shape is not None and tuple(data.shape[1:]) != tuple(sample_shape):
        raise DataError(
            f"{name}: each sample has shape {_shape(data.shape[1:])}, but the spec expects "
            f"{_shape(tuple(sample_shape))} (before crop)"
        )
    if label is None:
        pass
    elif labels is not None and labels.kind == "target":
        _check_label_shape(ds, labels, transform)
        _check_finite(name, "label", label)
    else:
        if labels is not None:
            _check_label_shape(ds, labels, transform)
            num_classes = labels.classes if num_classes is None else num_classes
            ignore_label = labels.ignore_label if ignore_label is None else ignore_label
        _check_labels(name, label, num_classes, ignore_label, labels)
    if data.dtype.kind == "f":
        _check_finite(name, "data", data)


def _check_data_array(name: str, data: np.ndarray) -> None:
    if data.ndim not in (2, 4):
        raise DataError(
            f"{name}: 'data' must have shape N×C×H×W or N×D, got shape {_shape(data.shape)}"
        )
    if data.dtype.kind not in "biuf":
        raise DataError(
            f"{name}: 'data' has dtype {data.dtype}; netc needs a real or integer dtype"
        )
    if data.shape[0] == 0:
        raise DataError(f"{name}: the data set is empty (0 samples)")


def _check_finite(name: str, key: str, a: np.ndarray) -> None:
    if a.dtype.kind != "f":
        return
    for start in range(0, a.shape[0], _SCAN_CHUNK):
        chunk = a[start : start + _SCAN_CHUNK]
        bad = ~np.isfinite(chunk.reshape(chunk.shape[0], -1)).all(axis=1)
        if bad.any():
            first = start + int(np.argmax(bad))
            raise DataError(
                f"{name}: '{key}' contains NaN or infinite values (first in sample {first})"
            )


def _check_label_shape(
    ds: Dataset, fact: LabelFact, transform: TransformationParameter | None
) -> None:
    """The label's count per sample after the transform must be what its readers need."""
    per = tuple(int(d) for d in ds.label.shape[1:])
    crop = None
    if ds.data.ndim == 4 and transform is not None:
        crop = crop_dims(transform, *ds.data.shape[2:])
    after = transformed_label_shape(ds.sample_shape, per, crop)
    if int(np.prod(after, dtype=np.int64)) == fact.count:
        return
    cropped = f" ({fmt_shape(after)} after crop)" if after != per else ""
    need = "one value" if not fact.shape else fmt_shape(fact.shape)
    raise DataError(
        f"{ds.name}: 'label' holds {_per_sample(per)} per sample{cropped}, but layer "
        f"'{fact.layer}' needs {need} per sample ({fact.rule})"
    )


def _per_sample(shape: tuple[int, ...]) -> str:
    return "one value" if not shape else fmt_shape(shape)


def _check_labels(
    name: str,
    label: np.ndarray,
    num_classes: int | None,
    ignore_label: int | None,
    fact: LabelFact | None = None,
) -> None:
    kind = label.dtype.kind
    if kind == "f":
        bad = ~np.isfinite(label) | (label != np.round(label))
        if bad.any():
            i = np.unravel_index(int(np.argmax(bad)), label.shape)
            where = ", ".join(str(int(k)) for k in i)
            raise DataError(
                f"{name}: labels must be integers, but label[{where}] = {float(label[i])}"
            )
    elif kind not in "iu":
        raise DataError(f"{name}: labels must be integers, but 'label' has dtype {label.dtype}")
    values = label if ignore_label is None else label[label != ignore_label]
    if values.size == 0:
        return
    lo, hi = int(values.min()), int(values.max())
    if num_classes is not None:
        if lo < 0 or hi >= num_classes:
            readers = "" if fact is None else f" (layer '{fact.layer}': {fact.rule})"
            ignored = "" if ignore_label is None else f", except the ignore_label {ignore_label},"
            raise DataError(
                f"{name}: labels range over [{lo}, {hi}], outside [0, {num_classes}){ignored} "
                f"for a classifier with {num_classes} outputs{readers}"
            )
    elif lo < -(2**31) or hi >= 2**31:
        raise DataError(f"{name}: labels range over [{lo}, {hi}], which does not fit in int32")


def _at(index: tuple) -> str:
    return ", ".join(str(int(k)) for k in index)


def check_ids(name: str, key: str, a: np.ndarray, fact: LabelFact) -> None:
    """Raise :class:`DataError` unless array ``key`` holds what the layers of ``fact`` read it as
    (class indices, or an Embed's ids): integers in [0, classes) except the ignore_label. The
    message names the file, the array, the first bad value and where it is."""
    readers = f"layer '{fact.layer}'" + (f" ({fact.rule})" if fact.rule else "")
    kind = a.dtype.kind
    if kind == "f":
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            i = np.unravel_index(int(np.argmax(bad)), a.shape)
            raise DataError(f"{name}: array '{key}' must hold integers ({readers} reads it as "
                            f"indices), but {key}[{_at(i)}] = {float(a[i])}")
    elif kind not in "biu":
        raise DataError(f"{name}: array '{key}' has dtype {a.dtype}; {readers} reads it as "
                        "integer indices")
    if a.size == 0:
        return
    classes, ignore = fact.classes, fact.ignore_label
    hi_limit = classes if classes is not None else 2**31
    bad = (a < 0) | (a >= hi_limit) if classes is not None else (a < -(2**31)) | (a >= 2**31)
    if ignore is not None:
        bad &= a != ignore
    if not bad.any():
        return
    i = np.unravel_index(int(np.argmax(bad)), a.shape)
    values = a if ignore is None else a[a != ignore]
    lo, hi = int(values.min()), int(values.max())
    sample = f" (sample {int(i[0])})" if a.ndim > 1 else ""
    if classes is None:
        raise DataError(f"{name}: array '{key}' holds {int(a[i])} at [{_at(i)}]{sample}, which "
                        f"does not fit in int32; its values range over [{lo}, {hi}]")
    ignored = "" if ignore is None else f", except the ignore_label {ignore},"
    raise DataError(f"{name}: array '{key}' holds {int(a[i])} at [{_at(i)}]{sample}, outside "
                    f"[0, {classes}){ignored} for {readers}; its values range over [{lo}, {hi}]")


def check_named(
    ds: Dataset,
    facts: dict[str, LabelFact | None],
    *,
    sample_shape: tuple[int, ...] | None = None,
    transform: TransformationParameter | None = None,
) -> None:
    """Raise :class:`DataError` unless a source read by top names (``ds.arrays``) is usable:
    the first array's sample shape is ``sample_shape`` (None: any), each array read through a
    ``label_fact`` (``facts[key]``: what its readers need, :func:`label_requirements`) holds
    that count per sample (after the transform's crop, for a label map of the first array) and
    those values; real arrays hold no NaN or infinity."""
    name = ds.name
    (key0, first), *_ = ds.columns()
    if sample_shape is not None and tuple(first.shape[1:]) != tuple(sample_shape):
        raise DataError(f"{name}: each sample of '{key0}' has shape {_shape(first.shape[1:])}, "
                        f"but the spec expects {_shape(tuple(sample_shape))} (before crop)")
    crop = crop_dims(transform, *first.shape[2:]) if first.ndim == 4 else None
    for key, a in ds.columns():
        fact = facts.get(key)
        if fact is not None:
            per = tuple(int(d) for d in a.shape[1:])
            after = per if key == key0 else transformed_label_shape(ds.sample_shape, per, crop)
            if int(np.prod(after, dtype=np.int64)) != fact.count:
                cropped = f" ({fmt_shape(after)} after crop)" if after != per else ""
                need = "one value" if not fact.shape else fmt_shape(fact.shape)
                raise DataError(f"{name}: '{key}' holds {_per_sample(per)} per sample{cropped}, "
                                f"but layer '{fact.layer}' needs {need} per sample ({fact.rule})")
            if fact.kind == "class":
                check_ids(name, key, a, fact)
                continue
        _check_finite(name, key, a)


# --- transform -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Transform:
    mean: np.ndarray | None  # float32, broadcastable to one sample
    scale: float
    crop: tuple[int, int] | None  # (crop_h, crop_w)
    mirror: bool
    extended: TransformationParameter | None = None  # set when it has netc's augmentation


def _make_transform(
    name: str, sample_shape: tuple[int, ...], t: TransformationParameter | None
) -> _Transform:
    if t is None:
        return _Transform(None, 1.0, None, False)
    if t.mean_file is not None:
        raise DataError(
            f"{name}: transform_param.mean_file ({t.mean_file!r}) is not supported by netc; "
            "use mean_value (one value, or one per channel)"
        )
    channels = sample_shape[0]
    if t.force_gray and channels != 1:
        raise DataError(
            f"{name}: force_gray is set but the data has {channels} channels "
            "(netc does not convert colour)"
        )
    if t.force_color and channels != 3:
        raise DataError(
            f"{name}: force_color is set but the data has {channels} channels "
            "(netc does not convert colour)"
        )
    mean = None
    if t.mean_value:
        if len(t.mean_value) not in (1, channels):
            raise DataError(
                f"{name}: transform_param.mean_value has {len(t.mean_value)} values; give one, "
                f"or one per channel ({channels})"
            )
        per_channel = np.asarray(t.mean_value, dtype=np.float32)
        if len(sample_shape) == 3:
            per_channel = per_channel.reshape(-1, 1, 1)
        mean = per_channel if len(t.mean_value) > 1 else per_channel.reshape(())
    wants_crop = bool(t.crop_size or t.crop_h or t.crop_w)
    if (wants_crop or t.mirror) and len(sample_shape) != 3:
        raise DataError(
            f"{name}: crop and mirror need image data N×C×H×W, but samples have shape "
            f"{_shape(sample_shape)}"
        )
    crop = crop_dims(t, *sample_shape[1:]) if wants_crop else None
    if crop is not None and (crop[0] > sample_shape[1] or crop[1] > sample_shape[2]):
        h, w = sample_shape[1:]
        raise DataError(f"{name}: crop {crop[0]}×{crop[1]} is larger than the images ({h}×{w})")
    try:
        transform_shape(tuple(sample_shape), t, crop)
    except SpecError as e:
        raise _transform_error(name, e) from None
    return _Transform(mean, float(t.scale), crop, bool(t.mirror), t if extensions(t) else None)


def _transform_error(name: str, e: SpecError) -> DataError:
    """A transform_param problem found by the shape rule, as the data loader reports it."""
    return DataError(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")


def transformed_shape(
    sample_shape: tuple[int, ...], transform: TransformationParameter | None
) -> tuple[int, ...]:
    """Shape of one sample after the transform (crop, augmentation), e.g. (1, 28, 28) ->
    (1, 24, 24)."""
    tr = _make_transform("<data>", tuple(sample_shape), transform)
    return transform_shape(tuple(sample_shape), transform, tr.crop)


# --- batching ------------------------------------------------------------------------------------


class _Producer:
    """Deterministic batch maker: batch at position (epoch, index) -> (batch, next position).

    Holds no reference to the BatchStream, so the stream can be garbage-collected (and close
    its worker) while the worker thread runs.
    """

    def __init__(
        self,
        ds: Dataset,
        batch_size: int,
        tr: _Transform,
        train: bool,
        seed: int,
        shuffle: bool,
        real_labels: bool = False,
        dtypes: dict[str, Any] | None = None,
        transformed: bool = True,
    ):
        self.columns = ds.columns()
        self.data = ds.data
        self.n = len(ds)
        self.batch_size = batch_size
        self.tr = tr
        self.train = train
        self.seed = seed
        self.shuffle = shuffle
        # arrays after the first that are its label maps: cropped and mirrored with it
        self.follows = {k: is_label_map(ds.sample_shape, a.shape[1:]) for k, a in self.columns[1:]}
        key0, first = self.columns[0]
        if ds.by_name:  # each array keeps its kind; the transformed first one is float32
            self.dtypes = {k: np.float32 if a.dtype.kind == "f" else np.int32
                           for k, a in self.columns}
            for k, dt in (dtypes or {}).items():
                if k in self.dtypes:
                    self.dtypes[k] = np.dtype(dt).type
            if transformed or first.ndim == 4:
                self.dtypes[key0] = np.float32
        else:
            self.dtypes = {"data": np.float32, "label": np.float32 if real_labels else np.int32}
        self._orders: dict[int, np.ndarray] = {}
        self._augment: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.augmenter = _augmenter(ds, tr) if first.ndim == 4 else None

    def _order(self, epoch: int) -> np.ndarray:
        order = self._orders.get(epoch)
        if order is None:
            self._orders = {e: o for e, o in self._orders.items() if e > epoch - 2}
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            else:
                order = np.arange(self.n)
            self._orders[epoch] = order
        return order

    def _choices(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(h_off, w_off, flip) for every place in the epoch: f(seed, epoch, index) only."""
        choices = self._augment.get(epoch)
        if choices is None:
            self._augment = {e: c for e, c in self._augment.items() if e > epoch - 2}
            _, h, w = self.data.shape[1:]
            ch, cw = self.tr.crop or (h, w)
            rng = np.random.default_rng([self.seed, epoch, _AUGMENT_TAG])
            h_off = rng.integers(0, h - ch + 1, size=self.n)
            w_off = rng.integers(0, w - cw + 1, size=self.n)
            flip = rng.integers(0, 2, size=self.n).astype(bool)
            choices = (h_off, w_off, flip)
            self._augment[epoch] = choices
        return choices

    def _parts(self, epoch: int, index: int) -> tuple[list[tuple[int, int, int]], tuple[int, int]]:
        """The (epoch, start, stop) runs of the next batch (it may wrap), and the next position."""
        parts: list[tuple[int, int, int]] = []
        need = self.batch_size
        while need:
            take = min(need, self.n - index)
            parts.append((epoch, index, index + take))
            need -= take
            index += take
            if index == self.n:
                epoch, index = epoch + 1, 0
        return parts, (epoch, index)

    def _window(self, parts: list[tuple[int, int, int]], h: int, w: int):
        """(rows, cols) index arrays of each sample's crop and flip, or None (no change): the
        random choices of each place in TRAIN, the centre and no flip in TEST."""
        tr = self.tr
        if tr.crop is None and not (tr.mirror and self.train):
            return None
        ch, cw = tr.crop or (h, w)
        if self.train:
            h_off, w_off, flip = self._gather_choices(parts)
            if tr.crop is None:
                h_off, w_off = np.zeros_like(h_off), np.zeros_like(w_off)
            if not tr.mirror:
                flip = np.zeros_like(flip)
        else:
            b = sum(stop - start for _, start, stop in parts)
            h_off, w_off = np.full(b, (h - ch) // 2), np.full(b, (w - cw) // 2)
            flip = np.zeros(b, dtype=bool)
        rows = h_off[:, None] + np.arange(ch)
        cols = w_off[:, None] + np.where(flip[:, None], np.arange(cw)[::-1], np.arange(cw))
        return rows, cols

    def batch(self, epoch: int, index: int) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
        parts, position = self._parts(epoch, index)
        idx = np.concatenate([self._order(e)[a:b] for e, a, b in parts])
        (key0, first), *rest = self.columns
        x = first[idx]
        window = self._window(parts, *x.shape[2:]) if x.ndim == 4 else None
        if window is not None:
            x = _take_window(x, *window)
        x = x.astype(self.dtypes[key0])
        if self.augmenter is not None:
            params = self.augmenter.params(self.seed, self.n, parts) if self.train else None
            x = self.augmenter(x, params)
        elif self.dtypes[key0] == np.float32:
            if self.tr.mean is not None:
                x -= self.tr.mean
            if self.tr.scale != 1.0:
                x *= np.float32(self.tr.scale)
        out = {key0: np.ascontiguousarray(x)}
        for key, a in rest:
            y = a[idx]
            if window is not None and self.follows[key]:  # the image's crop and flip, exactly
                lead = y.shape[1:-2]
                y = _take_window(y.reshape(len(idx), 1, *y.shape[-2:]), *window)
                y = y.reshape(len(idx), *lead, *y.shape[-2:])
            out[key] = np.ascontiguousarray(y.astype(self.dtypes[key]))
        return out, position

    def _gather_choices(self, parts: list[tuple[int, int, int]]) -> tuple[np.ndarray, ...]:
        per_part = [tuple(arr[a:b] for arr in self._choices(e)) for e, a, b in parts]
        return tuple(np.concatenate(cols) for cols in zip(*per_part))


def _check_label_transform(ds: Dataset, tr: _Transform, train: bool) -> None:
    """A label (any array after the first) with a grid per sample must be a label map of the
    images' H×W if the images are cropped or mirrored: any other grid could not follow its
    image."""
    warped = bool(set(extensions(tr.extended)) & set(GEOMETRIC))
    for key, a in ds.columns()[1:]:
        per = tuple(int(d) for d in a.shape[1:])
        if is_label_map(ds.sample_shape, per):
            try:
                check_label_map(tr.extended, key)
            except SpecError as e:
                raise _transform_error(ds.name, e) from None
        if not (tr.crop or (tr.mirror and train) or warped):
            continue
        if a.ndim >= 3 and not is_label_map(ds.sample_shape, per):
            raise DataError(
                f"{ds.name}: '{key}' holds {fmt_shape(per)} per sample, but the images "
                f"{fmt_shape(ds.sample_shape)} are cropped or mirrored: a label map must be H×W "
                f"(or 1×H×W) of the images' own size to be cropped and mirrored with them"
            )


def _augmenter(ds: Dataset, tr: _Transform) -> Augmenter | None:
    """The augmentation extensions of `tr` for the images of `ds` (None: it has none)."""
    t = tr.extended
    if t is None:
        return None
    c, h, w = ds.sample_shape
    vrange = value_range(ds.data, tr.scale) if t.color_jitter is not None else (0.0, 0.0)
    return Augmenter(t, (c, *(tr.crop or (h, w))), tr.scale, tr.mean, vrange)


def _take_window(a: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """a[b, c, rows[b], cols[b]] for every sample b of an N×C×H×W array: crop and flip."""
    return a[
        np.arange(a.shape[0])[:, None, None, None],
        np.arange(a.shape[1])[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def _worker(
    producer: _Producer, start: tuple[int, int], q: queue.Queue, stop: threading.Event
) -> None:
    epoch, index = start
    while not stop.is_set():
        try:
            batch, (epoch2, index2) = producer.batch(epoch, index)
            item: tuple[Any, ...] = ("batch", batch, (epoch2, index2))
        except BaseException as exc:  # surfaces in the consumer's next()
            item = ("error", exc, None)
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        if item[0] == "error":
            return
        epoch, index = epoch2, index2


class BatchStream:
    """An endless stream of batches ``{"data": float32 N×..., "label": int32 N×...}`` from ``ds``
    (for a source read by top names, ``{top: array}``: see the module docstring).

    ``position`` (from :meth:`position` of an earlier stream) resumes where that stream's
    consumer stopped. ``prefetch``: queue depth of the background thread (0: no thread; batches
    are made in ``next()``). Labels keep their shape per sample (a label map is cropped and
    mirrored with its image); ``real_labels``: float32 targets instead of int32 class indices.
    ``dtypes`` ({key: dtype}) overrides the kind of arrays read by name (float32 for the targets
    of a regression loss, int32 for class indices stored as reals). ``workers``: worker processes
    that make the batches instead of the thread (grain; :mod:`netc.runtime.data_workers`), each
    ``prefetch`` batches ahead; the batches are the same.
    """

    def __init__(
        self,
        ds: Dataset,
        *,
        batch_size: int,
        transform: TransformationParameter | None,
        train: bool,
        seed: int,
        shuffle: bool,
        position: dict | None = None,
        prefetch: int = 4,
        real_labels: bool = False,
        dtypes: dict[str, Any] | None = None,
        workers: int = 0,
    ):
        self._closed = True
        self._thread: threading.Thread | None = None
        self._workers: Any = None
        if workers < 0:
            raise ValueError(f"workers must be at least 0, got {workers}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be at least 0, got {prefetch}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not ds.by_name and (
            ds.data.ndim not in (2, 4)
            or len(ds) == 0
            or (ds.label is not None and (ds.label.ndim == 0 or ds.label.shape[0] != len(ds)))
        ):
            check_dataset(ds, sample_shape=None, num_classes=None, need_label=False)
        self.dataset = ds
        self.batch_size = batch_size
        n = len(ds)
        self._pos = self._start_position(ds, position)
        tr = _make_transform(ds.name, ds.sample_shape, transform)
        _check_label_transform(ds, tr, train)
        self._producer = _Producer(ds, batch_size, tr, train, seed, shuffle, real_labels,
                                   dtypes, transformed=transform is not None)
        self._error: BaseException | None = None
        self._closed = False
        self._size = n
        if workers:
            from netc.runtime.data_workers import worker_batches

            self._workers = worker_batches(self._producer, self._pos, n, batch_size, workers,
                                           prefetch)
        elif prefetch:
            self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=_worker,
                args=(self._producer, self._pos, self._queue, self._stop),
                name=f"netc-data:{ds.name}",
                daemon=True,
            )
            self._thread.start()

    @staticmethod
    def _start_position(ds: Dataset, position: dict | None) -> tuple[int, int]:
        if position is None:
            return (0, 0)
        try:
            epoch, index = position["epoch"], position["index"]
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"position must be a dict with 'epoch' and 'index', got {position!r}"
            ) from exc
        size = position.get("size", len(ds))
        if size != len(ds):
            raise DataError(
                f"{ds.name}: the saved position is for a data set of {size} samples, "
                f"but this one has {len(ds)}"
            )
        if not (
            isinstance(epoch, int)
            and isinstance(index, int)
            and epoch >= 0
            and 0 <= index < len(ds)
        ):
            raise ValueError(f"position out of range for {len(ds)} samples: {position!r}")
        return (epoch, index)

    def position(self) -> dict[str, int]:
        """Where the next batch handed to the consumer starts (JSON-serialisable)."""
        epoch, index = self._pos
        return {"epoch": int(epoch), "index": int(index), "size": int(self._size)}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise RuntimeError(f"BatchStream over {self.dataset.name} is closed")
        if self._workers is not None:
            return self._next_from_workers()
        if self._thread is None:
            batch, self._pos = self._producer.batch(*self._pos)
            return batch
        while True:
            try:
                kind, payload, pos = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(
                        f"the data thread for {self.dataset.name} stopped unexpectedly"
                    ) from None
        if kind == "error":
            self._error = payload
            self.close()
            raise payload
        self._pos = pos
        return payload

    def _next_from_workers(self) -> dict[str, np.ndarray]:
        try:  # the arrays copied out of grain's shared memory, which is then released
            batch = {k: np.array(v) for k, v in next(self._workers).items()}
        except BaseException as exc:  # a worker's error, re-raised by grain
            self._error = exc
            self.close()
            raise
        epoch, index = self._pos
        self._pos = divmod(epoch * self._size + index + self.batch_size, self._size)
        return batch

    def close(self) -> None:
        """Stop the background thread or worker processes; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._workers is not None:
            self._workers.close()
            self._workers = None  # grain's iterators must not outlive the interpreter's modules
        if self._thread is not None:
            self._stop.set()
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=5)

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"BatchStream({self.dataset.name!r}, batch_size={self.batch_size}, "
            f"position={self.position()})"
        )
