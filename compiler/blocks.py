"""Runs of identical blocks: the repeated structure `Net.apply` lowers as one `jax.lax.scan`.

A *block* is a contiguous segment of `plan.layers` that reads exactly one blob from before it (its
input) and whose layers leave exactly one blob that anything after the segment reads (its
output). A *run* is a maximal sequence of ≥ 2 consecutive blocks, each reading the previous one's
output (which nothing else reads), that are structurally identical: the same layer types and
specs apart from names, tops and bottoms, the same wiring (bottoms relative to the block), the
same parameter shapes and roles, the same blob shapes and plan-time decisions. ResNet's identity
blocks (Eltwise SUM of the block input and its branch, in-place BatchNorm / Scale / ReLU) are
the case this is for: scanning them keeps the compiled program's size, and XLA's compile time,
independent of depth.

Blobs are tracked as *versions* (writer position, top index), so in-place layers (top == bottom)
are followed exactly. Layers that cannot be scanned end a block: data layers, losses and metrics,
layers with shared parameters, weight noise or carried recurrent state, and layers without tops.
Pure Python: no JAX.
"""

from __future__ import annotations

from dataclasses import dataclass

from netc.compiler.plan import Plan, PlannedLayer

__all__ = ["Run", "find_runs"]

Version = tuple[int, object]  # (writer's plan position, top index); (-1, name): never written


@dataclass(frozen=True, eq=False)
class Run:
    """K ≥ 2 identical blocks of L layers each, consecutive in the plan."""

    blocks: tuple[tuple[PlannedLayer, ...], ...]
    input: str  # the blob the first block reads (the scan's initial carry)
    body_output: str  # the first block's output blob (the scan body's result)
    output: str  # the last block's output blob (the run's result)

    @property
    def count(self) -> int:
        return len(self.blocks)

    @property
    def size(self) -> int:
        return len(self.blocks[0])

    @property
    def names(self) -> frozenset[str]:
        return frozenset(pl.name for block in self.blocks for pl in block)

    @property
    def internal(self) -> frozenset[str]:
        """Blobs the run writes that its result is not: a request for any of them (as an
        output of Net.apply) needs the run unrolled."""
        return frozenset(t for block in self.blocks for pl in block for t in pl.tops) - {
            self.output
        }


@dataclass(frozen=True)
class _Block:
    start: int
    end: int
    v_in: Version
    v_out: Version
    wiring: tuple


def find_runs(plan: Plan) -> list[Run]:
    """Every maximal run of ≥ 2 identical blocks in `plan`, in plan order, not overlapping.
    From each position the run covering the most layers is taken (the smaller block on ties)."""
    layers = plan.layers
    flow = _Flow(layers)
    sig = _signatures(layers)
    runs: list[Run] = []
    s = 0
    while s < len(layers):
        blocks = _best_run(flow, sig, s)
        if blocks is None:
            s += 1
            continue
        runs.append(_as_run(layers, blocks))
        s = blocks[-1].end
    return runs


def _as_run(layers: list[PlannedLayer], blocks: list[_Block]) -> Run:
    def name(v: Version) -> str:
        return v[1] if v[0] < 0 else layers[v[0]].tops[v[1]]

    return Run(
        tuple(tuple(layers[b.start : b.end]) for b in blocks),
        name(blocks[0].v_in),
        name(blocks[0].v_out),
        name(blocks[-1].v_out),
    )


def _best_run(flow: _Flow, sig: list[int], s: int) -> list[_Block] | None:
    """The run starting at position `s` that covers the most layers, or None."""
    n = len(sig)
    if sig[s] < 0:
        return None
    best: list[_Block] | None = None
    for size in range(1, (n - s) // 2 + 1):
        if sig[s + size] != sig[s] or sig[s : s + size] != sig[s + size : s + 2 * size]:
            continue
        first = flow.block(s, size, sig)
        if first is None:
            continue
        blocks = [first]
        while blocks[-1].end + size <= n:
            nxt = flow.block(blocks[-1].end, size, sig)
            if nxt is None or nxt.wiring != first.wiring or not flow.chains(blocks[-1], nxt):
                break
            if sig[nxt.start : nxt.end] != sig[s : s + size]:
                break
            blocks.append(nxt)
        if len(blocks) >= 2 and (best is None or blocks[-1].end > best[-1].end):
            best = blocks
    return best


class _Flow:
    """Which version of which blob each layer reads, and who reads each version."""

    def __init__(self, layers: list[PlannedLayer]):
        self.layers = layers
        self.reads: list[tuple[Version, ...]] = []
        self.readers: dict[Version, list[int]] = {}
        latest: dict[str, Version] = {}
        for i, pl in enumerate(layers):
            vs = tuple(latest.get(b, (-1, b)) for b in pl.bottoms)
            self.reads.append(vs)
            for v in vs:
                self.readers.setdefault(v, []).append(i)
            for k, t in enumerate(pl.tops):
                latest[t] = (i, k)

    def block(self, s: int, size: int, sig: list[int]) -> _Block | None:
        """Layers [s, s + size) as a block (one input version, one output version read after
        it, that version still the latest of its blob at the block's end), or None."""
        e = s + size
        if any(sig[i] < 0 for i in range(s, e)):
            return None
        ext_in = {v for i in range(s, e) for v in self.reads[i] if v[0] < s}
        ext_out = {
            (i, k)
            for i in range(s, e)
            for k in range(len(self.layers[i].tops))
            if any(r >= e for r in self.readers.get((i, k), ()))
        }
        if len(ext_in) != 1 or len(ext_out) != 1:
            return None
        (v_in,), (v_out,) = ext_in, ext_out
        out_name = self.layers[v_out[0]].tops[v_out[1]]
        if any(out_name in self.layers[i].tops for i in range(v_out[0] + 1, e)):
            return None
        wiring = tuple(
            tuple("in" if v == v_in else (v[0] - s, v[1]) for v in self.reads[i])
            for i in range(s, e)
        )
        return _Block(s, e, v_in, v_out, wiring + ((v_out[0] - s, v_out[1]),))

    def chains(self, prev: _Block, nxt: _Block) -> bool:
        """`nxt` reads `prev`'s output, and nothing else does."""
        return nxt.v_in == prev.v_out and all(
            nxt.start <= r < nxt.end for r in self.readers.get(prev.v_out, ())
        )


def _signatures(layers: list[PlannedLayer]) -> list[int]:
    """Per layer, an id equal for structurally identical layers; -1 for a layer never scanned."""
    ids: dict[tuple, int] = {}
    return [ids.setdefault(_signature(pl), len(ids)) if _scannable(pl) else -1 for pl in layers]


def _signature(pl: PlannedLayer) -> tuple:
    spec = pl.unit.spec
    fields = spec.model_dump(exclude={"name", "top", "bottom", "param"})
    param = [p.model_dump(exclude={"name"}) for p in spec.param]
    decls = tuple((role, tuple(d.shape), d.learned) for role, d in pl.params.items())
    shapes = (tuple(map(tuple, pl.bottom_shapes)), tuple(map(tuple, pl.top_shapes)))
    return (
        pl.type,
        repr(fields),
        repr(param),
        decls,
        shapes,
        repr(pl.resolved),
        pl.in_place,
        pl.unit.spec_dir,
    )


def _scannable(pl: PlannedLayer) -> bool:
    unit = pl.unit
    if unit.is_data or unit.is_loss or unit.is_metric or not pl.tops or any(pl.loss_weights):
        return False
    if any(owner != (pl.name, role) for role, owner in pl.param_owner.items()):
        return False  # a shared blob
    if any(d.carry for d in pl.params.values()):
        return False
    return not any(getattr(p, "weight_noise", None) for p in unit.spec.param)
