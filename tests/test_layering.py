"""Layering: a layer unit never imports the lowering; LoweringError is a user-facing NetcError
that layers raise from compiler/layer.py and lower.py re-exports."""

from __future__ import annotations

import ast
from pathlib import Path

from netc.compiler import layer, lower
from netc.errors import NetcError

LAYERS = Path(__file__).resolve().parents[1] / "compiler" / "layers"


def test_lowering_error_is_a_netc_error_importable_from_both():
    assert issubclass(layer.LoweringError, NetcError)
    assert lower.LoweringError is layer.LoweringError
    e = layer.LoweringError("input blob 'y' was not given")
    assert e.text() == "error: input blob 'y' was not given" and e.code == 1


def test_no_layer_unit_imports_the_lowering():
    offenders = []
    for path in sorted(LAYERS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("netc.compiler.lower")]
    assert offenders == []
