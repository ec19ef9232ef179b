"""Weights in and out by (layer, role) name: reading a checkpoint or an .npz of `layer/role` arrays,
copying the blobs that match into a net (Caffe's CopyTrainedLayersFrom), and the architecture
digest that refuses to resume a checkpoint into a spec it no longer matches."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netc.compiler.layer import fmt_shape, is_carry_role
from netc.runtime.errors import RunError

__all__ = ["architecture", "architecture_digest", "architecture_diff", "read_weights",
           "apply_weights", "WeightsReport", "init_with_weights"]


def architecture(plan) -> list[list]:
    """[[layer name, type, {role: shape}], ...] of the plan: what a checkpoint must match."""
    out = []
    for pl in plan.layers:
        out.append([pl.name, pl.type, {role: [int(d) for d in decl.shape]
                                       for role, decl in pl.params.items()
                                       if pl.param_owner[role][0] == pl.name
                                       and not decl.carry}])
    return out


def architecture_digest(arch: list, solver_type: str) -> str:
    text = json.dumps({"layers": arch, "solver": solver_type}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


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
                diffs.append(f"layer '{name}': {role} {fmt_shape(b)} is new in the spec")
            elif b is None:
                diffs.append(f"layer '{name}': {role} {fmt_shape(a)} is gone from the spec")
            elif list(a) != list(b):
                diffs.append(f"layer '{name}': {role} is {fmt_shape(a)} in the checkpoint, "
                             f"{fmt_shape(b)} in the spec")
    for name, (kind, _) in old.items():
        if name not in new:
            diffs.append(f"layer '{name}' ({kind}) is in the checkpoint but not in the spec")
    if not diffs and [n for n, _, _ in saved] != [n for n, _, _ in now]:
        diffs.append("the layers are in a different order")
    return diffs


# --- weights ---


def read_weights(path: str, err=None) -> tuple[dict, dict]:
    """(params-like tree, state-like tree) from a netc checkpoint (a run's snapshot, which holds
    `params` / `state` / `opt_state`, or any checkpoint of {layer: {role: array}}) or an .npz whose
    keys are `layer/role`. Raises RunError."""
    from netc.runtime.checkpoint import CheckpointError, load_checkpoint, unflatten

    p = Path(path)
    if p.is_dir():
        from netc.runtime.rundir import BEST_DIR, run_result

        found = run_result(p, warn=(lambda m: err.write(f"warning: {m}\n")) if err else None)
        if found is None:
            raise RunError(f"{path}: no checkpoint in this directory")
        if found.parent.name == BEST_DIR and err is not None:
            err.write(f"weights: {found} (the best test, kept by early stopping)\n")
        p = found
    if p.suffix == ".npz":
        from netc.runtime.commands.predict import read_npz

        flat = read_npz(str(p), "a readable .npz of weights")
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
                if is_carry_role(role):  # a carried state starts from zero in a new run
                    out[layer][role] = value
                    continue
                key = (layer, role)
                name = f"{layer}/{role}"
                if key not in source:
                    report.skipped.append(f"{name}: not in the weights (kept its filler's values)")
                    out[layer][role] = value
                    continue
                used.add(key)
                w = np.asarray(source[key])
                if tuple(w.shape) != tuple(value.shape):
                    report.skipped.append(f"{name}: shape {fmt_shape(w.shape)} in the weights, "
                                          f"{fmt_shape(value.shape)} in the net")
                    out[layer][role] = value
                    continue
                out[layer][role] = w.astype(value.dtype)
                report.loaded.append(name)
        return out

    new_params, new_state = fill(params), fill(state)
    report.unused = [f"{layer}/{role}" for (layer, role) in source
                     if (layer, role) not in used and not is_carry_role(role)]
    return new_params, new_state, report


def init_with_weights(net, weights: str, err=None, rng=None) -> tuple[dict, dict]:
    """The net's initial (params, state) with every matching blob of `weights` copied in; the
    report goes to `err`. Raises RunError when nothing matches."""
    import jax

    rng = rng if rng is not None else jax.random.PRNGKey(0)
    wparams, wstate = read_weights(weights, err)
    # matched against the blobs' shapes first (nothing drawn), so that only the blobs the
    # weights do not supply run their fillers
    shapes = jax.eval_shape(net.init, rng)
    params, state, report = apply_weights(*shapes, wparams, wstate)
    given = {(layer, role): v for tree in (params, state) for layer, roles in tree.items()
             for role, v in roles.items() if not isinstance(v, jax.ShapeDtypeStruct)}
    params, state = net.init(rng, given)
    if err is not None:
        for line in report.lines():
            err.write(line + "\n")
    if (params or state) and not report.loaded:
        raise RunError(f"{weights}: no blob matched the net by layer name and shape")
    return params, state
