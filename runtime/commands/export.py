"""`netc export`: the deploy forward as a jax.export artifact (runtime/export.py)."""

from __future__ import annotations

from typing import TextIO

from netc.runtime.errors import EXIT_OK


def run(spec_path: str, weights: str, out_dir: str, *, platforms=None, outputs=None,
        phase: str = "TEST", stages=(), batch: int | None = None, out: TextIO) -> int:
    """Export; `weights` may be a checkpoint or a run directory (its newest checkpoint)."""
    from netc.runtime.export import export_model

    manifest = export_model(spec_path, weights, out_dir, platforms=platforms, phase=phase,
                            stages=stages, outputs=outputs, batch=batch)
    out.write(f"wrote {manifest.parent}\n")
    return EXIT_OK
