"""PyTorch weights in: a state dict saved with safetensors → a netc checkpoint.

    netc import-weights SPEC STATE.safetensors --map torchvision [-o OUT]

Nothing is unpickled. A PyTorch ``.pt`` / ``.pth`` (a zip of pickles) or a raw pickle is refused
by its name and magic bytes, with the safe conversion (``torch.load(..., weights_only=True)``
refuses to run code; safetensors holds only tensors)::

    python -c "import torch; from safetensors.torch import save_file; save_file(torch.load('m.pth', weights_only=True), 'm.safetensors')"

Mapping files (YAML). A built-in name (``torchvision``: runtime/maps/torchvision.yaml) or a path::

    format: netc.torch-map
    version: 1
    strip_prefix: ['module.']          # optional: removed from the start of every key (DataParallel)
    ignore: ['\\.num_batches_tracked$']  # regexes (searched): keys deliberately left out, noted
    keys:                              # exact keys → "layer/role"
      backbone.stem.weight: conv1/weight
    tensors:                           # regexes on the whole key → "layer/role" (\\1 groups)
      - {match: 'head\\.(weight|bias)', to: 'fc/\\1'}
    modules:                           # regexes on the module path (the key before its last ".")
      - {match: 'layer(\\d+)\\.(\\d+)\\.conv(\\d+)', layer: 'layer\\1_\\2_conv\\3'}
      - {match: 'bn1', batchnorm: 'bn1_bn', scale: 'bn1_scale'}

Order: ``ignore``, ``keys``, ``tensors``, ``modules``; regexes match the whole key or path, and
the first rule that matches *and* whose target layer(s) exist in the net wins (so one file can
serve nets that name the same module differently). A ``layer:`` rule keeps the tensor's name as
the role (``weight``, ``bias``). A ``batchnorm:`` + ``scale:`` rule splits a PyTorch BatchNorm
into Caffe's pair: ``running_mean`` → BatchNorm ``mean``, ``running_var`` → ``variance`` (the
BatchNorm's scale-factor blob is set to 1: the statistics are stored as they are), ``weight`` /
``bias`` → the Scale layer's ``weight`` / ``bias``; ``num_batches_tracked`` is skipped with a note.

Layouts: PyTorch's Conv weight (O, I/groups, kh, kw) and Linear weight (out, in) are Caffe's
Convolution and InnerProduct blobs as they are; an InnerProduct with ``transpose: true`` takes the
Linear weight transposed. Every problem is collected before anything is written: tensors no rule
maps, tensors mapped to a layer or blob the net lacks, two tensors for one blob, shape mismatches
(both shapes), and the net's blobs no tensor filled; any of them is an error naming them all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from netc.errors import NetcError

__all__ = ["TorchWeightsError", "TorchMap", "load_map", "read_state_dict", "map_state_dict",
           "import_torch_weights", "CONVERT_RECIPE", "MAX_BYTES"]

MAX_BYTES = 16 << 30
MAPS = Path(__file__).resolve().parent / "maps"
CONVERT_RECIPE = ('python -c "import torch; from safetensors.torch import save_file; '
                  "save_file(torch.load('m.pth', weights_only=True), 'm.safetensors')\"")
BN_ROLES = {"running_mean": ("batchnorm", "mean"), "running_var": ("batchnorm", "variance"),
            "weight": ("scale", "weight"), "bias": ("scale", "bias")}


class TorchWeightsError(NetcError):
    """A state dict that cannot be read, a bad mapping file, or tensors that do not fit the net."""


# --- the mapping file ------------------------------------------------------------------------------


@dataclass
class Rule:
    pattern: re.Pattern
    kind: str  # "tensor" (to: layer/role), "layer", "batchnorm"
    targets: dict[str, str]  # tensor: {"to"}; layer: {"layer"}; batchnorm: {"batchnorm", "scale"}


@dataclass
class TorchMap:
    source: str
    strip_prefix: list[str] = field(default_factory=list)
    ignore: list[re.Pattern] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    tensors: list[Rule] = field(default_factory=list)
    modules: list[Rule] = field(default_factory=list)


def _regex(text: Any, where: str) -> re.Pattern:
    if not isinstance(text, str):
        raise TorchWeightsError(f"{where}: a regex must be a string, not {text!r}")
    try:
        return re.compile(text)
    except re.error as e:
        raise TorchWeightsError(f"{where}: bad regex {text!r}: {e}") from None


def _target(text: Any, where: str, blob: bool) -> str:
    if not isinstance(text, str) or not text or (blob and text.count("/") != 1):
        want = "'layer/role'" if blob else "a layer name"
        raise TorchWeightsError(f"{where}: the target must be {want}, not {text!r}")
    return text


def parse_map(data: Any, source: str) -> TorchMap:
    if not isinstance(data, dict):
        raise TorchWeightsError(f"{source}: a mapping file is a YAML mapping (format, version, "
                                "ignore, keys, tensors, modules)")
    known = {"format", "version", "strip_prefix", "ignore", "keys", "tensors", "modules"}
    extra = sorted(set(map(str, data)) - known)
    if extra:
        raise TorchWeightsError(f"{source}: unknown field(s) {', '.join(extra)}; a mapping file "
                                f"has {', '.join(sorted(known))}")
    if data.get("format", "netc.torch-map") != "netc.torch-map" or data.get("version", 1) != 1:
        raise TorchWeightsError(f"{source}: not a netc.torch-map version 1 file")
    m = TorchMap(source)
    m.strip_prefix = [str(p) for p in data.get("strip_prefix") or []]
    m.ignore = [_regex(p, f"{source}: ignore") for p in data.get("ignore") or []]
    keys = data.get("keys") or {}
    if not isinstance(keys, dict):
        raise TorchWeightsError(f"{source}: keys must map tensor names to 'layer/role'")
    m.keys = {str(k): _target(v, f"{source}: keys: {k}", True) for k, v in keys.items()}
    for section, out in (("tensors", m.tensors), ("modules", m.modules)):
        rules = data.get(section) or []
        if not isinstance(rules, list):
            raise TorchWeightsError(f"{source}: {section} must be a list of rules")
        for i, r in enumerate(rules):
            where = f"{source}: {section}[{i}]"
            if not isinstance(r, dict) or "match" not in r:
                raise TorchWeightsError(f"{where}: a rule is a mapping with `match`")
            pattern = _regex(r["match"], where)
            rest = {k: v for k, v in r.items() if k != "match"}
            if section == "tensors" and set(rest) == {"to"}:
                out.append(Rule(pattern, "tensor", {"to": _target(rest["to"], where, True)}))
            elif section == "modules" and set(rest) == {"layer"}:
                out.append(Rule(pattern, "layer", {"layer": _target(rest["layer"], where, False)}))
            elif section == "modules" and set(rest) == {"batchnorm", "scale"}:
                out.append(Rule(pattern, "batchnorm",
                                {k: _target(v, where, False) for k, v in rest.items()}))
            else:
                want = "`to`" if section == "tensors" else "`layer`, or `batchnorm` and `scale`"
                raise TorchWeightsError(f"{where}: a {section} rule has `match` and {want}; "
                                        f"got {', '.join(map(str, r))}")
    return m


def load_map(name: str) -> TorchMap:
    """A built-in map by name (runtime/maps/NAME.yaml) or a mapping file by path."""
    import yaml

    from netc.files import FileRefused, read_regular

    builtin = sorted(p.stem for p in MAPS.glob("*.yaml"))
    path = MAPS / f"{name}.yaml" if name in builtin else Path(name)
    if name not in builtin and not path.exists():
        raise TorchWeightsError(f"--map {name}: no such mapping file, and not a built-in map "
                                f"({', '.join(builtin)})")
    try:
        text = read_regular(path, 16 << 20)
    except FileRefused as e:
        raise TorchWeightsError(f"{path}: cannot read this file: it {e.message}") from None
    except OSError as e:
        raise TorchWeightsError(f"{path}: cannot read file: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TorchWeightsError(f"{path}: not valid YAML: {e}") from None
    return parse_map(data, str(path) if name not in builtin else f"--map {name}")


# --- the state dict -------------------------------------------------------------------------------

_PICKLE = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _refuse_pickle(path: str, head: bytes) -> None:
    why = None
    if head[:4] == b"PK\x03\x04":
        why = "a zip archive (PyTorch's .pt / .pth format, which holds pickles)"
    elif head[:2] in _PICKLE:
        why = "a Python pickle"
    elif Path(path).suffix.lower() in (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".tar"):
        why = f"a {Path(path).suffix} file (PyTorch's pickle-based format)"
    if why:
        raise TorchWeightsError(
            f"{path}: this is {why}; netc never unpickles (loading a pickle can run code). "
            "Convert it to safetensors where torch is installed (weights_only=True refuses to "
            f"run code):\n  {CONVERT_RECIPE}\n(for a full checkpoint, save its state dict: "
            "torch.load(...)['state_dict'] or ['model'])")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file, by name. Raises TorchWeightsError."""
    from safetensors.numpy import load

    from netc.files import FileRefused, read_regular

    try:
        data = read_regular(path, MAX_BYTES)
    except FileRefused as e:
        raise TorchWeightsError(f"{path}: cannot read this file: it {e.message}") from None
    except FileNotFoundError:
        raise TorchWeightsError(f"{path}: no such file") from None
    except OSError as e:
        raise TorchWeightsError(f"{path}: cannot read file: {e.strerror}") from None
    _refuse_pickle(path, bytes(data[:8]))
    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises its own error types (and TypeError for dtypes)
        raise TorchWeightsError(f"{path}: not a readable safetensors file: {e}") from None
    if not tensors:
        raise TorchWeightsError(f"{path}: the safetensors file holds no tensors")
    return tensors


# --- state dict → the net's blobs -----------------------------------------------------------------


@dataclass
class TorchImportReport:
    loaded: list[str] = field(default_factory=list)  # "torch key → layer/role"
    notes: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return ([f"unmapped: {u}" for u in self.unmapped]
                + [f"mismatch: {m}" for m in self.mismatched]
                + [f"missing: {m}" for m in self.missing])

    def lines(self) -> list[str]:
        return ([f"weights: {len(self.loaded)} tensor(s) imported"]
                + [f"  note: {n}" for n in self.notes]
                + [f"  error: {e}" for e in self.errors])


def _fmt(shape) -> str:
    return "×".join(str(int(d)) for d in shape) if len(shape) else "scalar"


def _net_blobs(plans) -> dict[str, dict[str, tuple[Any, Any]]]:
    """{layer: {role: (ParamDecl, the layer's unit)}} over the plans: owned, non-carried blobs."""
    out: dict[str, dict[str, tuple[Any, Any]]] = {}
    seen: set[str] = set()
    for plan in plans:
        for pl in plan.layers:
            if pl.name in seen:
                continue
            seen.add(pl.name)
            out[pl.name] = {role: (decl, pl.unit) for role, decl in pl.params.items()
                            if not decl.carry and pl.param_owner[role][0] == pl.name}
    return out


def _expand(m: re.Match, template: str) -> str:
    return m.expand(template)


def _route(key: str, tmap: TorchMap, layers: dict) -> tuple[str, str | None, str | None]:
    """(status, layer, role) for one (prefix-stripped) key: status is "ignore", "map" or
    "unmapped"; a rule whose target layer(s) the net lacks is passed over (the next one may fit)."""
    if any(p.search(key) for p in tmap.ignore):
        return "ignore", None, None
    if key in tmap.keys:
        layer, role = tmap.keys[key].split("/")
        return "map", layer, role
    candidates = []
    for rule in tmap.tensors:
        m = rule.pattern.fullmatch(key)
        if m:
            layer, role = _expand(m, rule.targets["to"]).split("/", 1)
            if layer in layers:
                return "map", layer, role
            candidates.append(layer)
    module, _, name = key.rpartition(".")
    for rule in tmap.modules:
        m = rule.pattern.fullmatch(module)
        if not m:
            continue
        if rule.kind == "layer":
            layer = _expand(m, rule.targets["layer"])
            if layer in layers:
                return "map", layer, name
            candidates.append(layer)
            continue
        bn, scale = _expand(m, rule.targets["batchnorm"]), _expand(m, rule.targets["scale"])
        if bn in layers and scale in layers:
            if name not in BN_ROLES:
                return "unmapped", f"{bn} / {scale}", name
            which, role = BN_ROLES[name]
            return "map", bn if which == "batchnorm" else scale, role
        candidates.append(f"{bn} + {scale}")
    return "unmapped", " or ".join(candidates) or None, None


def map_state_dict(tensors: dict[str, np.ndarray], tmap: TorchMap, plans
                   ) -> tuple[dict, dict, TorchImportReport]:
    """(params, state, report): the state dict's tensors placed into the net's blobs."""
    layers = _net_blobs(plans)
    report = TorchImportReport()
    params: dict = {}
    state: dict = {}
    filled: dict[tuple[str, str], str] = {}
    misfit: set[tuple[str, str]] = set()  # blobs a mis-shaped tensor was meant for (listed once)
    ignored = []
    for raw, value in tensors.items():
        status, layer, role = _route(_strip_prefix(raw, tmap.strip_prefix), tmap, layers)
        if status == "ignore":
            ignored.append(raw)
            continue
        shape = tuple(value.shape)
        problem = _unplaced(raw, shape, status, layer, role, tmap, layers, filled)
        if problem is not None:
            report.unmapped.append(problem)
            continue
        decl, unit = layers[layer][role]
        array, problem = _fitted(raw, value, f"{layer}/{role}", decl, unit, role)
        if problem is not None:
            misfit.add((layer, role))
            report.mismatched.append(problem)
            continue
        filled[(layer, role)] = raw
        (params if decl.learned else state).setdefault(layer, {})[role] = array
        report.loaded.append(f"{raw} → {layer}/{role}")
    _unit_scale_factors(layers, filled, state)
    _note_ignored_and_missing(report, layers, filled, misfit, ignored)
    return params, state, report


def _strip_prefix(key: str, prefixes) -> str:
    """`key` without the first of the map's strip_prefix entries it starts with."""
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _unplaced(raw, shape, status, layer, role, tmap, layers, filled) -> str | None:
    """Why the tensor `raw`, routed to (`status`, `layer`, `role`), has no blob to go to; None
    when it has one."""
    if status == "unmapped":
        if layer is None:
            return f"{raw} ({_fmt(shape)}): no rule of {tmap.source} maps it"
        if role is not None:
            return (f"{raw} ({_fmt(shape)}): a BatchNorm rule maps it to "
                    f"{layer}, which have no blob for '{role}'")
        return f"{raw} ({_fmt(shape)}): mapped to layer {layer}, which the net does not have"
    if role not in layers[layer]:
        have = ", ".join(layers[layer]) or "none"
        return (f"{raw} ({_fmt(shape)}): mapped to {layer}/{role}, but layer "
                f"'{layer}' has no blob '{role}' (its blobs: {have})")
    if (layer, role) in filled:
        return f"{raw} ({_fmt(shape)}): {layer}/{role} already comes from {filled[(layer, role)]}"
    return None


def _fitted(raw, value, target, decl, unit, role) -> tuple[np.ndarray | None, str | None]:
    """(the tensor as the blob's float32 array, None), or (None, why its shape or dtype do not
    fit the blob)."""
    shape = tuple(value.shape)
    want = tuple(int(d) for d in decl.shape)
    array = np.asarray(value)
    if (shape != want and unit.type == "InnerProduct" and role == "weight"
            and getattr(unit.p, "transpose", False) and shape[::-1] == want):
        array = array.T  # a Linear's out×in into an InnerProduct that stores in×out
    elif shape != want:
        return None, (f"{raw} → {target}: shape {_fmt(shape)} in the state "
                      f"dict, {_fmt(want)} in the net")
    if not np.issubdtype(array.dtype, np.floating):
        return None, f"{raw} → {target}: dtype {array.dtype}, not a float tensor"
    return np.ascontiguousarray(array, dtype=np.float32), None


def _unit_scale_factors(layers, filled, state) -> None:
    """Caffe's BatchNorm divides its stored statistics by the scale factor: PyTorch's are final,
    so a BatchNorm whose statistics were imported gets scale factor 1."""
    for layer, roles in layers.items():
        if {"mean", "variance", "scale_factor"} <= set(roles) and (layer, "mean") in filled:
            state.setdefault(layer, {})["scale_factor"] = np.ones(roles["scale_factor"][0].shape,
                                                                  np.float32)
            filled[(layer, "scale_factor")] = "(1: PyTorch's statistics are stored as they are)"


def _note_ignored_and_missing(report, layers, filled, misfit, ignored) -> None:
    if ignored:
        report.notes.append(f"{len(ignored)} tensor(s) skipped by the map's ignore rules "
                            f"(e.g. {ignored[0]}: PyTorch's BatchNorm batch counter, not a weight)"
                            if any(k.endswith("num_batches_tracked") for k in ignored)
                            else f"{len(ignored)} tensor(s) skipped by the map's ignore rules")
    for layer, roles in layers.items():
        for role, (decl, _) in roles.items():
            if (layer, role) not in filled and (layer, role) not in misfit:
                report.missing.append(f"{layer}/{role} ({_fmt(decl.shape)}): no tensor of the "
                                      "state dict fills it")


def import_torch_weights(spec: str, state_path: str, map_name: str, out: str | None,
                         err=None) -> tuple[Path, TorchImportReport]:
    """Read `state_path` (safetensors), map it into the net of `spec` with the map `map_name`,
    and save a netc checkpoint (``OUT.json`` + ``OUT.safetensors``; default: the state file's
    path without its suffix, plus ``.weights``). Raises TorchWeightsError or NetcError (spec)."""
    from netc.runtime.checkpoint import META_SUFFIX, save_checkpoint
    from netc.runtime.context import load_context

    tensors = read_state_dict(state_path)
    tmap = load_map(map_name)
    plans = load_context(spec, None).weight_plans()
    params, state, report = map_state_dict(tensors, tmap, plans)
    if err is not None:
        for line in report.lines():
            err.write(line + "\n")
    if report.errors:
        raise TorchWeightsError(f"{state_path}: {len(report.errors)} problem(s) mapping the state "
                                f"dict into {spec} (listed above); nothing written")
    if out is None:
        p = Path(state_path)
        out = str(p.with_name(p.stem + ".weights"))
    target = Path(out)
    stem = target.name[: -len(META_SUFFIX)] if target.name.endswith(META_SUFFIX) else target.name
    path = save_checkpoint(target.parent, stem, {"params": params, "state": state},
                           {"iteration": 0, "source": "pytorch state dict",
                            "state_dict": Path(state_path).name, "map": map_name,
                            "spec": Path(spec).name})
    return path, report
