"""Text sources read as characters, and the stream that cuts them into batches.

A text source is ``text:PATH`` (a UTF-8 file; PATH relative to the spec's folder, then to the
current directory) or the built-in ``netc:hamlet``. Its vocabulary is the sorted set of the
characters of the *whole* file (so every split of it shares the ids); each character becomes its
index in that list, as int32.

:class:`TextStream` is Caffe's truncated-BPTT feeding (char-rnn's "stream mode"). The characters
of the ``split`` range, ``c[0..L)``, give ``P = L - 1`` (input, next character) pairs. With N
streams (``batch_size``) of T steps (``seq_len``) an epoch has ``B = P // (N·T)`` batches; stream
``j`` reads pairs ``[o + j·B·T, o + (j+1)·B·T)`` and batch ``k`` holds its pairs
``[k·T, (k+1)·T)``, so each batch continues where the previous one ended (a recurrent layer's
carried state makes that correct). Tops, time-major ``T×N`` (or ``N×T`` with ``batch_first``)::

    data[t, j]  = c[o + j·B·T + k·T + t]        int32 ids
    label[t, j] = c[o + j·B·T + k·T + t + 1]    int32, the next character
    cont[t, j]  = 0 at t = 0 of batch k = 0 (a stream starts), else 1   float32 (Caffe's cont)

After the last batch of an epoch the streams start again (cont = 0). The offset ``o`` is 0, or
with ``shuffle`` a number drawn per epoch from ``default_rng([seed, epoch, TAG])`` in
``[0, P - N·B·T]``, so that the characters an epoch leaves out (fewer than N·T) differ between
epochs. A batch depends on (seed, epoch, index) alone: resuming from :meth:`TextStream.position`
repeats the uninterrupted stream exactly.

numpy only: this module does not import JAX.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from netc.compiler.layers.data import (
    BUILTIN_TEXT,
    TEXT_PREFIX,
    TextError,
    decode_text,
    is_text_source,
    read_text,
    split_bounds,
    split_problem,
    text_path,
)
from netc.runtime.data import DataError

__all__ = ["TextCorpus", "TextStream", "load_text", "load_vocab", "read_vocab_file", "encode",
           "decode", "VOCAB_FILE", "MAX_VOCAB_JSON_BYTES"]

VOCAB_FILE = "vocab.json"
MAX_VOCAB_JSON_BYTES = 64 * 2**20
# Entropy word separating the epoch offsets from any other stream drawn from (seed, epoch).
_OFFSET_TAG = 0x74657874  # "text"


@dataclass(frozen=True, eq=False, repr=False)
class TextCorpus:
    """A text source loaded: its vocabulary and the id of every character of the file."""

    name: str  # the source as written (text:PATH, netc:hamlet)
    path: str | None  # the file read (None for a built-in text)
    symbols: tuple[str, ...]  # the vocabulary: id -> character
    ids: np.ndarray  # int32, one per character of the whole file, read-only

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def vocab(self) -> int:
        return len(self.symbols)

    def span(self, split: tuple[float, float]) -> tuple[int, int]:
        """[start, stop) of the characters of the fraction range `split`."""
        problem = split_problem(tuple(split))
        if problem:
            raise DataError(f"{self.name}: {problem}")
        return split_bounds((split[0], split[1]), len(self))

    def vocab_doc(self) -> dict:
        """What vocab.json holds."""
        return {"kind": "chars", "symbols": list(self.symbols), "source": self.name}

    def __repr__(self) -> str:
        return f"TextCorpus({self.name!r}, chars={len(self)}, vocab={self.vocab})"


def _corpus(name: str, path: str | None, text: str) -> TextCorpus:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.unique(codes)  # sorted code points = sorted characters
    ids = np.searchsorted(table, codes).astype(np.int32)
    ids.setflags(write=False)
    return TextCorpus(name, path, tuple(chr(int(c)) for c in table), ids)


@functools.lru_cache(maxsize=4)
def _load_file(source: str, real: str, mtime_ns: int, size: int, path: str) -> TextCorpus:
    return _corpus(source, path, read_text(path, source))


@functools.lru_cache(maxsize=2)
def _load_builtin(source: str) -> TextCorpus:
    info = BUILTIN_TEXT[source]
    ref = resources.files("netc.runtime").joinpath(info.resource)
    try:
        raw = ref.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{source}: the bundled file netc/runtime/{info.resource} is missing from "
                        "this installation") from None
    return _corpus(source, None, decode_text(raw, source))


def load_text(source: str, *, base_dir: str | Path | None = None) -> TextCorpus:
    """Load a text source (``text:PATH`` or ``netc:hamlet``); a relative PATH is looked up in
    ``base_dir`` (the spec's folder), then in the current directory. Raises :class:`DataError`
    (invalid UTF-8 names the byte and its offset). A file is read once per (path, mtime, size)."""
    if not is_text_source(source):
        raise DataError(f"{source}: not a text source ({TEXT_PREFIX}PATH or "
                        f"{', '.join(BUILTIN_TEXT)})")
    try:
        if source in BUILTIN_TEXT:
            return _load_builtin(source)
        path = text_path(source, None if base_dir is None else str(base_dir))
        try:
            st = os.stat(path)
        except OSError as e:
            raise DataError(f"{source}: cannot be read: {e.strerror or e}") from None
        return _load_file(source, os.path.realpath(path), st.st_mtime_ns, st.st_size, path)
    except TextError as e:
        raise DataError(e.message) from None


def encode(text: str, symbols: list[str] | tuple[str, ...]) -> np.ndarray:
    """int32 ids of `text` in the vocabulary `symbols`; DataError names a character outside it."""
    index = {s: i for i, s in enumerate(symbols)}
    try:
        return np.array([index[c] for c in text], dtype=np.int32)
    except KeyError as e:
        raise DataError(f"character {e.args[0]!r} is not in the vocabulary of {len(symbols)} "
                        "characters") from None


def decode(ids, symbols: list[str] | tuple[str, ...]) -> str:
    """The characters of the ids (any iterable of integers in [0, len(symbols)))."""
    return "".join(symbols[int(i)] for i in np.asarray(ids).reshape(-1))


# --- the stream -----------------------------------------------------------------------------


class TextStream:
    """An endless stream of ``{"data", "label", "cont"}`` batches of a text (see the module
    docstring), with the BatchStream interface: iterate, :meth:`position`, :meth:`close`.

    ``position`` (from :meth:`position` of an earlier stream over the same text, split, batch
    size and seq_len) resumes exactly where that stream's consumer stopped."""

    def __init__(
        self,
        corpus: TextCorpus,
        *,
        batch_size: int,
        seq_len: int,
        split: tuple[float, float] = (0.0, 1.0),
        batch_first: bool = False,
        seed: int = 0,
        shuffle: bool = False,
        position: dict | None = None,
    ):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be at least 1, got {batch_size}, "
                             f"{seq_len}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.corpus = corpus
        self.batch_size, self.seq_len = batch_size, seq_len
        self.batch_first, self.seed, self.shuffle = batch_first, seed, shuffle
        start, stop = corpus.span(split)
        self._text = corpus.ids[start:stop]
        pairs = stop - start - 1
        span = batch_size * seq_len
        if pairs < span:
            raise DataError(
                f"{corpus.name}: split [{split[0]:g}, {split[1]:g}] holds {stop - start:,} "
                f"characters, but batch_size {batch_size} × seq_len {seq_len} needs at least "
                f"{span + 1:,}")
        self.batches_per_epoch = pairs // span
        self._stream_len = self.batches_per_epoch * seq_len  # pairs each stream reads per epoch
        self._slack = pairs - batch_size * self._stream_len  # pairs an epoch leaves out
        self._size = stop - start
        self._pos = self._start_position(position)
        self._offsets: dict[int, int] = {}
        self._closed = False

    def _start_position(self, position: dict | None) -> tuple[int, int]:
        if position is None:
            return (0, 0)
        try:
            epoch, index = position["epoch"], position["index"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"position must be a dict with 'epoch' and 'index', got "
                             f"{position!r}") from exc
        saved = (position.get("size", self._size), position.get("streams", self.batch_size),
                 position.get("seq_len", self.seq_len))
        if saved != (self._size, self.batch_size, self.seq_len):
            raise DataError(
                f"{self.corpus.name}: the saved position is for {saved[0]:,} characters in "
                f"{saved[1]} streams of {saved[2]} steps, but this stream reads {self._size:,} "
                f"characters in {self.batch_size} streams of {self.seq_len} steps")
        if not (isinstance(epoch, int) and isinstance(index, int) and epoch >= 0
                and 0 <= index < self.batches_per_epoch):
            raise ValueError(f"position out of range for {self.batches_per_epoch} batches per "
                             f"epoch: {position!r}")
        return (epoch, index)

    def offset(self, epoch: int) -> int:
        """Where epoch `epoch`'s first stream starts in the split: 0, or drawn with shuffle."""
        if not self.shuffle or self._slack == 0:
            return 0
        o = self._offsets.get(epoch)
        if o is None:
            rng = np.random.default_rng([self.seed, epoch, _OFFSET_TAG])
            o = self._offsets[epoch] = int(rng.integers(0, self._slack + 1))
            if len(self._offsets) > 4:
                self._offsets.pop(min(self._offsets))
        return o

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        """The batch at (epoch, index); depends on nothing else."""
        t, n = self.seq_len, self.batch_size
        starts = self.offset(epoch) + np.arange(n) * self._stream_len + index * t  # N
        where = np.arange(t)[:, None] + starts[None, :]  # T×N
        data, label = self._text[where], self._text[where + 1]
        cont = np.ones((t, n), np.float32)
        if index == 0:
            cont[0] = 0.0
        out = {"data": data, "label": label, "cont": cont}
        if self.batch_first:
            out = {k: v.T for k, v in out.items()}
        return {k: np.ascontiguousarray(v) for k, v in out.items()}

    def position(self) -> dict[str, int]:
        """Where the next batch handed to the consumer starts (JSON-serialisable)."""
        epoch, index = self._pos
        return {"epoch": int(epoch), "index": int(index), "size": int(self._size),
                "streams": int(self.batch_size), "seq_len": int(self.seq_len)}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._closed:
            raise RuntimeError(f"TextStream over {self.corpus.name} is closed")
        epoch, index = self._pos
        out = self.batch(epoch, index)
        index += 1
        self._pos = (epoch + 1, 0) if index == self.batches_per_epoch else (epoch, index)
        return out

    def close(self) -> None:
        """Nothing runs in the background; idempotent."""
        self._closed = True

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"TextStream({self.corpus.name!r}, batch_size={self.batch_size}, "
                f"seq_len={self.seq_len}, position={self.position()})")


# --- the vocabulary of a run ----------------------------------------------------------------


def _run_dir(path: Path) -> Path:
    """A run directory, or the directory of a checkpoint (…_iter_N, .json or .safetensors)."""
    if path.is_dir():
        return path
    if path.parent.is_dir() and (path.exists() or path.with_suffix(".json").exists()
                                 or Path(str(path) + ".json").exists()):
        return path.parent
    raise DataError(f"{path}: no such run directory or checkpoint")


def read_vocab_file(file: str | os.PathLike[str]) -> list[str]:
    """The symbols of a vocabulary file: a run's vocab.json ({"kind": "chars", "symbols": [one
    character each]}) or a word vocabulary ({"kind": "words", "symbols": [words]}, as
    models/prepare_rotten_tomatoes.py writes), e.g. `netc sample --vocab`. Symbols must be
    distinct. Raises DataError."""
    from netc.files import FileRefused, read_regular

    if not Path(file).exists():
        raise DataError(f"{file}: no such file")
    try:
        doc = json.loads(read_regular(file, MAX_VOCAB_JSON_BYTES).decode("utf-8"))
    except FileRefused as e:
        raise DataError(f"{file}: cannot be read: it {e.message}") from None
    except OSError as e:
        raise DataError(f"{file}: cannot be read: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{file}: not a JSON vocabulary ({e})") from None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    symbols = doc.get("symbols") if isinstance(doc, dict) else None
    width_ok = (lambda s: len(s) == 1) if kind == "chars" else (lambda s: len(s) >= 1)
    if (kind not in ("chars", "words") or not isinstance(symbols, list) or not symbols
            or not all(isinstance(s, str) and width_ok(s) for s in symbols)
            or len(set(symbols)) != len(symbols)):
        raise DataError(f"{file}: not a netc vocabulary ({{\"kind\": \"chars\", \"symbols\": "
                        "[distinct characters, ...]}, or kind \"words\")")
    return symbols


def load_vocab(path: str | os.PathLike[str], *, spec_dir: str | os.PathLike[str] | None = None
               ) -> list[str]:
    """The symbols (id -> character) a run was trained with, from a run directory or one of its
    checkpoints: its vocab.json, or when there is none, rebuilt from the text source of the run's
    spec.yaml (a relative text:PATH is looked up in `spec_dir`, the run directory, then the
    current directory). Raises DataError."""
    run = _run_dir(Path(path))
    file = run / VOCAB_FILE
    if file.exists():
        return read_vocab_file(file)
    spec_file = run / "spec.yaml"
    if not spec_file.exists():
        raise DataError(f"{run}: no {VOCAB_FILE} and no spec.yaml to rebuild it from")
    from netc.compiler.catalogue import layer_models
    from netc.spec.messages import NetState
    from netc.spec.net import parse_spec

    spec = parse_spec(str(spec_file), layer_models())
    train = NetState(phase="TRAIN")
    sources = [layer.data_param.source for layer in spec.layers
               if getattr(layer, "data_param", None) is not None
               and is_text_source(layer.data_param.source)]
    active = [layer.data_param.source for layer in spec.layers
              if getattr(layer, "data_param", None) is not None and layer.in_state(train)
              and is_text_source(layer.data_param.source)]
    if not sources:
        raise DataError(f"{run}: no {VOCAB_FILE}, and the run's spec reads no text source")
    source = (active or sources)[0]
    last: DataError | None = None
    for base in ([spec_dir] if spec_dir is not None else []) + [run]:
        try:
            return list(load_text(source, base_dir=base).symbols)
        except DataError as e:
            last = e
    raise DataError(f"{run}: no {VOCAB_FILE}, and its text source cannot be read: {last}")

