"""`netc graph SPEC -o net.svg|png|dot|html`: the planned net drawn (runtime/graph.py for the
graph, graph_layout.py for the layout, graph_draw.py for SVG/PNG, graph_page.py for the page).
No JAX: like `netc check`, it only parses and plans."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from netc.runtime.errors import EXIT_OK
from netc.runtime.graph import GraphError

FORMATS = ("svg", "png", "dot", "html")


def output_format(out_path: str, fmt: str | None) -> str:
    """`fmt`, else the output file's suffix; GraphError when neither names a format."""
    if fmt:
        return fmt
    suffix = Path(out_path).suffix.lower().lstrip(".")
    if suffix == "gv":
        return "dot"
    if suffix == "htm":
        return "html"
    if suffix not in FORMATS:
        raise GraphError(
            f"{out_path}: cannot tell the format from the suffix "
            f"'{Path(out_path).suffix}'; use .svg, .png, .dot or .html, or --format"
        )
    return suffix


def render(graph, fmt: str) -> bytes:
    """The graph in `fmt` (svg, png, dot or html) as the bytes of the file."""
    from netc.runtime.graph import to_dot

    if fmt == "dot":
        return to_dot(graph).encode("utf-8")
    from netc.runtime.graph_draw import draw, to_png, to_svg

    drawing = draw(graph)
    if fmt == "png":
        return to_png(drawing)
    if fmt == "html":
        from netc.runtime.graph_page import to_html

        return to_html(drawing).encode("utf-8")
    return to_svg(drawing).encode("utf-8")


def run(
    spec_path: str,
    out_path: str,
    *,
    fmt: str | None = None,
    phase: str = "both",
    stages=(),
    level: int = 0,
    batch: int | None = None,
    input_shapes=None,
    out: TextIO,
) -> int:
    """Draw `spec_path` into `out_path`; a spec with errors raises GraphError (nothing written)."""
    from netc.runtime.checkpoint import write_bytes_atomic
    from netc.runtime.graph import load_graph

    fmt = output_format(out_path, fmt)
    graph = load_graph(
        spec_path, phase=phase, stages=stages, level=level, batch=batch, input_shapes=input_shapes
    )
    data = render(graph, fmt)
    try:
        write_bytes_atomic(out_path, data)
    except OSError as e:
        raise GraphError(f"{out_path}: cannot write: {e.strerror or e}") from e
    layers = sum(1 + len(n.folded) for n in graph.layer_nodes())
    out.write(
        f"wrote {out_path} ({fmt}: {layers} layers in {len(graph.layer_nodes())} nodes, "
        f"{' and '.join(graph.phases)})\n"
    )
    return EXIT_OK
