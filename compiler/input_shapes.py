"""`--input-shape BLOB=N,C,H,W`: the shapes of data layers whose sizes live outside the spec.

A Caffe ``Data`` layer reading an LMDB or LevelDB database, or an image list, has no sample shape
in the prototxt: Caffe learns it from the first record when the net is set up. `netc check` and
`netc train` take it from the command line instead (an LMDB that is present is also read for it):

    netc check lenet.yaml --input-shape data=N,1,28,28

The first dimension is the batch: a number, which must be the layer's batch_size, or ``N`` for
whatever batch_size each phase's layer has. A declaration names the first top of a data layer;
the layer's other tops (the label) follow from it. The planner checks that every declared blob
comes out of its layer with the declared shape, whichever way the layer learnt it.

    parse_input_shape("data=N,1,28,28")            # -> ("data", ("N", 1, 28, 28))
    declare_input_shapes(spec, {"data": (...)})    # errors into spec.diagnostics

No JAX here (`netc check` imports this).
"""

from __future__ import annotations

from collections.abc import Mapping

from netc.compiler.layer import BATCH, Shape, fmt_shape
from netc.spec.errors import did_you_mean

__all__ = ["InputShapeError", "declare_input_shapes", "parse_input_shape", "shape_text"]

_USAGE = (
    "expected BLOB=N,C,H,W: a blob name, '=', then positive integers separated by commas "
    "(the first, the batch, may be N)"
)


class InputShapeError(ValueError):
    """A malformed --input-shape value; the message says what is wrong with it."""


def shape_text(blob: str, shape: Shape) -> str:
    return f"{blob}={','.join(str(d) for d in shape)}"


def parse_input_shape(text: str) -> tuple[str, Shape]:
    """("data", ("N", 1, 28, 28)) from "data=N,1,28,28"; InputShapeError when malformed."""
    blob, eq, dims = text.partition("=")
    blob = blob.strip()
    if not eq or not blob:
        raise InputShapeError(f"'{text}': {_USAGE}")
    parts = [d.strip() for d in dims.split(",")]
    if parts == [""]:
        raise InputShapeError(f"'{text}': no dimensions after '='; {_USAGE}")
    shape: list[int | str] = []
    for i, d in enumerate(parts):
        if i == 0 and d in (BATCH, "-1"):
            shape.append(BATCH)
        elif d.isdigit() and int(d) > 0:
            shape.append(int(d))
        else:
            what = "an empty dimension" if not d else f"dimension {i + 1} is '{d}'"
            raise InputShapeError(f"'{text}': {what}; {_USAGE}")
    return blob, tuple(shape)


def declare_input_shapes(spec, shapes: Mapping[str, Shape]) -> None:
    """Attach `shapes` (blob -> declared shape) to `spec` for the planner, reporting to the
    spec's diagnostics each blob that is no data layer's first top."""
    from netc.compiler.catalogue import units

    registry = units()
    producers: dict[str, tuple[int, int]] = {}  # blob -> (layer index, top index), first maker
    for i, layer in enumerate(spec.layers):
        for j, top in enumerate(layer.top):
            producers.setdefault(top, (i, j))
    kept = {}
    for blob, shape in shapes.items():
        text = f"--input-shape {shape_text(blob, shape)}"
        if blob not in producers:
            spec.diagnostics.error(
                f"{text}: no blob '{blob}' in this net{did_you_mean(blob, list(producers))}",
                ("layers",),
            )
            continue
        i, j = producers[blob]
        layer, path = spec.layers[i], spec.layer_paths[i]
        unit = registry.get(layer.type)
        if unit is None or not unit.is_data:
            spec.diagnostics.error(
                f"{text}: '{blob}' is made by layer '{layer.name}' "
                f"({layer.type}), not by a data layer; --input-shape declares "
                "the tops of data layers (Data, Input, ...)",
                path + ("top", j),
            )
        elif j:
            spec.diagnostics.error(
                f"{text}: '{blob}' is top {j} of data layer '{layer.name}'; "
                f"declare its first top '{layer.top[0]}' (the others follow "
                "from it)",
                path + ("top", j),
            )
        else:
            kept[blob] = tuple(shape)
    spec.declared_shapes = kept


def declared_mismatch(declared: Shape, got: Shape) -> str | None:
    """Why a data layer's first top `got` is not the `declared` shape (None: it is). A declared
    batch N matches any batch, and a symbolic batch any declared one."""

    def fits(d, g) -> bool:
        return d == BATCH or isinstance(g, str) or int(d) == int(g)

    if len(declared) == len(got) and all(fits(d, g) for d, g in zip(declared, got)):
        return None
    why = f"the layer gives {fmt_shape(got)}"
    if len(declared) == len(got) and all(fits(d, g) for d, g in zip(declared[1:], got[1:])):
        why += " (the first dimension is the batch: the layer's batch_size, or N for any)"
    return why
