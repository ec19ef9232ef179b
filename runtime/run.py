"""What `netc train`, `netc test` and `netc predict` share: loading a spec (and a solver) into
plans, feeding Data layers from their sources, loading weights by (layer, role) name, evaluating
the TEST net, and a forward pass on given blobs.

Like the rest of `runtime/`, this module knows no layer types: it reads only what the plan says
(data layers, tops, shapes, loss weights, scalar outputs). JAX is imported where it is used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from netc.spec.errors import NetcError

__all__ = [
    "RunError",
    "DataFeed",
    "WeightsReport",
    "load_spec",
    "make_plan",
    "architecture",
    "architecture_digest",
    "architecture_diff",
    "data_feeds",
    "read_weights",
    "apply_weights",
    "evaluate",
    "predict",
]

# Exit codes shared by the commands (documented in `netc train --help`).
EXIT_OK = 0
EXIT_ERROR = 1  # spec, data, checkpoint or usage problems
EXIT_DIVERGED = 3  # training stopped on a non-finite loss


class RunError(NetcError):
    """A problem with a run the user can fix (spec, solver, data, weights, run directory)."""


# --- spec and solver ------------------------------------------------------------------------------


def _diag_lines(diags) -> list[str]:
    return [d.format() for d in diags.sorted()]


def load_spec(path: str, solver_path: str | None = None, *, need_solver: bool = False):
    """Parse `path` (a net, or a solver file naming its net) and optionally a separate solver
    file (`--solver`), which overrides the spec's own `solver:` section. Returns (spec, solver);
    raises RunError with FILE:LINE:COL lines on any error."""
    from netc.compiler.catalogue import layer_models
    from netc.spec.errors import Diagnostics
    from netc.spec.net import parse_spec, read_document, validate_solver

    if not os.path.exists(path):
        raise RunError(f"{path}: no such file")
    spec = parse_spec(path, layer_models())
    if spec.diagnostics.errors:
        # Report every problem at once, as `netc check` does: plan what did validate too.
        from netc.compiler.plan import plan_all_phases

        if spec.layers:
            plan_all_phases(spec)
        raise RunError(lines=_diag_lines(spec.diagnostics))
    solver = spec.solver
    if solver_path is not None:
        if not os.path.exists(solver_path):
            raise RunError(f"{solver_path}: no such file")
        diags = Diagnostics(solver_path)
        raw = read_document(solver_path, diags)
        if raw is None and not diags.errors:
            diags.error("the file is empty: expected SolverParameter fields (base_lr, ...)")
        if isinstance(raw, dict) and "solver" in raw and isinstance(raw["solver"], dict) \
                and "layers" not in raw:
            solver = validate_solver(raw["solver"], diags, ("solver",), "solver.")
        elif raw is not None:
            solver = validate_solver(raw, diags, (), "")
        if diags.errors:
            raise RunError(lines=_diag_lines(diags))
    if need_solver and solver is None:
        raise RunError(f"{path}: no solver: add a `solver:` section to the spec or pass --solver FILE")
    return spec, solver


def make_plan(spec, phase: str, solver=None):
    """The spec's plan for `phase` (level and stages from the solver's train_state / test_state
    when given). Raises RunError with the plan's FILE:LINE:COL errors."""
    from netc.compiler.plan import plan
    from netc.spec.messages import NetState

    state = NetState(phase=phase)
    if solver is not None:
        chosen = solver.train_state if phase == "TRAIN" else (
            solver.test_state[0] if solver.test_state else None)
        if chosen is not None:
            state = NetState(phase=phase, level=chosen.level, stage=tuple(chosen.stage))
    p = plan(spec, state)
    if spec.diagnostics.errors:
        raise RunError(lines=_diag_lines(spec.diagnostics))
    return p


def with_source(spec, source: str, phase: str = "TRAIN"):
    """Replace the data_param.source of the Data layer active in `phase` (--data). A relative
    path that exists from the current directory is made absolute (the user typed it here)."""
    from netc.spec.messages import NetState

    if not source.startswith("netc:") and os.path.exists(source):
        source = os.path.abspath(source)
    state = NetState(phase=phase)
    hits = [i for i, layer in enumerate(spec.layers)
            if layer.in_state(state) and getattr(layer, "data_param", None) is not None]
    if not hits:
        raise RunError(f"--data: the {phase} net has no Data layer whose source could be replaced")
    if len(hits) > 1:
        names = ", ".join(spec.layers[i].name for i in hits)
        raise RunError(f"--data: the {phase} net has several Data layers ({names}); edit the spec")
    i = hits[0]
    layer = spec.layers[i]
    dp = layer.data_param.model_copy(update={"source": source})
    spec.layers[i] = layer.model_copy(update={"data_param": dp})
    return spec


# --- architecture digest (refuses incompatible resumes) -------------------------------------------


def architecture(plan) -> list[list]:
    """[[layer name, type, {role: shape}], ...] of the plan: what a checkpoint must match."""
    out = []
    for pl in plan.layers:
        out.append([pl.name, pl.type, {role: [int(d) for d in decl.shape]
                                       for role, decl in pl.params.items()
                                       if pl.param_owner[role][0] == pl.name}])
    return out


def architecture_digest(arch: list, solver_type: str) -> str:
    text = json.dumps({"layers": arch, "solver": solver_type}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _shape_text(shape) -> str:
    return "×".join(str(d) for d in shape) if shape else "scalar"


def architecture_diff(saved: list, now: list, saved_solver: str, now_solver: str) -> list[str]:
    """Human-readable differences between a checkpoint's architecture and the spec's."""
    diffs = []
    if saved_solver != now_solver:
        diffs.append(f"solver type: {saved_solver} in the checkpoint, {now_solver} in the spec")
    old = {name: (kind, params) for name, kind, params in saved}
    new = {name: (kind, params) for name, kind, params in now}
    for name, (kind, params) in new.items():
        if name not in old:
            diffs.append(f"layer '{name}' ({kind}) is new in the spec")
            continue
        okind, oparams = old[name]
        if okind != kind:
            diffs.append(f"layer '{name}': type {okind} in the checkpoint, {kind} in the spec")
            continue
        for role in sorted(set(params) | set(oparams)):
            a, b = oparams.get(role), params.get(role)
            if a is None:
                diffs.append(f"layer '{name}': {role} {_shape_text(b)} is new in the spec")
            elif b is None:
                diffs.append(f"layer '{name}': {role} {_shape_text(a)} is gone from the spec")
            elif list(a) != list(b):
                diffs.append(f"layer '{name}': {role} is {_shape_text(a)} in the checkpoint, "
                             f"{_shape_text(b)} in the spec")
    for name, (kind, _) in old.items():
        if name not in new:
            diffs.append(f"layer '{name}' ({kind}) is in the checkpoint but not in the spec")
    if not diffs and [n for n, _, _ in saved] != [n for n, _, _ in now]:
        diffs.append("the layers are in a different order")
    return diffs


# --- data -----------------------------------------------------------------------------------------


@dataclass
class DataFeed:
    """One Data layer of a phase: its tops, loaded data set and BatchStream settings."""

    layer: str
    tops: tuple[str, ...]
    dataset: Any
    batch_size: int
    transform: Any
    shuffle: bool
    train: bool

    def stream(self, seed: int, position: dict | None = None, prefetch: int = 4):
        from netc.runtime.data import BatchStream

        return BatchStream(self.dataset, batch_size=self.batch_size, transform=self.transform,
                           train=self.train, seed=seed, shuffle=self.shuffle, position=position,
                           prefetch=prefetch)

    def feed(self, batch: dict) -> dict:
        """A BatchStream batch ({data, label}) keyed by this layer's top names."""
        out = {self.tops[0]: batch["data"]}
        if len(self.tops) > 1:
            out[self.tops[1]] = batch["label"]
        return out


def _class_count(plan, label_top: str) -> tuple[int | None, int | None]:
    """(classes, ignore_label) of the first layer that takes `label_top` as its second bottom
    beside predictions (a classifier loss or metric), read from the plan's shapes."""
    for pl in plan.layers:
        if len(pl.bottoms) != 2 or pl.bottoms[1] != label_top:
            continue
        if tuple(pl.unit.bottom_names) != ("predictions", "label"):
            continue
        pred = pl.bottom_shapes[0]
        axis = getattr(pl.unit.p, "axis", 1) if pl.unit.p is not None else 1
        axis = axis + len(pred) if axis < 0 else axis
        if not (0 < axis < len(pred)) or not isinstance(pred[axis], int):
            return None, None
        ignore = None
        for holder in (getattr(pl.unit.spec, "loss_param", None), pl.unit.p):
            value = getattr(holder, "ignore_label", None) if holder is not None else None
            if value is not None:
                ignore = value
                break
        return int(pred[axis]), ignore
    return None, None


def data_feeds(plan, spec_dir: str) -> list[DataFeed]:
    """Load and check the source of every Data layer of `plan` (raises RunError with the
    DataError message). A net fed by Input layers has no feeds."""
    from netc.runtime.data import DataError, check_dataset, load_source

    feeds = []
    train = plan.state.phase == "TRAIN"
    for pl in plan.layers:
        if not pl.unit.is_data:
            continue
        dp = getattr(pl.unit.spec, "data_param", None)
        if dp is None:
            continue
        need_label = len(pl.tops) > 1
        try:
            ds = load_source(dp.source, base_dir=spec_dir, need_label=need_label)
            sample = pl.unit.sample_shape() if hasattr(pl.unit, "sample_shape") else None
            classes, ignore = _class_count(plan, pl.tops[1]) if need_label else (None, None)
            check_dataset(ds, sample_shape=sample, num_classes=classes, ignore_label=ignore,
                          need_label=need_label)
        except DataError as e:
            raise RunError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - e.g. a SpecError from sample_shape
            raise RunError(f"{dp.source}: {getattr(e, 'message', e)}") from None
        feeds.append(DataFeed(pl.name, pl.tops, ds, int(dp.batch_size),
                              getattr(pl.unit.spec, "transform_param", None),
                              bool(dp.shuffle) and train, train))
    return feeds


def input_only(plan) -> bool:
    return any(pl.unit.is_data for pl in plan.layers) and not any(
        getattr(pl.unit.spec, "data_param", None) is not None for pl in plan.layers if pl.unit.is_data)


# --- weights ---------------------------------------------------------------------------------------


def read_weights(path: str) -> tuple[dict, dict]:
    """(params-like tree, state-like tree) from a netc checkpoint (a run's snapshot, which holds
    `params` / `state` / `opt_state`, or any checkpoint of {layer: {role: array}}) or an .npz whose
    keys are `layer/role`. Raises RunError."""
    from netc.runtime.checkpoint import CheckpointError, load_checkpoint, unflatten

    p = Path(path)
    if p.is_dir():
        from netc.runtime.checkpoint import latest_checkpoint

        found = latest_checkpoint(p)
        if found is None:
            raise RunError(f"{path}: no checkpoint in this directory")
        p = found
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                flat = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001
            raise RunError(f"{path}: cannot read weights: {e}") from None
        try:
            tree = unflatten(flat)
        except ValueError as e:
            raise RunError(f"{path}: keys must be 'layer/role' (e.g. conv1/weight): {e}") from None
        return tree, {}
    try:
        tree, _ = load_checkpoint(p)
    except CheckpointError as e:
        raise RunError(str(e)) from None
    except FileNotFoundError:
        raise RunError(f"{path}: no such checkpoint") from None
    if isinstance(tree.get("params"), dict):
        return tree["params"], tree.get("state") or {}
    return tree, {}


@dataclass
class WeightsReport:
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "layer/role: reason"
    unused: list[str] = field(default_factory=list)  # checkpoint blobs the net has no place for

    def lines(self) -> list[str]:
        out = [f"weights: loaded {len(self.loaded)} blob(s), skipped {len(self.skipped)}"
               + (f", {len(self.unused)} in the checkpoint unused" if self.unused else "")]
        out += [f"  skipped {s}" for s in self.skipped]
        out += [f"  unused  {u}" for u in self.unused]
        return out


def apply_weights(params: dict, state: dict, wparams: dict, wstate: dict) -> tuple[dict, dict,
                                                                                    WeightsReport]:
    """Copy every blob whose (layer, role) and shape match from the weights into (params, state)
    (fine-tuning: Caffe's CopyTrainedLayersFrom, by layer name). Returns new trees + a report."""
    report = WeightsReport()
    source = {}
    for tree in (wparams, wstate):
        for layer, roles in tree.items():
            if isinstance(roles, dict):
                for role, value in roles.items():
                    source.setdefault((layer, role), value)
    used = set()

    def fill(tree: dict) -> dict:
        out = {}
        for layer, roles in tree.items():
            out[layer] = {}
            for role, value in roles.items():
                key = (layer, role)
                name = f"{layer}/{role}"
                if key not in source:
                    report.skipped.append(f"{name}: not in the weights (kept its filler's values)")
                    out[layer][role] = value
                    continue
                used.add(key)
                w = np.asarray(source[key])
                if tuple(w.shape) != tuple(value.shape):
                    report.skipped.append(f"{name}: shape {_shape_text(w.shape)} in the weights, "
                                          f"{_shape_text(value.shape)} in the net")
                    out[layer][role] = value
                    continue
                out[layer][role] = w.astype(value.dtype)
                report.loaded.append(name)
        return out

    new_params, new_state = fill(params), fill(state)
    report.unused = [f"{layer}/{role}" for (layer, role) in source if (layer, role) not in used]
    return new_params, new_state, report


# --- evaluation ------------------------------------------------------------------------------------


def metric_names(net) -> list[str]:
    return list(net.metric_blobs())


def make_eval_fn(net):
    """A jitted TEST forward returning every scalar net output (accuracies, losses)."""
    import jax

    names = metric_names(net)

    def ev(params, state, inputs):
        blobs, _ = net.apply(params, state, inputs, rng=None, train=False)
        return {n: blobs[n] for n in names}

    return jax.jit(ev)


def evaluate(eval_fn, params: dict, state: dict, feeds: list[DataFeed], iterations: int,
             seed: int = 0) -> dict[str, float]:
    """Caffe's Solver::Test: run `iterations` batches read in order from the start of each TEST
    source and average every scalar output over them."""
    import jax

    streams = [f.stream(seed, prefetch=2) for f in feeds]
    sums: dict[str, float] = {}
    try:
        pending = []
        for _ in range(iterations):
            inputs = {}
            for f, s in zip(feeds, streams):
                inputs.update(f.feed(next(s)))
            pending.append(eval_fn(params, state, jax.device_put(inputs)))
        for out in pending:
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    finally:
        for s in streams:
            s.close()
    return {k: v / max(iterations, 1) for k, v in sums.items()}


# --- predict ---------------------------------------------------------------------------------------


def needed_inputs(plan, blobs: list[str]) -> set[str]:
    """Input blobs the given blobs depend on (walking the plan backwards)."""
    want = set(blobs)
    inputs = set()
    for pl in reversed(plan.layers):
        if not any(t in want for t in pl.tops):
            continue
        if pl.unit.is_data:
            inputs.update(t for t in pl.tops if t in want)
            continue
        want.update(pl.bottoms)
    return inputs


def predict(net, params: dict, state: dict, inputs: dict[str, np.ndarray],
            blobs: list[str]) -> dict[str, np.ndarray]:
    """A TEST-phase forward on `inputs` returning `blobs` as numpy arrays. Inputs the requested
    blobs do not need may be absent (they are fed zeros)."""
    import jax

    plan = net.plan
    batch = next(iter(inputs.values())).shape[0] if inputs else 1
    feed = {}
    for name in plan.inputs:
        if name in inputs:
            feed[name] = np.asarray(inputs[name], dtype=np.float32)
        else:
            shape = tuple(batch if isinstance(d, str) else d for d in plan.blobs[name])
            shape = (batch,) + shape[1:] if shape else shape
            feed[name] = np.zeros(shape, np.float32)

    def fwd(params, state, feed):
        out, _ = net.apply(params, state, feed, rng=None, train=False)
        return {b: out[b] for b in blobs}

    result = jax.jit(fwd)(params, state, feed)
    return {k: np.asarray(v) for k, v in result.items()}


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


# --- the `netc test` and `netc predict` commands ----------------------------------------------------


def _weights_for(net, weights: str, err) -> tuple[dict, dict]:
    import jax

    params, state = net.init(jax.random.PRNGKey(0))
    wparams, wstate = read_weights(weights)
    params, state, report = apply_weights(params, state, wparams, wstate)
    for line in report.lines():
        err.write(line + "\n")
    if (params or state) and not report.loaded:
        raise RunError(f"{weights}: no blob matched the net by layer name and shape")
    return params, state


def test_command(spec_path: str, weights: str, iterations: int | None, out, err) -> dict[str, float]:
    """Caffe's `caffe test`: the TEST net's scalar outputs averaged over `iterations` batches
    (default: the solver's test_iter, else 50 as in Caffe)."""
    from netc.compiler.lower import lower

    spec, solver = load_spec(spec_path)
    tplan = make_plan(spec, "TEST", solver)
    feeds = data_feeds(tplan, spec.spec_dir)
    if not feeds:
        raise RunError(f"{spec_path}: the TEST net has no Data layer to read batches from; "
                       "use `netc predict` to run it on given inputs")
    net = lower(tplan)
    if not metric_names(net):
        raise RunError(f"{spec_path}: the TEST net has no scalar outputs (accuracy, loss) to report")
    if iterations is None:
        iterations = int(solver.test_iter[0]) if solver is not None and solver.test_iter else 50
    params, state = _weights_for(net, weights, err)
    result = evaluate(make_eval_fn(net), params, state, feeds, iterations)
    n = sum(f.batch_size for f in feeds[:1]) * iterations
    out.write(f"{spec_path}: TEST phase, {iterations} iterations ({n:,} samples)\n")
    for k, v in result.items():
        out.write(f"{k} = {v:.6g}\n")
    return result


def predict_command(spec_path: str, weights: str, input_path: str, output_path: str,
                    blobs: list[str] | None, err) -> dict[str, np.ndarray]:
    """TEST-phase forward of the arrays in `input_path` (keys: the net's input blob names);
    writes the requested blobs (default: the net's outputs computable from the given inputs) to
    `output_path` (.npz)."""
    import io

    from netc.compiler.lower import lower
    from netc.runtime.checkpoint import write_bytes_atomic
    from netc.spec.errors import did_you_mean

    spec, solver = load_spec(spec_path)
    tplan = make_plan(spec, "TEST", solver)
    try:
        with np.load(input_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise RunError(f"{input_path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - not a zip, a pickle, a damaged member...
        raise RunError(f"{input_path}: not a readable .npz file ({e})") from None
    if not arrays:
        raise RunError(f"{input_path}: holds no arrays; expected the net's inputs "
                       f"({', '.join(tplan.inputs)})")
    for k, a in arrays.items():
        if k not in tplan.inputs:
            raise RunError(f"{input_path}: array '{k}' is not an input blob of the net"
                           f"{did_you_mean(k, tplan.inputs)} (inputs: {', '.join(tplan.inputs)})")
        if a.dtype.kind not in "biuf":
            raise RunError(f"{input_path}: array '{k}' has dtype {a.dtype}; need numbers")
        want = tuple(tplan.blobs[k])
        if a.ndim != len(want) or tuple(a.shape[1:]) != tuple(want[1:]):
            per = "×".join(str(d) for d in want[1:]) or "scalar"
            raise RunError(f"{input_path}: array '{k}' has shape {tuple(a.shape)}, but the net's "
                           f"blob '{k}' is N×{per} ({'×'.join(str(d) for d in want)} in the spec)")
    sizes = {a.shape[0] for a in arrays.values() if a.ndim}
    if len(sizes) > 1:
        raise RunError(f"{input_path}: the arrays have different batch sizes {sorted(sizes)}")
    given = set(arrays)
    if blobs:
        for b in blobs:
            if b not in tplan.blobs:
                raise RunError(f"--blobs: the TEST net has no blob '{b}'"
                               f"{did_you_mean(b, tplan.blobs)}")
    else:
        blobs = [b for b in tplan.outputs if needed_inputs(tplan, [b]) <= given]
        if not blobs:  # e.g. a train/test spec given only `data`: the classifier's predictions
            preds = [pl.bottoms[0] for pl in tplan.layers
                     if len(pl.bottoms) == 2 and pl.bottoms[1] in tplan.inputs]
            blobs = list(dict.fromkeys(b for b in preds if needed_inputs(tplan, [b]) <= given))
        if not blobs:
            raise RunError(f"{input_path}: none of the net's outputs ({', '.join(tplan.outputs)}) "
                           f"can be computed from the given arrays ({', '.join(sorted(given))}); "
                           "add the missing inputs or name blobs with --blobs")
    for b in blobs:
        missing = needed_inputs(tplan, [b]) - given
        if missing:
            raise RunError(f"blob '{b}' needs the input(s) {', '.join(sorted(missing))}, which "
                           f"{input_path} does not hold")
    net = lower(tplan)
    params, state = _weights_for(net, weights, err)
    result = predict(net, params, state, arrays, blobs)
    buf = io.BytesIO()
    np.savez(buf, **result)
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(output_path, buf.getvalue())
    for k, v in result.items():
        err.write(f"{k}: {'×'.join(str(d) for d in v.shape) or 'scalar'}\n")
    return result
