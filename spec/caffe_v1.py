"""Caffe's legacy net forms and popular forks' additions, upgraded the way Caffe does it.

Works on the importer's raw parse (spec/prototxt.py): a message is ``{field: [(value, token),
...]}``, so every problem can name its line and column.

- V1 nets (NetParameter's ``layers`` of V1LayerParameter, Caffe's ``UpgradeV1Net`` /
  ``UpgradeV1LayerParameter`` in src/caffe/util/upgrade_proto.cpp): the enum ``type`` becomes its
  string name (``CONVOLUTION`` → ``"Convolution"``, ``SOFTMAX_LOSS`` → ``"SoftmaxWithLoss"``);
  ``blobs_lr`` / ``weight_decay`` / ``param`` (V1's blob names) / ``blob_share_mode`` become one
  ``param { lr_mult decay_mult name share_mode }`` per blob; every other field keeps its name (V1's
  ``*_param`` fields are LayerParameter's). A file with both ``layer`` and ``layers`` is refused,
  as Caffe refuses it; V0 layers (``layers { layer { ... } }``) are refused.
- Forks (:func:`fork_fixes`): ``pooling_param.ceil_mode`` (the ceil_mode forks: true → round_mode
  CEIL, false → FLOOR); SegNet's ``BN`` layer (``bn_param { scale_filler shift_filler bn_mode }``):
  ``bn_mode: INFERENCE`` is y = scale·x + shift, a ``Scale`` layer with a bias; the default
  LEARN mode normalises with the batch's statistics in every phase and then scales and shifts: a
  ``BatchNorm`` (``use_global_stats: false``) named ``<name>_bn`` followed by that ``Scale`` layer,
  which keeps the BN layer's name (so its two blobs, scale and shift, load into it).
  SegNet's ``Upsample`` (``upsample_h/w``) is read by netc as it is.
- Checks (:func:`layer_problems`) against netc's own schema: a ``*_param`` block that the layer's
  type does not read is dropped with a warning (Caffe ignores it too); a layer type netc does not
  implement and fields netc does not know are reported by name and line and kept, so that
  `netc check` refuses them and nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["V1_TYPES", "upgrade_v1_layer", "fork_fixes", "layer_problems", "CAFFE_PARAM_FIELDS"]

# V1LayerParameter.LayerType (caffe.proto) → the type string UpgradeV1LayerType gives it.
V1_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}
# The enum's numbers, for a binary V1 net (.caffemodel): LayerType value → name.
V1_TYPE_NUMBERS = {
    0: "NONE", 35: "ABSVAL", 1: "ACCURACY", 30: "ARGMAX", 2: "BNLL", 3: "CONCAT",
    37: "CONTRASTIVE_LOSS", 4: "CONVOLUTION", 5: "DATA", 39: "DECONVOLUTION", 6: "DROPOUT",
    32: "DUMMY_DATA", 7: "EUCLIDEAN_LOSS", 25: "ELTWISE", 38: "EXP", 8: "FLATTEN", 9: "HDF5_DATA",
    10: "HDF5_OUTPUT", 28: "HINGE_LOSS", 11: "IM2COL", 12: "IMAGE_DATA", 13: "INFOGAIN_LOSS",
    14: "INNER_PRODUCT", 15: "LRN", 29: "MEMORY_DATA", 16: "MULTINOMIAL_LOGISTIC_LOSS", 34: "MVN",
    17: "POOLING", 26: "POWER", 18: "RELU", 19: "SIGMOID", 27: "SIGMOID_CROSS_ENTROPY_LOSS",
    36: "SILENCE", 20: "SOFTMAX", 21: "SOFTMAX_LOSS", 22: "SPLIT", 33: "SLICE", 23: "TANH",
    24: "WINDOW_DATA", 31: "THRESHOLD",
}

# Every `*_param` field of BVLC caffe.proto's LayerParameter (a block Caffe parses on any layer
# and only the owning type reads).
CAFFE_PARAM_FIELDS = frozenset("""
    transform_param loss_param accuracy_param argmax_param batch_norm_param bias_param clip_param
    concat_param contrastive_loss_param convolution_param crop_param data_param dropout_param
    dummy_data_param eltwise_param elu_param embed_param exp_param flatten_param hdf5_data_param
    hdf5_output_param hinge_loss_param image_data_param infogain_loss_param inner_product_param
    input_param log_param lrn_param memory_data_param mvn_param parameter_param pooling_param
    power_param prelu_param python_param recurrent_param reduction_param relu_param reshape_param
    scale_param sigmoid_param softmax_param spp_param slice_param swish_param tanh_param
    threshold_param tile_param window_data_param
""".split())

# Fields of V1LayerParameter that LayerParameter spells differently (the rest keep their name).
_V1_PARAM_FIELDS = ("param", "blob_share_mode", "blobs_lr", "weight_decay")


class UpgradeError(ValueError):
    def __init__(self, message: str, tok):
        super().__init__(message)
        self.message, self.tok = message, tok


def upgrade_v1_layer(layer: dict) -> dict:
    """One V1LayerParameter (raw) → a LayerParameter (raw), as UpgradeV1LayerParameter does."""
    if "layer" in layer:
        raise UpgradeError("V0 layer (layers { layer { ... } }): netc reads V1 and current nets; "
                           "upgrade V0 files with Caffe's tools/upgrade_net_proto_text first",
                           layer["layer"][0][1])
    out: dict[str, list] = {}
    for key in ("name", "type", "bottom", "top"):
        if key in layer:
            out[key] = layer[key]
    types = []
    for value, ttok in layer.get("type", []):
        if isinstance(value, str) and type(value) is not str:  # an identifier: the V1 enum
            if str(value) not in V1_TYPES or not V1_TYPES[str(value)]:
                raise UpgradeError(f"V1 layer type {value} is not one of caffe.proto's "
                                   "V1LayerParameter.LayerType values", ttok)
            types.append((V1_TYPES[str(value)], ttok))
        else:  # a quoted type in a V1 block: taken as the type string
            types.append((value, ttok))
    if types:
        out["type"] = types
    # blobs_lr / weight_decay / param / blob_share_mode → param { ... } per blob
    n = max((len(layer.get(k, [])) for k in _V1_PARAM_FIELDS), default=0)
    specs = []
    for i in range(n):
        spec: dict[str, list] = {}
        first = None
        for v1, new in (("param", "name"), ("blob_share_mode", "share_mode"),
                        ("blobs_lr", "lr_mult"), ("weight_decay", "decay_mult")):
            items = layer.get(v1, [])
            if i < len(items):
                value, vtok = items[i]
                if isinstance(value, dict):
                    raise UpgradeError(f"V1 field '{v1}' must be a scalar, got a message", vtok)
                spec[new] = [(value, vtok)]
                first = first or vtok
        specs.append((spec, first))
    if specs:  # after bottom/top, where Caffe's upgraded layer has them
        out["param"] = specs
    for key, items in layer.items():
        if key not in out and key not in _V1_PARAM_FIELDS:
            out[key] = items
    return out


def _scalar(msg: dict, key: str):
    items = msg.get(key) or []
    return items[-1] if items else (None, None)


def fork_fixes(layer: dict, make_ident: Callable[[str], Any]) -> list[dict]:
    """A raw layer → the raw layers netc reads (usually the same one)."""
    kind, ktok = _scalar(layer, "type")
    for pp, _ in layer.get("pooling_param", []):
        if isinstance(pp, dict) and "ceil_mode" in pp:
            value, vtok = pp["ceil_mode"][-1]
            if not isinstance(value, bool):
                raise UpgradeError(f"pooling_param.ceil_mode must be true or false, got {value!r}",
                                   vtok)
            mode = "CEIL" if value else "FLOOR"
            if "round_mode" in pp and str(pp["round_mode"][-1][0]) != mode:
                raise UpgradeError(f"pooling_param: ceil_mode: {str(value).lower()} contradicts "
                                   f"round_mode: {pp['round_mode'][-1][0]}", vtok)
            del pp["ceil_mode"]
            pp["round_mode"] = [(make_ident(mode), vtok)]
    if kind == "BN":
        return _segnet_bn(layer, ktok, make_ident)
    return [layer]


def _segnet_bn(layer: dict, ktok, make_ident) -> list[dict]:
    bn = {}
    for value, _vtok in layer.get("bn_param", []):
        if isinstance(value, dict):
            bn.update(value)
    for key in bn:
        if key not in ("scale_filler", "shift_filler", "bn_mode"):
            raise UpgradeError(f"BN layer (SegNet's): bn_param.{key} is not a field netc knows "
                               "how to translate (scale_filler, shift_filler, bn_mode)",
                               bn[key][0][1])
    mode = str(bn["bn_mode"][-1][0]) if "bn_mode" in bn else "LEARN"
    if mode not in ("LEARN", "INFERENCE"):
        raise UpgradeError(f"BN layer: bn_mode must be LEARN or INFERENCE, got {mode}",
                           bn["bn_mode"][-1][1])
    common = {k: v for k, v in layer.items() if k not in ("type", "bn_param", "param", "name",
                                                          "bottom", "top")}
    scale_param: dict[str, list] = {}
    if "scale_filler" in bn:
        scale_param["filler"] = bn["scale_filler"]
    scale_param["bias_term"] = [(True, ktok)]
    if "shift_filler" in bn:
        scale_param["bias_filler"] = bn["shift_filler"]
    scale = {"name": layer.get("name", []), "type": [("Scale", ktok)]}
    bottom, top = layer.get("bottom", []), layer.get("top", [])
    if mode == "INFERENCE":
        scale.update(bottom=bottom, top=top)
        if "param" in layer:
            scale["param"] = layer["param"]
        scale.update(common)
        scale["scale_param"] = [(scale_param, ktok)]
        return [scale]
    name = layer.get("name", [])
    bn_name = [(f"{n}_bn", t) for n, t in name[-1:]]
    in_place = [b for b, _ in bottom] == [t for t, _ in top]
    mid = top if in_place else [(f"{t}_bn" if isinstance(t, str) else t, tt)
                                for t, tt in top[-1:]]
    norm = {"name": bn_name, "type": [("BatchNorm", ktok)], "bottom": bottom, "top": mid}
    norm.update(common)
    norm["batch_norm_param"] = [({"use_global_stats": [(False, ktok)]}, ktok)]
    scale.update(bottom=mid, top=top)
    if "param" in layer:
        scale["param"] = layer["param"]
    scale.update(common)
    scale["scale_param"] = [(scale_param, ktok)]
    return [norm, scale]


def layer_problems(layer: dict, models: dict, caffe_types: frozenset) -> list[tuple[str, Any, str]]:
    """(severity, token, message) for one raw layer; a stray `*_param` block is removed."""
    out: list[tuple[str, Any, str]] = []
    kind, ktok = _scalar(layer, "type")
    name, _ = _scalar(layer, "name")
    who = f"layer '{name}'" if isinstance(name, str) else "a layer"
    if not isinstance(kind, str):
        return out
    model = models.get(kind)
    if model is None:
        if kind in caffe_types:
            out.append(("warning", ktok, f"{who}: type {kind} is a Caffe layer type netc does not "
                                         "support; kept in the YAML (netc check will refuse it)"))
        else:
            out.append(("warning", ktok, f"{who}: type {kind} is not a layer type netc knows (a "
                                         "Caffe fork's?); kept in the YAML (netc check will "
                                         "refuse it)"))
        return out
    fields = model.model_fields
    for key in list(layer):
        items = layer[key]
        ftok = items[0][1] if items else ktok
        if key not in fields:
            if key in CAFFE_PARAM_FIELDS or key.endswith("_param"):
                out.append(("warning", ftok, f"{who} ({kind}): {key} is not read by a {kind} "
                                             "layer (Caffe ignores it); dropped"))
                del layer[key]
            else:
                out.append(("warning", ftok, f"{who} ({kind}): {key} is not a LayerParameter "
                                             "field netc knows; kept (netc check will refuse it)"))
            continue
        sub = _message_class(fields[key].annotation)
        if sub is not None:
            for value, _vtok in items:
                if isinstance(value, dict):
                    _unknown_fields(value, sub, key, who, kind, out)
    return out


def _message_class(annotation):
    """The pydantic message class inside an annotation (X, X | None, tuple[X, ...]), or None."""
    from typing import get_args

    from pydantic import BaseModel

    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        stack.extend(get_args(a))
    return None


def _unknown_fields(msg: dict, model, path: str, who: str, kind: str, out: list) -> None:
    fields = model.model_fields
    for key, items in msg.items():
        ftok = items[0][1] if items else None
        if key not in fields:
            out.append(("warning", ftok, f"{who} ({kind}): {path}.{key} is not a field netc "
                                         "knows (a Caffe fork's?); kept (netc check will refuse "
                                         "it)"))
            continue
        sub = _message_class(fields[key].annotation)
        if sub is not None:
            for value, _ in items:
                if isinstance(value, dict):
                    _unknown_fields(value, sub, f"{path}.{key}", who, kind, out)
