"""Load and run a model exported by `netc export` — with jax alone, no netc spec or compiler.

    from netc.runtime.exported import load_exported, run_exported
    outputs = run_exported("lenet-export", {"data": images})      # {"ip2": array (n, 10)}

The same manifest format (``kind``: ``stablehlo``, ``onnx`` or ``safetensors``) describes
every `netc export` artifact; `verify_artifact` checks any of them, `load_weights` reads a
safetensors one. An artifact directory holds ``model.jaxexport`` (``jax.export.Exported.serialize()`` bytes; the
weights are constants inside it) and ``manifest.json`` (input/output names, shapes with ``"b"``
for the batch, dtypes, layout, platforms, versions, and the sha256 and size of every other
file). `load_exported` checks every listed file's size and sha256 *before* deserialising and
refuses a missing, modified or damaged file with an error naming it.

Without netc at all, these lines of plain jax do the same::

    import hashlib, json, pathlib
    import jax, numpy as np
    from jax import export

    d = pathlib.Path("lenet-export")
    manifest = json.loads((d / "manifest.json").read_text())
    blob = (d / "model.jaxexport").read_bytes()
    assert hashlib.sha256(blob).hexdigest() == manifest["files"]["model.jaxexport"]["sha256"]
    exported = export.deserialize(bytearray(blob))
    out = exported.call({"data": np.zeros((7, 1, 28, 28), np.float32)})  # {"ip2": (7, 10)}

Inputs are the net's input blobs in the spec's N×C×H×W order, after the Data layer's transform
(the manifest's ``transform_param``, e.g. ``scale: 0.00390625``, is the caller's to apply).
The batch size is free (symbolic ``b``); each new batch size compiles once. The batch is on the
axis where each input's manifest shape holds ``"b"``: axis 0, or axis 1 of a time-major T×N×…
input (``manifest["batch"]["axes"]`` names it per input; `batch_axes` reads it, from older
manifests too). The module runs on
any platform listed in ``manifest["platforms"]`` (jax picks the branch of its backend).

This module imports only jax, numpy, hashlib and json (tests check that loading it does not
import netc's spec or compiler packages).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from netc.errors import NetcError
from netc.files import FileRefused, open_regular, read_regular

__all__ = [
    "ExportedError",
    "batch_axes",
    "load_exported",
    "load_weights",
    "read_manifest",
    "run_exported",
    "verify_artifact",
]

FORMAT = "netc.exported"
MAX_VERSION = 1
MANIFEST_FILE = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20


class ExportedError(NetcError):
    """An exported artifact is missing, damaged, tampered with, or given the wrong inputs."""


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The artifact's manifest, checked for the format tag and the fields the loader needs."""
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = json.loads(read_regular(path, MAX_MANIFEST_BYTES).decode("utf-8"))
    except FileRefused as e:
        raise ExportedError(f"{path}: not a manifest: it {e.message}") from None
    except FileNotFoundError:
        raise ExportedError(f"{path}: missing; {Path(directory)} is not an exported model "
                            f"(see `netc export`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportedError(f"{path}: not a readable manifest: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportedError(f"{path}: not a netc export manifest (format is not '{FORMAT}')")
    version = manifest.get("version")
    if not isinstance(version, int) or version > MAX_VERSION:
        raise ExportedError(f"{path}: manifest version {version!r} is newer than this loader "
                            f"supports ({MAX_VERSION}); upgrade netc")
    for key in ("model_file", "files", "inputs", "outputs"):
        if key not in manifest:
            raise ExportedError(f"{path}: the manifest has no '{key}'")
    files = manifest["files"]
    if not isinstance(files, dict) or manifest["model_file"] not in files:
        raise ExportedError(f"{path}: the manifest does not list the model file "
                            f"'{manifest['model_file']}' with its sha256")
    return manifest


def _safe_name(name: Any) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..", MANIFEST_FILE)
            and "/" not in name and "\\" not in name and "\0" not in name)


def verify_artifact(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Check the size and sha256 of every file the manifest lists; returns (manifest, the files'
    bytes by name). Raises ExportedError naming the first file that is missing or differs."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    contents: dict[str, bytes] = {}
    for name, record in manifest["files"].items():
        if not _safe_name(name):
            raise ExportedError(f"{directory / MANIFEST_FILE}: refuses to read file {name!r} "
                                f"(files must be plain names inside the artifact folder)")
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            raise ExportedError(f"{directory / MANIFEST_FILE}: no sha256 recorded for '{name}'")
        path = directory / name
        size = record.get("size")
        try:
            with open_regular(path) as f:  # never more than the manifest promises
                data = f.read(size + 1 if isinstance(size, int) and size >= 0 else -1)
        except FileRefused as e:
            raise ExportedError(f"{path}: cannot be read: it {e.message}") from None
        except FileNotFoundError:
            raise ExportedError(f"{path}: missing (listed in {MANIFEST_FILE})") from None
        except OSError as e:
            raise ExportedError(f"{path}: cannot be read: {e}") from None
        if size is not None and size != len(data):
            raise ExportedError(f"{path}: {len(data):,} bytes, but {MANIFEST_FILE} records "
                                f"{size:,}; the file was modified or truncated — refusing to load it")
        digest = hashlib.sha256(data).hexdigest()
        if digest != record["sha256"]:
            raise ExportedError(f"{path}: sha256 {digest} does not match {record['sha256']} in "
                                f"{MANIFEST_FILE}; the file was modified or damaged — refusing "
                                f"to load it")
        contents[name] = data
    return manifest, contents


def load_exported(directory: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """(jax.export.Exported, manifest) of an artifact directory, verified before deserialising."""
    from jax import export

    manifest, contents = verify_artifact(directory)
    model_path = Path(directory) / manifest["model_file"]
    kind = manifest.get("kind", "stablehlo")  # manifests before `kind` were all StableHLO
    if kind != "stablehlo":
        raise ExportedError(f"{Path(directory) / MANIFEST_FILE}: a {kind} artifact, not a "
                            f"StableHLO one (`netc export --format stablehlo`)")
    ccv = manifest.get("calling_convention_version")
    lo = export.minimum_supported_calling_convention_version
    hi = export.maximum_supported_calling_convention_version
    if isinstance(ccv, int) and not lo <= ccv <= hi:
        import jax

        raise ExportedError(f"{model_path}: exported with calling convention {ccv}; jax "
                            f"{jax.__version__} reads {lo} to {hi}")
    try:
        exported = export.deserialize(bytearray(contents[manifest["model_file"]]))
    except Exception as e:  # noqa: BLE001 - flatbuffers/jax raise assorted errors
        raise ExportedError(f"{model_path}: cannot be deserialised: {type(e).__name__}: {e}") from e
    return exported, manifest


def load_weights(directory: str | os.PathLike[str]) -> tuple[dict[str, dict[str, np.ndarray]],
                                                               dict[str, Any]]:
    """({layer: {blob: array}}, manifest) of a `netc export --format safetensors` folder, its
    file verified against the manifest's sha256 *before* it is parsed. Keys are ``layer/blob``:
    the blob is what follows the last "/" (a layer name may hold "/")."""
    from safetensors.numpy import load

    manifest, contents = verify_artifact(directory)
    path = Path(directory) / manifest["model_file"]
    if manifest.get("kind") != "safetensors":
        raise ExportedError(f"{Path(directory) / MANIFEST_FILE}: a "
                            f"{manifest.get('kind', 'stablehlo')} artifact, not safetensors weights")
    try:
        flat = load(contents[manifest["model_file"]])
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ExportedError(f"{path}: not a readable safetensors file: {e}") from e
    tree: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        layer, sep, blob = key.rpartition("/")
        if not sep:
            raise ExportedError(f"{path}: tensor {key!r} is not keyed layer/blob")
        tree.setdefault(layer, {})[blob] = value
    return tree, manifest


def batch_axes(manifest: Mapping[str, Any]) -> dict[str, int | None]:
    """The batch axis of each input of an artifact (None: an input of fixed shape, or a fixed
    batch): `batch.axes` of the manifest, else (older manifests, whose batch was always axis 0)
    the axis of each input's shape holding the batch symbol, else `batch.axis`."""
    batch = manifest.get("batch") if isinstance(manifest.get("batch"), Mapping) else {}
    axes = batch.get("axes")
    names = [s["name"] for s in manifest["inputs"]]
    if isinstance(axes, Mapping):
        return {n: axes.get(n) for n in names}
    symbol = batch.get("symbol")
    out = {}
    for sig in manifest["inputs"]:
        shape = sig["shape"]
        if symbol is not None and symbol in shape:
            out[sig["name"]] = shape.index(symbol)
        else:
            out[sig["name"]] = batch.get("axis") if "size" in batch else None
    return out


def _prepare(manifest: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(inputs, Mapping):
        raise ExportedError(f"inputs must be a mapping of blob name to array, "
                            f"got {type(inputs).__name__}")
    want = {s["name"]: s for s in manifest["inputs"]}
    missing = [n for n in want if n not in inputs]
    extra = [n for n in inputs if n not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"unexpected input(s) {', '.join(map(repr, extra))}")
        raise ExportedError(f"{'; '.join(parts)}; the model takes {', '.join(map(repr, want))}")
    symbols: dict[str, tuple[int, str]] = {}
    batch = manifest.get("batch")
    batch_symbol = batch.get("symbol") if isinstance(batch, Mapping) else None
    args = {}
    for name, sig in want.items():
        arr = np.asarray(inputs[name])
        dtype = np.dtype(sig["dtype"])
        if arr.dtype != dtype:
            if not (np.can_cast(arr.dtype, dtype, casting="same_kind")
                    or (arr.dtype.kind in "biu" and dtype.kind == "f")):
                raise ExportedError(f"input '{name}': dtype {arr.dtype} cannot be converted to "
                                    f"the model's {dtype}")
            arr = arr.astype(dtype)
        shape = sig["shape"]
        shown = "×".join(map(str, shape))
        if arr.ndim != len(shape):
            raise ExportedError(f"input '{name}': expected {len(shape)} axes ({shown}), got "
                                f"shape {'×'.join(map(str, arr.shape))}")
        for axis, (d, n) in enumerate(zip(shape, arr.shape)):
            if isinstance(d, int):
                if d != n:
                    raise ExportedError(f"input '{name}': axis {axis} must be {d} ({shown}), got "
                                        f"shape {'×'.join(map(str, arr.shape))}")
            elif d in symbols and symbols[d][0] != n:
                what = "the batch" if d == batch_symbol else d
                raise ExportedError(f"input '{name}': axis {axis} ({what}) is {n}, but input "
                                    f"'{symbols[d][1]}' has {d} = {symbols[d][0]}")
            elif n < 1:
                raise ExportedError(f"input '{name}': axis {axis} ({d}) must be at least 1")
            else:
                symbols.setdefault(d, (n, name))
        args[name] = arr
    return args


def run_exported(artifact: str | os.PathLike[str] | tuple[Any, Mapping[str, Any]],
                 inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Run an exported model on `inputs` ({input blob: array}); returns {output blob: array}.

    `artifact` is the artifact directory, or the (exported, manifest) pair `load_exported`
    returned (to verify and deserialise once for many calls). Inputs are checked against the
    manifest (names, rank, fixed axes, a consistent batch); numbers are converted to the
    model's dtype where that loses no kind (float64 → float32, uint8 → float32)."""
    if isinstance(artifact, tuple):
        exported, manifest = artifact
    else:
        exported, manifest = load_exported(artifact)
    args = _prepare(manifest, inputs)
    out = exported.call(args)
    return {name: np.asarray(value) for name, value in out.items()}
