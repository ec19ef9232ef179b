"""A layered ("Sugiyama") drawing of a DAG, top to bottom, in pure Python: what Graphviz's `dot`
does, in its simplest sound form, so that `netc graph` draws SVG and PNG with no program to
install. It knows nothing of nets: nodes are keys with a size, edges are pairs.

1. Ranks: longest path from the sources; a source sits just above its first reader.
2. Edges spanning several ranks get a dummy node per rank crossed, so they route around nodes.
3. Order within ranks: barycentre sweeps, down then up, keeping the order with fewest crossings.
4. x: each sweep moves every node towards the mean x of its neighbours in the rank before, then
   the weighted least-squares positions that keep the order and the gaps are found exactly by
   isotonic regression (pool-adjacent-violators), so nothing overlaps; last, each run of nodes
   linked one to one (a long edge's dummies, a plain sequence of layers) is put on one vertical
   where its neighbours leave room.

    lay = layout({"a": (80, 30), "b": (80, 30)}, [("a", "b")])
    lay.x["a"], lay.y["a"], lay.routes[("a", "b")], lay.width, lay.height
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Layout", "layout", "crossings"]

MARGIN = 16.0


@dataclass
class Layout:
    x: dict  # node -> centre x
    y: dict  # node -> top y
    size: dict  # node -> (w, h)
    routes: dict  # (u, v) -> [(x, y), ...] from u's bottom to v's top, through its dummies
    rank: dict  # node -> rank
    width: float
    height: float
    crossings: int


class _Graph:
    """The layered graph: real and dummy nodes, ranks, and adjacency between adjacent ranks."""

    def __init__(self, sizes: dict, edges: list, dummy_width: float):
        self.size = dict(sizes)
        self.pairs = list(dict.fromkeys((u, v) for u, v in edges if u != v))
        self.up: dict = {n: [] for n in sizes}
        self.down: dict = {n: [] for n in sizes}
        self.chains: dict = {}
        self.rank = _ranks(list(sizes), self.pairs)
        for u, v in self.pairs:
            chain = [u] + [("dummy", u, v, r) for r in range(self.rank[u] + 1, self.rank[v])] + [v]
            for d in chain[1:-1]:
                self.size[d] = (dummy_width, 0.0)
                self.rank[d] = d[3]
                self.up[d], self.down[d] = [], []
            for a, b in zip(chain, chain[1:]):
                self.down[a].append(b)
                self.up[b].append(a)
            self.chains[(u, v)] = chain
        self.ranks: list[list] = [[] for _ in range(max(self.rank.values(), default=-1) + 1)]
        for n in self.size:  # insertion order: the caller's topological order, then dummies
            self.ranks[self.rank[n]].append(n)


def _ranks(nodes: list, pairs: list) -> dict:
    """Longest-path ranks (`nodes` in a topological order), then each source moved down to just
    above its highest reader (a label input read only by the loss sits beside the loss)."""
    preds: dict = {n: [] for n in nodes}
    succs: dict = {n: [] for n in nodes}
    for u, v in pairs:
        preds[v].append(u)
        succs[u].append(v)
    rank: dict = {}
    for n in nodes:
        rank[n] = max((rank[p] + 1 for p in preds[n]), default=0)
    for n in nodes:
        if not preds[n] and succs[n]:
            rank[n] = min(rank[s] for s in succs[n]) - 1
    return rank


def crossings(g: _Graph) -> int:
    """Edge crossings between adjacent ranks at the current order."""
    total = 0
    for upper in g.ranks[:-1]:
        pos_u = {n: i for i, n in enumerate(upper)}
        ends = sorted((pos_u[a], g.pos[b]) for a in upper for b in g.down[a])
        total += _inversions([b for _, b in ends])
    return total


def _inversions(seq: list) -> int:
    """Pairs i < j with seq[i] > seq[j] (merge sort)."""
    if len(seq) < 2:
        return 0
    mid = len(seq) // 2
    left, right = sorted(seq[:mid]), sorted(seq[mid:])
    count = _inversions(seq[:mid]) + _inversions(seq[mid:])
    j = 0
    for a in left:
        while j < len(right) and right[j] < a:
            j += 1
        count += j
    return count


def _order(g: _Graph, sweeps: int) -> int:
    """Barycentre ordering; leaves g.ranks at the order with the fewest crossings found."""
    g.pos = {n: i for rank in g.ranks for i, n in enumerate(rank)}
    best, best_ranks = crossings(g), [list(r) for r in g.ranks]
    for it in range(sweeps):
        downward = it % 2 == 0
        seq = range(1, len(g.ranks)) if downward else range(len(g.ranks) - 2, -1, -1)
        for r in seq:
            nbrs = g.up if downward else g.down
            rank = g.ranks[r]
            key = {
                n: (sum(g.pos[m] for m in nbrs[n]) / len(nbrs[n]) if nbrs[n] else g.pos[n])
                for n in rank
            }
            rank.sort(key=lambda n: key[n])
            g.pos.update((n, i) for i, n in enumerate(rank))
        found = crossings(g)
        if found < best:
            best, best_ranks = found, [list(r) for r in g.ranks]
        if best == 0:
            break
    g.ranks = best_ranks
    g.pos = {n: i for rank in g.ranks for i, n in enumerate(rank)}
    return best


def _isotonic(rank: list, want: dict, weight: dict, size: dict, gap: float) -> dict:
    """The x of each node of `rank` (left to right) closest to `want` in weighted least squares
    with neighbours at least half their widths plus `gap` apart: pool adjacent violators."""
    offset, acc = [], 0.0
    for i, n in enumerate(rank):
        if i:
            acc += (size[rank[i - 1]][0] + size[n][0]) / 2 + gap
        offset.append(acc)
    blocks: list = []  # [weighted sum, weight, count]
    for i, n in enumerate(rank):
        blocks.append([weight[n] * (want[n] - offset[i]), weight[n], 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, w, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += w
            blocks[-1][2] += c
    x, i = {}, 0
    for s, w, c in blocks:
        for _ in range(c):
            x[rank[i]] = s / w + offset[i]
            i += 1
    return x


def _place(g: _Graph, gap: float, sweeps: int) -> dict:
    """x coordinates: packed, then pulled towards the mean of their neighbours, sweep by sweep.
    A node weighs its degree (a long edge's dummy 4): forks and joins hold their place and
    their branches move, so a chain of inception or residual blocks stacks straight instead of
    drifting sideways (GoogLeNet 1,313 -> 814 px wide, DenseNet-121 2,191 -> 709)."""
    x: dict = {}
    for rank in g.ranks:
        x.update(_isotonic(rank, {n: 0.0 for n in rank}, {n: 1.0 for n in rank}, g.size, gap))
    weight = {
        n: (4.0 if isinstance(n, tuple) else len(g.up[n]) + len(g.down[n]) + 1.0) for n in g.size
    }
    for it in range(sweeps):
        if it < sweeps - 2:
            nbrs = g.up if it % 2 == 0 else g.down
            seq = g.ranks if it % 2 == 0 else g.ranks[::-1]
        else:  # the last sweeps balance each node between its readers and its writers
            nbrs = {n: g.up[n] + g.down[n] for n in g.size}
            seq = g.ranks if it % 2 == 0 else g.ranks[::-1]
        for rank in seq:
            want = {n: sum(x[m] for m in nbrs[n]) / len(nbrs[n]) if nbrs[n] else x[n] for n in rank}
            x.update(_isotonic(rank, want, weight, g.size, gap))
    return x


def _chains(g: _Graph) -> list:
    """Maximal runs of nodes linked one to one (each the only reader of the one before, which
    it alone reads): a long edge's dummies, or a plain sequence of layers and their blobs."""

    def linked(a, b) -> bool:  # a long edge's dummies form runs of their own
        same = isinstance(a, tuple) == isinstance(b, tuple)
        return same and g.down[a] == [b] and g.up[b] == [a]

    out = []
    for n in g.size:
        if len(g.up[n]) == 1 and linked(g.up[n][0], n):
            continue  # not the head of a run
        run = [n]
        while len(g.down[run[-1]]) == 1 and linked(run[-1], g.down[run[-1]][0]):
            run.append(g.down[run[-1]][0])
        if len(run) > 1:
            out.append(run)
    return sorted(out, key=len, reverse=True)


def _straighten(g: _Graph, x: dict, gap: float) -> None:
    """Put each run of one-to-one linked nodes on one vertical line where its neighbours in the
    ranks leave room (longest runs first), at the feasible x nearest to the run's mean."""
    for run in _chains(g):
        lo, hi = float("-inf"), float("inf")
        for n in run:
            rank, i = g.ranks[g.rank[n]], g.pos[n]
            if i > 0:
                m = rank[i - 1]
                lo = max(lo, x[m] + (g.size[m][0] + g.size[n][0]) / 2 + gap)
            if i + 1 < len(rank):
                m = rank[i + 1]
                hi = min(hi, x[m] - (g.size[m][0] + g.size[n][0]) / 2 - gap)
        if lo <= hi:
            target = min(max(sum(x[n] for n in run) / len(run), lo), hi)
            x.update((n, target) for n in run)


def layout(
    sizes: dict,
    edges: list,
    *,
    hgap: float = 20.0,
    vgap: float = 28.0,
    dummy_width: float = 8.0,
    sweeps: int = 12,
) -> Layout:
    """Lay out the DAG: `sizes` maps each node to (width, height), in a topological order;
    `edges` are (u, v) pairs between its keys. Returns centres x, tops y, and each edge's route."""
    g = _Graph(sizes, edges, dummy_width)
    found = _order(g, sweeps)
    x = _place(g, hgap, sweeps)
    _straighten(g, x, hgap)
    left = min((x[n] - g.size[n][0] / 2 for n in g.size), default=0.0)
    x = {n: v - left + MARGIN for n, v in x.items()}
    tops, y = [], MARGIN
    for rank in g.ranks:
        tops.append(y)
        y += max((g.size[n][1] for n in rank), default=0.0) + vgap
    heights = [max((g.size[n][1] for n in rank), default=0.0) for rank in g.ranks]
    ys = {n: tops[g.rank[n]] + (heights[g.rank[n]] - g.size[n][1]) / 2 for n in g.size}
    routes = {}
    for (u, v), chain in g.chains.items():
        pts = [(x[u], ys[u] + g.size[u][1])]
        for d in chain[1:-1]:
            pts += [(x[d], tops[g.rank[d]]), (x[d], tops[g.rank[d]] + heights[g.rank[d]])]
        routes[(u, v)] = pts + [(x[v], ys[v])]
    width = max((x[n] + g.size[n][0] / 2 for n in g.size), default=0.0) + MARGIN
    real = {n: ys[n] for n in sizes}
    return Layout(
        {n: x[n] for n in sizes},
        real,
        dict(sizes),
        routes,
        {n: g.rank[n] for n in sizes},
        width,
        y - vgap + MARGIN,
        found,
    )
