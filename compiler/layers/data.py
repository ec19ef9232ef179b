"""Input and Data: the layers that produce a net's input blobs.

Also the one catalogue of built-in data sets (`BUILTIN`): their shapes and classes are known here
without reading the bundled .npz (so `netc check` stays fast and free of JAX), and runtime/data.py
loads the arrays from the same entries. And the one rule for dense labels: a label whose shape per
sample is the images' H×W (or 1×H×W) is a label map, cropped and mirrored with its image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from netc.compiler.layer import BATCH, DataFact, Layer, register
from netc.spec.errors import SpecError
from netc.spec.messages import DataParameter, InputParameter, TransformationParameter

BUILTIN_PREFIX = "netc:"


@dataclass(frozen=True)
class BuiltinSplit:
    """One split of a built-in data set: the names of its arrays in the bundled file and the
    facts `netc check` needs (tests check them against the arrays)."""

    data_key: str
    label_key: str
    samples: int
    sample_shape: tuple[int, ...]
    label_shape: tuple[int, ...]  # per sample; () = one class index per sample
    classes: int


@dataclass(frozen=True)
class BuiltinDataset:
    """A data set shipped inside the package: `resource` is a file under `netc.runtime`."""

    resource: str
    splits: dict[str, BuiltinSplit]
    description: str

    def sources(self, name: str) -> list[str]:
        return [f"{BUILTIN_PREFIX}{name}/{split}" for split in self.splits]


BUILTIN: dict[str, BuiltinDataset] = {
    "digits": BuiltinDataset(
        resource="datasets/digits.npz",
        splits={
            "train": BuiltinSplit("train_data", "train_label", 4000, (1, 28, 28), (), 10),
            "test": BuiltinSplit("test_data", "test_label", 1000, (1, 28, 28), (), 10),
        },
        description="5,000 MNIST digits, 1×28×28 uint8, 10 classes; train 4,000 / test 1,000",
    ),
}

# "netc:NAME/SPLIT" -> its split, for every built-in data set.
BUILTIN_SOURCES: dict[str, BuiltinSplit] = {
    f"{BUILTIN_PREFIX}{name}/{split}": info
    for name, ds in BUILTIN.items()
    for split, info in ds.splits.items()
}


def crop_dims(t: TransformationParameter | None, h: int, w: int) -> tuple[int, int] | None:
    """transform_param's crop of an h×w image as (crop_h, crop_w), or None when nothing is cut
    (crop_h/crop_w override crop_size; 0 leaves that axis whole). Sizes are not checked here."""
    if t is None or not (t.crop_size or t.crop_h or t.crop_w):
        return None
    crop = (t.crop_h or t.crop_size or h, t.crop_w or t.crop_size or w)
    return None if crop == (h, w) else crop


def is_label_map(sample_shape: tuple[int, ...], label_shape: tuple[int, ...]) -> bool:
    """A dense label: images C×H×W with labels H×W (or 1×H×W, …) per sample, one per pixel.
    Such labels go through crop and mirror with their image (same offsets, same flip)."""
    return (len(sample_shape) == 3 and len(label_shape) >= 2
            and tuple(label_shape[-2:]) == tuple(sample_shape[1:])
            and math.prod(label_shape[:-2]) == 1)


def transformed_label_shape(sample_shape: tuple[int, ...], label_shape: tuple[int, ...],
                            crop: tuple[int, int] | None) -> tuple[int, ...]:
    """A label's shape per sample after the transform: a label map is cropped as its image."""
    if crop is None or not is_label_map(sample_shape, label_shape):
        return tuple(label_shape)
    return tuple(label_shape[:-2]) + tuple(crop)


def batch_dim(dim: int, path: tuple) -> int | str:
    if dim == -1:
        return BATCH
    if dim <= 0:
        raise SpecError(f"dimension must be positive (or −1 for a symbolic batch), got {dim}", path)
    return dim


@register
class Input(Layer):
    type = "Input"
    param_field = "input_param"
    Param = InputParameter
    bottoms = (0, 0)
    tops = (1, None)
    is_data = True
    geometry = "pointwise"
    summary = "Declares input blobs by shape (one shape for all tops, or one per top); −1 in " \
              "one dimension is a symbolic batch (netc extension; axis 1 for time-major T×N " \
              "sequences)."
    example = """\
name: data
type: Input
top: data
input_param: {shape: {dim: [10, 3, 224, 224]}}
"""
    def infer(self, bottoms):
        shapes = self.p.shape
        tops = self.spec.top
        if len(shapes) not in (1, len(tops)):
            raise SpecError(f"give one shape for all {len(tops)} tops or one per top, not {len(shapes)}",
                            ("input_param", "shape"))
        out = []
        for i in range(len(tops)):
            s = shapes[0] if len(shapes) == 1 else shapes[i]
            j = 0 if len(shapes) == 1 else i
            if not s.dim:
                raise SpecError("shape has no dimensions", ("input_param", "shape", j, "dim"))
            where = ("input_param", "shape", j, "dim")
            if sum(d == -1 for d in s.dim) > 1:
                raise SpecError("at most one dimension may be −1 (the symbolic batch)", where)
            out.append(tuple(batch_dim(d, where) for d in s.dim))
        return out

    def data_fact(self) -> DataFact:
        dims = self.p.shape[0].dim if self.p.shape else ()
        axis = dims.index(-1) if -1 in dims else 0
        first = dims[axis] if dims else -1
        return DataFact(source=None, batch_size=first if first > 0 else None, batch_axis=axis,
                        roles=("data",) * len(self.spec.top))


@register
class Data(Layer):
    type = "Data"
    param_field = "data_param"
    Param = DataParameter
    extra_params = {"transform_param": TransformationParameter}
    bottoms = (0, 0)
    tops = (1, 2)
    is_data = True
    geometry = "pointwise"
    summary = ("Reads (data, label) batches from data_param.source: a built-in set "
               f"({', '.join(BUILTIN_SOURCES)}) or a .npz file with `data` and `label` arrays "
               "(label: one class per sample, or a label map H×W per sample, cropped and mirrored "
               "with its image); transform_param scales, subtracts means, crops and mirrors.")
    example = """\
name: mnist
type: Data
top: [data, label]
include: {phase: TRAIN}
transform_param: {scale: 0.00390625}
data_param: {source: "netc:digits/train", batch_size: 64}
"""

    def source_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(data, label) shapes of one sample of the source, before the transform, read without
        loading it (the built-in catalogue, or the .npz headers). A file without a label array
        reads as one label per sample; loading it reports the missing array."""
        src = self.p.source
        if src is None:
            raise SpecError("missing required field 'source'", ("data_param",))
        if src in BUILTIN_SOURCES:
            return BUILTIN_SOURCES[src].sample_shape, BUILTIN_SOURCES[src].label_shape
        if src.startswith(BUILTIN_PREFIX):
            from netc.spec.errors import did_you_mean

            raise SpecError(f"unknown built-in source '{src}'{did_you_mean(src, BUILTIN_SOURCES)}",
                            ("data_param", "source"))
        shapes = npz_shapes(src, self.spec_dir)
        if shapes is None:
            raise SpecError(f"cannot read the sample shape of source '{src}' (no such .npz file)",
                            ("data_param", "source"))
        if "data" not in shapes:
            raise SpecError(f"source '{src}' has no array 'data'", ("data_param", "source"))
        return shapes["data"][1:], shapes.get("label", (0,))[1:]

    def sample_shape(self) -> tuple[int, ...]:
        return self.source_shapes()[0]

    def infer(self, bottoms):
        if self.p.batch_size is None:
            raise SpecError("missing required field 'batch_size'", ("data_param",))
        sample, label = self.source_shapes()
        crop = None
        if len(sample) == 3:
            c, h, w = sample
            crop = crop_dims(self.spec.transform_param, h, w)
            if crop is not None and (crop[0] > h or crop[1] > w):
                raise SpecError(f"crop {crop[0]}×{crop[1]} is larger than the {h}×{w} images",
                                ("transform_param", "crop_size"))
        tops = [(self.p.batch_size,) + (sample if crop is None else (sample[0], *crop))]
        if len(self.spec.top) > 1:
            tops.append((self.p.batch_size,) + transformed_label_shape(sample, label, crop))
        return tops

    def data_fact(self) -> DataFact:
        return DataFact(source=self.p.source, batch_size=self.p.batch_size,
                        shuffle=bool(self.p.shuffle), transform=self.spec.transform_param,
                        roles=("data", "label")[:len(self.spec.top)],
                        sample_shape=self.sample_shape())


def npz_shapes(source: str, spec_dir: str | None) -> dict[str, tuple[int, ...]] | None:
    """Shapes of the `data` and `label` arrays of an .npz (those it holds), read from their
    headers only (no data, no pickle); None when there is no such file."""
    import os
    import zipfile

    path = source if os.path.isabs(source) or spec_dir is None else os.path.join(spec_dir, source)
    if not os.path.exists(path):
        path = source if os.path.exists(source) else None
    if path is None:
        return None
    from netc.files import FileRefused, open_regular

    try:
        f = open_regular(path)
    except FileRefused as e:
        raise SpecError(f"cannot read source '{source}': it {e.message}",
                        ("data_param", "source")) from None
    except OSError as e:
        raise SpecError(f"cannot read source '{source}': {e.strerror or e}",
                        ("data_param", "source")) from None
    try:
        import numpy.lib.format as fmt

        out = {}
        with f, zipfile.ZipFile(f) as z:
            for key in ("data", "label"):
                if f"{key}.npy" not in z.namelist():
                    continue
                with z.open(f"{key}.npy") as member:
                    major, _ = fmt.read_magic(member)
                    read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
                    shape, _, _ = read(member)  # the header only (numpy bounds its size)
                out[key] = tuple(int(d) for d in shape)
        return out
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise SpecError(f"cannot read source '{source}': {e}", ("data_param", "source")) from None


def npz_sample_shape(source: str, spec_dir: str | None) -> tuple[int, ...] | None:
    """Per-sample shape of the `data` array of an .npz, from its header (None: no such file)."""
    shapes = npz_shapes(source, spec_dir)
    return None if shapes is None or "data" not in shapes else shapes["data"][1:]
