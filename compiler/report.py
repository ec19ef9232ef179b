"""`netc check`'s report as data (the `--format json` document of one spec, and `Model.check()`).
Pure Python: no JAX."""

from __future__ import annotations

__all__ = ["SARIF_SCHEMA", "check_file", "check_report", "sarif_log"]

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def check_file(path: str, *, phase: str | None = None, stages=(), level: int = 0,
               batch: int | None = None, shown: str | None = None, input_shapes=None):
    """What `netc check` does to one file: validate, plan TRAIN and TEST (or only `phase`) with
    their diagnostics merged, and warn where `netc train` would refuse it. Returns (spec, the
    plan of `shown` (default: `phase`, else TRAIN), or None when nothing could be planned)."""
    from netc.compiler.catalogue import layer_models
    from netc.compiler.memory import check_memory
    from netc.compiler.plan import plan_all_phases, training_warnings
    from netc.compiler.solver_check import check_solver
    from netc.spec.net import parse_spec

    spec = parse_spec(path, layer_models())
    if not spec.layers and spec.diagnostics.errors:
        return spec, None
    if input_shapes:  # --input-shape BLOB=N,C,H,W
        from netc.compiler.input_shapes import declare_input_shapes

        declare_input_shapes(spec, input_shapes)
    plans = plan_all_phases(spec, stages=stages, level=level, batch=batch, phase=phase)
    training_warnings(spec, plans)
    check_solver(spec, spec.solver, plans.get("TEST"))
    sized = plans.get("TRAIN") or plans[phase or "TEST"]
    if not spec.diagnostics.errors:  # a net that failed to plan has no trustworthy sizes
        check_memory(spec, sized)
    return spec, plans[shown or phase or "TRAIN"]


def check_report(spec, plan) -> dict:
    """The spec's diagnostics and, when it planned, every layer's shapes, parameters, MACs and
    receptive field, with the totals and the training-memory estimate (`memory`: bytes per part,
    the batch they are counted at; see compiler/memory.py), and the inputs' and outputs' shapes
    with the axis of each that holds the batch (`batch_axes`)."""
    from netc.compiler.memory import estimate_for

    diags = spec.diagnostics.sorted()
    doc = {
        "file": spec.diagnostics.file,
        "name": spec.name,
        "ok": not spec.diagnostics.errors,
        "errors": [d.to_json() for d in diags if d.severity == "error"],
        "warnings": [d.to_json() for d in diags if d.severity == "warning"],
    }
    if plan is not None:
        trainable, frozen = plan.param_counts()
        doc.update({
            "phase": plan.state.phase,
            "layers": [{
                "name": pl.name,
                "type": pl.type,
                "bottoms": list(pl.bottoms),
                "tops": {t: list(s) for t, s in zip(pl.tops, pl.top_shapes)},
                "params": sum(d.count for r, d in pl.params.items()
                              if pl.param_owner[r][0] == pl.name and not d.carry),
                "macs": pl.macs,
                "receptive_field": [r for r, _ in pl.rf] if pl.rf else None,
                "jump": [j for _, j in pl.rf] if pl.rf else None,
                "detail": pl.unit.describe(),
            } for pl in plan.layers],
            "params": {"trainable": trainable, "non_trainable": frozen},
            "macs": plan.macs,
            "activation_bytes": plan.activation_bytes(),
            "memory": estimate_for(spec, plan).to_json(),
            "inputs": {b: list(plan.blobs[b]) for b in plan.inputs},
            "outputs": {b: list(plan.blobs[b]) for b in plan.outputs},
            # the axis of each input and output that indexes samples: 0, or 1 for time-major
            # T×N×… blobs; null for a blob without a batch (an input of fixed shape)
            "batch_axes": {b: plan.batch_axis(b) for b in dict.fromkeys(plan.inputs + plan.outputs)},
        })
    return doc


def _artifact_uri(path: str) -> str:
    """A spec's path as a SARIF artifact URI: relative to the working directory (where code
    scanning runs `netc check`, the repository root) when under it, with forward slashes."""
    import os
    from pathlib import Path, PurePosixPath
    from urllib.parse import quote

    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(Path(os.getcwd()).resolve())
        except ValueError:
            return p.resolve().as_uri()
    return quote(str(PurePosixPath(*p.parts)))


def sarif_log(specs) -> dict:
    """`netc check --format sarif`: the diagnostics of `specs` as one SARIF 2.1.0 log (one run,
    tool netc, one result per error or warning with its file, line and column), for code
    scanning (GitHub's upload-sarif action shows them on the lines of the spec)."""
    import netc

    rules = [
        {"id": "netc.error", "name": "SpecError",
         "shortDescription": {"text": "The spec is invalid: netc cannot plan or run it."},
         "defaultConfiguration": {"level": "error"}},
        {"id": "netc.warning", "name": "SpecWarning",
         "shortDescription": {"text": "The spec plans, but something in it is likely a mistake."},
         "defaultConfiguration": {"level": "warning"}},
    ]
    results, artifacts = [], {}
    for spec in specs:
        for d in spec.diagnostics.sorted():
            uri = _artifact_uri(d.file)
            index = artifacts.setdefault(uri, len(artifacts))
            location: dict = {"artifactLocation": {"uri": uri, "index": index}}
            if d.line >= 1:
                location["region"] = {"startLine": d.line,
                                      **({"startColumn": d.col} if d.col >= 1 else {})}
            error = d.severity == "error"
            results.append({
                "ruleId": rules[0 if error else 1]["id"],
                "ruleIndex": 0 if error else 1,
                "level": "error" if error else "warning",
                "message": {"text": d.message},
                "locations": [{"physicalLocation": location}],
            })
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "netc", "version": netc.__version__, "rules": rules}},
            "artifacts": [{"location": {"uri": uri}} for uri in artifacts],
            "results": results,
            "columnKind": "unicodeCodePoints",
        }],
    }
