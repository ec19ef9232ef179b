"""The closed catalogue of layer types, derived from the unit registry: per-type pydantic models
for validation, `netc layers`, and `netc schema`. A `type` string is only ever a key here."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from typing import Any

from netc.compiler.layer import REGISTRY, Layer
from netc.spec.net import LayerParameter, make_layer_model


def units() -> dict[str, type[Layer]]:
    import netc.compiler.layers  # noqa: F401 - registers every unit

    return dict(sorted(REGISTRY.items()))


def _required(cls) -> bool:
    return any(f.is_required() for f in cls.model_fields.values())


def _layer_model(unit: type[Layer], kind: str) -> type[LayerParameter]:
    fields = {}
    if unit.param_field:
        fields[unit.param_field] = (unit.Param, _required(unit.Param))
    for name, cls in unit.extra_params.items():
        fields[name] = (cls, False)
    return make_layer_model(kind, fields)


class _LayerModels(Mapping):
    """{type: its pydantic model}, each model made when first looked up: a spec validates only
    the types it uses (making all ~60, and their schemas, cost ~0.1 s at every start)."""

    def __init__(self, units: dict[str, type[Layer]]):
        self._units = units
        self._made: dict[str, type[LayerParameter]] = {}

    def __getitem__(self, kind: str) -> type[LayerParameter]:
        if kind not in self._made:
            self._made[kind] = _layer_model(self._units[kind], kind)
        return self._made[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._units)

    def __len__(self) -> int:
        return len(self._units)

    def __contains__(self, kind: object) -> bool:
        return kind in self._units


@functools.cache
def layer_models() -> Mapping[str, type[LayerParameter]]:
    return _LayerModels(units())


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of the spec language for editors."""
    from pydantic.json_schema import models_json_schema

    from netc.spec.net import NetHeader
    from netc.spec.solver import SolverParameter

    models = layer_models()
    _, defs = models_json_schema([(m, "validation") for m in models.values()]
                                 + [(NetHeader, "validation"), (SolverParameter, "validation")])
    defs = defs.get("$defs", {})
    layer_refs = []
    for kind, m in models.items():
        sub = defs[m.__name__]
        sub["properties"]["type"] = {"const": kind}
        layer_refs.append({"$ref": f"#/$defs/{m.__name__}"})
    header = defs.pop("NetHeader")
    props = header["properties"]
    props["layers"] = {"type": "array", "items": {"oneOf": layer_refs}}
    props["solver"] = {"$ref": "#/$defs/SolverParameter"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "netc spec",
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        "$defs": defs,
    }


def type_text(annotation: Any) -> str:
    """A readable type for `netc layers`: `MAX | AVE`, `list of int`, `FillerParameter`."""
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is tuple:
        return f"list of {type_text(args[0])}"
    if args and type(None) in args:
        return " | ".join(type_text(a) for a in args if a is not type(None)) + " (optional)"
    return getattr(annotation, "__name__", str(annotation))


def describe_fields(model) -> list[tuple[str, str, str]]:
    """(name, type, default) of a message's fields, for `netc layers`."""
    rows = []
    for name, f in model.model_fields.items():
        if f.is_required():
            default = "required"
        elif f.default is None:
            default = "unset"
        elif hasattr(f.default, "model_dump"):
            default = "{}"
        else:
            default = json.dumps(list(f.default) if isinstance(f.default, tuple) else f.default)
        rows.append((name, type_text(f.annotation), default))
    return rows
