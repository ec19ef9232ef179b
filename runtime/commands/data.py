"""`netc data inspect SOURCE`: what a data source holds (counts, shapes, dtypes, value range,
class balance) and, with `-o grid.png`, a grid of its first samples as a PNG image.

SOURCE is anything a data layer reads: `netc:NAME/SPLIT`, an .npz file, `csv:PATH`,
`folder:PATH`, or (any other file name) an ImageData list file of `path label` lines."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TextIO

import numpy as np

from netc.runtime.data import DataError, Dataset, load_source
from netc.runtime.errors import EXIT_OK

__all__ = ["run", "load", "summary", "grid"]

_PAD = 1  # pixels between (and around) the grid's tiles


def load(
    source: str,
    *,
    new_height: int = 0,
    new_width: int = 0,
    gray: bool = False,
    split: tuple[float, float] = (0.0, 1.0),
) -> Dataset:
    """The data set of `source`; the size, colour and split apply to image sources."""
    from netc.compiler.layers.data import BUILTIN_PREFIX, CSV_PREFIX, is_text_source

    if is_text_source(source):
        raise DataError(f"{source}: a text source; netc data inspect reads image and table sources")
    image = not source.startswith((BUILTIN_PREFIX, CSV_PREFIX)) and not source.endswith(".npz")
    options = (
        {"new_height": new_height, "new_width": new_width, "is_color": not gray, "split": split}
        if image
        else None
    )
    if not image and (new_height or new_width or gray or split != (0.0, 1.0)):
        raise DataError(
            f"{source}: --size, --gray and --split apply to image sources (an "
            "ImageData list file or folder:PATH)"
        )
    return load_source(source, need_label=False, options=options)


def summary(ds: Dataset, names: list[str] | None = None) -> list[str]:
    """The lines `netc data inspect` prints about `ds` (`names`: the classes' names, if known)."""
    lines = [f"{ds.name}: {len(ds):,} samples"]
    for key, a in ds.columns():
        per = "×".join(str(d) for d in a.shape[1:]) or "one"
        lo, hi = (a.min(), a.max()) if a.size else (0, 0)
        lines.append(
            f"  {key}: {a.dtype}, {per} per sample, values {lo:g} .. {hi:g}"
            + (f", mean {float(a.mean()):.4g}" if a.size else "")
        )
    label = ds.label if ds.label is not None else dict(ds.columns()).get("label")
    if label is not None and label.dtype.kind in "iu" and label.size:
        values, counts = np.unique(label, return_counts=True)
        unit = "samples" if label.ndim == 1 else "elements"
        lines.append(f"  classes: {len(values)} ({unit} per class)")
        for v, c in zip(values.tolist(), counts.tolist()):
            name = f"  {names[v]}" if names and 0 <= v < len(names) else ""
            lines.append(f"    {v:>6}  {c:>10,}  {100 * c / label.size:5.1f}%{name}")
    return lines


def grid(ds: Dataset, count: int) -> np.ndarray:
    """The first `count` samples tiled 8 to a row as an H×W (gray) or H×W×3 (RGB) uint8 image,
    1-pixel black borders; values shown as stored when uint8, else scaled from the shown
    samples' min..max to 0..255. Images are C×H×W samples: 1 channel gray, 3 RGB, others
    their first channel."""
    x = ds.data
    if x.ndim != 4:
        raise DataError(
            f"{ds.name}: samples of shape {tuple(x.shape[1:])} are not images "
            "C×H×W: no grid to draw"
        )
    x = x[:count]
    x = x if x.shape[1] in (1, 3) else x[:, :1]
    if x.dtype != np.uint8:
        lo, hi = float(x.min()), float(x.max())
        x = ((x.astype(np.float64) - lo) * (255.0 / (hi - lo if hi > lo else 1.0))).round()
        x = x.astype(np.uint8)
    n, c, h, w = x.shape
    cols = min(8, n)
    rows = math.ceil(n / cols)
    out = np.zeros((c, rows * (h + _PAD) + _PAD, cols * (w + _PAD) + _PAD), np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = _PAD + r * (h + _PAD), _PAD + q * (w + _PAD)
        out[:, top : top + h, left : left + w] = x[i]
    return out[0] if c == 1 else out.transpose(1, 2, 0)


def run(
    source: str,
    output: str | None,
    count: int,
    out: TextIO,
    *,
    size: str | None = None,
    gray: bool = False,
    split: str | None = None,
) -> int:
    """Print the summary of `source`; with `output`, write the grid of samples there (PNG)."""
    h, w = _size(size)
    ds = load(source, new_height=h, new_width=w, gray=gray, split=_split(split))
    out.write("\n".join(summary(ds, _class_names(source))) + "\n")
    if output is not None:
        from PIL import Image

        picture = grid(ds, count)
        try:
            Image.fromarray(picture).save(output, format="PNG")
        except OSError as e:
            raise DataError(f"{output}: cannot be written: {e.strerror or e}") from None
        shown = min(count, len(ds))
        out.write(
            f"grid: {Path(output)} ({shown} samples, {picture.shape[1]}×{picture.shape[0]} "
            "pixels)\n"
        )
        if ds.label is not None and ds.label.ndim == 1:
            labels = ds.label[:shown].tolist()
            for r in range(0, shown, 8):
                out.write(f"  labels row {r // 8 + 1}: {' '.join(map(str, labels[r : r + 8]))}\n")
    return EXIT_OK


def _class_names(source: str) -> list[str] | None:
    """The class folders' names of a folder: source (None for other sources)."""
    from netc.compiler.layers.image_data import FOLDER_PREFIX
    from netc.runtime.image_sources import folder_entries

    return folder_entries(source, None)[2] if source.startswith(FOLDER_PREFIX) else None


def _size(size: str | None) -> tuple[int, int]:
    if size is None:
        return 0, 0
    h, _, w = size.lower().partition("x")
    if not (h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise DataError(f"--size {size!r}: expected HEIGHTxWIDTH, e.g. 32x32")
    return int(h), int(w)


def _split(split: str | None) -> tuple[float, float]:
    if split is None:
        return 0.0, 1.0
    from netc.compiler.layers.data import split_problem

    try:
        a, b = (float(v) for v in split.split(","))
    except ValueError:
        raise DataError(f"--split {split!r}: expected two fractions A,B, e.g. 0,0.8") from None
    problem = split_problem((a, b))
    if problem:
        raise DataError(f"--split: {problem}")
    return a, b
