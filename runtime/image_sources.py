"""Image and table sources, read whole into a :class:`netc.runtime.data.Dataset`.

* Caffe's ImageData list file: one ``PATH LABEL`` line per image (the label is the last
  whitespace-separated field, an integer; PATH may hold spaces). PATH is ``root_folder + PATH``
  as Caffe concatenates them; a relative one is looked up in the list file's folder, then in the
  current directory.
* ``folder:PATH``: one subfolder per class, classes numbered in the sorted order of their names,
  each holding image files (searched recursively, in sorted order; hidden files skipped).
* ``split: [a, b]`` keeps the fraction range [a, b) of each class's images, taken in a fixed
  permutation per class (seeded by the class, not by the solver), so ``[0, 0.8]`` and
  ``[0.8, 1]`` are disjoint, hold every image between them, and keep the classes' proportions.
  The images kept stay in their listed order.
* Images are decoded with Pillow (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM/PGM), converted to RGB
  (or 8-bit gray with ``is_color: false``) and, when new_height and new_width are set, resized
  to that size (bilinear). Without a size every image must have the first one's size. Data are
  uint8 N×C×H×W, labels int32 N.
* ``csv:PATH``: a UTF-8 table whose first row names the columns, one of them ``label``; every
  other column is a numeric feature (data float32 N×D); labels are int32 when every value is an
  integer, else float32 (regression targets).

numpy and Pillow only: this module does not import JAX.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

from netc.compiler.layers.data import split_bounds
from netc.compiler.layers.image_data import CSV_LABEL, FOLDER_PREFIX, csv_header, csv_path
from netc.files import FileRefused, open_regular, read_regular, unreadable
from netc.runtime.data import DataError, Dataset, _readonly, _resolve

__all__ = [
    "IMAGE_SUFFIXES",
    "folder_entries",
    "list_entries",
    "load_csv",
    "load_images",
    "read_images",
    "split_indices",
]

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_SPLIT_SEED = 0x73706C74  # "splt": the split's permutations, independent of the solver's seed
_MAX_TABLE_BYTES = 1 << 30
_LINE = re.compile(r"^(.*\S)\s+(-?\d+)$")


def load_images(
    source: str,
    *,
    base_dir: str | Path | None = None,
    new_height: int = 0,
    new_width: int = 0,
    is_color: bool = True,
    root_folder: str = "",
    split: tuple[float, float] = (0.0, 1.0),
) -> Dataset:
    """The images of a list file or ``folder:PATH`` source (see the module docstring)."""
    if source.startswith(FOLDER_PREFIX):
        paths, labels, _ = folder_entries(source, base_dir)
    else:
        paths, labels = list_entries(source, base_dir, root_folder)
    keep = split_indices(labels, tuple(split))
    if keep.size == 0:
        raise DataError(
            f"{source}: split [{split[0]:g}, {split[1]:g}] holds no image of the {len(paths):,}"
        )
    data = read_images([paths[i] for i in keep], new_height, new_width, is_color)
    return Dataset(source, _readonly(data), _readonly(labels[keep]))


def list_entries(source: str, base_dir, root_folder: str = "") -> tuple[list[Path], np.ndarray]:
    """(image paths, int32 labels) of a Caffe ImageData list file."""
    listing = _resolve(source, base_dir)
    text = _read_text(listing, source)
    paths, labels = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if m is None:
            raise DataError(
                f"{listing}:{lineno}: expected `PATH LABEL` (an integer label last), "
                f"got {line.strip()[:80]!r}"
            )
        paths.append(_image_path(root_folder + m.group(1), listing, lineno))
        labels.append(int(m.group(2)))
    if not paths:
        raise DataError(f"{listing}: the list holds no `PATH LABEL` line")
    return paths, np.asarray(labels, dtype=np.int32)


def _read_text(path: Path, name: str) -> str:
    try:
        return read_regular(path, _MAX_TABLE_BYTES).decode("utf-8-sig")
    except (FileRefused, OSError) as e:
        raise DataError(unreadable(name, e)) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: not valid UTF-8 at byte {e.start:,} ({e.reason})") from None


def _image_path(name: str, listing: Path, lineno: int) -> Path:
    path = Path(name).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [listing.parent / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c.parent) for c in candidates)
    raise DataError(f"{listing}:{lineno}: no such image file {name!r} (looked in: {looked})")


def folder_entries(source: str, base_dir) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths, int32 labels, class names) of a ``folder:PATH`` source."""
    root = _resolve(source[len(FOLDER_PREFIX) :], base_dir)
    if not root.is_dir():
        raise DataError(f"{source}: {root} is not a folder (one subfolder per class)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(
            f"{source}: {root} has no subfolder; put each class's images in a "
            "subfolder named after the class"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for c, name in enumerate(classes):
        files = sorted(
            p
            for p in (root / name).rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not files:
            kinds = ", ".join(sorted(IMAGE_SUFFIXES))
            raise DataError(f"{source}: class folder '{name}' holds no image file ({kinds})")
        paths += files
        labels += [c] * len(files)
    return paths, np.asarray(labels, dtype=np.int32), classes


def split_indices(labels: np.ndarray, split: tuple[float, float]) -> np.ndarray:
    """Sorted indices of the samples a split keeps: the fraction range [a, b) of each class's
    samples in a fixed permutation per class."""
    if tuple(split) == (0.0, 1.0):
        return np.arange(len(labels))
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng = np.random.default_rng([_SPLIT_SEED, int(c) % 2**32])
        lo, hi = split_bounds((float(split[0]), float(split[1])), len(idx))
        keep.append(idx[rng.permutation(len(idx))][lo:hi])
    return np.sort(np.concatenate(keep))


def read_images(paths: list[Path], new_height: int, new_width: int, is_color: bool) -> np.ndarray:
    """uint8 N×C×H×W: each image decoded, converted (RGB or L) and resized when a size is set."""
    out: np.ndarray | None = None
    for i, path in enumerate(paths):
        a = _decode(path, new_height, new_width, is_color)
        if out is None:
            out = np.empty((len(paths), 3 if is_color else 1, *a.shape[:2]), dtype=np.uint8)
        elif a.shape[:2] != out.shape[2:]:
            h, w = out.shape[2:]
            raise DataError(
                f"{path}: the image is {a.shape[0]}×{a.shape[1]}, but {paths[0]} is "
                f"{h}×{w}; set new_height and new_width to resize every image"
            )
        out[i] = a.transpose(2, 0, 1) if a.ndim == 3 else a[None]
    assert out is not None
    return out


def _decode(path: Path, new_height: int, new_width: int, is_color: bool) -> np.ndarray:
    from PIL import Image

    try:
        with open_regular(path) as f, Image.open(f) as im:
            im = im.convert("RGB" if is_color else "L")
            if new_height and new_width:
                im = im.resize((new_width, new_height), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except FileRefused as e:
        raise DataError(f"{path}: cannot be read: it {e.message}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError
        raise DataError(f"{path}: cannot be read as an image: {e}") from None


def load_csv(source: str, *, base_dir: str | Path | None = None) -> Dataset:
    """A ``csv:PATH`` table: float32 N×D features and its ``label`` column."""
    path = csv_path(source, None if base_dir is None else str(base_dir))
    if path is None:
        raise DataError(f"{source}: no such file")
    try:
        header = csv_header(path, source)
    except ValueError as e:
        raise DataError(str(e)) from None
    reader = csv.reader(io.StringIO(_read_text(Path(path), source)))
    next(reader)
    rows = []
    for row in reader:
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(
                f"{path}:{reader.line_num}: {len(row)} fields, but the header names "
                f"{len(header)} columns"
            )
        rows.append([_number(cell, name, path, reader.line_num) for cell, name in zip(row, header)])
    if not rows:
        raise DataError(f"{path}: the table has no row after its header")
    table = np.asarray(rows, dtype=np.float64)
    at = header.index(CSV_LABEL)
    label = table[:, at]
    whole = bool(np.all(np.isfinite(label)) and np.all(label == np.round(label)))
    data = np.delete(table, at, axis=1).astype(np.float32)
    return Dataset(
        source, _readonly(data), _readonly(label.astype(np.int32 if whole else np.float32))
    )


def _number(cell: str, column: str, path: str, line: int) -> float:
    try:
        return float(cell)
    except ValueError:
        raise DataError(
            f"{path}:{line}: column {column!r}: {cell.strip()[:40]!r} is not a number"
        ) from None
