"""Looking inside a trained network: its first filters, the feature maps of any blob, the input
patches that most activate a channel (Zeiler & Fergus 2014), occlusion sensitivity, gradient
saliency (Simonyan et al. 2014) and a 2-D t-SNE of a layer's features.

    net = open_net("models/lenet.yaml", "runs/lenet-.../", source="netc:digits/test")
    s = net.samples(indices=[0, 1])              # N×C×H×W as the TEST net sees it, and labels
    net.forward(s.x, ["conv2"])["conv2"]          # any blob: the lowering computes every one
    occlusion(net, s.x[0], s.labels[0], patch=4, stride=2).heat

Every number comes from netc's compiled TEST forward (`Model.apply(outputs=[blob])`, jitted once
per set of blobs and run in fixed-size chunks) or its gradient (`jax.grad` through it); nothing
here re-implements a layer. Inputs are transformed as the TEST Data layer transforms them (its
scale, mean and crop). The pictures (PNG through Pillow) are drawn in the second half.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from netc.compiler.layer import fmt_shape
from netc.compiler.xla import jit
from netc.runtime.errors import RunError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CHUNK = 128  # samples per forward call: one compiled program for any data set size


@dataclass
class Samples:
    x: np.ndarray  # N×C×H×W float32, transformed as the TEST net sees it
    labels: np.ndarray | None  # N class indices, when the source has labels
    indices: np.ndarray  # positions in the source


@dataclass
class Inspected:
    """A trained TEST net ready to look into: `input` the image blob, `scores` the class scores
    (what the loss / accuracy read as predictions), `feed` the TEST Data layer's feed (its
    source and transform), None for a net fed by an Input layer."""

    model: Any  # netc.runtime.api.Model with weights
    input: str
    scores: str | None
    feed: Any
    source: str | None
    _fns: dict = field(default_factory=dict)

    @property
    def plan(self):
        return self.model.plan

    def check_blob(self, blob: str, what: str = "--blob") -> tuple:
        from netc.spec.errors import did_you_mean

        if blob not in self.plan.blobs:
            raise RunError(
                f"{what}: the TEST net has no blob '{blob}'"
                f"{did_you_mean(blob, list(self.plan.blobs))}"
            )
        return tuple(self.plan.blobs[blob])

    def forward(self, x: np.ndarray, blobs: Sequence[str]) -> dict[str, np.ndarray]:
        """`blobs` of the TEST forward on x (N×C×H×W), CHUNK samples per call."""

        # a program already compiled for more blobs serves fewer (several looks, one compile)
        key = next(
            (k for k in self._fns if isinstance(k, tuple) and set(blobs) <= set(k)), tuple(blobs)
        )
        if key not in self._fns:
            m, inp = self.model, self.input
            self._fns[key] = jit(lambda p, s, x: m.apply(p, s, {inp: x}, outputs=list(key))[0])
        outs = [self._fns[key](self.model.params, self.model.state, part) for part in _chunks(x)]
        return {b: np.concatenate([np.asarray(o[b]) for o in outs])[: len(x)] for b in blobs}

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """N×classes: the scores blob as a distribution (a softmax of it unless it is one)."""
        s = self.forward(x, [self.need_scores()])[self.scores].reshape(len(x), -1)
        if s.min() >= 0 and np.allclose(s.sum(axis=1), 1, atol=1e-4):
            return s
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def need_scores(self) -> str:
        if self.scores is None:
            raise RunError(
                "cannot tell which blob holds the class scores: the TEST net has no "
                "loss or accuracy reading a label, and no single deploy output"
            )
        return self.scores

    def samples(self, indices: Sequence[int] | None = None, limit: int | None = None) -> Samples:
        """Samples of the source (`indices`, else the first `limit`, else all), transformed."""
        if self.source is not None and Path(self.source).suffix.lower() in IMAGE_SUFFIXES:
            return self._image_sample(indices)
        ds = self.feed.dataset if self.feed is not None else _load_plain(self.source)
        n = len(ds)
        if indices is None:
            idx = np.arange(min(n, limit or n))
        else:
            idx = np.asarray(indices, dtype=np.int64)
            bad = [int(i) for i in idx if not 0 <= i < n]
            if bad:
                raise RunError(f"--index {bad[0]}: {ds.name} has {n:,} samples (0..{n - 1})")
        labels = None if ds.label is None else np.asarray(ds.label)[idx].reshape(len(idx), -1)[:, 0]
        return Samples(self._transform(ds.name, ds.data[idx]), labels, idx)

    def _transform(self, name: str, data: np.ndarray) -> np.ndarray:
        from netc.runtime.data import BatchStream, Dataset

        if data.ndim != 4:
            raise RunError(
                f"{name}: samples of shape {fmt_shape(data.shape[1:])}; netc inspect "
                "looks at images (N×C×H×W)"
            )
        if self.feed is None:
            x = data.astype(np.float32)
        else:
            with BatchStream(
                Dataset(name, data, None),
                batch_size=len(data),
                prefetch=0,
                transform=self.feed.transform,
                train=False,
                seed=0,
                shuffle=False,
            ) as stream:
                x = next(stream)["data"]
        want = tuple(self.plan.blobs[self.input])[1:]
        if tuple(x.shape[1:]) != want:
            raise RunError(
                f"{name}: samples become {fmt_shape(x.shape[1:])}, but the net's "
                f"'{self.input}' takes {fmt_shape(want)} per sample"
            )
        return x

    def _image_sample(self, indices) -> Samples:
        if indices is not None and list(indices) != [0]:
            raise RunError(f"--index: {self.source} is one image; use --index 0")
        shape = (
            self.feed.dataset.sample_shape
            if self.feed is not None
            else tuple(self.plan.blobs[self.input])[1:]
        )
        data = read_image(self.source, shape)
        return Samples(self._transform(self.source, data[None]), None, np.zeros(1, np.int64))

    def receptive_field(self, blob: str) -> list[tuple[int, int, int]]:
        """Per spatial axis (size, jump, start): output position i of `blob` sees input
        positions [start + i·jump, start + i·jump + size). Size and jump are the plan's; the
        start (where padding shifts the windows) is measured: redrawing an input row (column) of
        random images moves the middle position exactly when the row is in its window."""
        rf = {t: pl.rf for pl in self.plan.layers for t in pl.tops}.get(blob)
        shape = self.check_blob(blob)
        if len(shape) != 4 or not rf:
            raise RunError(
                f"blob '{blob}' ({fmt_shape(shape)}) has no receptive field the plan "
                "tracks: choose a convolution or pooling blob N×C×H×W"
            )
        extent = self.plan.blobs[self.input][2:]
        return [
            _window_start(hit, r, j, shape[2 + a] // 2, extent[a])
            for a, (hit, (r, j)) in enumerate(zip(self._reach(blob, shape), rf))
        ]

    def _reach(self, blob: str, shape: tuple) -> list[np.ndarray]:
        """Per spatial axis, the input rows (columns) whose change moves `blob` at its middle
        position: random images, then each with one row (column) redrawn, all through the
        forward (the program the looks themselves run)."""
        _, c, h, w = self.plan.blobs[self.input]
        rng = np.random.default_rng(0)
        base = rng.normal(size=(4, c, h, w)).astype(np.float32)
        probes = np.repeat(base[None], 1 + h + w, axis=0)  # (1 + h + w)×4×C×H×W
        for i in range(h):
            probes[1 + i, :, :, i] = rng.normal(scale=4, size=(4, c, w))
        for j in range(w):
            probes[1 + h + j, :, :, :, j] = rng.normal(scale=4, size=(4, c, h))
        out = self.forward(probes.reshape(-1, c, h, w), [blob])[blob]
        mid = out[:, :, shape[2] // 2, shape[3] // 2].reshape(1 + h + w, -1)
        moved = np.abs(mid[1:] - mid[0]).max(axis=1) > 1e-4 * (np.abs(mid[0]).max() + 1e-6)
        return [np.nonzero(moved[:h])[0], np.nonzero(moved[h:])[0]]


def _window_start(
    hit: np.ndarray, size: int, jump: int, mid: int, extent: int
) -> tuple[int, int, int]:
    """(size, jump, start) from the input positions `hit` that output position `mid` reached on
    an input axis of `extent` positions: its window, clipped by the image on one side at most
    unless it is wider than the image (then centred, as symmetric padding places it)."""
    if len(hit) == 0:
        raise RunError("cannot locate the receptive field: the blob does not depend on the input")
    lo, hi = int(hit.min()), int(hit.max())
    seen = hi - lo + 1
    if seen > size:
        raise RunError(
            f"the input gradient reaches {seen} positions, more than the plan's "
            f"receptive field ({size})"
        )
    if seen == size or lo > 0:
        origin = lo
    elif hi < extent - 1:
        origin = hi - size + 1
    else:
        origin = lo - (size - seen) // 2
    return size, jump, origin - mid * jump


def _chunks(x: np.ndarray):
    n = min(len(x), CHUNK)
    for i in range(0, len(x), n):
        part = x[i : i + n]
        if len(part) < n:  # the same shape for every call: one compiled program
            part = np.concatenate([part, np.zeros((n - len(part), *x.shape[1:]), x.dtype)])
        yield part


def _load_plain(source: str | None):
    from netc.runtime.data import DataError, load_source

    if source is None:
        raise RunError("the net has no Data layer: give a source (an .npz or an image file)")
    try:
        return load_source(source, need_label=False)
    except DataError as e:
        raise RunError(str(e)) from None


def read_image(path: str, shape: tuple) -> np.ndarray:
    """An image file as C×H×W uint8, converted to the net's channels (1: grey, 3: RGB) and
    resized to its H×W."""
    from PIL import Image, UnidentifiedImageError

    from netc.files import FileRefused, open_regular

    c, h, w = shape
    if c not in (1, 3):
        raise RunError(f"{path}: the net takes {c} channels; an image file gives 1 or 3")
    try:
        with open_regular(path) as f, Image.open(f) as im:
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise RunError(f"{path}: no such file") from None
    except FileRefused as e:
        raise RunError(f"{path}: cannot read this file: it {e.message}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise RunError(f"{path}: not a readable image ({e})") from None
    return a[None] if c == 1 else a.transpose(2, 0, 1)


def open_net(spec: str, weights: str, source: str | None = None, err=None) -> Inspected:
    """Load `spec`'s TEST net with `weights` (a checkpoint, a run directory: its newest, or an
    .npz), its TEST Data layer reading `source` instead of its own when given (an image file
    keeps the layer's transform and is resized to its samples)."""
    from netc.runtime.api import Model
    from netc.runtime.context import RunContext, load_context, with_source
    from netc.runtime.feeds import data_feeds

    ctx = load_context(spec)
    model = Model(ctx, "TEST")
    feeds = data_feeds(model.plan, ctx.spec.spec_dir) if _reads_source(model.plan) else []
    if feeds and source is not None and Path(source).suffix.lower() not in IMAGE_SUFFIXES:
        ctx = RunContext(ctx.path, with_source(ctx.spec, source, "TEST"), ctx.solver)
        model = Model(ctx, "TEST")
        feeds = data_feeds(model.plan, ctx.spec.spec_dir)
    model.load_weights(weights, err)
    feed = feeds[0] if feeds else None
    inp = feed.tops[0] if feed is not None else _image_input(model.plan)
    return Inspected(
        model,
        inp,
        _scores_blob(model.plan, feed),
        feed,
        source if source is not None or feed is None else feed.dataset.name,
    )


def _reads_source(plan) -> bool:
    return any(
        (f := pl.unit.data_fact()) is not None and f.source is not None for pl in plan.layers
    )


def _image_input(plan) -> str:
    images = [b for b in plan.inputs if len(plan.blobs[b]) == 4]
    if len(images) != 1:
        raise RunError(
            f"netc inspect needs one image input (N×C×H×W); the TEST net has "
            f"{len(images) or 'no'} ({', '.join(images) or ', '.join(plan.inputs)})"
        )
    return images[0]


def _scores_blob(plan, feed) -> str | None:
    """What a loss or metric reads as predictions of the label; else the one deploy output."""
    from netc.runtime.export import ExportError, deploy_graph

    label = dict(zip(feed.keys, feed.tops)).get("label") if feed is not None else None
    for pl in plan.layers:
        fact = pl.unit.label_fact(pl.bottom_shapes) if label in pl.bottoms else None
        if fact is not None and pl.bottoms[fact.bottom] == label:
            return next(b for j, b in enumerate(pl.bottoms) if j != fact.bottom)
    try:
        outputs = deploy_graph(plan).outputs
    except ExportError:
        return None
    return outputs[0] if len(outputs) == 1 else None


# --- what to look at -----------------------------------------------------------------------------


def first_filters(net: Inspected, layer: str | None) -> tuple[str, np.ndarray]:
    """(layer, weight O×I×kh×kw) of `layer`, or of the first layer with 2-D kernels."""
    from netc.spec.errors import did_you_mean

    kernels = {
        pl.name: net.model.params[pl.name]["weight"]
        for pl in net.plan.layers
        if pl.name in net.model.params
        and "weight" in net.model.params[pl.name]
        and np.ndim(net.model.params[pl.name]["weight"]) == 4
    }
    if layer is None:
        if not kernels:
            raise RunError("the TEST net has no convolution with 2-D kernels (O×I×kh×kw)")
        layer = next(iter(kernels))
    elif layer not in kernels:
        names = [pl.name for pl in net.plan.layers]
        why = (
            "has no 2-D kernels (O×I×kh×kw)" if layer in names else "is not a layer of the TEST net"
        )
        raise RunError(
            f"--layer: '{layer}' {why}{did_you_mean(layer, list(kernels) or names)}"
            f" (layers with kernels: {', '.join(kernels) or 'none'})"
        )
    return layer, np.asarray(kernels[layer], dtype=np.float32)


@dataclass
class TopPatches:
    channel: int
    images: np.ndarray  # k indices into the samples, strongest first
    positions: np.ndarray  # k×2: (row, column) of the maximum in the blob
    activations: np.ndarray  # k maxima
    maxima: np.ndarray  # every sample's maximum of the channel
    boxes: np.ndarray  # k×4: (top, left, bottom, right) of each window in the input
    patches: np.ndarray  # k×C×size×size, NaN where the window lies outside the image


def top_patches(net: Inspected, x: np.ndarray, blob: str, channel: int, k: int) -> TopPatches:
    shape = net.check_blob(blob)
    if not 0 <= channel < shape[1]:
        raise RunError(
            f"--channel {channel}: blob '{blob}' has {shape[1]} channels (0..{shape[1] - 1})"
        )
    rf = net.receptive_field(blob)
    a = net.forward(x, [blob])[blob][:, channel]  # N×h×w
    flat = a.reshape(len(a), -1)
    maxima, where = flat.max(axis=1), flat.argmax(axis=1)
    order = np.argsort(-maxima, kind="stable")[:k]
    pos = np.stack(np.unravel_index(where[order], a.shape[1:]), axis=1)
    boxes = np.array([[s + p * j for p, (_, j, s) in zip(yx, rf)] for yx in pos])
    boxes = np.concatenate([boxes, boxes + [r for r, _, _ in rf]], axis=1)
    patches = np.stack([_crop(x[i], b) for i, b in zip(order, boxes)])
    return TopPatches(channel, order, pos, maxima[order], maxima, boxes, patches)


def _crop(img: np.ndarray, box) -> np.ndarray:
    """img[:, top:bottom, left:right] with NaN where the box leaves the image."""
    top, left, bottom, right = (int(v) for v in box)
    out = np.full((img.shape[0], bottom - top, right - left), np.nan, np.float32)
    h, w = img.shape[1:]
    t, l_, b, r = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
    if t < b and l_ < r:
        out[:, t - top : b - top, l_ - left : r - left] = img[:, t:b, l_:r]
    return out


@dataclass
class Occlusion:
    label: int
    prob: float  # the class's probability on the whole image
    rows: np.ndarray  # patch tops
    cols: np.ndarray  # patch lefts
    drop: np.ndarray  # len(rows)×len(cols): prob − prob with the patch greyed
    heat: np.ndarray  # H×W: the mean drop of the patches covering each pixel


def occlusion(net: Inspected, img: np.ndarray, label: int, patch: int, stride: int) -> Occlusion:
    """Slide a patch of the image's mean value (per channel) over it and measure how much the
    probability of `label` drops (Zeiler & Fergus's occlusion sensitivity)."""
    _, h, w = img.shape
    if patch > min(h, w):
        raise RunError(f"--patch {patch}: larger than the image ({h}×{w})")
    rows, cols = _positions(h, patch, stride), _positions(w, patch, stride)
    grey = img.mean(axis=(1, 2), keepdims=True)
    variants = np.repeat(img[None], len(rows) * len(cols) + 1, axis=0)
    for n, (r, c) in enumerate((r, c) for r in rows for c in cols):
        variants[n + 1, :, r : r + patch, c : c + patch] = grey
    p = net.probabilities(variants)[:, label]
    drop = (p[0] - p[1:]).reshape(len(rows), len(cols))
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            total[r : r + patch, c : c + patch] += drop[i, j]
            count[r : r + patch, c : c + patch] += 1
    return Occlusion(int(label), float(p[0]), rows, cols, drop, total / np.maximum(count, 1))


def _positions(size: int, patch: int, stride: int) -> np.ndarray:
    pos = list(range(0, size - patch + 1, stride))
    if pos[-1] != size - patch:  # the last patch reaches the edge
        pos.append(size - patch)
    return np.asarray(pos)


def saliency(net: Inspected, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """N×H×W: |∂ score of the class / ∂ input|, the maximum over channels (Simonyan et al.)."""
    import jax

    scores, m, name = net.need_scores(), net.model, net.input
    if "saliency" not in net._fns:

        def total(x, k):
            s = m.apply(m.params, m.state, {name: x}, outputs=[scores])[0][scores]
            return s.reshape(s.shape[0], -1)[np.arange(s.shape[0]), k].sum()

        net._fns["saliency"] = jit(jax.grad(total))
    g = np.asarray(net._fns["saliency"](x.astype(np.float32), np.asarray(classes, np.int32)))
    return np.abs(g).max(axis=1)


def tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """N×2 t-SNE of N×D features (scikit-learn, the `inspect` extra)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise RunError(
            "netc inspect embedding needs scikit-learn: pip install 'netc[inspect]' "
            "(or pip install scikit-learn)"
        ) from None
    n = len(features)
    if n < 5:
        raise RunError(f"-n {n}: t-SNE needs at least 5 samples")
    f = features.reshape(n, -1).astype(np.float64)
    return TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed).fit_transform(
        f
    )


def knn_accuracy(points: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy: how well positions predict classes."""
    d = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    near = labels[np.argsort(d, axis=1)[:, :k]]
    votes = np.array([np.bincount(row, minlength=labels.max() + 1).argmax() for row in near])
    return float((votes == labels).mean())


# --- pictures ------------------------------------------------------------------------------------

# Anchors of matplotlib's viridis and of a blue-white-red diverging map, interpolated linearly.
VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
DIVERGING = [(33, 102, 172), (146, 197, 222), (247, 247, 247), (244, 165, 130), (178, 24, 43)]
# matplotlib's tab10: one colour per class
CLASS_COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
BACKGROUND = (40, 40, 40)  # of the panels, and where a patch leaves the image
GAP = (225, 225, 225)  # between colour tiles
GAP_GREY = (70, 110, 160)  # between grey tiles


def colourise(v: np.ndarray, anchors=VIRIDIS) -> np.ndarray:
    """Values in [0, 1] → uint8 RGB (…×3) along the anchor colours."""
    a = np.asarray(anchors, np.float32)
    t = np.clip(np.nan_to_num(v, nan=0.0), 0, 1) * (len(a) - 1)
    i = np.minimum(t.astype(int), len(a) - 2)
    f = (t - i)[..., None]
    return (a[i] * (1 - f) + a[i + 1] * f).round().astype(np.uint8)


def normalise(a: np.ndarray, axes=None) -> np.ndarray:
    """(a − min) / (max − min) over `axes` (NaN kept; a constant becomes 0.5)."""
    lo, hi = np.nanmin(a, axis=axes, keepdims=True), np.nanmax(a, axis=axes, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (a - lo) / np.where(span > 0, span, 1), 0.5)


def as_rgb(img: np.ndarray) -> np.ndarray:
    """A C×H×W image in [0, 1] (1 or 3 channels; NaN: background) → H×W×3 uint8."""
    rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
    out = (np.clip(np.nan_to_num(rgb, nan=0), 0, 1) * 255).round().astype(np.uint8)
    out = out.transpose(1, 2, 0)
    out[np.isnan(rgb).any(axis=0)] = BACKGROUND
    return out


@dataclass
class Grid:
    """Tiles (T×h×w×3 uint8) laid out in rows: the picture and where each tile went."""

    image: Any  # PIL.Image.Image
    count: int
    cols: int
    scale: int
    tile: tuple[int, int]  # one tile's (height, width) in the picture, before the gap
    gap: int

    def box(self, i: int) -> tuple[int, int, int, int]:
        r, c = divmod(i, self.cols)
        y, x = self.gap + r * (self.tile[0] + self.gap), self.gap + c * (self.tile[1] + self.gap)
        return x, y, x + self.tile[1], y + self.tile[0]


def grid(
    tiles: np.ndarray,
    cols: int | None = None,
    min_side: int = 48,
    max_width: int = 1400,
    gap: int = 2,
    gap_colour: tuple[int, int, int] | None = None,
) -> Grid:
    """Lay T×h×w×3 uint8 tiles out in a grid, each enlarged (nearest) by a whole factor. The
    gap between tiles is light grey, or steel blue between grey tiles (which can be white)."""
    from PIL import Image

    t, h, w = tiles.shape[:3]
    cols = cols or math.ceil(math.sqrt(t))
    rows = math.ceil(t / cols)
    scale = max(1, math.ceil(min_side / min(h, w)))
    scale = max(1, min(scale, (max_width - gap) // (cols * w + gap * cols) or 1))
    big = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    th, tw = h * scale, w * scale
    canvas = np.empty((gap + rows * (th + gap), gap + cols * (tw + gap), 3), np.uint8)
    grey = (tiles[..., :1] == tiles).all()
    canvas[:] = gap_colour or (GAP_GREY if grey else GAP)
    g = Grid(None, t, cols, scale, (th, tw), gap)
    for i in range(t):
        x0, y0, x1, y1 = g.box(i)
        canvas[y0:y1, x0:x1] = big[i]
    g.image = Image.fromarray(canvas)
    return g


def filter_tiles(weight: np.ndarray) -> tuple[np.ndarray, int | None]:
    """O×I×kh×kw kernels → (tiles, columns): O RGB tiles when I is 3, else one grey tile per
    input channel (a row per filter; a square grid when I is 1); each filter normalised alone."""
    o, i = weight.shape[:2]
    norm = normalise(weight, axes=(1, 2, 3))
    if i == 3:
        return np.stack([as_rgb(f) for f in norm]), None
    tiles = np.stack([as_rgb(k[None]) for f in norm for k in f])
    return tiles, (None if i == 1 else i)


def feature_tiles(maps: np.ndarray) -> np.ndarray:
    """C×H×W feature maps → C viridis tiles on one scale (a silent channel stays dark)."""
    return colourise(normalise(maps))


def heat_panel(
    img: np.ndarray, heat: np.ndarray, anchors, symmetric: bool, title: str, scale: int = 8
):
    """[the input | the map | the map over the input] side by side, `title` above."""
    from PIL import Image, ImageDraw

    base = as_rgb(normalise(img)).astype(np.float32)
    if symmetric:  # a diverging map centred on zero
        m = np.abs(heat).max() or 1.0
        v, alpha = heat / (2 * m) + 0.5, np.abs(heat) / m
    else:
        v = normalise(heat)
        alpha = v
    colour = colourise(v, anchors).astype(np.float32)
    over = base * (1 - 0.7 * alpha[..., None]) + colour * 0.7 * alpha[..., None]
    panels = np.stack([base.astype(np.uint8), colour.astype(np.uint8), over.astype(np.uint8)])
    g = grid(panels, cols=3, min_side=img.shape[1] * scale, gap=6, gap_colour=BACKGROUND)
    canvas = Image.new("RGB", (g.image.width, g.image.height + 24), BACKGROUND)
    canvas.paste(g.image, (0, 24))
    ImageDraw.Draw(canvas).text((6, 4), title, fill=(235, 235, 235), font=_font(14))
    return canvas


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font


def scatter(points: np.ndarray, labels: np.ndarray | None, title: str, size: int = 640):
    """A 2-D scatter plot, one colour per class, with a legend (Pillow: no plotting library)."""
    from PIL import Image, ImageDraw

    legend = 70 if labels is not None else 0
    canvas = Image.new("RGB", (size + legend, size + 30), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 6), title, fill=(0, 0, 0), font=_font(15))
    p = normalise(points, axes=0) * (size - 40) + 20
    classes = sorted(set(labels.tolist())) if labels is not None else [None]
    for n, c in enumerate(classes):
        colour = _class_colour(n)
        chosen = p if c is None else p[labels == c]
        for x, y in chosen:
            draw.ellipse((x - 3, y + 27, x + 3, y + 33), fill=colour)
        if c is not None:
            y = 40 + 22 * n
            draw.ellipse((size + 8, y, size + 20, y + 12), fill=colour)
            draw.text((size + 26, y - 2), str(c), fill=(0, 0, 0), font=_font(14))
    draw.rectangle((10, 30, size - 10, size + 20), outline=(170, 170, 170))
    return canvas


def _class_colour(n: int) -> tuple[int, int, int]:
    if n < len(CLASS_COLOURS):
        return CLASS_COLOURS[n]
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((n * 0.618) % 1, 0.75, 0.85)
    return int(r * 255), int(g * 255), int(b * 255)


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
