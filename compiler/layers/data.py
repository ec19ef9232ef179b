"""Input and Data: the layers that produce a net's input blobs."""

from __future__ import annotations

from netc.compiler.layer import BATCH, Layer, register
from netc.spec.errors import SpecError
from netc.spec.messages import DataParameter, InputParameter, TransformationParameter

# Built-in data sets: per-sample shape and class count, known without reading the file
# (tests check these against the bundled arrays).
BUILTIN_SOURCES: dict[str, tuple[tuple[int, ...], int]] = {
    "netc:digits/train": ((1, 28, 28), 10),
    "netc:digits/test": ((1, 28, 28), 10),
}


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
    summary = "Declares input blobs by shape (one shape for all tops, or one per top); −1 as the " \
              "first dimension is a symbolic batch (netc extension)."
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
            dims = [batch_dim(s.dim[0], ("input_param", "shape", j, "dim"))]
            for d in s.dim[1:]:
                if d <= 0:
                    raise SpecError(f"dimension must be positive, got {d}",
                                    ("input_param", "shape", j, "dim"))
                dims.append(d)
            out.append(tuple(dims))
        return out


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
               f"({', '.join(BUILTIN_SOURCES)}) or a .npz file with `data` and `label` arrays; "
               "transform_param scales, subtracts means, crops and mirrors.")
    example = """\
name: mnist
type: Data
top: [data, label]
include: {phase: TRAIN}
transform_param: {scale: 0.00390625}
data_param: {source: "netc:digits/train", batch_size: 64}
"""

    def sample_shape(self) -> tuple[int, ...]:
        src = self.p.source
        if src is None:
            raise SpecError("missing required field 'source'", ("data_param",))
        if src in BUILTIN_SOURCES:
            return BUILTIN_SOURCES[src][0]
        if src.startswith("netc:"):
            from netc.spec.errors import did_you_mean

            raise SpecError(f"unknown built-in source '{src}'{did_you_mean(src, BUILTIN_SOURCES)}",
                            ("data_param", "source"))
        shape = npz_sample_shape(src, self.spec_dir)
        if shape is None:
            raise SpecError(f"cannot read the sample shape of source '{src}' (no such .npz file)",
                            ("data_param", "source"))
        return shape

    def infer(self, bottoms):
        if self.p.batch_size is None:
            raise SpecError("missing required field 'batch_size'", ("data_param",))
        sample = self.sample_shape()
        t = self.spec.transform_param
        crop_h = t.crop_h or t.crop_size
        crop_w = t.crop_w or t.crop_size
        if (crop_h or crop_w) and len(sample) == 3:
            c, h, w = sample
            if crop_h > h or crop_w > w:
                raise SpecError(f"crop {crop_h}×{crop_w} is larger than the {h}×{w} images",
                                ("transform_param", "crop_size"))
            sample = (c, crop_h or h, crop_w or w)
        tops = [(self.p.batch_size,) + sample]
        if len(self.spec.top) > 1:
            tops.append((self.p.batch_size,))
        return tops


def npz_sample_shape(source: str, spec_dir: str | None) -> tuple[int, ...] | None:
    """Per-sample shape of the `data` array of an .npz, read from its header only (no pickle)."""
    import os
    import zipfile

    path = source if os.path.isabs(source) or spec_dir is None else os.path.join(spec_dir, source)
    if not os.path.exists(path):
        path = source if os.path.exists(source) else None
    if path is None:
        return None
    try:
        import numpy.lib.format as fmt

        with zipfile.ZipFile(path) as z, z.open("data.npy") as f:
            major, _ = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
            shape, _, _ = read(f)  # the header only: no data, no pickle
        return tuple(int(d) for d in shape[1:])
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise SpecError(f"cannot read source '{source}': {e}", ("data_param", "source")) from None
