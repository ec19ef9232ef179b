"""The netc document: NetParameter (+ an optional `solver:` section) read from YAML, validated
per layer type, every problem reported with FILE:LINE:COL."""

from __future__ import annotations

import functools
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from netc.files import FileRefused, read_regular
from netc.spec.errors import Diagnostics, Path, did_you_mean
from netc.spec.messages import (
    BlobShape,
    InputParameter,
    Message,
    NetState,
    NetStateRule,
    ParamSpec,
    Phase,
    Repeated,
)
from netc.spec.yaml_io import MAX_BYTES, YamlError, read_yaml

# Every layer type BVLC Caffe registers (REGISTER_LAYER_CLASS / REGISTER_LAYER_CREATOR in
# src/caffe/layers/*.cpp and layer_factory.cpp, at 9b89154). A type here that netc's registry
# lacks is reported as "not supported yet" rather than as a misspelling of a netc type.
CAFFE_LAYER_TYPES = frozenset("""
    AbsVal Accuracy ArgMax BNLL BatchNorm BatchReindex Bias Clip Concat ContrastiveLoss Convolution
    Crop Data Deconvolution Dropout DummyData ELU Eltwise Embed EuclideanLoss Exp Filter Flatten
    HDF5Data HDF5Output HingeLoss Im2col ImageData InfogainLoss InnerProduct Input LRN LSTM LSTMUnit
    Log MVN MemoryData MultinomialLogisticLoss PReLU Parameter Pooling Power Python RNN ReLU
    Reduction Reshape SPP Scale Sigmoid SigmoidCrossEntropyLoss Silence Slice Softmax
    SoftmaxWithLoss Split Swish TanH Threshold Tile WindowData
""".split())


class LayerParameter(Message):
    """Fields every layer has (caffe.proto's LayerParameter); each type adds its `*_param`."""

    name: str
    type: str
    bottom: Repeated(str) = ()
    top: Repeated(str) = ()
    phase: Phase | None = None
    loss_weight: Repeated(float) = ()
    param: Repeated(ParamSpec) = ()
    propagate_down: Repeated(bool) = ()
    include: Repeated(NetStateRule) = ()
    exclude: Repeated(NetStateRule) = ()

    def in_state(self, state: NetState) -> bool:
        """Caffe's Net::FilterNet: kept when any include rule matches (or there is none) and no
        exclude rule matches."""
        if self.include:
            return any(r.matches(state) for r in self.include)
        return not any(r.matches(state) for r in self.exclude)


class NetHeader(Message):
    """NetParameter's fields other than `layer` (YAML `layers`), plus netc's `solver` section."""

    name: str | None = None
    input: Repeated(str) = ()
    input_shape: Repeated(BlobShape) = ()
    input_dim: Repeated(int) = ()
    force_backward: bool = False
    state: NetState | None = None
    debug_info: bool = False
    layers: Any = None  # validated layer by layer
    solver: Any = None  # validated as a SolverParameter


@dataclass
class NetSpec:
    """A validated document. `layers[i]` came from YAML path `layer_paths[i]`."""

    file: str
    name: str | None
    layers: list[LayerParameter]
    layer_paths: list[Path]
    diagnostics: Diagnostics
    state: NetState | None = None
    solver: Any = None
    solver_file: str | None = None
    # Where a solver read from another file lives (its Diagnostics and its path in that
    # document), so that an error found later in it points there; None: the `solver:` section.
    solver_origin: tuple[Diagnostics, Path] | None = None
    # Tops of layers that failed validation: later layers using them are not reported again.
    failed_tops: set[str] = field(default_factory=set)
    # Bottoms of layers that failed validation: still read by a layer, so never "unused".
    failed_bottoms: set[str] = field(default_factory=set)
    # blob -> shape declared with --input-shape (compiler/input_shapes.py), for data layers
    # whose sizes live outside the spec
    declared_shapes: dict[str, tuple] = field(default_factory=dict)

    @functools.cached_property
    def spec_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.file))


# --- pydantic errors -> netc messages -----------------------------------------------------------


def _field_model(annotation: Any) -> type[BaseModel] | None:
    """The message class inside an annotation like `Repeated(ParamSpec)` or `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        m = _field_model(arg)
        if m is not None:
            return m
    return None


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        if info is None:
            return None
        sub = _field_model(info.annotation)
        if sub is None:
            return None
        model = sub
    return model


def _written_loc(raw: Any, loc: tuple) -> tuple:
    """`loc` as the user wrote it: a repeated field given as a scalar has no index."""
    out = []
    for part in loc:
        if isinstance(part, int):
            if not isinstance(raw, list):
                continue  # pydantic's index into a scalar written for a repeated field
            raw = raw[part] if part < len(raw) else None
        else:
            raw = raw.get(part) if isinstance(raw, dict) else None
        out.append(part)
    return tuple(out)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "nothing (null)"
    return type(value).__name__


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, dict | list):
        return _kind(value)
    return repr(value) if not isinstance(value, float) else f"{value:g}"


_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "model_type": "a mapping",
    "dict_type": "a mapping",
    "model_attributes_type": "a mapping",
}

_BOUND = {
    "greater_than_equal": ("≥", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("≤", "le"),
    "less_than": ("<", "lt"),
}


def error_message(e: dict, model: type[BaseModel], raw: Any, loc: tuple) -> str:
    """One pydantic error as a netc message (without the location prefix)."""
    t, value = e["type"], e.get("input")
    ctx = e.get("ctx") or {}
    if t == "missing":
        return "missing required field"
    if t == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        choices = list(parent.model_fields) if parent else []
        hint = did_you_mean(str(loc[-1]), choices)
        if not hint and parent is not None and str(loc[-1]).endswith("_param"):
            own = [f for f in choices if f.endswith("_param")]
            if own:
                hint = f" (this layer type takes {', '.join(own)})"
            else:
                hint = " (this layer type takes no *_param block)"
        return f"unknown field{hint}"
    if t == "literal_error":
        expected = [x.strip().strip("'") for x in ctx.get("expected", "").replace(" or ", ", ").split(",")]
        return f"{_show(value)} is not one of {', '.join(expected)}{did_you_mean(str(value), expected)}"
    if t in _EXPECTED:
        return f"expected {_EXPECTED[t]}, got {_kind(value)} {_show(value) if not isinstance(value, dict | list) else ''}".rstrip()
    if t in _BOUND:
        sym, key = _BOUND[t]
        return f"must be {sym} {ctx.get(key)}, got {_show(value)}"
    if t == "finite_number":
        return f"must be a finite number, got {_show(value)}"
    if t == "value_error":
        return str(ctx.get("error", e["msg"]))
    return e["msg"]


def _loc_text(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def report_validation(
    err: ValidationError,
    model: type[BaseModel],
    raw: Any,
    base: Path,
    diags: Diagnostics,
    prefix: str,
    root: str = "",
) -> None:
    for e in err.errors():
        loc = tuple(e["loc"])
        loc = _written_loc(raw, loc)
        # `X | None` unions report the member tried ('constrained-int', ...): keep field names only.
        loc = tuple(p for p in loc if isinstance(p, int) or p in _names_along(model, loc))
        msg = error_message(e, model, raw, loc)
        where = ".".join(w for w in (root, _loc_text(loc)) if w)
        diags.error(f"{prefix}{where}: {msg}" if where else f"{prefix}{msg}", base + loc)


def _names_along(model: type[BaseModel], loc: tuple) -> set[str]:
    names: set[str] = set()
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        names.add(part)  # unknown names are kept: they are the error
        if current is not None:
            info = current.model_fields.get(part)
            current = _field_model(info.annotation) if info else None
    return names


# --- loading -------------------------------------------------------------------------------------


def read_document(path: str, diags: Diagnostics) -> Any:
    """Read a YAML file into plain data, recording positions; errors go to `diags`."""
    try:
        text = read_regular(path, MAX_BYTES)
    except FileRefused as e:
        diags.error(f"cannot read this file: it {e.message}")
        return None
    except OSError as e:
        diags.error(f"cannot read file: {e.strerror}")
        return None
    if path.lower().endswith(CAFFE_TEXT_SUFFIXES) and b"\0" not in text[:4096]:
        return _report_caffe_text(path, _caffe_block(text) or (1, 1), diags)
    try:
        doc = read_yaml(text)
    except YamlError as e:
        if _caffe_block(text):
            return _report_caffe_text(path, _caffe_block(text), diags)
        diags.positions[("__yaml__",)] = (e.line, e.col)
        diags.error(e.message, ("__yaml__",))
        return None
    diags.positions.update(doc.positions)
    return doc.data


# Caffe's names for text-format files (a binary .pt, PyTorch's, is not one).
CAFFE_TEXT_SUFFIXES = (".prototxt", ".pt")
# A message field opened with a brace at the start of a line (`layer {`, `input_shape {`): protobuf
# text format; a YAML mapping key always has a colon.
_CAFFE_BLOCK = re.compile(rb"^[ \t]*[A-Za-z_][A-Za-z0-9_]*[ \t]*\{", re.M)


def _caffe_block(text: bytes) -> tuple[int, int] | None:
    """Line:column of the first `name {` block: the mark of Caffe's protobuf text format."""
    block = _CAFFE_BLOCK.search(text)
    if block is None:
        return None
    line = text.count(b"\n", 0, block.start()) + 1
    return (line, len(block.group()) - len(block.group().lstrip()) + 1)


def _report_caffe_text(path: str, where: tuple[int, int], diags: Diagnostics) -> None:
    out = os.path.splitext(path)[0] + ".yaml"
    out = out if out != path else os.path.splitext(path)[0] + ".netc.yaml"
    diags.positions[("__caffe__",)] = where
    diags.error(f"this is Caffe's protobuf text format (.prototxt), not netc YAML; convert it with: "
                f"netc import-caffe {path} -o {out}", ("__caffe__",))
    return None


def layer_label(raw: Any, index: int) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    kind = raw.get("type") if isinstance(raw, dict) else None
    who = f"layer '{name}'" if isinstance(name, str) else f"layer #{index + 1}"
    return f"{who} ({kind}): " if isinstance(kind, str) else f"{who}: "


def _blobs_of(raw: Any, key: str) -> set[str]:
    names = raw.get(key) if isinstance(raw, dict) else None
    names = names if isinstance(names, list) else [names]
    return {t for t in names if isinstance(t, str)}


def validate_layers(
    raw_layers: Any, layer_models: Mapping[str, type[LayerParameter]], diags: Diagnostics,
    failed_tops: set[str], failed_bottoms: set[str] | None = None,
) -> tuple[list[LayerParameter], list[Path]]:
    layers: list[LayerParameter] = []
    paths: list[Path] = []
    if raw_layers is None:
        return layers, paths
    if isinstance(raw_layers, dict):
        raw_layers = [raw_layers]
    if not isinstance(raw_layers, list):
        diags.error(f"layers: expected a list of layers, got {_kind(raw_layers)}", ("layers",))
        return layers, paths
    for i, raw in enumerate(raw_layers):
        path: Path = ("layers", i)
        prefix = layer_label(raw, i)
        if not isinstance(raw, dict):
            diags.error(f"{prefix}expected a mapping (name, type, bottom, top, ...), got {_kind(raw)}", path)
            continue
        before = len(diags.errors)
        layer = _validate_layer(raw, path, prefix, layer_models, diags)
        if layer is None or len(diags.errors) > before:
            failed_tops.update(_blobs_of(raw, "top"))
            if failed_bottoms is not None:
                failed_bottoms.update(_blobs_of(raw, "bottom"))
            continue
        layers.append(layer)
        paths.append(path)
    return layers, paths


def _validate_layer(raw: dict, path: Path, prefix: str,
                layer_models: Mapping[str, type[LayerParameter]], diags: Diagnostics):
    kind = raw.get("type")
    if kind is None:
        diags.error(f"{prefix}type: missing required field", path)
        return None
    if isinstance(kind, str) and kind in CAFFE_LAYER_TYPES and kind not in layer_models:
        diags.error(f"{prefix}type: layer type '{kind}' is a Caffe layer type that netc does not "
                    f"support yet (`netc layers` lists the supported types)", path + ("type",))
        return None
    if not isinstance(kind, str) or kind not in layer_models:
        diags.error(f"{prefix}type: unknown layer type {_show(kind)}"
                    f"{did_you_mean(str(kind), layer_models)}", path + ("type",))
        return None
    model = layer_models[kind]
    try:
        layer = model.model_validate(raw)
    except ValidationError as err:
        report_validation(err, model, raw, path, diags, prefix)
        return None
    if layer.include and layer.exclude:
        diags.error(f"{prefix}give include or exclude rules, not both (Caffe's NetStateRule)",
                    path + ("exclude",))
        return None
    return layer


def legacy_inputs(header: NetHeader, diags: Diagnostics) -> dict | None:
    """The old `input:` / `input_dim:` / `input_shape:` header as an Input layer mapping."""
    if not header.input:
        if header.input_dim or header.input_shape:
            diags.error("input_dim/input_shape: given without `input` blob names", ("input_dim",))
        return None
    n = len(header.input)
    if header.input_shape:
        if len(header.input_shape) != n:
            diags.error(f"input_shape: {len(header.input_shape)} shapes for {n} inputs", ("input_shape",))
            return None
        shapes = [s.dim for s in header.input_shape]
    elif header.input_dim:
        if len(header.input_dim) != 4 * n:
            diags.error(f"input_dim: needs 4 values (N, C, H, W) per input: {len(header.input_dim)} "
                        f"given for {n} input(s)", ("input_dim",))
            return None
        shapes = [header.input_dim[4 * i: 4 * i + 4] for i in range(n)]
    else:
        diags.error("input: needs input_shape or input_dim", ("input",))
        return None
    return {"name": "input", "type": "Input", "top": list(header.input),
            "input_param": InputParameter(shape=tuple(BlobShape(dim=tuple(s)) for s in shapes))}


def parse_spec(
    path: str, layer_models: Mapping[str, type[LayerParameter]], *, display_name: str | None = None
) -> NetSpec:
    """Load and validate a spec file (a net, optionally with `solver:`, or a solver file that names
    its `net`). Problems are collected in the returned spec's diagnostics; never raises for bad
    input."""
    diags = Diagnostics(display_name or path)
    spec = NetSpec(path, None, [], [], diags)
    data = read_document(path, diags)
    if data is None:
        if not diags.errors:
            diags.error("the file is empty: expected a net (name, layers, ...)")
        return spec
    if not isinstance(data, dict):
        diags.error(f"expected a mapping at the top (name, layers, ...), got {_kind(data)}")
        return spec
    if "net" in data and "layers" not in data:
        return _parse_solver_file(path, data, diags, layer_models)
    try:
        header = NetHeader.model_validate(data)
    except ValidationError as err:
        report_validation(err, NetHeader, data, (), diags, "")
        header = NetHeader.model_validate({k: v for k, v in data.items() if k in ("layers", "solver")})
    spec.name = header.name
    spec.state = header.state
    raw_layers = header.layers
    legacy = legacy_inputs(header, diags)
    layers, paths = validate_layers(raw_layers, layer_models, diags, spec.failed_tops,
                                    spec.failed_bottoms)
    if legacy is not None:
        layers.insert(0, layer_models["Input"].model_validate(legacy))
        paths.insert(0, ("input",))
    spec.layers, spec.layer_paths = layers, paths
    if not layers and not diags.errors:
        diags.error("layers: the net has no layers", ("layers",))
    if header.solver is not None:
        spec.solver = validate_solver(header.solver, diags, ("solver",), "solver")
    return spec


def validate_solver(raw: Any, diags: Diagnostics, base: Path, root: str) -> Any:
    from netc.spec.solver import SolverParameter

    if not isinstance(raw, dict):
        diags.error(f"{root or 'solver'}: expected a mapping of SolverParameter fields, got {_kind(raw)}", base)
        return None
    try:
        solver = SolverParameter.model_validate(raw)
    except ValidationError as err:
        report_validation(err, SolverParameter, raw, base, diags, "", root)
        return None
    for name, message in solver.ignored_fields(section=bool(root)):
        diags.warning(f"{'.'.join(w for w in (root, name) if w)}: {message}", base + (name,))
    return solver


def _parse_solver_file(path, data, diags, layer_models) -> NetSpec:
    solver = validate_solver(data, diags, (), "")
    net_path = data.get("net")
    if not isinstance(net_path, str):
        return NetSpec(path, None, [], [], diags)
    full = net_path if os.path.isabs(net_path) else os.path.join(os.path.dirname(path), net_path)
    if not os.path.exists(full):
        diags.error(f"net: no such file '{net_path}' (looked in {os.path.dirname(path) or '.'})", ("net",))
        return NetSpec(path, None, [], [], diags)
    spec = parse_spec(full, layer_models)
    for d in diags.items:
        spec.diagnostics.items.append(d)
    if spec.solver is not None and solver is not None:
        spec.diagnostics.warning(f"the solver file {path} overrides the net's own solver: section",
                                 ("solver",))
    spec.solver = solver if solver is not None else spec.solver
    spec.solver_file = path
    if solver is not None:
        spec.solver_origin = (diags, ())
    return spec


def make_layer_model(kind: str, fields: Mapping[str, tuple[type[Message], bool]]) -> type[LayerParameter]:
    """The pydantic model for one layer type: LayerParameter plus its `*_param` blocks.
    `fields` maps a field name to (message class, required)."""
    from pydantic import create_model

    definitions: dict[str, Any] = {}
    for name, (cls, required) in fields.items():
        definitions[name] = (cls, ...) if required else (cls, cls())
    model = create_model(f"{kind}Layer", __base__=LayerParameter, **definitions)
    model.__doc__ = f"A `{kind}` layer."
    return model


__all__ = ["LayerParameter", "NetSpec", "parse_spec", "make_layer_model"]
