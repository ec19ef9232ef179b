"""`netc graph`'s pictures: the graph (runtime/graph.py) laid out by runtime/graph_layout.py and
drawn as SVG (text written here) or PNG (Pillow draws the same geometry). Layer nodes are boxes
coloured by kind (data, learned, op, loss, metric) with the folded in-place layers on a third
line; blob nodes are small captions (shape, and the name when it differs from its writer's);
TRAIN-only nodes and edges are dashed, TEST-only ones dotted."""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from netc.runtime.graph import KIND_COLOURS, Graph, blob_label, node_lines
from netc.runtime.graph_layout import Layout, layout

__all__ = ["Drawing", "draw", "to_png", "to_svg"]

FONT = "Helvetica, Arial, 'Liberation Sans', 'DejaVu Sans', sans-serif"
SIZES = (12.0, 11.0, 10.0)  # name, type, folded layers
LINE = (15.0, 14.0, 13.0)
BLOB_SIZE, BLOB_H = 10.0, 15.0
PAD_X, PAD_Y = 10.0, 6.0
EDGE, PHASE_DASH = "#7a7a7a", {"TRAIN": "6 3", "TEST": "2 2"}
PHASE_STROKE = {"TRAIN": "#b5651d", "TEST": "#2a7f8f"}


@dataclass
class Drawing:
    graph: Graph
    lay: Layout
    lines: dict  # layer node -> its text lines
    labels: dict  # blob node -> its caption

    def phase_only(self, phases: set) -> str | None:
        """The one phase a node or edge belongs to when the other is drawn too, else None."""
        if len(self.graph.phases) > 1 and len(phases) == 1:
            return next(iter(phases))
        return None


def text_width(text: str, size: float, bold: bool = False) -> float:
    """An upper estimate of `text`'s width in a Helvetica-like font (no font file needed)."""
    narrow, wide = set("iljtfrI1.,:;|!'()[]/ "), set("mwMW@%")
    em = sum(
        0.3 if c in narrow else 0.86 if c in wide else 0.68 if c.isupper() else 0.58 for c in text
    )
    return em * size * (1.08 if bold else 1.0)


def draw(graph: Graph) -> Drawing:
    """Size every node from its text and lay the graph out."""
    sizes, lines, labels = {}, {}, {}
    for key, node in graph.nodes.items():
        if node.kind == "layer":
            lines[key] = node_lines(node)
            w = max(text_width(t, SIZES[min(i, 2)], i == 0) for i, t in enumerate(lines[key]))
            h = sum(LINE[min(i, 2)] for i in range(len(lines[key]))) + 2 * PAD_Y
            sizes[key] = (max(w + 2 * PAD_X, 80.0), h)
        else:
            labels[key] = blob_label(graph, node)
            sizes[key] = (text_width(labels[key], BLOB_SIZE) + 10.0, BLOB_H)
    pairs = [(e.src, e.dst) for e in graph.edges]
    return Drawing(graph, layout(sizes, pairs), lines, labels)


def edge_path(points: list) -> str:
    """SVG path data: cubic segments with vertical tangents between consecutive points."""
    (x0, y0), rest = points[0], points[1:]
    d = [f"M{x0:.1f},{y0:.1f}"]
    for x1, y1 in rest:
        m = (y0 + y1) / 2
        d.append(f"C{x0:.1f},{m:.1f} {x1:.1f},{m:.1f} {x1:.1f},{y1:.1f}")
        x0, y0 = x1, y1
    return " ".join(d)


def flatten(points: list, steps: int = 8) -> list:
    """The same curve as `edge_path`, as a polyline (for raster drawing)."""
    out = [points[0]]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        m = (y0 + y1) / 2
        for k in range(1, steps + 1):
            t = k / steps
            a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t * t, t**3
            out.append((a * x0 + b * x0 + c * x1 + d * x1, a * y0 + b * m + c * m + d * y1))
    return out


SVG_STYLE = """
.netc-graph .edge .line { fill: none; stroke: #7a7a7a; stroke-width: 1.2; }
.netc-graph .edge .hit { fill: none; stroke: transparent; stroke-width: 9; }
.netc-graph .edge.only-TRAIN .line { stroke: #b5651d; }
.netc-graph .edge.only-TEST .line { stroke: #2a7f8f; }
.netc-graph .edge:hover .line { stroke: #d04a02 !important; stroke-width: 2.2; }
.netc-graph .layer rect { stroke: #5f6b7a; stroke-width: 1; }
.netc-graph .layer .name { font-weight: bold; font-size: 12px; fill: #1d2733; }
.netc-graph .layer .type { font-size: 11px; fill: #3b4654; }
.netc-graph .layer .folded { font-size: 10px; fill: #5a6573; }
.netc-graph .blob rect { fill: #ffffff; stroke: none; }
.netc-graph .blob text { font-size: 10px; fill: #444; }
.netc-graph .legend text { font-size: 10px; fill: #444; }
"""


def to_svg(d: Drawing) -> str:
    """A standalone SVG document of the drawing. Every node is a <g class="node ..."> with
    data-node="K" (its index in the graph's node order); every edge a <g class="edge"> with
    data-edge="I" (its index in graph.edges); names appear only as escaped text."""
    lay = d.lay
    w, h = lay.width, lay.height + _legend_height(d)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="netc-graph" width="{w:.0f}" '
        f'height="{h:.0f}" viewBox="0 0 {w:.0f} {h:.0f}" font-family={quoteattr(FONT)}>',
        f"<title>{escape(d.graph.name or 'net')}</title>",
        '<defs><marker id="netc-arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#7a7a7a"/>'
        "</marker></defs>",
        f"<style>{SVG_STYLE}</style>",
        '<g class="viewport">',
    ]
    out += _svg_edges(d)
    index = {k: i for i, k in enumerate(d.graph.nodes)}
    for key, node in d.graph.nodes.items():
        out += (
            _svg_layer(d, key, index[key])
            if node.kind == "layer"
            else _svg_blob(d, key, index[key])
        )
    out += _svg_legend(d)
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


def _dash(d: Drawing, phases: set) -> str:
    only = d.phase_only(phases)
    if only is None:
        return ""
    return f' stroke-dasharray="{PHASE_DASH[only]}"'


def _svg_edges(d: Drawing) -> list:
    out = ['<g class="edges">']
    for i, e in enumerate(d.graph.edges):
        path = edge_path(d.lay.routes[(e.src, e.dst)])
        arrow = ' marker-end="url(#netc-arrow)"' if e.dst.startswith("L") else ""
        only = d.phase_only(e.phases)
        cls = f"edge only-{only}" if only else "edge"
        out.append(
            f'<g class="{cls}" data-edge="{i}">'
            f"<title>{escape(e.blob)}  {escape(e.shape)}</title>"
            f'<path class="hit" d="{path}"/>'
            f'<path class="line" d="{path}"{arrow}{_dash(d, e.phases)}/></g>'
        )
    out.append("</g>")
    return out


def _svg_layer(d: Drawing, key: str, k: int) -> list:
    node, lay = d.graph.nodes[key], d.lay
    (w, h), x, y = lay.size[key], lay.x[key] - lay.size[key][0] / 2, lay.y[key]
    only = d.phase_only(node.phases)
    stroke = f' style="stroke: {PHASE_STROKE[only]}; stroke-width: 1.6"' if only else ""
    cls = f"node layer kind-{node.layer.kind}" + (f" only-{only}" if only else "")
    out = [
        f'<g class="{cls}" data-node="{k}"><title>{escape(node.layer.name)} '
        f"({escape(node.layer.type)})</title>",
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="5" '
        f'fill="{KIND_COLOURS[node.layer.kind]}"{_dash(d, node.phases)}{stroke}/>',
    ]
    ty = y + PAD_Y
    for i, text in enumerate(d.lines[key]):
        ty += LINE[min(i, 2)]
        cls = ("name", "type", "folded")[min(i, 2)]
        out.append(
            f'<text class="{cls}" x="{lay.x[key]:.1f}" y="{ty - 3.5:.1f}" '
            f'text-anchor="middle">{escape(text)}</text>'
        )
    out.append("</g>")
    return out


def _svg_blob(d: Drawing, key: str, k: int) -> list:
    lay = d.lay
    (w, h), x, y = lay.size[key], lay.x[key], lay.y[key]
    blob = d.graph.nodes[key]
    return [
        f'<g class="node blob" data-node="{k}"><title>{escape(blob.blob)}  '
        f"{escape(blob.shape)}</title>"
        f'<rect x="{x - w / 2:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="3"/>'
        f'<text x="{x:.1f}" y="{y + h - 4:.1f}" text-anchor="middle">'
        f"{escape(d.labels[key])}</text></g>"
    ]


def _legend_items(d: Drawing) -> list:
    """(text, phase) for each phase that has phase-only nodes or edges, after "both"."""
    seen = {d.phase_only(n.phases) for n in d.graph.nodes.values()}
    seen |= {d.phase_only(e.phases) for e in d.graph.edges}
    phases = [p for p in d.graph.phases if p in seen]
    return [("both phases", None)] + [(f"{p} only", p) for p in phases] if phases else []


def _legend_height(d: Drawing) -> float:
    return 22.0 if _legend_items(d) else 0.0


def _svg_legend(d: Drawing) -> list:
    items = _legend_items(d)
    if not items:
        return []
    out, x, y = ['<g class="legend">'], 16.0, d.lay.height + 6
    for text, phase in items:
        dash = f' stroke-dasharray="{PHASE_DASH[phase]}"' if phase else ""
        colour = PHASE_STROKE.get(phase, "#5f6b7a")
        out.append(
            f'<line x1="{x:.0f}" y1="{y + 5:.0f}" x2="{x + 26:.0f}" y2="{y + 5:.0f}" '
            f'stroke="{colour}" stroke-width="1.6"{dash}/>'
            f'<text x="{x + 32:.0f}" y="{y + 9:.0f}">{escape(text)}</text>'
        )
        x += 40 + text_width(text, 10)
    out.append("</g>")
    return out


# --- PNG ----------------------------------------------------------------------------------------

MAX_PIXELS = 12_000_000


def to_png(d: Drawing, scale: float = 2.0) -> bytes:
    """The drawing rasterised by Pillow at `scale` (lowered for big graphs to stay under
    MAX_PIXELS): the same boxes, captions and curves as the SVG, dashes left out."""
    import io

    from PIL import Image, ImageDraw

    w, h = d.lay.width, d.lay.height + _legend_height(d)
    scale = min(scale, (MAX_PIXELS / (w * h)) ** 0.5)
    img = Image.new("RGB", (max(1, round(w * scale)), max(1, round(h * scale))), "white")
    pen = ImageDraw.Draw(img)
    fonts = {s: _font(s * scale, bold) for s, bold in ((12.0, True), (11.0, False), (10.0, False))}
    for e in d.graph.edges:
        pts = [(px * scale, py * scale) for px, py in flatten(d.lay.routes[(e.src, e.dst)])]
        only = d.phase_only(e.phases)
        pen.line(pts, fill=PHASE_STROKE[only] if only else EDGE, width=max(1, round(scale)))
        if e.dst.startswith("L"):
            _arrow(pen, pts[-1], scale)
    for key, node in d.graph.nodes.items():
        if node.kind == "layer":
            _png_layer(d, pen, key, scale, fonts)
        else:
            (w, h), x, y = d.lay.size[key], d.lay.x[key], d.lay.y[key]
            pen.rectangle(
                [(x - w / 2) * scale, y * scale, (x + w / 2) * scale, (y + h) * scale], fill="white"
            )
            x, y = x * scale, (y + h / 2) * scale
            pen.text((x, y), d.labels[key], fill="#444444", font=fonts[10.0], anchor="mm")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png_layer(d: Drawing, pen, key: str, scale: float, fonts: dict) -> None:
    node, lay = d.graph.nodes[key], d.lay
    (w, h), x0, y0 = lay.size[key], lay.x[key] - lay.size[key][0] / 2, lay.y[key]
    only = d.phase_only(node.phases)
    pen.rounded_rectangle(
        [x0 * scale, y0 * scale, (x0 + w) * scale, (y0 + h) * scale],
        radius=5 * scale,
        fill=KIND_COLOURS[node.layer.kind],
        outline=PHASE_STROKE[only] if only else "#5f6b7a",
        width=max(1, round(scale * (1.6 if only else 1))),
    )
    ty = y0 + PAD_Y
    for i, text in enumerate(d.lines[key]):
        size = SIZES[min(i, 2)]
        ty += LINE[min(i, 2)]
        pen.text(
            (lay.x[key] * scale, (ty - 3.5) * scale),
            text,
            fill="#1d2733",
            font=fonts[size],
            anchor="ms",
        )


def _arrow(pen, tip: tuple, scale: float) -> None:
    x, y = tip
    s = 5 * scale
    pen.polygon([(x, y), (x - s * 0.7, y - s), (x + s * 0.7, y - s)], fill=EDGE)


def _font(size: float, bold: bool):
    """A TrueType sans font at `size` pixels: DejaVu or Liberation when installed, else
    Pillow's own scalable default."""
    from PIL import ImageFont

    names = (["LiberationSans-Bold.ttf", "DejaVuSans-Bold.ttf"] if bold else []) + [
        "LiberationSans-Regular.ttf",
        "DejaVuSans.ttf",
    ]
    for name in names:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)
