"""ImageData (Caffe's layer reading image files), and what `netc check` knows of image and table
sources without decoding them.

An ImageData source is Caffe's list file (`path label` lines) or, as a netc extension,
`folder:PATH` (one subfolder per class). Its tops' shapes come from the spec alone:
new_height × new_width, 3 channels (RGB) or 1 (is_color: false). A Data layer's `csv:PATH` source
is a table whose header row `netc check` reads for the number of features.
"""

from __future__ import annotations

import csv
import io
import os

from netc.compiler.layer import DataFact, Layer, register
from netc.compiler.layers.data import CSV_PREFIX, checked_crop, require_fields, split_problem
from netc.compiler.transform import transform_shape
from netc.files import FileRefused, open_regular, unreadable
from netc.spec.errors import SpecError
from netc.spec.messages import ImageDataParameter, TransformationParameter

FOLDER_PREFIX = "folder:"
CSV_LABEL = "label"  # the label column of a csv: source
# Caffe's deprecated ImageDataParameter fields (transform_param does these now)
_DEPRECATED = ("scale", "mean_file", "crop_size", "mirror")


@register
class ImageData(Layer):
    type = "ImageData"
    param_field = "image_data_param"
    Param = ImageDataParameter
    extra_params = {"transform_param": TransformationParameter}
    bottoms = (0, 0)
    tops = (1, 2)
    is_data = True
    geometry = "pointwise"
    summary = (
        "Reads image files (PNG, JPEG, ... via Pillow) named by image_data_param.source: "
        "a list file of `path label` lines (Caffe; paths relative to the list file's "
        "folder, or root_folder + path), or `folder:PATH` with one subfolder per class "
        "(classes numbered in sorted name order; netc extension). Every image is resized "
        "to new_height × new_width (bilinear) and read as RGB, or gray with is_color: "
        "false; tops [data, label] N×C×H×W and N. `split: [a, b]` reads that fraction "
        "range of each class's images (a fixed permutation per class; netc extension). "
        "transform_param scales, subtracts means, crops and mirrors the data."
    )
    example = """\
name: images
type: ImageData
top: [data, label]
include: {phase: TRAIN}
transform_param: {scale: 0.00390625}
image_data_param: {source: "folder:images", new_height: 32, new_width: 32, batch_size: 16,
                   shuffle: true, split: [0, 0.8]}
"""

    def _sample(self) -> tuple[int, int, int]:
        p = self.p
        for name in _DEPRECATED:
            if name in p.set_fields():
                raise SpecError(
                    f"{name} is deprecated in Caffe's ImageData; set it in transform_param",
                    ("image_data_param", name),
                )
        c = 3 if p.is_color else 1
        if p.new_height and p.new_width:
            return (c, p.new_height, p.new_width)
        declared = getattr(self, "declared_shape", None)  # --input-shape: images kept as they are
        if declared is not None and len(declared) == 4 and declared[1] == c:
            return (c, int(declared[2]), int(declared[3]))
        unset = " and ".join(n for n in ("new_height", "new_width") if not getattr(p, n))
        raise SpecError(
            f"set {unset}: ImageData resizes every image to new_height × new_width, "
            f"the data's shape (netc check reads no image); or keep the images' own "
            f"size and declare it: --input-shape {self.spec.top[0]}=N,{c},H,W",
            ("image_data_param",),
        )

    def infer(self, bottoms):
        p = self.p
        require_fields(p, "image_data_param")
        problem = split_problem(p.split)
        if problem:
            raise SpecError(problem, ("image_data_param", "split"))
        if p.rand_skip:
            self.warn(
                "rand_skip has no effect in netc (shuffle: true reorders every epoch)",
                "image_data_param",
                "rand_skip",
            )
        sample = self._sample()
        tp = self.spec.transform_param
        data = (p.batch_size, *transform_shape(sample, tp, checked_crop(sample, tp)))
        return [data, (p.batch_size,)][: len(self.spec.top)]

    def data_fact(self) -> DataFact:
        p = self.p
        options = {
            "new_height": p.new_height,
            "new_width": p.new_width,
            "is_color": p.is_color,
            "root_folder": p.root_folder,
            "split": tuple(p.split),
        }
        return DataFact(
            source=p.source,
            batch_size=p.batch_size,
            shuffle=bool(p.shuffle),
            transform=self.spec.transform_param,
            roles=("data", "label")[: len(self.spec.top)],
            sample_shape=self._sample(),
            options=options,
        )

    def describe(self) -> str:
        return "RGB" if self.p.is_color else "gray"


# --- csv: sources ----------------------------------------------------------------------------


def csv_path(source: str, spec_dir: str | None) -> str | None:
    """The file of a `csv:PATH` source (PATH as given when absolute, else in the spec's folder,
    then in the current directory), or None when there is no such file."""
    rel = os.path.expanduser(source[len(CSV_PREFIX) :])
    candidates = (
        [rel] if os.path.isabs(rel) or spec_dir is None else [os.path.join(spec_dir, rel), rel]
    )
    return next((c for c in candidates if os.path.isfile(c)), None)


def csv_header(path: str, name: str) -> list[str]:
    """The column names of a CSV file (its first row), with a `label` column; ValueError with
    the reason otherwise."""
    try:
        with open_regular(path) as f:
            first = f.readline(1 << 20).decode("utf-8-sig")
    except (FileRefused, OSError) as e:
        raise ValueError(unreadable(name, e)) from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: the header row is not UTF-8 ({e.reason})") from None
    header = [c.strip() for c in next(csv.reader(io.StringIO(first)), [])]
    if CSV_LABEL not in header:
        held = ", ".join(repr(c) for c in header[:8]) or "nothing"
        raise ValueError(
            f"{name}: the first row must name the columns, one of them "
            f"'{CSV_LABEL}' (the row holds {held})"
        )
    if len(header) < 2:
        raise ValueError(f"{name}: no feature column besides '{CSV_LABEL}'")
    return header


def csv_columns(source: str, spec_dir: str | None, tops: tuple[str, ...]):
    """A Data layer's columns for a csv: source: ("data", (features,)), ("label", ())."""
    if len(tops) > 2:
        raise SpecError(f"a csv: source gives 2 tops (data, label), not {len(tops)}", ("top",))
    path = csv_path(source, spec_dir)
    if path is None:
        raise SpecError(
            f"cannot read the columns of source '{source}' (no such file)", ("data_param", "source")
        )
    try:
        header = csv_header(path, source)
    except ValueError as e:
        raise SpecError(str(e), ("data_param", "source")) from None
    return (("data", (len(header) - 1,)), ("label", ()))[: len(tops)]
