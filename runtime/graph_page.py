"""`netc graph -o net.html`: one self-contained page (no network access: the SVG, the style, the
script and the data are all inline). Click a layer for its type, YAML fields, bottom and top
shapes, parameter count and MACs in a side panel; hover an edge for its blob and shape; drag to
pan, ctrl+wheel (or the buttons) to zoom.

The layer data goes in as JSON inside <script type="application/json">, with every `<`, `>`, `&`
and line separator written as a \\u escape, so no layer name or field can close the element;
the script builds the panel with textContent only, never innerHTML."""

from __future__ import annotations

import json
from dataclasses import asdict
from xml.sax.saxutils import escape

from netc.runtime.graph import Graph
from netc.runtime.graph_draw import Drawing, to_svg

__all__ = ["page_data", "script_json", "to_html"]


def page_data(graph: Graph) -> dict:
    """What the page's script reads: nodes in the SVG's data-node order, edges in its data-edge
    order, and the totals per phase."""
    readers: dict[str, list[str]] = {}
    for e in graph.edges:
        if not e.src.startswith("L"):
            readers.setdefault(e.src, []).append(graph.nodes[e.dst].layer.name)
    nodes = []
    for key, n in graph.nodes.items():
        common = {"kind": n.kind, "phases": [p for p in graph.phases if p in n.phases]}
        if n.kind == "layer":
            nodes.append(
                {
                    **common,
                    "layer": _layer_data(n.layer),
                    "folded": [_layer_data(f) for f in n.folded],
                }
            )
        else:
            nodes.append(
                {
                    **common,
                    "blob": n.blob,
                    "shape": n.shape,
                    "writer": graph.nodes[n.holder].layer.name,
                    "readers": readers.get(key, []),
                }
            )
    edges = [
        {
            "blob": e.blob,
            "shape": e.shape,
            "phases": [p for p in graph.phases if p in e.phases],
            "from": _end_name(graph, e.src),
            "to": _end_name(graph, e.dst),
        }
        for e in graph.edges
    ]
    return {
        "name": graph.name,
        "phases": graph.phases,
        "totals": graph.totals,
        "nodes": nodes,
        "edges": edges,
    }


def _layer_data(info) -> dict:
    """A LayerInfo for the page, its fields also written as the YAML they came from."""
    import yaml

    fields = (
        yaml.safe_dump(
            info.fields, default_flow_style=None, sort_keys=False, allow_unicode=True, width=60
        )
        if info.fields
        else ""
    )
    return {**asdict(info), "yaml": fields}


def _end_name(graph: Graph, key: str) -> str:
    node = graph.nodes[key]
    return node.layer.name if node.kind == "layer" else graph.nodes[node.holder].layer.name


_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def script_json(data) -> str:
    """`data` as JSON that is safe inside a <script> element: nothing in it can end the element
    or open a comment, whatever the strings hold."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return "".join(_JSON_ESCAPES.get(c, c) for c in text)


def _summary(graph: Graph) -> str:
    """The totals per phase, once when the phases agree."""
    said: dict[str, list[str]] = {}
    for ph, t in graph.totals.items():
        text = f"{t['trainable'] + t['non_trainable']:,} parameters · {t['macs']:,} MACs/sample"
        said.setdefault(text, []).append(ph)
    return " | ".join(f"{' and '.join(phases)}: {text}" for text, phases in said.items())


def to_html(d: Drawing) -> str:
    """The page for the drawing `d` (see the module's docstring)."""
    graph = d.graph
    title = escape(graph.name or "net")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{title} · netc graph</title>",
            f"<style>{PAGE_CSS}</style></head><body>",
            f'<header><h1>{title}</h1><span class="summary">{escape(_summary(graph))}</span>'
            '<span class="tools"><button id="zoom-in" title="zoom in">+</button>'
            '<button id="zoom-out" title="zoom out">−</button>'
            '<button id="fit" title="fit the width">fit</button></span>'
            '<span class="hint">click a layer · drag to pan · ctrl+wheel to zoom</span></header>',
            f'<main><div id="canvas">{to_svg(d)}</div>',
            '<aside id="panel" hidden><button id="close" title="close">×</button>'
            '<div id="details"></div></aside></main><div id="tip" hidden></div>',
            f'<script type="application/json" id="netc-data">{script_json(page_data(graph))}</script>',
            f"<script>{PAGE_JS}</script>",
            "</body></html>",
            "",
        ]
    )


PAGE_CSS = """
html, body { margin: 0; height: 100%; font: 13px/1.4 Helvetica, Arial, 'Liberation Sans',
  'DejaVu Sans', sans-serif; color: #1d2733; }
body { display: flex; flex-direction: column; }
header { display: flex; align-items: baseline; gap: 14px; padding: 8px 14px;
  border-bottom: 1px solid #d5dae0; background: #f7f8fa; flex-wrap: wrap; }
header h1 { font-size: 16px; margin: 0; }
header .summary, header .hint { color: #5a6573; }
header .hint { margin-left: auto; font-size: 12px; }
header button { font: inherit; padding: 1px 8px; margin-right: 2px; cursor: pointer; }
main { flex: 1; display: flex; min-height: 0; }
#canvas { flex: 1; overflow: hidden; position: relative; cursor: grab; background: #fff; }
#canvas.dragging { cursor: grabbing; }
#canvas svg { display: block; width: 100%; height: 100%; }
.netc-graph .layer { cursor: pointer; }
.netc-graph .layer.selected rect { stroke: #d04a02; stroke-width: 2.5; }
#panel { width: 340px; overflow: auto; border-left: 1px solid #d5dae0; padding: 10px 14px;
  background: #fbfbfc; position: relative; }
#panel h2 { font-size: 16px; margin: 4px 0 0; word-break: break-all; }
#panel h3 { font-size: 13px; margin: 14px 0 4px; border-top: 1px solid #e2e5ea; padding-top: 8px; }
#panel .type { color: #3b4654; margin-bottom: 6px; }
#panel .phase { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 8px;
  background: #e8eef5; margin-right: 4px; }
#panel table { border-collapse: collapse; width: 100%; }
#panel td { padding: 2px 4px; vertical-align: top; word-break: break-all; }
#panel td:first-child { color: #5a6573; white-space: nowrap; word-break: normal; width: 1%;
  padding-right: 14px; }
#panel pre { background: #f0f2f5; padding: 6px; font-size: 11px; overflow: auto;
  white-space: pre-wrap; word-break: break-all; }
#close { position: absolute; right: 8px; top: 6px; border: none; background: none;
  font-size: 18px; cursor: pointer; }
#tip { position: fixed; pointer-events: none; background: #1d2733; color: #fff; font-size: 12px;
  padding: 3px 7px; border-radius: 4px; white-space: nowrap; }
"""

PAGE_JS = r"""
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("netc-data").textContent);
  const canvas = document.getElementById("canvas");
  const svg = canvas.querySelector("svg");
  const view = svg.querySelector("g.viewport");
  const panel = document.getElementById("panel");
  const details = document.getElementById("details");
  const tip = document.getElementById("tip");
  const graphW = +svg.getAttribute("width"), graphH = +svg.getAttribute("height");
  svg.removeAttribute("viewBox");
  let s = 1, tx = 0, ty = 0;

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  const fmt = (n) => Number(n).toLocaleString("en-US");
  function table(rows) {
    const t = el("table");
    for (const [k, v] of rows) {
      if (v === "" || v === undefined || v === null) continue;
      const tr = el("tr");
      tr.append(el("td", k), el("td", String(v)));
      t.append(tr);
    }
    return t;
  }
  function phases(list) {
    const p = el("div");
    for (const ph of list) p.append(el("span", ph, "phase"));
    return p;
  }
  function layerBody(L) {
    const box = el("div");
    box.append(table([["Parameters", fmt(L.params)], ["MACs/sample", fmt(L.macs)],
                      ["Receptive field / jump", L.rf], ["Note", L.detail]]));
    box.append(el("h3", "Bottoms"), table(L.bottoms), el("h3", "Tops"), table(L.tops));
    const shapes = Object.entries(L.param_shapes);
    if (shapes.length) box.append(el("h3", "Parameter blobs"), table(shapes));
    if (L.yaml) box.append(el("h3", "Fields"), el("pre", L.yaml));
    return box;
  }
  function showLayer(n) {
    details.append(el("h2", n.layer.name), el("div", n.layer.type, "type"), phases(n.phases),
                   layerBody(n.layer));
    for (const f of n.folded) {
      details.append(el("h3", "In place: " + f.name + " (" + f.type + ")"), layerBody(f));
    }
  }
  function showBlob(n) {
    details.append(el("h2", n.blob), el("div", "blob", "type"), phases(n.phases),
                   table([["Shape", n.shape], ["Written by", n.writer],
                          ["Read by", n.readers.join(", ")]]));
  }
  function select(g) {
    for (const old of svg.querySelectorAll(".selected")) old.classList.remove("selected");
    const n = data.nodes[+g.dataset.node];
    details.replaceChildren();
    if (n.kind === "layer") showLayer(n); else showBlob(n);
    g.classList.add("selected");
    panel.hidden = false;
    reveal(g);
  }
  function reveal(g) {  // pan a node the panel now hides back into view
    const r = g.getBoundingClientRect(), c = canvas.getBoundingClientRect();
    if (r.left < c.left || r.right > c.right) { tx += (c.left + c.width / 2) - (r.left + r.width / 2); apply(); }
  }
  document.getElementById("close").addEventListener("click", () => { panel.hidden = true; });

  function apply() { view.setAttribute("transform", `translate(${tx},${ty}) scale(${s})`); }
  function zoom(f, cx, cy) {
    const ns = Math.min(4, Math.max(0.05, s * f));
    tx = cx - (cx - tx) * ns / s; ty = cy - (cy - ty) * ns / s; s = ns; apply();
  }
  function fit() {
    const w = canvas.clientWidth;
    s = Math.min(1, w / graphW); tx = Math.max(0, (w - graphW * s) / 2); ty = 0; apply();
  }
  document.getElementById("fit").addEventListener("click", fit);
  document.getElementById("zoom-in").addEventListener("click",
    () => zoom(1.25, canvas.clientWidth / 2, canvas.clientHeight / 2));
  document.getElementById("zoom-out").addEventListener("click",
    () => zoom(0.8, canvas.clientWidth / 2, canvas.clientHeight / 2));
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = canvas.getBoundingClientRect();
    if (ev.ctrlKey || ev.metaKey) zoom(Math.exp(-ev.deltaY / 300), ev.clientX - r.left, ev.clientY - r.top);
    else { tx -= ev.deltaX; ty -= ev.deltaY; apply(); }
  }, { passive: false });

  let drag = null;
  canvas.addEventListener("pointerdown", (ev) => {
    drag = { x: ev.clientX, y: ev.clientY, tx, ty, moved: false };
  });
  window.addEventListener("pointermove", (ev) => {
    if (drag) {
      const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; canvas.classList.add("dragging"); }
      if (drag.moved) { tx = drag.tx + dx; ty = drag.ty + dy; apply(); }
    }
    const e = ev.target.closest && ev.target.closest("g.edge");
    if (e && !(drag && drag.moved)) {
      const d = data.edges[+e.dataset.edge];
      tip.textContent = d.blob + "  " + d.shape + "  (" + d.from + " → " + d.to + ")" +
        (d.phases.length < data.phases.length ? "  " + d.phases.join(", ") + " only" : "");
      tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 12) + "px";
      tip.hidden = false;
    } else tip.hidden = true;
  });
  window.addEventListener("pointerup", (ev) => {
    const moved = drag && drag.moved;
    drag = null; canvas.classList.remove("dragging");
    if (moved) return;
    const g = ev.target.closest && ev.target.closest("g.node");
    if (g && canvas.contains(g)) select(g);
  });
  window.addEventListener("keydown", (ev) => { if (ev.key === "Escape") panel.hidden = true; });
  for (const t of svg.querySelectorAll("title")) t.remove();  // the page has its own tooltips
  fit();
})();
"""
