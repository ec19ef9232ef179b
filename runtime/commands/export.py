"""`netc export`: the deploy forward as a jax.export (StableHLO) artifact (runtime/export.py), an
ONNX model (runtime/onnx_export.py), the weights as safetensors, or the spec as Caffe prototxt."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from netc.runtime.errors import EXIT_OK


def run(spec_path: str, weights: str | None, out_dir: str, *, fmt: str = "stablehlo",
        platforms=None, outputs=None, phase: str = "TEST", stages=(), batch: int | None = None,
        out: TextIO) -> int:
    """Export; `weights` may be a checkpoint or a run directory (its newest checkpoint)."""
    if fmt == "prototxt":
        written = export_prototxt(spec_path, out_dir)
        out.write("".join(f"wrote {p}\n" for p in written))
        return EXIT_OK
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        from netc.runtime.export import ExportError

        raise ExportError(f"{out_dir}: not a folder; --format {fmt} writes an artifact folder")
    if fmt == "onnx":
        from netc.runtime.onnx_export import export_onnx

        manifest = export_onnx(spec_path, weights, out_dir, phase=phase, stages=stages,
                               outputs=outputs)
    elif fmt == "safetensors":
        from netc.runtime.export import export_safetensors

        manifest = export_safetensors(spec_path, weights, out_dir, phase=phase, stages=stages,
                                      outputs=outputs)
    else:
        from netc.runtime.export import export_model

        manifest = export_model(spec_path, weights, out_dir, platforms=platforms, phase=phase,
                                stages=stages, outputs=outputs, batch=batch)
    out.write(f"wrote {manifest.parent}\n")
    return EXIT_OK


def export_prototxt(spec_path: str, out_path: str) -> list[Path]:
    """The spec (its YAML as written) in Caffe's text format at `out_path`; a `solver:` section
    goes to <stem>_solver.prototxt beside it with `net:` naming the net file. A spec with errors,
    or using a netc extension Caffe cannot express, is refused (ExportError naming it)."""
    from netc.compiler.catalogue import layer_models
    from netc.runtime.checkpoint import write_bytes_atomic
    from netc.runtime.export import ExportError, _spec_error_text
    from netc.spec.net import parse_spec
    from netc.spec.prototxt import NotCaffeError, data_to_prototxt, solver_to_prototxt
    from netc.spec.yaml_io import read_yaml

    spec = parse_spec(spec_path, layer_models())
    if spec.diagnostics.errors:
        raise ExportError(f"{spec_path}: the spec has errors:\n{_spec_error_text(spec)}")
    data = read_yaml(Path(spec_path).read_text(encoding="utf-8")).data
    if not isinstance(data, dict):
        raise ExportError(f"{spec_path}: not a net (a mapping)")
    target = Path(out_path)
    if target.is_dir():
        raise ExportError(f"{target}: is a folder; --format prototxt writes a file (NET.prototxt)")
    try:
        net_text = data_to_prototxt(data)
        solver = data.get("solver")
        solver_text = solver_to_prototxt(solver) if isinstance(solver, dict) else None
    except NotCaffeError as e:
        raise ExportError(f"{spec_path}: cannot be written as Caffe prototxt: {e}") from None
    written = [write_bytes_atomic(target, net_text.encode("utf-8"))]
    if solver_text is not None:
        solver_path = target.with_name(f"{target.stem}_solver.prototxt")
        solver_text = f'net: "{target.name}"\n' + solver_text
        written.append(write_bytes_atomic(solver_path, solver_text.encode("utf-8")))
    return written
