"""`netc graph`'s model: the planned net as a drawable DAG (Netscope for netc). Pure Python, no
JAX: it reads the same plans as `netc check` (compiler/plan.py).

The graph is bipartite, as Caffe's own draw_net is: layer nodes, and blob nodes between a layer
and the layers that read what it wrote, so that every blob's shape is drawn once, where it is
made. A layer that writes its bottoms in place (ReLU, BatchNorm, Scale, Dropout with top ==
bottom) is folded into the node that holds those blobs and listed on it. With both phases, nodes
and edges are the union of the TRAIN and TEST nets, each marked with the phases it belongs to;
shapes that differ between phases are written with both values (64|100×1×28×28).

    graph = load_graph("models/lenet.yaml")        # GraphError when the spec has errors
    text = to_dot(graph)                            # Graphviz text; SVG/PNG/HTML: graph_draw.py
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netc.errors import NetcError

__all__ = [
    "Graph",
    "GraphEdge",
    "GraphError",
    "GraphNode",
    "LayerInfo",
    "build_graph",
    "load_graph",
    "to_dot",
]

PHASES = ("TRAIN", "TEST")


class GraphError(NetcError):
    """The spec cannot be drawn (it has errors), or the output cannot be written."""


@dataclass
class LayerInfo:
    """What the page's side panel shows about one spec layer, from its plan(s)."""

    index: int  # position in the spec
    name: str
    type: str
    kind: str  # data | learned | op | loss | metric: how the node is coloured
    phases: list[str]
    fields: dict  # the layer's YAML fields other than name, type, bottom and top
    bottoms: list[tuple[str, str]]  # (blob, shape)
    tops: list[tuple[str, str]]
    params: int  # parameters the layer owns (a blob shared through param.name counts once)
    param_shapes: dict[str, str]
    macs: int  # multiply-accumulates per sample
    rf: str  # receptive field / jump, "" when unknown
    detail: str  # the layer's note in `netc check`'s table


@dataclass
class GraphNode:
    key: str
    kind: str  # "layer" or "blob"
    phases: set[str]
    layer: LayerInfo | None = None  # layer nodes
    folded: list[LayerInfo] = field(default_factory=list)  # in-place layers drawn on this node
    blob: str = ""  # blob nodes: the blob's name, shape and the layer node that wrote it
    shape: str = ""
    holder: str = ""


@dataclass
class GraphEdge:
    src: str
    dst: str
    blob: str
    shape: str
    phases: set[str]


@dataclass
class Graph:
    name: str
    phases: list[str]  # the phases drawn
    nodes: dict[str, GraphNode]  # in a topological order
    edges: list[GraphEdge]
    # phase -> {"trainable", "non_trainable", "macs"}: the net's totals, as `netc check` says
    totals: dict[str, dict[str, int]] = field(default_factory=dict)

    def layer_nodes(self) -> list[GraphNode]:
        return [n for n in self.nodes.values() if n.kind == "layer"]


def load_graph(
    path: str,
    *,
    phase: str = "both",
    stages=(),
    level: int = 0,
    batch: int | None = None,
    input_shapes=None,
) -> Graph:
    """Parse and plan `path` as `netc check` does (TRAIN and TEST, or one `phase`; data shapes
    declared with --input-shape) and build its graph. A spec with errors raises GraphError
    carrying its FILE:LINE:COL diagnostics."""
    from netc.compiler.catalogue import layer_models
    from netc.compiler.plan import plan_all_phases
    from netc.spec.net import parse_spec

    spec = parse_spec(path, layer_models())
    plans = {}
    if spec.layers or not spec.diagnostics.errors:
        if input_shapes:  # --input-shape BLOB=N,C,H,W, as netc check takes it
            from netc.compiler.input_shapes import declare_input_shapes

            declare_input_shapes(spec, input_shapes)
        one = None if phase == "both" else phase
        plans = plan_all_phases(spec, stages=stages, level=level, batch=batch, phase=one)
    if spec.diagnostics.errors:
        lines = [d.format() for d in spec.diagnostics.sorted()]
        raise GraphError(f"{path}: the spec has errors; nothing drawn", lines=lines)
    return build_graph(spec.name or "", plans)


def build_graph(name: str, plans: dict) -> Graph:
    """The union of each phase's folded graph (`plans`: phase -> Plan, planned without errors)."""
    from netc.compiler.layer import fmt_shape

    nodes: dict[str, GraphNode] = {}
    edges: dict[tuple[str, str, str], GraphEdge] = {}
    shapes: dict[str, dict[str, str]] = {}  # blob node -> phase -> shape
    by_index: dict[int, list] = {}
    for ph, plan in plans.items():
        for pl in plan.layers:
            by_index.setdefault(pl.index, []).append((ph, pl))
    for ph, plan in plans.items():
        for src, dst, blob in _phase_edges(plan, nodes, by_index, ph):
            if src.startswith("L"):
                shapes.setdefault(dst, {})[ph] = fmt_shape(plan.blobs[blob])
            edge = edges.setdefault((src, dst, blob), GraphEdge(src, dst, blob, "", set()))
            edge.phases.add(ph)
    for key, per_phase in shapes.items():
        node = nodes[key]
        node.shape = _merge_shapes([per_phase[p] for p in PHASES if p in per_phase])
    for e in edges.values():
        e.shape = nodes[_blob_key(e.src, e.blob) if e.src.startswith("L") else e.src].shape
    ordered = dict(sorted(nodes.items(), key=lambda kv: _order(kv[1])))
    totals = {
        ph: dict(zip(("trainable", "non_trainable"), plan.param_counts()), macs=plan.macs)
        for ph, plan in plans.items()
    }
    return Graph(name, list(plans), ordered, list(edges.values()), totals)


def _phase_edges(plan, nodes: dict, by_index: dict, ph: str):
    """Walk one phase's layers, adding its nodes to `nodes`; yields (source node, destination
    node, blob) for every layer → blob and blob → layer edge of this phase."""
    holder: dict[str, str] = {}  # blob -> the layer node holding its current value
    for pl in plan.layers:
        key = f"L{pl.index}"
        hosts = {holder.get(b) for b in pl.bottoms}
        if pl.tops and all(pl.in_place) and len(pl.bottoms) == len(pl.tops) and len(hosts) == 1:
            host = nodes[hosts.pop()]
            if all(f.index != pl.index for f in host.folded):
                host.folded.append(_layer_info(by_index[pl.index]))
            continue
        node = nodes.get(key) or nodes.setdefault(
            key, GraphNode(key, "layer", set(), layer=_layer_info(by_index[pl.index]))
        )
        node.phases.add(ph)
        for b in dict.fromkeys(pl.bottoms):
            yield _blob_key(holder[b], b), key, b
        for t in pl.tops:
            holder[t] = key
            blob = nodes.setdefault(
                _blob_key(key, t), GraphNode(_blob_key(key, t), "blob", set(), blob=t, holder=key)
            )
            blob.phases.add(ph)
            yield key, blob.key, t


def _blob_key(holder: str, blob: str) -> str:
    return f"B{holder[1:]}:{blob}"


def _order(node: GraphNode) -> tuple:
    """Topological: a layer, then the blobs it holds (consumers come later in the spec)."""
    if node.kind == "layer":
        return (node.layer.index, 0, "")
    return (int(node.holder[1:]), 1, node.blob)


def _merge_shapes(shapes: list[str]) -> str:
    """One shape text for several phases: equal dims once, differing ones as 64|100."""
    if len(set(shapes)) == 1:
        return shapes[0]
    split = [s.split("×") for s in shapes]
    if len({len(s) for s in split}) != 1:
        return " | ".join(dict.fromkeys(shapes))
    return "×".join("|".join(dict.fromkeys(dims)) for dims in zip(*split))


def _layer_info(planned: list) -> LayerInfo:
    """LayerInfo from the layer's (phase, PlannedLayer) pairs; shapes merged over the phases."""
    from netc.compiler.layer import fmt_shape

    pl = planned[0][1]
    own = {r: d for r, d in pl.params.items() if pl.param_owner[r][0] == pl.name and not d.carry}

    def shapes(blobs, which):
        return [
            (b, _merge_shapes([fmt_shape(getattr(p, which)[j]) for _, p in planned]))
            for j, b in enumerate(blobs)
        ]

    spec = pl.unit.spec
    fields = spec.model_dump(
        mode="json", exclude_unset=True, exclude={"name", "type", "bottom", "top"}
    )
    return LayerInfo(
        index=pl.index,
        name=pl.name,
        type=pl.type,
        kind=_kind(pl),
        phases=[p for p, _ in planned],
        fields=fields,
        bottoms=shapes(pl.bottoms, "bottom_shapes"),
        tops=shapes(pl.tops, "top_shapes"),
        params=sum(d.count for d in own.values()),
        param_shapes={r: fmt_shape(d.shape) for r, d in own.items()},
        macs=pl.macs,
        rf=_rf_text(pl.rf),
        detail=pl.unit.describe(),
    )


def _kind(pl) -> str:
    unit = pl.unit
    if unit.is_data:
        return "data"
    if unit.is_loss:
        return "loss"
    if unit.is_metric:
        return "metric"
    return "learned" if any(not d.carry for d in pl.params.values()) else "op"


def _rf_text(rf) -> str:
    if not rf:
        return ""
    return "×".join(str(r) for r, _ in rf) + " /" + "×".join(str(j) for _, j in rf)


# --- Graphviz text ------------------------------------------------------------------------------


def to_dot(graph: Graph) -> str:
    """Graphviz DOT: one node per layer node (folded layers listed in its label), one edge per
    blob read, labelled with the blob's shape; blobs nobody reads (the net's outputs) become
    plain-text nodes. Phase-only nodes and edges are dashed (TRAIN) or dotted (TEST)."""
    style = _phase_styles(graph)
    lines = [
        f"digraph {_dot_id(graph.name or 'net')} {{",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9, color="#555555"];',
    ]
    read = {e.src for e in graph.edges if not e.src.startswith("L")}
    for node in graph.nodes.values():
        if node.kind == "layer":
            label = "\\n".join(_dot_escape(t) for t in node_lines(node))
            lines.append(
                f'  {node.key} [label="{label}", fillcolor="{KIND_COLOURS[node.layer.kind]}"'
                f"{style(node.phases)}];"
            )
        elif node.key not in read:
            label = _dot_escape(blob_label(graph, node))
            lines.append(f'  "{node.key}" [shape=plaintext, style="", label="{label}"];')
            lines.append(
                f'  {node.holder} -> "{node.key}" [arrowhead=none{style(node.phases, True)}];'
            )
    for e in graph.edges:
        if e.src.startswith("L"):
            continue
        blob = graph.nodes[e.src]
        label = _dot_escape(blob_label(graph, blob))
        lines.append(f'  {blob.holder} -> {e.dst} [label="{label}"{style(e.phases, True)}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


KIND_COLOURS = {
    "data": "#d8ecd2",
    "learned": "#d6e4f5",
    "op": "#ece6f3",
    "loss": "#f6d5d0",
    "metric": "#f8e8c8",
}


def node_lines(node: GraphNode) -> list[str]:
    """The text drawn on a layer node: name, type, then the folded in-place layers' types (with
    the phase of one that runs in fewer phases than the node, e.g. a TRAIN-only Dropout)."""
    lines = [node.layer.name, node.layer.type]
    if node.folded:
        lines.append(
            "+ "
            + " · ".join(
                f.type + (f" ({'/'.join(f.phases)})" if set(f.phases) < node.phases else "")
                for f in node.folded
            )
        )
    return lines


def blob_label(graph: Graph, blob: GraphNode) -> str:
    """A blob's caption: its shape, after its name unless the layer writing it has that name."""
    writer = graph.nodes[blob.holder].layer.name
    return blob.shape if blob.blob == writer else f"{blob.blob}  {blob.shape}"


def _phase_styles(graph: Graph):
    drawn = set(graph.phases)

    def style(phases: set[str], edge: bool = False) -> str:
        if len(drawn) < 2 or phases >= drawn:
            return ""
        dash = "dashed" if "TRAIN" in phases else "dotted"
        return f', style="{dash}"' if edge else f', style="rounded,filled,{dash}"'

    return style


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _dot_id(text: str) -> str:
    return f'"{_dot_escape(text)}"'
