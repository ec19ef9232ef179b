"""DenseImageData: SegNet's Caffe fork's data layer (alexgkendall/caffe-segnet), shapes only.

It reads a list file of `image label_image` lines; its tops are the images N×C×H×W and their label
maps N×1×H×W (one class per pixel), both new_height × new_width when set, else the size of the
first image: a size that lives outside the spec, which `netc check --input-shape data=N,C,H,W`
declares. netc checks the net's shapes from it but does not read the image lists: to train,
convert the images and label maps to an .npz (arrays `data` N×C×H×W and `label` N×H×W).
"""

from __future__ import annotations

from netc.compiler.layer import DataFact, Layer, register
from netc.compiler.layers.data import checked_crop, require_fields, transformed_label_shape
from netc.compiler.transform import transform_shape
from netc.spec.errors import SpecError
from netc.spec.messages import ImageListParameter, TransformationParameter


class DenseImageDataParameter(ImageListParameter):
    """The fork's message (caffe-segnet's caffe.proto): the list file and how images are read,
    the fields ImageData's message shares."""


@register
class DenseImageData(Layer):
    type = "DenseImageData"
    param_field = "dense_image_data_param"
    Param = DenseImageDataParameter
    extra_params = {"transform_param": TransformationParameter}
    bottoms = (0, 0)
    tops = (1, 2)
    is_data = True
    geometry = "pointwise"
    summary = (
        "SegNet's fork: images and their label maps from a list file; tops N×C×H×W and "
        "N×1×H×W, of new_height × new_width, or of the size --input-shape declares. "
        "Shapes only: netc reads no image lists (train from an .npz of data and label "
        "maps instead)."
    )
    example = """\
name: data
type: DenseImageData
top: [data, label]
dense_image_data_param: {source: train.txt, batch_size: 4, new_height: 360, new_width: 480}
"""

    def _sample(self) -> tuple[int, int, int]:
        p = self.p
        c = 3 if p.is_color else 1
        if bool(p.new_height) != bool(p.new_width):
            raise SpecError(
                "set new_height and new_width together (or neither)", ("dense_image_data_param",)
            )
        if p.new_height:
            return (c, p.new_height, p.new_width)
        if self.declared_shape is None or len(self.declared_shape) != 4:
            raise SpecError(
                "the images' size lives in the image files (no new_height / "
                "new_width): declare it to check the net, e.g. --input-shape "
                f"{self.spec.top[0]}=N,{c},H,W",
                ("dense_image_data_param",),
            )
        return tuple(int(d) for d in self.declared_shape[1:])

    def infer(self, bottoms):
        p = self.p
        require_fields(p, "dense_image_data_param")
        sample = self._sample()
        tp = self.spec.transform_param
        crop = checked_crop(sample, tp)
        data = (p.batch_size, *transform_shape(sample, tp, crop))
        label = (p.batch_size, *transformed_label_shape(sample, (1, *sample[1:]), crop))
        return [data, label][: len(self.spec.top)]

    def data_fact(self) -> DataFact:
        # source None: netc reads no list file; the blobs are given (netc predict), as an Input's
        return DataFact(
            source=None, batch_size=self.p.batch_size, roles=("data", "label")[: len(self.spec.top)]
        )
