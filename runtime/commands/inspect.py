"""`netc inspect ...`: pictures of what a trained network computes (filters, feature maps,
top-activating patches, occlusion sensitivity, saliency, a t-SNE embedding), each written as one
PNG. The computing is runtime/inspect.py's; this module picks the samples, draws and writes."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import numpy as np

from netc.compiler.layer import fmt_shape
from netc.runtime import inspect as ins
from netc.runtime.errors import EXIT_OK, RunError


def _write(image, output: str, out: TextIO, what: str) -> int:
    from netc.runtime.checkpoint import write_bytes_atomic

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(output, ins.png_bytes(image))
    out.write(f"wrote {output} ({image.width}×{image.height}): {what}\n")
    return EXIT_OK


def check_output(output: str) -> None:
    """-o names a .png file (called before any work is done)."""
    if Path(output).suffix.lower() != ".png":
        raise RunError(f"-o {output}: netc inspect writes PNG images; name the file *.png")
    if Path(output).is_dir():
        raise RunError(f"-o {output}: is a directory")


def _open(spec: str, weights: str, source: str | None, output: str, err: TextIO) -> ins.Inspected:
    """Every command's start: check -o before any work, then load the net."""
    check_output(output)
    return ins.open_net(spec, weights, source, err)


def _one(net: ins.Inspected, index: int) -> tuple[np.ndarray, int | None]:
    s = net.samples(indices=[index])
    return s.x[0], None if s.labels is None else int(s.labels[0])


def _sample_and_class(net: ins.Inspected, index: int, given: int | None) -> tuple[np.ndarray, int]:
    """Sample `index` and the class to explain: --class, else the sample's label, else the class
    the net predicts."""
    img, label = _one(net, index)
    probs = net.probabilities(img[None])[0]
    k = given if given is not None else label if label is not None else int(probs.argmax())
    if not 0 <= k < len(probs):
        raise RunError(f"--class {k}: the scores blob '{net.scores}' has {len(probs)} classes")
    return img, k


def filters(
    spec: str, weights: str, layer: str | None, output: str, out: TextIO, err: TextIO
) -> int:
    net = _open(spec, weights, None, output, err)
    name, w = ins.first_filters(net, layer)
    tiles, cols = ins.filter_tiles(w)
    g = ins.grid(tiles, cols=cols)
    return _write(
        g.image,
        output,
        out,
        f"{len(tiles)} tiles of layer '{name}' "
        f"({w.shape[0]} filters × {w.shape[1]} input channels, {w.shape[2]}×{w.shape[3]})",
    )


def features(
    spec: str,
    weights: str,
    blob: str,
    source: str | None,
    index: int,
    output: str,
    out: TextIO,
    err: TextIO,
) -> int:
    net = _open(spec, weights, source, output, err)
    shape = net.check_blob(blob)
    if len(shape) != 4:
        raise RunError(
            f"--blob: '{blob}' is {fmt_shape(shape)}, not feature maps N×C×H×W "
            "(`netc inspect embedding` looks at vector features)"
        )
    img, _ = _one(net, index)
    maps = net.forward(img[None], [blob])[blob][0]
    g = ins.grid(ins.feature_tiles(maps), min_side=64)
    return _write(
        g.image,
        output,
        out,
        f"{len(maps)} channels of '{blob}' "
        f"({maps.shape[1]}×{maps.shape[2]}) for sample {index} of {net.source}",
    )


def top_patches(
    spec: str,
    weights: str,
    blob: str,
    channel: int,
    source: str | None,
    k: int,
    limit: int | None,
    output: str,
    out: TextIO,
    err: TextIO,
) -> int:
    net = _open(spec, weights, source, output, err)
    s = net.samples(limit=limit)
    tp = ins.top_patches(net, s.x, blob, channel, k)
    lo, hi = np.nanmin(s.x), np.nanmax(s.x)  # one scale for every patch: the data's
    tiles = np.stack([ins.as_rgb((p - lo) / ((hi - lo) or 1)) for p in tp.patches])
    g = ins.grid(tiles, min_side=64)
    size = "×".join(str(b - a) for a, b in zip(tp.boxes[0][:2], tp.boxes[0][2:]))
    for i, act, box in zip(s.indices[tp.images], tp.activations, tp.boxes):
        out.write(
            f"sample {i}: {act:.4g} at input rows {box[0]}..{box[2] - 1}, "
            f"columns {box[1]}..{box[3] - 1}\n"
        )
    return _write(
        g.image,
        output,
        out,
        f"the {len(tiles)} {size} input patches of {len(s.x):,} "
        f"samples that most activate channel {channel} of '{blob}'",
    )


def occlusion(
    spec: str,
    weights: str,
    source: str | None,
    index: int,
    patch: int,
    stride: int,
    klass: int | None,
    output: str,
    out: TextIO,
    err: TextIO,
) -> int:
    net = _open(spec, weights, source, output, err)
    img, k = _sample_and_class(net, index, klass)
    occ = ins.occlusion(net, img, k, patch, stride)
    worst = np.unravel_index(occ.drop.argmax(), occ.drop.shape)
    title = (
        f"class {k}: p = {occ.prob:.3f}; greying {patch}x{patch} at row "
        f"{occ.rows[worst[0]]}, column {occ.cols[worst[1]]} drops it by {occ.drop.max():.3f}"
    )
    panel = ins.heat_panel(img, occ.heat, ins.DIVERGING, True, title)
    out.write(title + "\n")
    return _write(panel, output, out, f"occlusion sensitivity of sample {index} of {net.source}")


def saliency(
    spec: str,
    weights: str,
    source: str | None,
    index: int,
    klass: int | None,
    output: str,
    out: TextIO,
    err: TextIO,
) -> int:
    net = _open(spec, weights, source, output, err)
    img, k = _sample_and_class(net, index, klass)
    sal = ins.saliency(net, img[None], np.array([k]))[0]
    title = f"|d score[{k}] / d input| ('{net.scores}'), max over channels"
    panel = ins.heat_panel(img, sal, ins.VIRIDIS, False, title)
    return _write(panel, output, out, f"saliency of sample {index} of {net.source} for class {k}")


def embedding(
    spec: str,
    weights: str,
    blob: str,
    source: str | None,
    limit: int,
    output: str,
    out: TextIO,
    err: TextIO,
) -> int:
    net = _open(spec, weights, source, output, err)
    net.check_blob(blob)
    s = net.samples(limit=limit)
    feats = net.forward(s.x, [blob])[blob]
    points = ins.tsne(feats)
    title = f"t-SNE of '{blob}' ({feats[0].size:,} features), {len(points):,} samples"
    classes = s.labels is not None and s.labels.dtype.kind in "iu"
    if classes:
        acc = ins.knn_accuracy(points, s.labels.astype(np.int64))
        title += f"; 5-NN accuracy in 2-D {acc:.3f}"
    out.write(title + "\n")
    return _write(
        ins.scatter(points, s.labels if classes else None, title), output, out, "the embedding"
    )
