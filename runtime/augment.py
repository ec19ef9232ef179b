"""netc's augmentation extensions of ``transform_param``, in numpy, vectorised over the batch.

The operations (their fields are in spec/messages.py, their shape rule in compiler/transform.py)
apply to a float32 batch N×C×H×W after Caffe's crop and mirror, in this order:

1. one geometric warp: every sample's random_resized_crop, flip, rotate90, rotate and translate
   compose into one affine map from output to input pixels, sampled once (bilinear; a plain
   gather when every map is a whole-pixel one, so flips, rot90 and shifts are exact);
2. color_jitter, color_drop, gaussian_blur, gaussian_noise, cutout;
3. sobel (deterministic: in TEST too).

Values: the operations see ``x · scale`` (Caffe's scale; [0, 1) for the digits with scale 1/256),
so fills, noise std and the clipping range of color_jitter (the data's own range: 0..255 for
uint8, the array's min..max for reals, times scale) are in those units; ``mean_value · scale`` is
subtracted after them, before sobel. Without extensions netc keeps Caffe's ``(x - mean) · scale``.

Randomness: the parameters of the sample at place ``i`` of epoch ``e`` (the place, not the sample:
shuffling is the permutation's business) come from generators keyed ``(seed, e, TAG, block, op)``
with ``block = i // block_size``, a size fixed by the sample shape alone. So they depend on
(seed, epoch, place) only — not on the batch size or where a batch starts — and a resumed stream
repeats them exactly. In TEST nothing is random: random_resized_crop becomes the central box of
side fraction test_crop resized to its size, sobel applies, everything else is off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from netc.compiler.transform import GEOMETRIC, extensions, pair
from netc.spec.messages import TransformationParameter

__all__ = ["Augmenter", "value_range"]

_TAG = 0x61756721  # SeedSequence word separating these draws from the crop/mirror ones
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as torchvision
_BLOCK_VALUES = 2**21  # values per sample × block size stays under this (noise is drawn per block)
Params = dict[str, np.ndarray]


def value_range(data: np.ndarray, scale: float) -> tuple[float, float]:
    """The range color_jitter clips to: the dtype's for integers, the array's for reals."""
    if data.dtype.kind in "biu":
        info = np.iinfo(data.dtype) if data.dtype.kind != "b" else None
        lo, hi = (0.0, 1.0) if info is None else (float(info.min), float(info.max))
    else:
        lo, hi = float(data.min()), float(data.max())
    lo, hi = lo * scale, hi * scale
    return (min(lo, hi), max(lo, hi))


def gray(x: np.ndarray) -> np.ndarray:
    """N×1×H×W luma of N×3×H×W images (ITU-R 601), or the one channel of gray images."""
    if x.shape[1] == 1:
        return x
    return np.einsum("c,nchw->nhw", _LUMA, x, dtype=np.float32)[:, None]


# --- the geometric warp --------------------------------------------------------------------------


def _affine(n: int, a, b, c, d, e, f) -> np.ndarray:
    """n maps (row, col) -> (a·row + b·col + c, d·row + e·col + f) as n×3×3 matrices."""
    m = np.zeros((n, 3, 3))
    for k, v in enumerate((a, b, c, d, e, f)):
        m[:, k // 3, k % 3] = v
    m[:, 2, 2] = 1.0
    return m


def resized_crop_boxes(
    rng: np.random.Generator, n: int, hw: tuple[int, int], scale, ratio, attempts: int = 10
) -> np.ndarray:
    """n boxes (top, left, height, width) as torchvision's RandomResizedCrop draws them: area
    fraction uniform in `scale`, aspect w/h log-uniform in `ratio`, the first of `attempts`
    that fits; else the whole image clipped to the ratio range, centred."""
    h, w = hw
    area = h * w * rng.uniform(scale[0], scale[1], (n, attempts))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, attempts)))
    bw = np.rint(np.sqrt(area * aspect))
    bh = np.rint(np.sqrt(area / aspect))
    fits = (bw >= 1) & (bw <= w) & (bh >= 1) & (bh <= h)
    first = np.argmax(fits, axis=1)
    pick = np.arange(n), first
    bh, bw = bh[pick], bw[pick]
    u = rng.uniform(size=(n, 2))
    top = np.floor(u[:, 0] * (h - bh + 1))
    left = np.floor(u[:, 1] * (w - bw + 1))
    fh, fw = _fallback_box(hw, ratio)
    none = ~fits.any(axis=1)
    bh[none], bw[none] = fh, fw
    top[none], left[none] = (h - fh) // 2, (w - fw) // 2
    return np.stack([top, left, bh, bw], axis=1)


def _fallback_box(hw: tuple[int, int], ratio) -> tuple[int, int]:
    h, w = hw
    if w / h < ratio[0]:
        return min(h, round(w / ratio[0])), w
    if w / h > ratio[1]:
        return h, min(w, round(h * ratio[1]))
    return h, w


def _box_maps(boxes: np.ndarray, out: tuple[int, int]) -> np.ndarray:
    """Maps from an out-sized image to boxes (top, left, h, w) of the input, pixel centres
    aligned (align_corners=False)."""
    top, left, bh, bw = boxes.T
    sy, sx = bh / out[0], bw / out[1]
    return _affine(len(boxes), sy, 0, top + 0.5 * sy - 0.5, 0, sx, left + 0.5 * sx - 0.5)


def _rot90_rows(angle: int, h: int, w: int) -> tuple[int, ...]:
    """np.rot90(x, angle // 90) reads x at M·(row, col, 1): M's first two rows (90 and 270
    degrees need h == w)."""
    return {
        0: (1, 0, 0, 0, 1, 0),
        90: (0, 1, 0, -1, 0, w - 1),
        180: (-1, 0, h - 1, 0, -1, w - 1),
        270: (0, -1, h - 1, 1, 0, 0),
    }[angle]


@dataclass(frozen=True)
class Warp:
    """The geometric extensions of one stream as one affine map per sample."""

    t: TransformationParameter
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def fill(self) -> float:
        return next((op.fill for op in (self.t.rotate, self.t.translate) if op is not None), 0.0)

    @property
    def exact(self) -> bool:
        """Every map moves whole pixels: one gather, no interpolation."""
        return self.t.random_resized_crop is None and self.t.rotate is None

    def draw(self, rng: np.random.Generator, n: int) -> Params:
        t, (h, w) = self.t, self.out_hw
        m = np.broadcast_to(np.eye(3), (n, 3, 3))
        if t.random_resized_crop is not None:
            p = t.random_resized_crop
            m = _box_maps(resized_crop_boxes(rng, n, self.in_hw, p.scale, p.ratio), self.out_hw)
        if t.flip is not None:
            flip = rng.uniform(size=(n, 2)) < (t.flip.vertical, t.flip.horizontal)
            v, hz = flip[:, 0], flip[:, 1]
            m = m @ _affine(
                n,
                np.where(v, -1, 1),
                0,
                np.where(v, h - 1, 0),
                0,
                np.where(hz, -1, 1),
                np.where(hz, w - 1, 0),
            )
        if t.rotate90 is not None:
            table = np.array([_rot90_rows(a, h, w) for a in t.rotate90.angles], dtype=float)
            m = m @ _affine(n, *table[rng.integers(0, len(table), n)].T)
        if t.rotate is not None:
            m = m @ _rotation(np.deg2rad(rng.uniform(-1, 1, n) * t.rotate.degrees), h, w)
        if t.translate is not None:
            p = t.translate
            most = [p.pixels] * 2 if p.pixels is not None else [int(p.fraction * s) for s in (h, w)]
            dy, dx = (rng.integers(-k, k + 1, n) for k in most)
            m = m @ _affine(n, 1, 0, -dy, 0, 1, -dx)
        return {"map": np.ascontiguousarray(m)}

    def test_maps(self, n: int) -> np.ndarray | None:
        """TEST: the central box of side fraction test_crop, resized (None: no warp)."""
        p = self.t.random_resized_crop
        if p is None:
            return None
        (h, w), f = self.in_hw, p.test_crop
        bh, bw = max(1, round(h * f)), max(1, round(w * f))
        box = np.array([[(h - bh) / 2, (w - bw) / 2, bh, bw]], dtype=float)
        return np.repeat(_box_maps(box, self.out_hw), n, axis=0)

    def apply(self, x: np.ndarray, p: Params) -> np.ndarray:
        return sample(x, p["map"], self.out_hw, self.fill, exact=self.exact)


def _rotation(theta: np.ndarray, h: int, w: int) -> np.ndarray:
    """Maps that rotate images counter-clockwise by theta about their centre (as np.rot90 for
    theta = 90°)."""
    cy, cx = (h - 1) / 2, (w - 1) / 2
    cos, sin = np.cos(theta), np.sin(theta)
    return _affine(
        len(theta), cos, sin, cy - cos * cy - sin * cx, -sin, cos, cx + sin * cy - cos * cx
    )


def sample(
    x: np.ndarray, maps: np.ndarray, out_hw: tuple[int, int], fill: float, *, exact: bool = False
) -> np.ndarray:
    """out[n, :, i, j] = x[n, :, M·(i, j, 1)] for each sample's map M: bilinear between the four
    neighbours (`fill` for a neighbour outside the image), or the nearest pixel when `exact`.

    The images are padded with `fill` (one row and column before, two after) and coordinates
    clipped to [-1, size]: every neighbour then lies in the padded image, and one outside the
    image reads the fill — no masks. Gathers are flat `take`s of one index array per
    neighbour."""
    n, c, h, w = x.shape
    pw = w + 3
    padded = np.pad(x, ((0, 0), (0, 0), (1, 2), (1, 2)), constant_values=np.float32(fill))
    ii, jj = np.meshgrid(np.arange(out_hw[0]), np.arange(out_hw[1]), indexing="ij")
    grid = np.stack([ii.ravel(), jj.ravel(), np.ones(ii.size)]).astype(np.float32)
    rc = maps[:, :2].astype(np.float32) @ grid  # n×2×(H'·W'): where each output pixel reads
    r = np.clip(rc[:, 0], -1, h)
    q = np.clip(rc[:, 1], -1, w)
    base = (np.arange(n * c) * ((h + 3) * pw)).reshape(n, c, 1)
    flat = padded.reshape(-1)
    if exact:
        index = ((np.rint(r) + 1) * pw + np.rint(q) + 1).astype(np.intp)
        return flat.take(base + index[:, None]).reshape(n, c, *out_hw)
    r0, q0 = np.floor(r), np.floor(q)
    fr, fq = (r - r0)[:, None], (q - q0)[:, None]
    index = base + ((r0 + 1) * pw + q0 + 1).astype(np.intp)[:, None]
    top = flat.take(index) * (1 - fq) + flat.take(index + 1) * fq
    bottom = flat.take(index + pw) * (1 - fq) + flat.take(index + pw + 1) * fq
    return (top * (1 - fr) + bottom * fr).reshape(n, c, *out_hw)


# --- colour, blur, noise, cutout -------------------------------------------------------------------


@dataclass(frozen=True)
class ColorJitter:
    """Brightness, contrast, saturation (torchvision's blends), hue (a rotation of the YIQ
    chroma plane: torchvision's HSV shift approximated by one 3×3 matrix), clipped after each."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    lo: float
    hi: float

    def draw(self, rng: np.random.Generator, n: int) -> Params:
        u = rng.uniform(-1, 1, (n, 4)).astype(np.float32)
        amounts = np.array([self.brightness, self.contrast, self.saturation], dtype=np.float32)
        factors = np.maximum(0, 1 + u[:, :3] * amounts)
        return {"factors": factors, "hue": u[:, 3] * np.float32(self.hue)}

    def apply(self, x: np.ndarray, p: Params) -> np.ndarray:
        f = p["factors"][:, :, None, None, None]
        if self.brightness:
            x = self._clip(x * f[:, 0])
        if self.contrast:
            mean = gray(x).mean(axis=(1, 2, 3), keepdims=True)
            x = self._clip(mean + f[:, 1] * (x - mean))
        if self.saturation:
            g = gray(x)
            x = self._clip(g + f[:, 2] * (x - g))
        if self.hue:
            x = self._clip(np.einsum("nij,njhw->nihw", hue_matrices(p["hue"]), x))
        return x

    def _clip(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, self.lo, self.hi, out=x).astype(np.float32, copy=False)


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def hue_matrices(turns: np.ndarray) -> np.ndarray:
    """RGB -> RGB matrices rotating the hue by `turns` of a full turn (in YIQ space)."""
    theta = 2 * np.pi * turns.astype(float)
    rot = np.zeros((len(turns), 3, 3))
    rot[:, 0, 0] = 1
    rot[:, 1, 1] = rot[:, 2, 2] = np.cos(theta)
    rot[:, 1, 2], rot[:, 2, 1] = -np.sin(theta), np.sin(theta)
    return (np.linalg.inv(_YIQ) @ rot @ _YIQ).astype(np.float32)


@dataclass(frozen=True)
class ColorDrop:
    p: float

    def draw(self, rng: np.random.Generator, n: int) -> Params:
        return {"drop": rng.uniform(size=n) < self.p}

    def apply(self, x: np.ndarray, p: Params) -> np.ndarray:
        return np.where(p["drop"][:, None, None, None], gray(x), x)


@dataclass(frozen=True)
class GaussianBlur:
    sigma: tuple[float, float]
    kernel_size: int
    p: float

    def draw(self, rng: np.random.Generator, n: int) -> Params:
        sigma = rng.uniform(self.sigma[0], self.sigma[1], n)
        on = rng.uniform(size=n) < self.p
        return {"kernels": gaussian_kernels(np.where(on, sigma, 0.0), self.kernel_size)}

    def apply(self, x: np.ndarray, p: Params) -> np.ndarray:
        return blur(x, p["kernels"])


def gaussian_kernels(sigma: np.ndarray, size: int) -> np.ndarray:
    """n×size normalised 1-D gaussian kernels (sigma 0: the identity kernel)."""
    t = np.arange(size) - size // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.exp(-(t**2) / (2 * sigma[:, None] ** 2))
    k = np.where(sigma[:, None] > 0, k, (t == 0).astype(float))
    return (k / k.sum(axis=1, keepdims=True)).astype(np.float32)


def blur(x: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Separable convolution of each sample with its own 1-D kernel (rows, then columns); the
    border repeats the edge pixels."""
    half = kernels.shape[1] // 2
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (half, half)
        padded = np.pad(x, pad, mode="edge")
        size = x.shape[axis]
        out = np.zeros_like(x)
        for k in range(kernels.shape[1]):
            window = padded[:, :, k : k + size] if axis == 2 else padded[:, :, :, k : k + size]
            out += kernels[:, k, None, None, None] * window
        x = out
    return x


@dataclass(frozen=True)
class GaussianNoise:
    std: float
    shape: tuple[int, int, int]

    def draw(self, rng: np.random.Generator, n: int) -> Params:
        return {"noise": rng.standard_normal((n, *self.shape), dtype=np.float32)}

    def apply(self, x: np.ndarray, p: Params) -> np.ndarray:
        return x + np.float32(self.std) * p["noise"]


@dataclass(frozen=True)
class Cutout:
    holes: int
    size: tuple[int, int]
    fill: float
    hw: tuple[int, int]

    def draw(self, rng: np.random.Generator, n: int) -> Params:
        centres = rng.integers(0, self.hw, size=(n, self.holes, 2))
        return {"top_left": centres - np.array(self.size) // 2}

    def apply(self, x: np.ndarray, p: Params) -> np.ndarray:
        return np.where(self.mask(p["top_left"])[:, None], np.float32(self.fill), x)

    def mask(self, top_left: np.ndarray) -> np.ndarray:
        """n×H×W: True inside a hole (holes of size (h, w) at (top, left), cut by the border)."""
        rows = np.arange(self.hw[0])[None, None, :] - top_left[:, :, :1]
        cols = np.arange(self.hw[1])[None, None, :] - top_left[:, :, 1:]
        in_r = (rows >= 0) & (rows < self.size[0])
        in_c = (cols >= 0) & (cols < self.size[1])
        return (in_r[:, :, :, None] & in_c[:, :, None, :]).any(axis=1)


def sobel(x: np.ndarray, output: str = "gradients") -> np.ndarray:
    """Sobel derivatives of the images' luma: N×2×H×W (d/dx, d/dy; edges replicated), or their
    magnitude N×1×H×W."""
    g = np.pad(gray(x)[:, 0], ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = x.shape[2:]

    def at(dr: int, dc: int) -> np.ndarray:
        return g[:, 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]

    gx = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
    gy = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
    if output == "magnitude":
        return np.sqrt(gx * gx + gy * gy)[:, None]
    return np.stack([gx, gy], axis=1)


# --- the pipeline --------------------------------------------------------------------------------


class Augmenter:
    """The extensions of one stream: ``augmenter(x, params)`` with ``params`` from
    :meth:`params` (TRAIN) or None (TEST). ``x`` is N×C×H×W float32 after Caffe's crop and mirror,
    not yet scaled; the result is the net's input."""

    def __init__(
        self,
        t: TransformationParameter,
        shape: tuple[int, int, int],
        scale: float,
        mean: np.ndarray | None,
        vrange: tuple[float, float],
    ):
        c, h, w = shape
        out_hw = pair(t.random_resized_crop.size) if t.random_resized_crop else (h, w)
        self.scale = np.float32(scale)
        self.mean = None if mean is None else (mean * self.scale).astype(np.float32)
        self.sobel = None if t.sobel is None else t.sobel.output
        self.warp = Warp(t, (h, w), out_hw) if set(extensions(t)) & set(GEOMETRIC) else None
        self.ops: list[tuple[int, Any]] = [
            (i, op)
            for i, op in enumerate(_ops(t, self.warp, (c, *out_hw), vrange))
            if op is not None
        ]
        self.block = max(1, min(256, _BLOCK_VALUES // (c * out_hw[0] * out_hw[1])))
        self._cache: dict[tuple[int, int, int], list[Params]] = {}

    def __call__(self, x: np.ndarray, params: list[Params] | None) -> np.ndarray:
        if self.scale != 1:
            x = x * self.scale
        if params is not None:
            for (_, op), p in zip(self.ops, params):
                x = op.apply(x, p)
        elif self.warp is not None and (maps := self.warp.test_maps(len(x))) is not None:
            x = sample(x, maps, self.warp.out_hw, 0.0)
        if self.mean is not None:
            x = x - self.mean
        if self.sobel is not None:
            x = sobel(x, self.sobel)
        return np.ascontiguousarray(x, dtype=np.float32)

    def draw(self, seed: int, epoch: int, block: int, n: int) -> list[Params]:
        """Each op's parameters for the n places of `block` of `epoch`."""
        return [
            op.draw(np.random.default_rng([seed, epoch, _TAG, block, i]), n) for i, op in self.ops
        ]

    def params(self, seed: int, n_places: int, parts: list[tuple[int, int, int]]) -> list[Params]:
        """Each op's parameters for the places (epoch, start, stop) of `parts`, in order."""
        pieces: list[list[Params]] = []
        b = self.block
        for epoch, start, stop in parts:
            for k in range(start // b, (stop - 1) // b + 1):
                drawn = self._block(seed, epoch, k, min(b, n_places - k * b))
                lo, hi = max(start - k * b, 0), min(stop - k * b, b)
                pieces.append([{key: a[lo:hi] for key, a in p.items()} for p in drawn])
        return [
            {key: np.concatenate([piece[i][key] for piece in pieces]) for key in first}
            for i, first in enumerate(pieces[0])
        ]

    def _block(self, seed: int, epoch: int, k: int, n: int) -> list[Params]:
        key = (seed, epoch, k)
        if key not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self.draw(seed, epoch, k, n)
        return self._cache[key]


def _ops(
    t: TransformationParameter,
    warp: Warp | None,
    shape: tuple[int, int, int],
    vrange: tuple[float, float],
) -> list[Any]:
    """Every op in its fixed place (the place is its generator's key: adding one op leaves the
    others' draws as they were); None where not set."""
    j, b = t.color_jitter, t.gaussian_blur
    kernel = None if b is None else (b.kernel_size or 2 * math.ceil(3 * b.sigma[1]) + 1)
    return [
        warp,
        j and ColorJitter(j.brightness, j.contrast, j.saturation, j.hue, *vrange),
        t.color_drop and ColorDrop(t.color_drop.p),
        b and GaussianBlur(b.sigma, kernel, b.p),
        t.gaussian_noise and GaussianNoise(t.gaussian_noise.std, shape),
        t.cutout and Cutout(t.cutout.holes, pair(t.cutout.size), t.cutout.fill, shape[1:]),
    ]
