"""transform_param's shape rule: one sample's shape after Caffe's crop and netc's augmentation
extensions (spec/messages.py has their fields, runtime/augment.py applies them), and the checks
that need the images' shape (a crop larger than the image, rotate90 by 90° on non-square images,
colour operations on images without three channels). `netc check` and the data loader share it,
so a problem reads the same in both. Pure Python: no numpy, no JAX.
"""

from __future__ import annotations

from netc.spec.errors import SpecError
from netc.spec.messages import TransformationParameter

# The extensions in the order runtime/augment.py applies them; the first five are one warp.
GEOMETRIC = ("random_resized_crop", "flip", "rotate90", "rotate", "translate")
EXTENSIONS = (
    *GEOMETRIC,
    "color_jitter",
    "color_drop",
    "gaussian_blur",
    "gaussian_noise",
    "cutout",
    "sobel",
)


def extensions(t: TransformationParameter | None) -> tuple[str, ...]:
    """The augmentation extensions `t` sets, in the order they apply."""
    return () if t is None else tuple(k for k in EXTENSIONS if getattr(t, k) is not None)


def pair(v: tuple[int, ...]) -> tuple[int, int]:
    """A size written as one value (square) or [h, w]."""
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _where(*path: str | int) -> tuple[str | int, ...]:
    return ("transform_param", *path)


def transform_shape(
    sample: tuple[int, ...], t: TransformationParameter | None, crop: tuple[int, int] | None = None
) -> tuple[int, ...]:
    """One sample's shape after `t`, given Caffe's crop of it (`crop_dims`, checked already):
    e.g. 1×28×28 with random_resized_crop {size: 24} → 1×24×24, 3×32×32 with sobel → 2×32×32.
    Raises SpecError (its path under transform_param) when `t` cannot apply to such samples."""
    used = extensions(t)
    if not used:
        return sample if crop is None else (sample[0], *crop)
    if len(sample) != 3:
        raise SpecError(
            f"{used[0]} needs image data N×C×H×W, but samples have shape "
            f"{'×'.join(map(str, sample))}",
            _where(used[0]),
        )
    c = sample[0]
    h, w = _warped_size(t, sample, crop)
    after = " (after the crop)" if crop or t.random_resized_crop else ""
    _check_geometry(t, h, w, after)
    _check_colour(t, c)
    if t.cutout is not None:
        ch, cw = pair(t.cutout.size)
        if ch > h or cw > w:
            raise SpecError(
                f"cutout hole {ch}×{cw} is larger than the {h}×{w} images{after}",
                _where("cutout", "size"),
            )
    if t.sobel is not None:
        c = 2 if t.sobel.output == "gradients" else 1
    return (c, h, w)


def _warped_size(
    t: TransformationParameter, sample: tuple[int, ...], crop: tuple[int, int] | None
) -> tuple[int, int]:
    """H×W after Caffe's crop or random_resized_crop (which exclude each other)."""
    if t.random_resized_crop is None:
        return crop or (sample[1], sample[2])
    if crop is not None or t.crop_size or t.crop_h or t.crop_w:
        raise SpecError(
            "random_resized_crop and crop_size/crop_h/crop_w exclude each "
            "other: random_resized_crop's size is the output size",
            _where("random_resized_crop"),
        )
    return pair(t.random_resized_crop.size)


def _check_geometry(t: TransformationParameter, h: int, w: int, after: str) -> None:
    if t.flip is not None and t.mirror and t.flip.horizontal:
        raise SpecError(
            "flip.horizontal and mirror both flip horizontally: give one of them",
            _where("flip", "horizontal"),
        )
    if t.rotate90 is not None and h != w and ({90, 270} & set(t.rotate90.angles)):
        raise SpecError(
            f"rotate90 by 90 or 270 degrees needs square images, but they are {h}×{w}{after}",
            _where("rotate90", "angles"),
        )
    if t.translate is not None and (t.translate.pixels or 0) >= min(h, w):
        raise SpecError(
            f"translate.pixels {t.translate.pixels} would move the {h}×{w} "
            f"images{after} out of view (at most {min(h, w) - 1})",
            _where("translate", "pixels"),
        )
    if t.rotate is not None and t.translate is not None and t.rotate.fill != t.translate.fill:
        raise SpecError(
            f"rotate and translate are one warp with one fill: rotate.fill "
            f"{t.rotate.fill:g} and translate.fill {t.translate.fill:g} differ",
            _where("translate", "fill"),
        )


def _check_colour(t: TransformationParameter, c: int) -> None:
    jitter = t.color_jitter
    for name, needs in (
        ("saturation", jitter and jitter.saturation),
        ("hue", jitter and jitter.hue),
    ):
        if needs and c != 3:
            raise SpecError(
                f"color_jitter.{name} needs 3-channel (RGB) images, but they have "
                f"{c} channel{'s' if c != 1 else ''}",
                _where("color_jitter", name),
            )
    if t.color_drop is not None and c != 3:
        raise SpecError(
            f"color_drop needs 3-channel (RGB) images, but they have {c} "
            f"channel{'s' if c != 1 else ''}",
            _where("color_drop"),
        )
    if t.sobel is not None and c not in (1, 3):
        raise SpecError(
            f"sobel needs 1-channel (gray) or 3-channel (RGB) images, but they have {c} channels",
            _where("sobel"),
        )


def check_label_map(t: TransformationParameter | None, top: str) -> None:
    """A label map follows its image through crop and mirror only: refuse the geometric
    extensions when a top is one (they would move the image without its labels)."""
    moving = [k for k in extensions(t) if k in GEOMETRIC]
    if moving:
        raise SpecError(
            f"{moving[0]} would move the images without their label map '{top}' "
            "(label maps follow crop_size and mirror only)",
            _where(moving[0]),
        )
