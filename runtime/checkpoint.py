"""Checkpoints that cannot run code when loaded and are never seen half-written.

A checkpoint is a pair of files in a run directory::

    <stem>.safetensors   every tensor (safetensors format: a JSON header + raw bytes; no pickle)
    <stem>.json          metadata and the commit marker, written last

The JSON holds the format tag and version, the iteration, the metadata the trainer passes
(data position, RNG info, spec digest, solver type, ...) and the sha256 and byte size of the
tensors file. Loading checks the size and the sha256 *before* the tensors are parsed.

Crash safety. Every file is written to a temporary file in the same directory
(``.<name>.tmp-<pid>-<token>``), flushed, ``fsync``-ed, moved onto its final name with
``os.replace`` and the directory is ``fsync``-ed. The tensors file is written first, the JSON
second, so a process killed at any moment leaves either the previous checkpoint set or the new,
complete one: a tensors file without its JSON is not a checkpoint. Readers ignore temporary
files; the next save removes those left behind by dead processes. Re-using a stem first removes
the old JSON (un-commits the old checkpoint) before its tensors file is replaced, so a crash
part-way never leaves a JSON describing other bytes; :func:`latest_checkpoint` additionally
verifies every candidate and skips any that fails.

Key encoding (:func:`flatten` / :func:`unflatten`). A nested dict ``{"conv1/7x7_s2": {"w": a}}``
becomes flat names joined by ``"/"``, with each key component escaped first: ``"%"`` becomes
``"%25"`` and ``"/"`` becomes ``"%2F"``. The example is stored as ``"conv1%2F7x7_s2/w"``.
Components never contain a raw ``"/"`` after escaping, so splitting on ``"/"`` and unescaping
recovers the exact keys (empty keys included). Empty sub-dicts, which hold no tensor, are
recorded in the JSON (``empty_dicts``) so that a tree round-trips with its structure intact.

Dtypes. bool, (u)int8/16/32/64 and float16/32/64 are stored natively, 0-d arrays included.
Other fixed-size dtypes (bfloat16 and the float8 types from ``ml_dtypes``, complex) are stored
as raw bytes (uint8) and their dtype and shape recorded in the JSON (``encoded``), so they
round-trip exactly too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from netc.errors import NetcError
from netc.files import FileRefused, open_regular, read_regular

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "checkpoint_paths",
    "flatten",
    "keep_last",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_checkpoint_meta",
    "remove_checkpoint",
    "save_checkpoint",
    "sha256_file",
    "unflatten",
    "verify_checkpoint",
    "write_bytes_atomic",
    "write_json_atomic",
]

FORMAT = "netc.checkpoint"
VERSION = 1

TENSORS_SUFFIX = ".safetensors"
META_SUFFIX = ".json"
MAX_RECORD_BYTES = 64 << 20  # a checkpoint's JSON record (the architecture, metadata)

_SEP = "/"
_TMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")
_NATIVE_DTYPES = frozenset(
    np.dtype(t)
    for t in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    )
)
_REQUIRED_KEYS = ("format", "version", "iteration", "tensors_file", "sha256", "size")


class CheckpointError(NetcError):
    """A checkpoint is missing, damaged, incomplete or not a netc checkpoint."""


# --------------------------------------------------------------------------------------------
# Atomic file helpers
# --------------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _is_tmp_name(name: str) -> bool:
    return _TMP_RE.match(name) is not None


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one.

    The bytes go to a temporary file in the same directory, which is flushed, fsync-ed and
    renamed over ``path``; then the directory is fsync-ed. Returns ``path`` as a Path.
    """
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "__array__"):  # jax arrays
        return np.asarray(obj).tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (UTF-8, trailing newline) to ``path`` atomically.

    numpy/JAX scalars and arrays and paths are converted to plain JSON values.
    """
    text = json.dumps(obj, indent=indent, sort_keys=True, default=_json_default)
    return write_bytes_atomic(path, (text + "\n").encode("utf-8"))


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 digest of a file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _cleanup_stale_tmp(directory: Path) -> None:
    """Remove temporary files left by processes that no longer run."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OverflowError:
        return False
    except OSError:  # pragma: no cover - platforms without signal 0
        return True
    return True


# --------------------------------------------------------------------------------------------
# Tree flattening
# --------------------------------------------------------------------------------------------


def _escape(key: str) -> str:
    return key.replace("%", "%25").replace("/", "%2F")


_UNESCAPE_RE = re.compile(r"%(25|2F)")


def _unescape(component: str) -> str:
    return _UNESCAPE_RE.sub(lambda m: "%" if m.group(1) == "25" else "/", component)


def _to_numpy(value: Any, where: str) -> np.ndarray:
    if isinstance(value, (list, tuple)):
        raise TypeError(
            f"{where}: lists and tuples are not supported in a checkpoint tree; "
            "use a dict keyed by strings or an array"
        )
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - report which leaf failed
        raise TypeError(f"{where}: cannot convert {type(value).__name__} to an array: {e}") from e
    dt = arr.dtype
    # kind "V" is also used by ml_dtypes (bfloat16, float8_*); only plain/structured void is refused.
    if dt.hasobject or dt.kind in "OSU" or dt.type is np.void or dt.itemsize == 0:
        raise TypeError(f"{where}: dtype {arr.dtype} cannot be stored in a checkpoint")
    return arr


def _walk(tree: Mapping[str, Any], prefix: str, out: dict[str, np.ndarray], empty: list[str]):
    for key, value in tree.items():
        if not isinstance(key, str):
            raise TypeError(
                f"checkpoint tree keys must be strings, got {key!r} ({type(key).__name__})"
            )
        name = f"{prefix}{_SEP}{_escape(key)}" if prefix else _escape(key)
        if isinstance(value, Mapping):
            if len(value) == 0:
                empty.append(name)
            else:
                _walk(value, name, out, empty)
        else:
            out[name] = _to_numpy(value, repr(name))


def _flatten_with_empty(tree: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], list[str]]:
    if not isinstance(tree, Mapping):
        raise TypeError(f"a checkpoint tree must be a dict, got {type(tree).__name__}")
    out: dict[str, np.ndarray] = {}
    empty: list[str] = []
    _walk(tree, "", out, empty)
    return out, empty


def flatten(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flatten a nested dict of arrays into ``{"a/b/c": ndarray}``.

    Each key is escaped (``%`` -> ``%25``, ``/`` -> ``%2F``) before joining with ``/``, so keys
    containing ``/`` (Caffe's ``conv1/7x7_s2``) round-trip exactly through :func:`unflatten`.
    Leaves may be numpy arrays, numpy scalars, Python numbers or JAX arrays; they come back as
    numpy arrays with their dtype and shape (0-d included). Empty sub-dicts hold no array and
    are dropped here (:func:`save_checkpoint` records them separately).
    """
    return _flatten_with_empty(tree)[0]


def _split(name: str) -> list[str]:
    return [_unescape(c) for c in name.split(_SEP)]


def _insert(root: dict[str, Any], name: str, value: Any) -> None:
    parts = _split(name)
    node = root
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            at = _SEP.join(_escape(p) for p in parts[: i + 1])
            raise ValueError(f"flat key {name!r} conflicts with the array stored at {at!r}")
        node = child
    last = parts[-1]
    if last in node:
        raise ValueError(f"flat key {name!r} conflicts with another entry of the same path")
    node[last] = value


def unflatten(flat: Mapping[str, Any], empty_dicts: Iterable[str] = ()) -> dict[str, Any]:
    """Inverse of :func:`flatten`: rebuild the nested dict from ``"/"``-joined escaped keys.

    ``empty_dicts`` lists flat names of empty sub-dicts to re-create.
    """
    root: dict[str, Any] = {}
    for name in sorted(flat):
        _insert(root, name, flat[name])
    for name in empty_dicts:
        _insert(root, name, {})
    return root


# --------------------------------------------------------------------------------------------
# Dtype encoding
# --------------------------------------------------------------------------------------------


def _contiguous(arr: np.ndarray) -> np.ndarray:
    # Not np.ascontiguousarray: it turns 0-d arrays into shape (1,).
    return arr if arr.flags.c_contiguous else np.array(arr, order="C", copy=True)


def _encode_arrays(
    flat: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    stored: dict[str, np.ndarray] = {}
    encoded: dict[str, dict[str, Any]] = {}
    for name, arr in flat.items():
        dt = arr.dtype
        if dt in _NATIVE_DTYPES:
            stored[name] = _contiguous(arr)
        elif dt.newbyteorder("=") in _NATIVE_DTYPES:  # non-native byte order
            stored[name] = _contiguous(arr.astype(dt.newbyteorder("=")))
        else:
            if dt.byteorder not in "=|":
                arr = arr.astype(dt.newbyteorder("="))
                dt = arr.dtype
            raw = _contiguous(arr).reshape(-1).view(np.uint8)
            stored[name] = raw
            encoded[name] = {"dtype": dt.name, "shape": list(arr.shape)}
    return stored, encoded


def _resolve_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        pass
    try:
        import ml_dtypes  # registers bfloat16, float8_*, int4, ... with numpy

        return np.dtype(getattr(ml_dtypes, name))
    except (ImportError, AttributeError, TypeError) as e:
        raise TypeError(f"unknown dtype {name!r}") from e


def _decode_arrays(
    stored: dict[str, np.ndarray], encoded: Mapping[str, Mapping[str, Any]], where: Path
) -> dict[str, np.ndarray]:
    out = dict(stored)
    for name, info in encoded.items():
        if name not in out:
            raise CheckpointError(
                f"{where}: encoded tensor {name!r} is missing from the tensors file"
            )
        try:
            dt = _resolve_dtype(str(info["dtype"]))
            shape = tuple(int(s) for s in info["shape"])
            out[name] = out[name].view(dt).reshape(shape)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: cannot decode tensor {name!r}: {e}") from e
    return out


# --------------------------------------------------------------------------------------------
# Checkpoint paths
# --------------------------------------------------------------------------------------------


def _check_stem(stem: str) -> None:
    if (
        not isinstance(stem, str)
        or not stem
        or stem.startswith(".")
        or "/" in stem
        or "\\" in stem
        or "\x00" in stem
    ):
        raise ValueError(
            f"invalid checkpoint stem {stem!r}: it must be a non-empty file name "
            "without path separators that does not start with '.'"
        )


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(json_path, tensors_path)`` for a checkpoint named by its .json, .safetensors or stem."""
    p = Path(path)
    if p.name.endswith(META_SUFFIX):
        stem = p.name[: -len(META_SUFFIX)]
    elif p.name.endswith(TENSORS_SUFFIX):
        stem = p.name[: -len(TENSORS_SUFFIX)]
    else:
        stem = p.name
    return p.with_name(stem + META_SUFFIX), p.with_name(stem + TENSORS_SUFFIX)


def read_checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a checkpoint's JSON (the commit record) without touching the tensors.

    Returns the whole record: ``format``, ``version``, ``iteration``, ``tensors_file``,
    ``sha256``, ``size``, ``meta`` (the trainer's metadata), ``encoded``, ``empty_dicts``.
    """
    json_path, _ = checkpoint_paths(path)
    try:
        text = read_regular(json_path, MAX_RECORD_BYTES).decode("utf-8")
    except FileRefused as e:
        raise CheckpointError(f"{json_path}: not a checkpoint record: it {e.message}") from None
    except FileNotFoundError:
        raise CheckpointError(f"{json_path}: no such checkpoint") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{json_path}: cannot read checkpoint metadata: {e}") from e
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{json_path}: not a netc checkpoint (invalid JSON: {e})") from e
    if not isinstance(record, dict):
        raise CheckpointError(f"{json_path}: not a netc checkpoint (JSON is not an object)")
    missing = [k for k in _REQUIRED_KEYS if k not in record]
    if missing:
        raise CheckpointError(
            f"{json_path}: not a netc checkpoint (missing {', '.join(map(repr, missing))})"
        )
    if record["format"] != FORMAT:
        raise CheckpointError(
            f"{json_path}: not a netc checkpoint (format is {record['format']!r}, expected {FORMAT!r})"
        )
    if not isinstance(record["version"], int) or record["version"] > VERSION:
        raise CheckpointError(
            f"{json_path}: checkpoint format version {record['version']!r} is not supported "
            f"(this netc reads versions up to {VERSION})"
        )
    if not isinstance(record["iteration"], int) or isinstance(record["iteration"], bool):
        raise CheckpointError(f"{json_path}: invalid iteration {record['iteration']!r}")
    tf = record["tensors_file"]
    if not isinstance(tf, str) or tf != json_path.name[: -len(META_SUFFIX)] + TENSORS_SUFFIX:
        raise CheckpointError(f"{json_path}: invalid tensors_file {tf!r}")
    if not isinstance(record["size"], int) or not isinstance(record["sha256"], str):
        raise CheckpointError(f"{json_path}: invalid size or sha256 entry")
    record.setdefault("meta", {})
    record.setdefault("encoded", {})
    record.setdefault("empty_dicts", [])
    return record


def _read_verified_tensors(json_path: Path, record: Mapping[str, Any]) -> bytes:
    tensors_path = json_path.with_name(record["tensors_file"])
    try:
        with open_regular(tensors_path) as f:
            data = f.read(record["size"] + 1)  # never more than the record promises (+1: longer?)
    except FileRefused as e:
        raise CheckpointError(f"{tensors_path}: not a tensors file: it {e.message}") from None
    except FileNotFoundError:
        raise CheckpointError(
            f"{tensors_path}: no such checkpoint tensors file (named by {json_path.name})"
        ) from None
    except OSError as e:
        raise CheckpointError(f"{tensors_path}: cannot read: {e}") from e
    if len(data) != record["size"]:
        raise CheckpointError(
            f"{tensors_path}: size mismatch (expected {record['size']} bytes, found {len(data)}), "
            "the file is truncated, damaged or was modified"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != record["sha256"]:
        raise CheckpointError(
            f"{tensors_path}: sha256 mismatch, the file is damaged or was modified "
            f"(expected {record['sha256']}, found {digest})"
        )
    return data


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    stem: str,
    tensors: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    iteration: int | None = None,
) -> Path:
    """Save ``tensors`` (a nested dict of arrays) and ``meta`` as ``<run_dir>/<stem>.{safetensors,json}``.

    ``iteration`` defaults to ``meta["iteration"]``; one of them is required. ``meta`` must be
    JSON-serialisable (numpy scalars are converted). Returns the JSON path. The tensors file is
    committed before the JSON, each atomically; see the module docstring.
    """
    _check_stem(stem)
    iteration = _checked_iteration(iteration, meta)
    meta = dict(meta)
    meta.setdefault("iteration", iteration)
    # Fail on non-serialisable metadata before touching the disk.
    meta_text = json.dumps(meta, sort_keys=True, default=_json_default)
    meta = json.loads(meta_text)

    flat, empty = _flatten_with_empty(tensors)
    stored, encoded = _encode_arrays(flat)
    data = _st_save(stored, metadata={"format": FORMAT, "version": str(VERSION)})
    digest = hashlib.sha256(data).hexdigest()

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _cleanup_stale_tmp(run_dir)
    json_path = run_dir / (stem + META_SUFFIX)
    tensors_path = run_dir / (stem + TENSORS_SUFFIX)

    # Re-using a stem: un-commit the old checkpoint first, so that no JSON ever describes a
    # tensors file other than the one it was written with.
    if json_path.exists():
        json_path.unlink()
        _fsync_dir(run_dir)

    write_bytes_atomic(tensors_path, data)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "iteration": iteration,
        "tensors_file": tensors_path.name,
        "sha256": digest,
        "size": len(data),
        "num_tensors": len(stored),
        "encoded": encoded,
        "empty_dicts": empty,
        "meta": meta,
    }
    write_json_atomic(json_path, record)
    return json_path


def _checked_iteration(iteration: Any, meta: Mapping[str, Any]) -> int:
    """save_checkpoint's iteration: the argument, else meta's; an int (numpy's converted)."""
    if iteration is None:
        if "iteration" not in meta:
            raise ValueError("save_checkpoint needs an iteration (argument or meta['iteration'])")
        iteration = meta["iteration"]
    if isinstance(iteration, np.integer):
        iteration = int(iteration)
    if not isinstance(iteration, int) or isinstance(iteration, bool):
        raise TypeError(f"iteration must be an int, got {iteration!r}")
    return iteration


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load a checkpoint named by its .json, its .safetensors or its stem path.

    Verifies the tensors file's size and sha256 before parsing it. Returns
    ``(nested tensors as numpy arrays, meta)`` where ``meta`` is the trainer's metadata
    (always containing ``"iteration"``). Raises :class:`CheckpointError` naming the file.
    """
    json_path, _ = checkpoint_paths(path)
    record = read_checkpoint_meta(json_path)
    data = _read_verified_tensors(json_path, record)
    tensors_path = json_path.with_name(record["tensors_file"])
    try:
        stored = _st_load(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{tensors_path}: not a valid safetensors file: {e}") from e
    flat = _decode_arrays(stored, record["encoded"], tensors_path)
    try:
        tree = unflatten(flat, record["empty_dicts"])
    except ValueError as e:
        raise CheckpointError(f"{tensors_path}: inconsistent tensor names: {e}") from e
    meta = dict(record["meta"]) if isinstance(record["meta"], dict) else {}
    meta.setdefault("iteration", record["iteration"])
    return tree, meta


def checkpoint_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the checkpoint cannot be used (its JSON invalid, its tensors file missing, truncated or
    failing its sha256), or None when it verifies."""
    try:
        json_path, _ = checkpoint_paths(path)
        _read_verified_tensors(json_path, read_checkpoint_meta(json_path))
    except CheckpointError as e:
        return str(e)
    return None


def verify_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True when the checkpoint's JSON is valid and its tensors file has the recorded size and sha256."""
    return checkpoint_problem(path) is None


# --------------------------------------------------------------------------------------------
# Listing / pruning
# --------------------------------------------------------------------------------------------


_SNAPSHOT_NAME = re.compile(r".+_iter_\d+")


def _committed(run_dir: Path, prefix: str | None,
               damaged: list | None = None) -> list[tuple[int, str, Path]]:
    found: list[tuple[int, str, Path]] = []
    try:
        entries = list(os.scandir(run_dir))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        name = entry.name
        if not name.endswith(META_SUFFIX) or name.startswith(".") or _is_tmp_name(name):
            continue
        stem = name[: -len(META_SUFFIX)]
        if prefix is not None and not stem.startswith(prefix):
            continue
        json_path = run_dir / name
        try:
            record = read_checkpoint_meta(json_path)
        except CheckpointError as e:
            # other JSON (solver.json, spec copies), or a damaged record: named like a snapshot
            # (<prefix>_iter_<N>.json) it is reported to `damaged`
            if damaged is not None and _SNAPSHOT_NAME.fullmatch(stem):
                damaged.append((json_path, str(e)))
            continue
        found.append((record["iteration"], stem, json_path))
    found.sort(key=lambda t: (t[0], t[1]))
    return found


def list_checkpoints(run_dir: str | os.PathLike[str], prefix: str | None = None) -> list[Path]:
    """JSON paths of the committed checkpoints in ``run_dir``, oldest iteration first.

    Only checkpoints whose JSON commit record exists and is well-formed are listed (the tensors
    are not hashed here; see :func:`verify_checkpoint`). ``prefix`` filters by stem.
    """
    return [p for _, _, p in _committed(Path(run_dir), prefix)]


def latest_checkpoint(run_dir: str | os.PathLike[str], prefix: str | None = None,
                      skipped: list | None = None) -> Path | None:
    """JSON path of the newest checkpoint that passes verification, or None.

    Checkpoints whose tensors file is missing, truncated or fails its sha256 are skipped; so are
    snapshot records whose JSON is damaged. Each skipped checkpoint NEWER than the one returned is
    appended to `skipped` as (path, reason), so callers can say that they fell back and why.
    """
    damaged: list = []
    committed = _committed(Path(run_dir), prefix, damaged)
    chosen = None
    problems = []
    for _, _, path in reversed(committed):
        problem = checkpoint_problem(path)
        if problem is None:
            chosen = path
            break
        problems.append((path, problem))
    if skipped is not None:
        newest = read_checkpoint_meta(chosen)["iteration"] if chosen is not None else -1
        late = [(p, why) for p, why in damaged if _iteration_of(p) > newest]
        skipped.extend(sorted(problems + late, key=lambda t: -_iteration_of(t[0])))
    return chosen


def _iteration_of(path: Path) -> int:
    m = re.search(r"_iter_(\d+)$", Path(path).name[: -len(META_SUFFIX)])
    return int(m.group(1)) if m else -1


def keep_last(run_dir: str | os.PathLike[str], n: int, prefix: str | None = None) -> list[Path]:
    """Delete all but the ``n`` newest committed checkpoints; returns the deleted JSON paths.

    Each checkpoint is un-committed (JSON removed) before its tensors file is removed.
    """
    if n < 0:
        raise ValueError(f"keep_last: n must be >= 0, got {n}")
    run_dir = Path(run_dir)
    paths = list_checkpoints(run_dir, prefix)
    doomed = paths[: max(0, len(paths) - n)] if n else paths
    for json_path in doomed:
        remove_checkpoint(json_path)
    return doomed


def remove_checkpoint(json_path: str | os.PathLike[str]) -> None:
    """Delete one checkpoint: un-commit it (its JSON) first, then remove its tensors file."""
    json_path, tensors_path = checkpoint_paths(json_path)
    with contextlib.suppress(FileNotFoundError):
        json_path.unlink()
    _fsync_dir(json_path.parent)
    with contextlib.suppress(FileNotFoundError):
        tensors_path.unlink()
    _fsync_dir(json_path.parent)
