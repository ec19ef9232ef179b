"""The installed package holds every subpackage: pyproject.toml lists packages by hand (the
repository's folders are netc's subpackages), so a new folder with an __init__.py must be listed
there too, or a plain `pip install .` (README command 1) ships without it."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    dirs = {name: (ROOT / d).resolve() for name, d in conf["package-dir"].items()}
    found = set()
    for name, root in dirs.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            if any(part.startswith(".") or part in ("tests", "bench", "build")
                   or part.endswith(".egg-info") for part in rel.parts):
                continue
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    missing = sorted(found - listed)
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {missing}"
