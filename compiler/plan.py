"""The graph walker: resolves a NetState's layers, blobs and in-place updates once, infers every
blob's shape, and declares every parameter. `plan()` is pure Python (no JAX); `lower()` walks the
same Plan inside jax.jit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from netc.compiler.catalogue import units
from netc.compiler.layer import (
    BATCH,
    MAX_ELEMENTS,
    BatchSize,
    Layer,
    ParamDecl,
    Shape,
    batch_axes,
    batch_axis,
    count,
    fmt_shape,
)
from netc.spec.errors import Diagnostics, SpecError, did_you_mean, merge_phases
from netc.spec.messages import NetState
from netc.spec.net import NetSpec

RF = list[tuple[int, int]]  # per spatial axis: (receptive field, jump)


@dataclass
class PlannedLayer:
    index: int  # position in the spec
    unit: Layer
    path: tuple
    bottom_shapes: list[Shape]
    top_shapes: list[Shape]
    params: dict[str, ParamDecl]
    # role -> (layer, role) that owns the blob (itself unless shared through `param.name`)
    param_owner: dict[str, tuple[str, str]]
    lr_mult: dict[str, float]
    decay_mult: dict[str, float]
    loss_weights: tuple[float, ...]
    in_place: tuple[bool, ...]
    macs: int
    rf: RF | None
    # Per-shape decisions made once at plan time (Layer.resolve: window, pads, output dims, the
    # chosen lowering algorithm); the layer's apply reads them as ctx.layer.resolved.
    resolved: Any = None

    @property
    def name(self) -> str:
        return self.unit.spec.name

    @property
    def type(self) -> str:
        return self.unit.type

    @property
    def bottoms(self) -> tuple[str, ...]:
        return tuple(self.unit.spec.bottom)

    @property
    def tops(self) -> tuple[str, ...]:
        return tuple(self.unit.spec.top)


@dataclass
class Plan:
    spec: NetSpec
    state: NetState
    layers: list[PlannedLayer]
    blobs: dict[str, Shape]
    inputs: list[str]  # tops of data layers
    outputs: list[str]  # tops no layer consumes
    diagnostics: Diagnostics
    batch: int | str | None = None
    params: dict[tuple[str, str], ParamDecl] = field(default_factory=dict)  # unique blobs

    @property
    def ok(self) -> bool:
        return not self.diagnostics.errors

    @property
    def fed_by_inputs_only(self) -> bool:
        """The net's data layers hold no data (Input layers): it runs only on given arrays."""
        facts = [pl.unit.data_fact() for pl in self.layers if pl.unit.is_data]
        return bool(facts) and all(f is None or f.source is None for f in facts)

    def unique_params(self):
        """(layer, role, owner, decl) for each parameter blob once: a blob shared through
        `param.name` is yielded at its first user (its owner)."""
        seen = set()
        for pl in self.layers:
            for role, decl in pl.params.items():
                if decl.carry:  # per-batch carried state, not a parameter
                    continue
                owner = pl.param_owner[role]
                if owner not in seen:
                    seen.add(owner)
                    yield pl, role, owner, decl

    def param_counts(self) -> tuple[int, int]:
        """(trainable, non-trainable): frozen (`lr_mult: 0`) blobs and layer state apart."""
        trainable = frozen = 0
        for pl, role, _, decl in self.unique_params():
            if decl.learned and pl.lr_mult[role] > 0:
                trainable += decl.count
            else:
                frozen += decl.count
        return trainable, frozen

    @property
    def macs(self) -> int:
        return sum(pl.macs for pl in self.layers)

    def batch_axis(self, blob: str) -> int | None:
        """The axis of `blob` that indexes samples (0, or 1 for a time-major T×N×… blob); None
        when it has none (a layer merged the batch away, an input of fixed shape)."""
        return batch_axis(self.blobs[blob])

    @property
    def batch_size(self) -> int | str | None:
        """The batch of the net's inputs: an int, the symbol "N" when any input's batch is
        symbolic, or None when no input has a batch axis."""
        dims = [self.blobs[b][a] for b in self.inputs if (a := self.batch_axis(b)) is not None]
        if not dims:
            return None
        if any(isinstance(d, str) for d in dims):
            return BATCH
        return int(max(dims))

    def activation_bytes(self, itemsize: int = 4) -> int:
        """Bytes of forward activations per sample, i.e. per index of each blob's batch axis (axis
        0 where a blob has none); in-place tops share their bottom's memory."""
        total = 0
        for pl in self.layers:
            for shape, inplace in zip(pl.top_shapes, pl.in_place):
                if not inplace and len(shape) >= 1:
                    total += count(per_sample(shape)) * itemsize
        return total

    @property
    def has_loss(self) -> bool:
        return any(any(w for w in pl.loss_weights) for pl in self.layers)

    def scalar_outputs(self) -> list[str]:
        """The net's scalar outputs (losses, accuracies): what a test pass reports."""
        return [t for t in self.outputs if self.blobs[t] == ()]

    def subgraph(self, outputs) -> list[PlannedLayer]:
        """The layers (in plan order) needed to compute the blobs `outputs`, data layers whose
        tops are needed included. Unknown blob names raise KeyError."""
        want = set(outputs)
        for b in want:
            if b not in self.blobs:
                raise KeyError(b)
        keep = []
        for pl in reversed(self.layers):
            if not any(t in want for t in pl.tops):
                continue
            keep.append(pl)
            want.update(pl.bottoms)
        return keep[::-1]

    def needed_inputs(self, outputs) -> list[str]:
        """Input blobs (data-layer tops) that `outputs` depend on, in plan order."""
        layers = self.subgraph(outputs)
        need = {b for pl in layers for b in pl.bottoms} | set(outputs)
        return [t for pl in layers if pl.unit.is_data for t in pl.tops if t in need]


def per_sample(shape: Shape) -> Shape:
    """`shape` without its batch axis (axis 0 when no axis is known to be the batch)."""
    axis = batch_axis(shape)
    axis = 0 if axis is None else axis
    return tuple(shape[:axis]) + tuple(shape[axis + 1:])


def _layer_prefix(spec_layer) -> str:
    return f"layer '{spec_layer.name}' ({spec_layer.type}): "


def _report(diags: Diagnostics, prefix: str, base: tuple, e: SpecError, severity: str = "error"):
    where = ".".join(str(p) for p in e.path if not isinstance(p, int))
    msg = f"{prefix}{where}: {e.message}" if where else f"{prefix}{e.message}"
    (diags.error if severity == "error" else diags.warning)(msg, base + e.path)


def _cycle(spec: NetSpec, layers: list, start: int, producer: int) -> list[str] | None:
    """A path of layer names from layer `start` to `producer` through blobs, if there is one."""
    consumers: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        for b in layer.bottom:
            consumers.setdefault(b, []).append(i)
    parent = {start: None}
    queue = [start]
    while queue:
        i = queue.pop(0)
        if i == producer:
            chain = []
            while i is not None:
                chain.append(layers[i].name)
                i = parent[i]
            return chain[::-1]
        for top in layers[i].top:
            for j in consumers.get(top, []):
                if j not in parent:
                    parent[j] = i
                    queue.append(j)
    return None


def plan(spec: NetSpec, state: NetState | None = None, *, batch: int | None = None,
         diagnostics: Diagnostics | None = None) -> Plan:
    """Resolve the layers of `state` (default TRAIN) and infer every shape. Problems go to the
    spec's diagnostics (or `diagnostics`); layers downstream of a failed one are skipped quietly."""
    state = state or NetState(phase="TRAIN")
    return _Planner(spec, state, batch, diagnostics or spec.diagnostics).run()


class _Planner:
    """One walk over a phase's layers in the order written (Caffe's Net::Init), one method per
    check. A failed check reports to the diagnostics and poisons the layer's new tops: layers
    that read a poisoned blob are skipped without a second message."""

    def __init__(self, spec: NetSpec, state: NetState, batch: int | None, diags: Diagnostics):
        self.spec, self.state, self.batch, self.diags = spec, state, batch, diags
        self.registry = units()
        self.active = [(i, layer) for i, layer in enumerate(spec.layers) if layer.in_state(state)]
        self.blobs: dict[str, Shape] = {}
        self.producer: dict[str, str] = {}
        self.poisoned: set[str] = set(spec.failed_tops)
        self.rf: dict[str, RF | None] = {}
        # Every blob some layer of this phase reads, planned or not: a consumer that failed
        # still uses its bottoms, so they are never reported as unused outputs.
        self.consumed: set[str] = {b for _, layer in self.active for b in layer.bottom}
        self.consumed |= spec.failed_bottoms
        self.names: dict[str, tuple] = {}  # layer name -> the YAML path of its first layer
        self.shared: dict[str, tuple[tuple[str, str], ParamDecl]] = {}
        self.out = Plan(spec, state, [], self.blobs, [], [], diags, batch)

    def run(self) -> Plan:
        for k, (i, layer) in enumerate(self.active):
            self._layer(k, i, layer)
        self._vocab_checks()
        self._filler_warnings()
        self._outputs()
        return self.out

    def _layer(self, k: int, i: int, layer) -> None:
        path, prefix = self.spec.layer_paths[i], _layer_prefix(layer)
        if not self._unique_name(layer, path, prefix):
            return
        unit = self.registry[layer.type](layer, self.spec.spec_dir)
        if unit.is_data and layer.top:  # --input-shape: a size that lives outside the spec
            unit.declared_shape = self.spec.declared_shapes.get(layer.top[0])
        if not self._arity(unit, path, prefix):
            self.poisoned.update(layer.top)
            return
        inferred = self._bottoms(k, layer, path, prefix) and self._infer(unit, path, prefix)
        if not inferred:
            self._poison(layer)
            return
        bottom_shapes, top_shapes, params, macs, window, resolved = inferred
        checks = [self._tops(layer, top_shapes, path, prefix),
                  self._counts(layer, params, path, prefix),
                  self._declared(unit, top_shapes, path, prefix)]
        owners, lr, decay, shared_ok = self._sharing(layer, params, path, prefix)
        if not (all(checks) and shared_ok):
            self._poison(layer)
            return
        top_rf = _receptive_field(unit, window, [self.rf.get(b) for b in layer.bottom],
                                  top_shapes, bottom_shapes)
        self._declare(unit, top_shapes, top_rf)
        weights = layer.loss_weight or tuple(
            1.0 if (unit.is_loss and j == 0) else 0.0 for j in range(len(layer.top)))
        in_place = tuple(j < len(layer.bottom) and layer.bottom[j] == t for j, t in enumerate(layer.top))
        pl = PlannedLayer(i, unit, path, bottom_shapes, top_shapes, params, owners, lr, decay,
                          tuple(weights), in_place, macs, top_rf, resolved)
        self.out.layers.append(pl)
        for role, decl in params.items():
            self.out.params.setdefault(owners[role], decl)

    def _poison(self, layer) -> None:
        self.poisoned.update(t for t in layer.top if t not in self.blobs)

    def _declared(self, unit: Layer, top_shapes: list[Shape], path: tuple, prefix: str) -> bool:
        """A data layer's first top comes out with the shape --input-shape declared for it."""
        from netc.compiler.input_shapes import declared_mismatch, shape_text

        declared = unit.declared_shape
        why = None if declared is None else declared_mismatch(declared, top_shapes[0])
        if why is not None:
            self.diags.error(f"{prefix}--input-shape {shape_text(unit.spec.top[0], declared)}: "
                             f"{why}", path + ("top", 0))
        return why is None

    def _unique_name(self, layer, path: tuple, prefix: str) -> bool:
        first = self.names.get(layer.name)
        if first is not None:
            line, _ = self.diags.locate(first + ("name",))
            self.diags.error(f"{prefix}name: another layer is also called '{layer.name}' (first at "
                             f"{self.diags.file}:{line}); parameters are keyed by layer name",
                             path + ("name",))
            return False
        self.names[layer.name] = path
        return True

    def _arity(self, unit: Layer, path: tuple, prefix: str) -> bool:
        layer = unit.spec
        lo, hi = unit.bottoms
        nb = len(layer.bottom)
        if nb < lo or (hi is not None and nb > hi):
            want = _arity(lo, hi, "input")
            named = f" ({', '.join(unit.bottom_names)})" if len(unit.bottom_names) == lo and lo > 1 else ""
            self.diags.error(f"{prefix}bottom: takes {want}{named}, got {nb}", path + ("bottom",))
            return False
        lo, hi = unit.tops
        nt = len(layer.top)
        if nt < lo or (hi is not None and nt > hi):
            self.diags.error(f"{prefix}top: produces {_arity(lo, hi, 'output')}, got {nt}",
                             path + ("top",))
            return False
        return True

    def _bottoms(self, k: int, layer, path: tuple, prefix: str) -> bool:
        """Every bottom must be produced by an earlier layer; reports each one that is not."""
        ok = True
        for j, b in enumerate(layer.bottom):
            if b in self.poisoned:
                ok = False
            elif b not in self.blobs:
                ok = False
                self.diags.error(f"{prefix}bottom: {self._missing(k, layer, b)}", path + ("bottom", j))
        return ok

    def _missing(self, k: int, layer, b: str) -> str:
        specs = [s for _, s in self.active]
        later = next((m for m in range(k + 1, len(specs)) if b in specs[m].top), None)
        if later is None:
            # tops of layers that failed are still candidates: a typo in their params must not
            # hide the suggestion for a misspelt reference to them
            known = list(self.blobs) + sorted(self.poisoned - self.blobs.keys())
            return f"unknown blob '{b}'{did_you_mean(b, known)}"
        chain = _cycle(self.spec, specs, k, later)
        if chain is not None:
            return f"cycle: {' → '.join(chain + [layer.name])} (blob '{b}')"
        return (f"blob '{b}' is produced by layer '{specs[later].name}', which comes later; "
                f"layers run in the order written")

    def _infer(self, unit: Layer, path: tuple, prefix: str):
        """(bottom shapes, top shapes, params, MACs, window, resolved), or None on an error."""
        bottom_shapes = [self.blobs[b] for b in unit.spec.bottom]
        try:
            top_shapes = unit.infer(bottom_shapes)
            params = unit.params(bottom_shapes)
            macs = unit.macs(bottom_shapes, top_shapes)
            window = unit.window(bottom_shapes) if unit.geometry == "window" else None
            resolved = unit.resolve(bottom_shapes)
            if unit.is_data:
                top_shapes = self._batched(unit, top_shapes)
            for shape in top_shapes:
                concrete = [d for d in shape if not isinstance(d, str)]
                if math.prod(concrete) > MAX_ELEMENTS:
                    raise SpecError(f"output {fmt_shape(shape)} would hold {math.prod(concrete):,} "
                                    f"elements, more than netc allows ({MAX_ELEMENTS:,})")
                _one_batch_axis(unit, bottom_shapes, shape)
        except SpecError as e:
            _report(self.diags, prefix, path, e)
            return None
        for message, wpath in unit.warnings:
            _report(self.diags, prefix, path, SpecError(message, wpath), "warning")
        # parameter shapes are plain ints (a BatchSize mark belongs to blobs only)
        params = {r: replace(d, shape=tuple(int(n) for n in d.shape))
                  if any(isinstance(n, BatchSize) for n in d.shape) else d for r, d in params.items()}
        return bottom_shapes, top_shapes, params, macs, window, resolved

    def _batched(self, unit: Layer, shapes: list[Shape]) -> list[Shape]:
        """A data layer's tops with their batch axis marked: the symbol "N" wherever it sits
        (an Input's −1), else the layer's DataFact.batch_axis (0, or 1 for time-major T×N
        blobs) holding a BatchSize; `--batch` replaces the batch there. Tops of an Input that
        gives some tops a −1 and others none: those others have no batch (fixed shapes)."""
        fact = unit.data_fact()
        default = fact.batch_axis if fact is not None else 0
        symbolic = any(BATCH in s for s in shapes)
        out = []
        for s in shapes:
            s = tuple(s)
            axis = s.index(BATCH) if BATCH in s else (None if symbolic else default)
            if axis is None or axis >= len(s):
                out.append(s)
                continue
            size = self.batch if self.batch is not None else s[axis]
            out.append(s[:axis] + (BatchSize(size) if isinstance(size, int) else size,) + s[axis + 1:])
        return out

    def _tops(self, layer, top_shapes: list[Shape], path: tuple, prefix: str) -> bool:
        """A top is new, or written in place (top == bottom at the same index, same shape)."""
        ok = True
        for j, t in enumerate(layer.top):
            inplace = j < len(layer.bottom) and layer.bottom[j] == t
            if inplace and self.blobs[t] != top_shapes[j]:
                self.diags.error(f"{prefix}top: '{t}' is computed in place but the output "
                                 f"{fmt_shape(top_shapes[j])} differs from the input "
                                 f"{fmt_shape(self.blobs[t])}", path + ("top", j))
                ok = False
            elif not inplace and t in self.blobs:
                self.diags.error(f"{prefix}top: blob '{t}' is already produced by layer "
                                 f"'{self.producer[t]}' (only in-place layers, with top == bottom, "
                                 f"may write a blob twice)", path + ("top", j))
                ok = False
        if len(layer.top) != len(set(layer.top)):
            self.diags.error(f"{prefix}top: the same blob is listed twice", path + ("top",))
            ok = False
        return ok

    def _counts(self, layer, params: dict[str, ParamDecl], path: tuple, prefix: str) -> bool:
        """loss_weight per top, propagate_down per bottom, at most one `param` per blob."""
        ok = True
        if layer.loss_weight and len(layer.loss_weight) != len(layer.top):
            self.diags.error(f"{prefix}loss_weight: {len(layer.loss_weight)} values for "
                             f"{len(layer.top)} tops", path + ("loss_weight",))
            ok = False
        if layer.propagate_down and len(layer.propagate_down) != len(layer.bottom):
            self.diags.error(f"{prefix}propagate_down: {len(layer.propagate_down)} values for "
                             f"{len(layer.bottom)} bottoms", path + ("propagate_down",))
            ok = False
        if len(layer.param) > len(params):
            self.diags.error(f"{prefix}param: {len(layer.param)} entries, but the layer has "
                             f"{len(params)} parameter blob(s)"
                             + (f" ({', '.join(params)})" if params else ""), path + ("param",))
            ok = False
        return ok

    def _sharing(self, layer, params: dict[str, ParamDecl], path: tuple, prefix: str):
        """(owner, lr_mult, decay_mult per role, ok): `param.name` shares a blob with the first
        layer that named it (Caffe's STRICT: same shape; PERMISSIVE: same count)."""
        owners, lr, decay, ok = {}, {}, {}, True
        for j, (role, decl) in enumerate(params.items()):
            ps = layer.param[j] if j < len(layer.param) else None
            lr[role] = ps.lr_mult if ps else 1.0
            decay[role] = ps.decay_mult if ps else 1.0
            owners[role] = (layer.name, role)
            if ps is not None and not decl.learned and (ps.max_norm or ps.weight_noise):
                self.diags.warning(f"{prefix}param[{j}]: max_norm and weight_noise act on learned "
                                   f"blobs; {role} is state the layer updates itself (ignored)",
                                   path + ("param", j))
            if ps is None or not ps.name:
                continue
            if ps.name not in self.shared:
                self.shared[ps.name] = ((layer.name, role), decl)
                continue
            owner, first = self.shared[ps.name]
            same = first.shape == decl.shape if ps.share_mode == "STRICT" else first.count == decl.count
            if not same:
                self.diags.error(f"{prefix}param[{j}].name: shares '{ps.name}' with layer "
                                 f"'{owner[0]}', but its {role} is {fmt_shape(decl.shape)} and "
                                 f"theirs is {fmt_shape(first.shape)}", path + ("param", j, "name"))
                ok = False
            owners[role] = owner
        return owners, lr, decay, ok

    def _declare(self, unit: Layer, top_shapes: list[Shape], top_rf: RF | None) -> None:
        """Record the layer's tops: shapes, receptive fields, producer, the net's inputs."""
        layer = unit.spec
        for t, shape in zip(layer.top, top_shapes):
            self.blobs[t] = shape
            if unit.is_data:  # every input position sees itself
                self.rf[t] = [(1, 1)] * (len(shape) - 2) if len(shape) >= 3 else None
            else:
                self.rf[t] = top_rf if len(shape) >= 3 else None
            self.producer.setdefault(t, layer.name)
        if unit.is_data:
            self.out.inputs.extend(layer.top)

    def _vocab_checks(self) -> None:
        """A data top with a known number of distinct ids (a text source's vocabulary) read as
        class indices (an Embed's ids, a loss's labels) must fit the reader's classes: an id
        past input_dim or num_output is an error here, not a NaN or a wrong loss at run time."""
        sizes: dict[str, tuple[int, str]] = {}
        for pl in self.out.layers:
            fact = pl.unit.data_fact() if pl.unit.is_data else None
            if fact is not None and fact.vocab:
                for role, top in zip(fact.roles, pl.tops):
                    if role in fact.vocab:
                        sizes[top] = (fact.vocab[role], fact.source or pl.name)
        if not sizes:
            return
        for pl in self.out.layers:
            fact = pl.unit.label_fact(pl.bottom_shapes)
            if fact is None or fact.kind != "class" or fact.classes is None:
                continue
            top = pl.bottoms[fact.bottom] if fact.bottom < len(pl.bottoms) else None
            if top in sizes and sizes[top][0] > fact.classes:
                v, source = sizes[top]
                self.diags.error(
                    f"{_layer_prefix(pl.unit.spec)}bottom: '{top}' holds ids 0…{v - 1} (the "
                    f"{v} symbols of {source}), but the layer takes only {fact.classes} "
                    f"classes ({fact.rule or 'its class count'}); make it at least {v}",
                    pl.path + ("bottom", fact.bottom))

    def _filler_warnings(self) -> None:
        """Caffe's unset filler is constant 0: weights that start equal never break symmetry."""
        if not self.out.has_loss:
            return
        for pl in self.out.layers:
            weights = set(pl.unit.weight_roles(pl.params))
            for role, decl in pl.params.items():
                if (role in weights and decl.learned and decl.filler is None
                        and pl.lr_mult[role] > 0 and pl.param_owner[role][0] == pl.name
                        and pl.unit.param_field):
                    self.diags.warning(
                        f"{_layer_prefix(pl.unit.spec)}{pl.unit.param_field}.weight_filler: "
                        f"not set, so Caffe fills the weights with constant 0 and they start equal "
                        f"(set e.g. weight_filler: {{type: xavier}})", pl.path + (pl.unit.param_field,))
                    break  # one warning per layer, however many weight blobs it has

    def _outputs(self) -> None:
        """The net's outputs (tops no layer reads); warn about those that look forgotten."""
        out = self.out
        for n, pl in enumerate(out.layers):
            for t, w in zip(pl.tops, pl.loss_weights):
                if t in self.consumed or t in out.outputs:
                    continue
                out.outputs.append(t)
                final = all(x.unit.is_loss or x.unit.is_metric or not x.tops for x in out.layers[n + 1:])
                scored = w or pl.unit.is_loss or pl.unit.is_metric or pl.unit.is_data
                if not scored and not (final and not out.has_loss):
                    self.diags.warning(f"{_layer_prefix(pl.unit.spec)}top: blob '{t}' is not used "
                                       f"by any layer (it is computed only to be a net output)",
                                       pl.path + ("top",))


def _one_batch_axis(unit: Layer, bottoms: list[Shape], shape: Shape) -> None:
    """An output must not hold the batch on two axes: its inputs carried the batch on different
    axes (a batch-major N×… blob met a time-major T×N×… one), and no axis of it indexes samples."""
    axes = batch_axes(shape)
    if len(axes) < 2:
        return
    where = ", ".join(f"{b} {fmt_shape(s)} on axis {batch_axis(s)}"
                      for b, s in zip(unit.spec.bottom, bottoms) if batch_axis(s) is not None)
    raise SpecError(f"output {fmt_shape(shape)} would hold the batch on axes "
                    f"{' and '.join(map(str, axes))}: the inputs carry the batch on different axes "
                    f"({where}); give every input one layout (e.g. time-major T×N×… throughout, "
                    f"or batch_first on the recurrent layers)", ("bottom",))


def _arity(lo: int, hi: int | None, word: str) -> str:
    if hi == lo:
        return f"{lo} {word}{'s' if lo != 1 else ''}"
    if hi is None:
        return f"at least {lo} {word}{'s' if lo != 1 else ''}"
    return f"{lo} to {hi} {word}s"


def _receptive_field(unit: Layer, window, bottom_rf: list, tops: list[Shape],
                     bottoms: list[Shape]) -> RF | None:
    if unit.is_data:
        return None
    if not bottom_rf or any(r is None for r in bottom_rf):
        return None
    if unit.geometry == "pointwise":
        if any(len(r) != len(bottom_rf[0]) for r in bottom_rf):
            return None
        if tops and len(tops[0]) - 2 != len(bottom_rf[0]):
            return None
        return [max(axis) for axis in zip(*bottom_rf)]
    if unit.geometry == "window" and window is not None and len(window) == len(bottom_rf[0]):
        return [(r + (k - 1) * j, j * s) for (r, j), (k, s) in zip(bottom_rf[0], window)]
    return None


def plan_all_phases(spec: NetSpec, *, stages=(), level: int = 0, batch: int | None = None,
                    phase: str | None = None) -> dict[str, Plan]:
    """Plan TRAIN and TEST (or just `phase`), collecting every phase's problems in the spec's
    diagnostics, each once (see spec.errors.merge_phases: a problem found in both phases is
    reported once, naming the phases where they matter)."""
    phases = [phase] if phase else ["TRAIN", "TEST"]
    if spec.state is not None:  # the net's own `state:` header, unless the caller chose one
        stages = stages or spec.state.stage
        level = level or spec.state.level
    states = {ph: NetState(phase=ph, level=level, stage=tuple(stages)) for ph in phases}
    if len(phases) == 1:
        return {phase: plan(spec, states[phase], batch=batch)}
    plans, found = {}, {}
    for ph in phases:
        own = Diagnostics(spec.diagnostics.file, spec.diagnostics.positions)
        plans[ph] = plan(spec, states[ph], batch=batch, diagnostics=own)
        plans[ph].diagnostics = spec.diagnostics
        found[ph] = own.items
    for d in merge_phases(found, _runs_in(spec, states)):
        if d not in spec.diagnostics.items:
            spec.diagnostics.items.append(d)
    return plans


def _runs_in(spec: NetSpec, states: dict[str, NetState]):
    """applies(d, phase): whether the layer a diagnostic points into is in that phase's net."""
    index = {path: i for i, path in enumerate(spec.layer_paths)}

    def applies(d, phase: str) -> bool:
        for n in range(len(d.path), 0, -1):
            i = index.get(tuple(d.path[:n]))
            if i is not None:
                return spec.layers[i].in_state(states[phase])
        return True

    return applies


def training_warnings(spec: NetSpec, plans: dict[str, Plan]) -> None:
    """Warn (in the spec's diagnostics) where `netc train` would reject a spec that checks clean:
    no solver, or a TRAIN net without a loss. Only for specs that look meant for training (a
    solver, or a loss in some phase): a deploy net, for predict and export, gets no warning."""
    registry = units()

    def has_loss(layers) -> bool:
        return any(any(layer.loss_weight) or (registry[layer.type].is_loss and not layer.loss_weight)
                   for layer in layers)

    has_solver = (spec.solver is not None or spec.solver_file is not None
                  or ("solver",) in spec.diagnostics.positions)
    if not (has_solver or has_loss(spec.layers)):
        return
    if not has_solver:
        spec.diagnostics.warning("netc train needs a solver: add a `solver:` section or pass "
                                 "--solver FILE (warned because the net has a loss layer; a "
                                 "deploy net with no loss and no solver gets no warning)")
    train = plans.get("TRAIN")
    active = [layer for layer in spec.layers if train and layer.in_state(train.state)]
    # after an error the loss may be the layer that failed: no cascade
    if active and not has_loss(active) and not spec.diagnostics.errors:
        spec.diagnostics.warning("the TRAIN net has no loss (no layer with a loss weight), so "
                                 "netc train has nothing to minimise: add a loss layer such as "
                                 "SoftmaxWithLoss, or a loss_weight", ("layers",))
    if train is not None and not spec.diagnostics.errors and train.fed_by_inputs_only:
        spec.diagnostics.warning("the TRAIN net is fed only by Input layers, which hold no data: "
                                 "netc train needs a Data layer with data_param.source (a .npz "
                                 "file or netc:digits/train)", ("layers",))


__all__ = ["Plan", "PlannedLayer", "plan", "plan_all_phases", "training_warnings", "per_sample",
           "BATCH"]
