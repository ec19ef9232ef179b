"""Export a trained net's deploy forward as a self-contained `jax.export` artifact.

    out = export_model("models/lenet.yaml", "runs/lenet/lenet_iter_10000.json", "lenet-export")

The deploy forward is the TEST-phase plan (``phase``/``stages`` pick another NetState) with

* Data layers replaced by inputs: each Data layer's first top (``data``) becomes an input whose
  per-sample shape comes from the plan; its label top is dropped. Input layers' tops are inputs
  as they are. An input no kept layer reads is not an input of the artifact.
* loss layers, Accuracy, and every layer that reads a dropped blob (a label, transitively)
  dropped.
* outputs: the tops of the kept layers that no kept layer reads (LeNet: ``ip2``, the bottom of
  the dropped SoftmaxWithLoss/Accuracy). ``outputs=[...]`` exports chosen blobs instead; only
  the layers those blobs need are run.

Inputs are the blobs as the net sees them, i.e. *after* a Data layer's ``transform_param``
(scale, mean, crop); the manifest records that transform for the caller to apply.

The parameters are baked into the exported StableHLO as constants (a closure of the traced
function), so the artifact needs no weights file: ``model.jaxexport`` alone is the model.
`jax.export` serialises into a flatbuffer, which cannot exceed 2 GiB; nets with more than about
1.5 GiB of parameters are refused (`ExportError`). LeNet's 431,080 floats make a ~1.7 MB file.

The batch axis of every input (axis 0, or axis 1 of a time-major T×N×… blob: where the plan
holds the batch) is symbolic (``b``) unless ``batch`` is given; an input without a batch axis
keeps its fixed shape. The manifest's ``batch`` records it: ``{"axis": 1, "axes": {"x": 1},
"symbol": "b"}`` (``axis`` is null when the inputs disagree), and the inputs' and outputs'
shapes hold ``"b"`` where their batch is. The module is lowered for every platform in ``platforms`` at once (cpu and cuda lower on a
CPU-only machine; tpu too where the installed jax can lower for it): the caller's backend picks
its branch at run time.

Artifact directory::

    model.jaxexport   Exported.serialize() bytes (StableHLO + calling convention + pytree defs)
    manifest.json     names, shapes ("b" for the batch), dtypes, layout, platforms, versions,
                      and the sha256 and size of every other file; written last (the commit)

The function is called as ``exported.call({input name: array}) -> {output name: array}``;
flattened, both dicts follow sorted-name order, which is the order the manifest lists them in.
Load it with `netc.runtime.exported` (needs only jax) or with plain jax (see that module).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from netc.compiler.layer import fmt_shape
from netc.errors import NetcError

__all__ = [
    "ARTIFACT_FORMAT",
    "ARTIFACT_VERSION",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "DeployGraph",
    "ExportError",
    "default_platforms",
    "deploy_graph",
    "export_model",
    "export_safetensors",
    "write_manifest",
]

ARTIFACT_FORMAT = "netc.exported"
ARTIFACT_VERSION = 1
MODEL_FILE = "model.jaxexport"
MANIFEST_FILE = "manifest.json"
BATCH_SYMBOL = "b"
LAYOUT = "NCHW"  # the spec's (Caffe's) axis order: batch, channels, then spatial axes
# flatbuffers cannot address more than 2 GiB; leave room for the module around the constants.
MAX_CONSTANT_BYTES = 3 << 29  # 1.5 GiB


class ExportError(NetcError):
    """The spec, the weights or the requested export cannot produce an artifact."""


# --------------------------------------------------------------------------------------------
# The deploy graph
# --------------------------------------------------------------------------------------------


class DeployGraph:
    """The layers, inputs and outputs of a plan's deploy forward (pure Python; no JAX)."""

    def __init__(self, plan, layers: list, inputs: dict[str, tuple], outputs: list[str],
                 transforms: dict[str, dict], batch_axes: dict[str, int | None] | None = None):
        self.plan = plan
        self.layers = layers  # PlannedLayers to run, in plan order (no data layers)
        self.inputs = inputs  # blob -> per-sample shape (batch axis removed)
        self.outputs = outputs  # blob names, in plan order
        self.transforms = transforms  # input blob -> its Data layer's transform_param (set fields)
        # input blob -> the axis its batch goes back in (0; 1 for time-major); None: fixed shape
        self.batch_axes = {t: 0 for t in inputs} if batch_axes is None else batch_axes

    def input_shape(self, name: str, batch) -> tuple:
        """The full shape of input `name` with `batch` (an int or a symbolic dimension) on its
        batch axis."""
        shape, axis = self.inputs[name], self.batch_axes[name]
        return shape if axis is None else shape[:axis] + (batch,) + shape[axis:]

    def param_keys(self) -> list[tuple[str, str, bool, tuple]]:
        """(owner layer, owner role, learned, shape) of every parameter blob the layers read."""
        seen: dict[tuple[str, str], tuple[str, str, bool, tuple]] = {}
        for pl in self.layers:
            for role, (owner, orole) in pl.param_owner.items():
                decl = pl.params[role]
                seen.setdefault((owner, orole), (owner, orole, decl.learned, tuple(decl.shape)))
        return list(seen.values())

    def forward(self, params: Mapping, state: Mapping, inputs: Mapping) -> dict:
        """The deploy forward (inference mode: no dropout, BatchNorm uses its statistics): the
        net's one graph walk, Net.apply, restricted to the outputs."""
        from netc.compiler.lower import Net

        net = Net(self.plan)
        return net.apply(params, state, inputs, rng=None, train=False, outputs=self.outputs)[0]


def _is_metric(pl) -> bool:
    return pl.unit.is_loss or pl.unit.is_metric


def deploy_graph(plan, outputs: Sequence[str] | None = None) -> DeployGraph:
    """The deploy forward of `plan`; see the module docstring for what is kept and dropped."""
    dropped: set[str] = set()
    candidates: dict[str, tuple] = {}  # input blob -> per-sample shape
    axes: dict[str, int | None] = {}  # input blob -> its batch axis
    transforms: dict[str, dict] = {}
    kept = []
    for pl in plan.layers:
        if pl.unit.is_data:
            tops = pl.tops
            fact = pl.unit.data_fact()
            if fact is not None and fact.source is not None:  # reads a source: its label is
                dropped.update(t for t, r in zip(tops, fact.roles) if r == "label")  # no input
                tops = tuple(t for t, r in zip(tops, fact.roles) if r != "label")
                t = fact.transform
                if t is not None and t.set_fields():
                    transforms[tops[0]] = t.model_dump(include=t.set_fields(), mode="json")
            for t, shape in zip(pl.tops, pl.top_shapes):
                if t in tops:
                    axes[t] = axis = plan.batch_axis(t)
                    rest = shape if axis is None else shape[:axis] + shape[axis + 1:]
                    candidates[t] = tuple(int(d) for d in rest)
            continue
        if _is_metric(pl) or any(b in dropped for b in pl.bottoms):
            dropped.update(pl.tops)
            continue
        kept.append(pl)

    produced = [t for pl in kept for t in pl.tops]
    if outputs is None:
        consumed = {b for pl in kept for j, b in enumerate(pl.bottoms)
                    if not (j < len(pl.tops) and pl.tops[j] == b)}  # in-place reads do not count
        outputs = list(dict.fromkeys(t for t in produced if t not in consumed))
        if not outputs:
            raise ExportError("the deploy net has no outputs: every layer is a loss, a metric, "
                              "or reads a label")
    else:
        outputs = list(dict.fromkeys(outputs))
        for name in outputs:
            if name not in produced:
                why = (" (it is a loss/metric blob or depends on a label)" if name in dropped
                       else " (it is an input)" if name in candidates else "")
                raise ExportError(f"output '{name}' is not a blob of the deploy net{why}; "
                                  f"choose from: {', '.join(dict.fromkeys(produced))}")

    # Keep only the layers the outputs need (walk back from the outputs; in place = same blob).
    needed = set(outputs)
    run = []
    for pl in reversed(kept):
        if needed.intersection(pl.tops):
            run.append(pl)
            needed.update(pl.bottoms)
    run.reverse()
    inputs = {t: s for t, s in candidates.items() if t in needed}
    transforms = {t: v for t, v in transforms.items() if t in inputs}
    return DeployGraph(plan, run, inputs, outputs, transforms, {t: axes[t] for t in inputs})


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def _load_weights(weights: Any, graph: DeployGraph) -> tuple[dict, dict, dict]:
    """(params, state, provenance) from a checkpoint path or a tree. A tree is either the
    trainer's {"params": ..., "state": ...} or a plain {layer: {role: array}}."""
    provenance: dict[str, Any] = {}
    if isinstance(weights, (str, os.PathLike)) and Path(weights).is_dir():
        import sys

        from netc.runtime.rundir import run_result

        found = run_result(weights, warn=lambda m: sys.stderr.write(f"warning: {m}\n"))
        if found is None:
            raise ExportError(f"{weights}: no checkpoint in this run directory")
        weights = found
    if isinstance(weights, (str, os.PathLike)):
        from netc.runtime.checkpoint import CheckpointError, checkpoint_paths, load_checkpoint

        try:
            tree, meta = load_checkpoint(weights)
            json_path, _ = checkpoint_paths(weights)
        except CheckpointError as e:
            raise ExportError(f"cannot load the weights: {e}") from e
        provenance = {"weights": json_path.name, "iteration": meta.get("iteration")}
    elif isinstance(weights, Mapping):
        tree = weights
    else:
        raise ExportError(f"weights must be a checkpoint path or a tree of arrays, "
                          f"got {type(weights).__name__}")
    layer_names = {pl.name for pl in graph.plan.layers}
    if isinstance(tree.get("params"), Mapping) and "params" not in layer_names:
        params = tree["params"]
        state = tree.get("state") or {}
    else:
        params = state = tree

    out_params: dict = {}
    out_state: dict = {}
    total = 0
    for owner, role, learned, shape in graph.param_keys():
        src = params if learned else state
        kind = "parameter" if learned else "state"
        try:
            value = src[owner][role]
        except (KeyError, TypeError):
            raise ExportError(f"the weights have no {kind} '{owner}/{role}' (shape "
                              f"{fmt_shape(shape)}) needed by layer '{owner}'") from None
        value = np.asarray(value)
        if tuple(value.shape) != shape:
            raise ExportError(f"{kind} '{owner}/{role}' has shape {fmt_shape(value.shape)} "
                              f"in the weights, but the spec declares "
                              f"{fmt_shape(shape)}")
        total += value.nbytes
        (out_params if learned else out_state).setdefault(owner, {})[role] = value
    if total > MAX_CONSTANT_BYTES:
        raise ExportError(f"the parameters take {total / 2**30:.2f} GiB; an exported module "
                          f"holding them as constants would pass the 2 GiB serialisation limit")
    provenance["parameter_bytes"] = total
    return out_params, out_state, provenance


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


@functools.cache
def _can_lower_for(platform: str) -> bool:
    import jax
    import jax.numpy as jnp
    from jax import export

    try:
        export.export(jax.jit(lambda x: x + 1), platforms=(platform,))(
            jax.ShapeDtypeStruct((2,), jnp.float32))
    except Exception:  # noqa: BLE001 - any failure means "cannot lower for it here"
        return False
    return True


def default_platforms() -> tuple[str, ...]:
    """("cpu", "cuda"), plus "tpu" where the installed jax can lower for it."""
    return ("cpu", "cuda") + (("tpu",) if _can_lower_for("tpu") else ())


def _dim(d) -> int | str:
    return d if isinstance(d, int) else str(d)


def _signature(names: Sequence[str], avals) -> list[dict]:
    return [{"name": n, "shape": [_dim(d) for d in a.shape], "dtype": str(a.dtype)}
            for n, a in zip(names, avals)]


def _spec_error_text(spec) -> str:
    return "\n".join(d.format() for d in spec.diagnostics.sorted() if d.severity == "error")


def export_model(
    spec_path: str | os.PathLike[str],
    weights: Any,
    out_dir: str | os.PathLike[str],
    *,
    platforms: Sequence[str] | None = None,
    phase: str = "TEST",
    stages: Sequence[str] = (),
    level: int = 0,
    outputs: Sequence[str] | None = None,
    batch: int | None = None,
) -> Path:
    """Export the deploy forward of the spec at `spec_path` with `weights` (a checkpoint path —
    its .json, .safetensors or stem — or a tree of arrays) into `out_dir`; returns the manifest's
    path. `platforms` defaults to `default_platforms()`. `batch` fixes the batch size (default:
    symbolic). Raises ExportError for a spec with errors, missing/mis-shaped weights, a graph
    without outputs, a platform jax cannot lower for, or an `out_dir` holding other files."""
    spec_path = Path(spec_path)
    platforms = tuple(platforms) if platforms is not None else default_platforms()
    if not platforms:
        raise ExportError("no platforms to lower for")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ExportError(f"batch must be a positive int or None (symbolic), got {batch!r}")
    spec, graph = _plan_deploy(spec_path, phase, stages, level, outputs)
    params, state, provenance = _load_weights(weights, graph)
    exported = _lower(graph, params, state, platforms, batch)
    source = {"spec": spec_path.name, "phase": phase, "stages": list(stages), "level": level,
              "layers": [pl.name for pl in graph.layers], **provenance}
    return _write_artifact(Path(out_dir), exported, spec, spec_path, graph, batch, source)


WEIGHTS_FILE = "weights.safetensors"


def export_safetensors(
    spec_path: str | os.PathLike[str],
    weights: Any,
    out_dir: str | os.PathLike[str],
    *,
    phase: str = "TEST",
    stages: Sequence[str] = (),
    level: int = 0,
    outputs: Sequence[str] | None = None,
) -> Path:
    """Write the weights the deploy net of the spec reads as `out_dir`/weights.safetensors, one
    tensor per parameter keyed ``layer/blob`` (the layer's name as the spec spells it — it may
    itself hold "/" — then "/" and the blob's role: ``conv1/weight``, ``bn1/mean``; the role is
    what follows the last "/"), plus the shared manifest with its sha256. Learned parameters and
    the layers' statistics (BatchNorm's mean, variance and scale factor) alike; a recurrent
    layer's carried state is not a weight and is left out. Readable by any safetensors client
    (``safetensors.numpy.load_file``); the header's metadata names the spec and the checkpoint."""
    from safetensors.numpy import save

    from netc.compiler.layer import is_carry_role

    spec_path = Path(spec_path)
    spec, graph = _plan_deploy(spec_path, phase, stages, level, outputs)
    params, state, provenance = _load_weights(weights, graph)
    tensors: dict[str, np.ndarray] = {}
    for tree in (params, state):
        for layer, roles in tree.items():
            for role, value in roles.items():
                if not is_carry_role(role):
                    tensors[f"{layer}/{role}"] = np.ascontiguousarray(value)
    meta = {"format": "netc.weights", "spec": spec_path.name, "keys": "layer/blob",
            "checkpoint": str(provenance.get("weights")),
            "iteration": str(provenance.get("iteration"))}
    blob = save(dict(sorted(tensors.items())), metadata=meta)
    source = {"spec": spec_path.name, "phase": phase, "stages": list(stages), "level": level,
              "layers": [pl.name for pl in graph.layers], **provenance}
    return write_manifest(Path(out_dir), kind="safetensors", files={WEIGHTS_FILE: blob},
                          model_file=WEIGHTS_FILE, name=spec.name, spec_path=spec_path,
                          source=source, inputs=[], outputs=[], extra={
                              "keys": "layer/blob",
                              "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                                          for k, v in sorted(tensors.items())}})


def _plan_deploy(spec_path: Path, phase: str, stages, level: int, outputs):
    from netc.compiler.catalogue import layer_models
    from netc.compiler.plan import plan as make_plan
    from netc.spec.messages import NetState
    from netc.spec.net import parse_spec

    spec = parse_spec(str(spec_path), layer_models())
    if spec.diagnostics.errors:
        raise ExportError(f"{spec_path}: the spec has errors:\n{_spec_error_text(spec)}")
    the_plan = make_plan(spec, NetState(phase=phase, level=level, stage=tuple(stages)))
    if not the_plan.ok:
        raise ExportError(f"{spec_path}: the {phase} net has errors:\n{_spec_error_text(spec)}")
    return spec, deploy_graph(the_plan, outputs)


def _lower(graph: DeployGraph, params, state, platforms, batch):
    import jax
    import jax.numpy as jnp
    from jax import export

    in_names = sorted(graph.inputs)  # jax flattens a dict in sorted-key order
    (b,) = export.symbolic_shape(BATCH_SYMBOL) if batch is None else (batch,)
    in_specs = {n: jax.ShapeDtypeStruct(graph.input_shape(n, b), jnp.float32) for n in in_names}

    from netc.compiler.layer import is_carry_role

    # a recurrent layer's carried state belongs to a training stream: an exported forward starts
    # every call from zeros (its `cont` input, if any, still resets within the call)
    state = {layer: {r: v for r, v in roles.items() if not is_carry_role(r)}
             for layer, roles in state.items()}

    def deploy(inputs):
        return graph.forward(params, state, inputs)  # params/state: constants of the module

    try:
        return export.export(jax.jit(deploy), platforms=platforms)(in_specs)
    except Exception as e:  # noqa: BLE001 - tracing/lowering errors of any kind
        raise ExportError(f"jax.export failed for platforms {', '.join(platforms)}: "
                          f"{type(e).__name__}: {e}") from e


def _prepare_folder(out: Path, names=frozenset({MODEL_FILE})) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    ours = {*names, MANIFEST_FILE}
    stray = sorted(p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith("."))
    if stray:
        raise ExportError(f"{out}: the folder holds other files ({', '.join(stray[:5])}"
                          f"{', ...' if len(stray) > 5 else ''}); export into an empty folder")
    manifest_path = out / MANIFEST_FILE
    if manifest_path.exists():  # un-commit the previous artifact before replacing its model
        manifest_path.unlink()
    return manifest_path


def write_manifest(out: Path, *, kind: str, files: Mapping[str, bytes], model_file: str,
                   name: str | None, spec_path: Path, source: dict, inputs: list, outputs: list,
                   extra: Mapping[str, Any] | None = None) -> Path:
    """Write `files` into the artifact folder `out`, then the manifest shared by every export
    format (the commit: written last); returns its path.

    The manifest (``manifest.json``) of every artifact — StableHLO (``kind: "stablehlo"``), ONNX
    (``"onnx"``) and safetensors weights (``"safetensors"``) — holds: ``format``
    (``"netc.exported"``), ``version``, ``kind``, ``name``, ``model_file``, ``files`` (the sha256
    and size of every file beside the manifest), ``inputs``/``outputs`` (name, shape with the
    batch symbol, dtype; empty for a weights file), ``netc_version``, ``source`` (spec name and
    sha256, phase, layers, checkpoint and iteration), plus the kind's own fields. Loaders verify
    every listed file against its digest before parsing it (netc.runtime.exported)."""
    import netc
    from netc.runtime.checkpoint import sha256_file, write_bytes_atomic, write_json_atomic

    manifest_path = _prepare_folder(out, set(files))
    for fname, blob in files.items():
        write_bytes_atomic(out / fname, blob)
    manifest = {
        "format": ARTIFACT_FORMAT,
        "version": ARTIFACT_VERSION,
        "kind": kind,
        "name": name,
        "model_file": model_file,
        "inputs": inputs,
        "outputs": outputs,
        **(extra or {}),
        "netc_version": netc.__version__,
        "source": {**source, "spec_sha256": sha256_file(spec_path)},
        "files": {fname: {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
                  for fname, blob in files.items()},
    }
    return write_json_atomic(manifest_path, manifest)


def _write_artifact(out: Path, exported, spec, spec_path: Path, graph: DeployGraph,
                    batch: int | None, source: dict) -> Path:
    import jax

    blob = bytes(exported.serialize())
    return write_manifest(out, kind="stablehlo", files={MODEL_FILE: blob}, model_file=MODEL_FILE,
                          name=spec.name, spec_path=spec_path, source=source,
                          inputs=_signature(sorted(graph.inputs), exported.in_avals),
                          outputs=_signature(sorted(graph.outputs), exported.out_avals), extra={
        "calling": "exported.call({input name: array}) -> {output name: array}",
        "batch": _batch_record(graph, batch),
        "layout": LAYOUT,
        "transform_param": graph.transforms,
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
        "jax_version": jax.__version__,
        "jaxlib_version": _jaxlib_version(),
        "compatibility": compatibility_window(exported.calling_convention_version),
    })


# JAX's documented guarantee for serialized jax.export artifacts: a newer jax deserialises and
# runs them for 6 months after the exporting jax's release; an older jax reads them only when it
# supports their calling-convention version (the loader checks that before deserialising).
BACKWARD_COMPATIBILITY_DAYS = 183


def compatibility_window(calling_convention_version: int) -> dict:
    """The manifest's ``compatibility``: when the artifact was exported (UTC date), the newest
    date until which newer jax releases are guaranteed to load it (JAX's 6-month backward
    compatibility), and the calling-convention version an older jax must support."""
    import datetime

    today = datetime.datetime.now(datetime.timezone.utc).date()
    return {
        "exported_on": today.isoformat(),
        "guaranteed_until": (today + datetime.timedelta(days=BACKWARD_COMPATIBILITY_DAYS)).isoformat(),
        "calling_convention_version": calling_convention_version,
        "policy": "jax releases up to 6 months newer than jax_version load it (JAX's export "
                  "backward-compatibility guarantee); an older jax loads it only if it supports "
                  "calling_convention_version",
    }


def _batch_record(graph: DeployGraph, batch: int | None) -> dict:
    """The manifest's `batch`: the axis of each input that holds it (`axes`; absent for an input
    of fixed shape), `axis` when they all agree (else null), and its symbol or fixed size."""
    axes = {n: graph.batch_axes[n] for n in sorted(graph.inputs) if graph.batch_axes[n] is not None}
    common = set(axes.values())
    record = {"axis": common.pop() if len(common) == 1 else None, "axes": axes}
    record.update({"symbol": BATCH_SYMBOL} if batch is None else {"size": batch})
    return record


def _jaxlib_version() -> str:
    try:
        import jaxlib

        return jaxlib.__version__
    except (ImportError, AttributeError):  # pragma: no cover
        from importlib.metadata import version

        return version("jaxlib")
