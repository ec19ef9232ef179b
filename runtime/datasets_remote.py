"""Built-in data sets downloaded on first use: MNIST, Fashion-MNIST and CIFAR-10 (its binary
version, never the pickled Python one).

Files go to the data folder, one subfolder per set:

    $NETC_DATA_DIR                        if set
    else $XDG_CACHE_HOME/netc/datasets    (~/.cache/netc/datasets when XDG_CACHE_HOME is unset)

Each file is fetched from its mirrors in order into `NAME.part` (an interrupted download resumes
there with an HTTP Range request), checked against its published size and sha256, and only then
renamed to NAME; a file that fails the check is removed. The parsed arrays are kept beside the
downloads as `SET-<digest>.npz` (read with allow_pickle=False), so later runs read neither the
network nor the archives. Offline, the error names the addresses tried and where to put the file
by hand. The files are parsed here: IDX (MNIST's format: a big-endian magic and dimensions,
gzip-compressed) and CIFAR-10's binary batches (a 1-byte label and 3,072 pixel bytes per record),
read from the tar.gz in memory: nothing is extracted to disk.

numpy only: this module does not import JAX.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import struct
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from netc.runtime.data import DataError

__all__ = [
    "REMOTE",
    "RemoteFile",
    "RemoteSet",
    "data_dir",
    "fetch",
    "load_remote",
    "parsed_file",
    "read_idx",
    "read_cifar_binary",
]

TIMEOUT_S = 30  # per connection attempt and per read
_CHUNK = 1 << 16
_PARSE_VERSION = 1  # part of the .npz name: a change of the parsed layout re-parses


class DownloadError(DataError):
    """A data set file that cannot be fetched, checked or parsed."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name, size and sha256, and the addresses tried in order."""

    name: str
    size: int
    sha256: str
    urls: tuple[str, ...]


@dataclass(frozen=True)
class RemoteSet:
    """A downloaded data set: its files and the parser that turns them (name -> path) into the
    arrays of every split ({"train_data", "train_label", "test_data", "test_label"})."""

    files: tuple[RemoteFile, ...]
    parse: Callable[[Mapping[str, Path]], dict[str, np.ndarray]]
    homepage: str


def data_dir() -> Path:
    """The folder downloaded data sets live in (not created here)."""
    own = os.environ.get("NETC_DATA_DIR")
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = (
        Path(xdg).expanduser()
        if xdg and os.path.isabs(os.path.expanduser(xdg))
        else Path.home() / ".cache"
    )
    return base / "netc" / "datasets"


# --- parsers -------------------------------------------------------------------------------------

# IDX element types (the third magic byte), all big-endian
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MAX_ARRAY_BYTES = 4 << 30


def _read_exact(f, n: int, path: Path, what: str) -> bytes:
    raw = f.read(n)
    if len(raw) != n:
        raise DownloadError(
            f"{path}: truncated: {what} needs {n:,} bytes, the file has {len(raw):,}"
        )
    return raw


def read_idx(path: Path) -> np.ndarray:
    """The array of an IDX file (gzip-compressed when its name ends in .gz), native byte order."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            magic = _read_exact(f, 4, path, "the magic number")
            if magic[:2] != b"\0\0" or magic[2] not in _IDX_TYPES or not 1 <= magic[3] <= 8:
                raise DownloadError(f"{path}: not an IDX file (magic {magic.hex()})")
            dims = struct.unpack(f">{magic[3]}I", _read_exact(f, 4 * magic[3], path, "the shape"))
            dtype = np.dtype(_IDX_TYPES[magic[2]])
            nbytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            if nbytes > _MAX_ARRAY_BYTES:
                raise DownloadError(f"{path}: an IDX array of {nbytes:,} bytes is too large")
            raw = _read_exact(f, nbytes, path, f"a {'×'.join(map(str, dims))} array")
            if f.read(1):
                raise DownloadError(f"{path}: data after the {'×'.join(map(str, dims))} array")
    except (OSError, EOFError, zlib.error) as e:
        raise DownloadError(f"{path}: cannot be read as IDX: {e}") from None
    return np.frombuffer(raw, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_pair(images: Path, labels: Path, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """N×1×H×W uint8 images and N int32 labels from two IDX files."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DownloadError(f"{images}: expected N×H×W uint8 images, got {x.dtype}{list(x.shape)}")
    if y.shape != (x.shape[0],) or y.size and not 0 <= int(y.min()) <= int(y.max()) < classes:
        raise DownloadError(
            f"{labels}: expected {x.shape[0]:,} labels in [0, {classes}), got "
            f"{y.dtype}{list(y.shape)}"
        )
    return x[:, None], y.astype(np.int32)


def _parse_mnist_like(paths: Mapping[str, Path]) -> dict[str, np.ndarray]:
    out = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        x, y = _idx_pair(
            paths[f"{stem}-images-idx3-ubyte.gz"], paths[f"{stem}-labels-idx1-ubyte.gz"], 10
        )
        out[f"{split}_data"], out[f"{split}_label"] = x, y
    return out


CIFAR10_MEMBERS = {
    "train": tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("cifar-10-batches-bin/test_batch.bin",),
}
_CIFAR_RECORD = 1 + 3 * 32 * 32


def read_cifar_binary(path: Path, members: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """N×3×32×32 uint8 images and N int32 labels of CIFAR-10 binary batches, the named members
    of a tar.gz read in memory (regular files only; nothing is written to disk)."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            chunks = [_cifar_member(tar, name, path) for name in members]
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DownloadError(f"{path}: cannot be read as a tar.gz archive: {e}") from None
    records = np.concatenate(chunks)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int32)


def _cifar_member(tar: tarfile.TarFile, name: str, path: Path) -> np.ndarray:
    try:
        info = tar.getmember(name)
    except KeyError:
        raise DownloadError(f"{path}: the archive has no member {name}") from None
    if not info.isfile() or info.size % _CIFAR_RECORD or info.size > _MAX_ARRAY_BYTES:
        raise DownloadError(
            f"{path}: member {name} is not a batch of {_CIFAR_RECORD:,}-byte "
            f"records ({info.size:,} bytes)"
        )
    f = tar.extractfile(info)
    raw = _read_exact(f, info.size, path, name)
    records = np.frombuffer(raw, np.uint8).reshape(-1, _CIFAR_RECORD)
    if records.size and int(records[:, 0].max()) >= 10:
        raise DownloadError(
            f"{path}: member {name} has a label {int(records[:, 0].max())}, "
            "past CIFAR-10's 10 classes"
        )
    return records


def _parse_cifar10(paths: Mapping[str, Path]) -> dict[str, np.ndarray]:
    out = {}
    for split, members in CIFAR10_MEMBERS.items():
        x, y = read_cifar_binary(paths["cifar-10-binary.tar.gz"], members)
        out[f"{split}_data"], out[f"{split}_label"] = x, y
    return out


# --- the catalogue -------------------------------------------------------------------------------
# Sizes and sha256 digests: TensorFlow Datasets' published checksum files
# (github.com/tensorflow/datasets, tensorflow_datasets/url_checksums/mnist.txt,
# fashion_mnist.txt and cifar10.txt). They are copied from there, not recomputed here: this
# machine has no network access. Mirrors: MNIST's in torchvision's order of reliability
# (torchvision/datasets/mnist.py lists yann.lecun.com and ossci-datasets; yann.lecun.com often
# answers 403 now, so it comes last), Fashion-MNIST's own S3 site, CIFAR-10's author's page.

_MNIST_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)


def _files(mirrors: tuple[str, ...], table: tuple[tuple[str, int, str], ...]):
    return tuple(
        RemoteFile(name, size, sha, tuple(m + name for m in mirrors)) for name, size, sha in table
    )


REMOTE: dict[str, RemoteSet] = {
    "mnist": RemoteSet(
        _files(
            _MNIST_MIRRORS,
            (
                (
                    "train-images-idx3-ubyte.gz",
                    9912422,
                    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                ),
                (
                    "train-labels-idx1-ubyte.gz",
                    28881,
                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                ),
                (
                    "t10k-images-idx3-ubyte.gz",
                    1648877,
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                ),
                (
                    "t10k-labels-idx1-ubyte.gz",
                    4542,
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                ),
            ),
        ),
        _parse_mnist_like,
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": RemoteSet(
        _files(
            _FASHION_MIRRORS,
            (
                (
                    "train-images-idx3-ubyte.gz",
                    26421880,
                    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                ),
                (
                    "train-labels-idx1-ubyte.gz",
                    29515,
                    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                ),
                (
                    "t10k-images-idx3-ubyte.gz",
                    4422102,
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                ),
                (
                    "t10k-labels-idx1-ubyte.gz",
                    5148,
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                ),
            ),
        ),
        _parse_mnist_like,
        "https://github.com/zalandoresearch/fashion-mnist",
    ),
    "cifar10": RemoteSet(
        _files(
            ("https://www.cs.toronto.edu/~kriz/",),
            (
                (
                    "cifar-10-binary.tar.gz",
                    170052171,
                    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
                ),
            ),
        ),
        _parse_cifar10,
        "https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
}


# --- downloading ---------------------------------------------------------------------------------


class _Progress:
    """A progress bar on `out`: redrawn in place (at most 10 times a second) on a terminal; on
    anything else one line when the download starts and one when it ends."""

    def __init__(self, name: str, total: int, done: int, out: TextIO):
        self.name, self.total, self.done, self.out = name, total, done, out
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self.last >= 0.1:
            self.last = now
            self._draw()

    def _draw(self) -> None:
        frac = min(self.done / self.total, 1.0) if self.total else 1.0
        bar = "#" * int(frac * 30)
        self.out.write(
            f"\r  {self.name} [{bar:<30}] {frac:4.0%} "
            f"{self.done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB"
        )
        self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self._draw()
            self.out.write("\n")
        else:
            self.out.write(f"  {self.name}: {self.done:,} bytes\n")
        self.out.flush()


def _get(url: str, part: Path, f: RemoteFile, out: TextIO) -> None:
    """Download `url` into `part`, resuming after the bytes it already holds (Range)."""
    have = part.stat().st_size if part.exists() else 0
    if have >= f.size:  # complete (or too long): the check decides, or start again
        if have == f.size:
            return
        part.unlink()
        have = 0
    headers = {"User-Agent": "netc", **({"Range": f"bytes={have}-"} if have else {})}
    with urllib.request.urlopen(
        urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S
    ) as r:
        if have and (
            r.status != 206 or not r.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        ):
            have = 0  # the server sent the whole file: start over
        out.write(
            f"{'resuming' if have else 'downloading'} {url}{f' at byte {have:,}' if have else ''}\n"
        )
        progress = _Progress(f.name, f.size, have, out)
        with open(part, "ab" if have else "wb") as dst:
            while chunk := r.read(_CHUNK):
                if progress.done + len(chunk) > f.size:
                    raise OSError(f"the server sent more than the published {f.size:,} bytes")
                dst.write(chunk)
                progress.add(len(chunk))
        progress.finish()


def _problem(path: Path, f: RemoteFile) -> str | None:
    """Why `path` is not the published file (None: its size and sha256 match)."""
    size = path.stat().st_size
    if size != f.size:
        return f"{size:,} bytes where {f.size:,} were published"
    h = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(1 << 20):
            h.update(chunk)
    if h.hexdigest() != f.sha256:
        return f"sha256 {h.hexdigest()} where {f.sha256} was published"
    return None


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return str(e) or type(e).__name__


def fetch(f: RemoteFile, folder: Path, set_name: str, out: TextIO) -> Path:
    """`folder/NAME`, downloaded and checked if it is not there yet. A file already there is
    checked too; DownloadError when it fails the check or no mirror gives the file."""
    final = folder / f.name
    if final.exists():
        problem = _problem(final, f)
        if problem:
            raise DownloadError(f"{final}: {problem}; delete it and netc downloads it again")
        return final
    part = folder / f"{f.name}.part"
    failures = []
    for url in f.urls:
        try:
            _get(url, part, f, out)
        except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
            failures.append(f"{url}: {_reason(e)}")
            continue
        problem = _problem(part, f)
        if problem is None:
            os.replace(part, final)
            return final
        part.unlink()
        failures.append(f"{url}: {problem}; the download was refused and removed")
    raise DownloadError(
        f"netc:{set_name}: could not download {f.name} ({f.size:,} bytes): "
        + "; ".join(failures)
        + f". Without network access, download it elsewhere and put it at {final} (sha256 "
        f"{f.sha256}), or set NETC_DATA_DIR to a folder holding {set_name}/{f.name}"
    )


def parsed_file(
    name: str, root: str | Path | None = None, catalogue: Mapping[str, RemoteSet] | None = None
) -> Path:
    """Where the parsed arrays of set `name` are kept: named after its files' digests."""
    remote = (REMOTE if catalogue is None else catalogue)[name]
    key = hashlib.sha256(f"{_PARSE_VERSION}:{[f.sha256 for f in remote.files]}".encode())
    return (
        Path(root if root is not None else data_dir()) / name / f"{name}-{key.hexdigest()[:12]}.npz"
    )


def _read_npz(path: Path, keys: tuple[str, ...] | None) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in (z.files if keys is None else keys)}
    except Exception:  # noqa: BLE001 - a damaged cache is parsed again
        return None


def load_remote(
    name: str,
    *,
    root: str | Path | None = None,
    catalogue: Mapping[str, RemoteSet] | None = None,
    keys: tuple[str, ...] | None = None,
    out: TextIO | None = None,
) -> dict[str, np.ndarray]:
    """The arrays of downloaded set `name` (downloading and parsing it on first use): those
    named `keys`, or every split's. `root`: the data folder (default :func:`data_dir`);
    `catalogue`: the sets (default REMOTE); `out`: where progress goes (default stderr)."""
    from filelock import FileLock

    remote = (REMOTE if catalogue is None else catalogue)[name]
    npz = parsed_file(name, root, catalogue)
    folder = npz.parent
    arrays = _read_npz(npz, keys) if npz.exists() else None
    if arrays is not None:
        return arrays
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"netc:{name}: cannot create the data folder {folder}: "
            f"{e.strerror or e}; set NETC_DATA_DIR to a writable folder"
        ) from None
    with FileLock(str(folder / ".lock")):  # one download at a time per set
        arrays = _read_npz(npz, None) if npz.exists() else None
        if arrays is None:
            err = sys.stderr if out is None else out
            paths = {f.name: fetch(f, folder, name, err) for f in remote.files}
            arrays = remote.parse(paths)
            _save(npz, arrays)
    return arrays if keys is None else {k: arrays[k] for k in keys}


def _save(npz: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the parsed arrays atomically (a temporary file renamed)."""
    tmp = npz.with_name(f".{npz.name}.tmp")
    try:
        with open(tmp, "wb") as dst:
            np.savez(dst, **arrays)
        os.replace(tmp, npz)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{npz}: cannot be written: {e.strerror or e}") from None
