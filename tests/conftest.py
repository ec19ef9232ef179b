import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


def run_netc(*args, cwd=None, timeout=300, env=None):
    """Run the installed `netc` console script as a user would (a subprocess)."""
    exe = Path(sys.executable).with_name("netc")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "netc.cli"]
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(cmd + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture
def write_spec(tmp_path):
    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


@pytest.fixture
def check_spec(write_spec):
    """Validate + plan (both phases) a spec text; return (spec, plans, formatted diagnostics)."""
    from netc.compiler.catalogue import layer_models
    from netc.compiler.plan import plan_all_phases
    from netc.spec.net import parse_spec

    def check(text: str, phase=None, batch=None, name="spec.yaml"):
        path = write_spec(text, name)
        spec = parse_spec(str(path), layer_models(), display_name=name)
        plans = plan_all_phases(spec, phase=phase, batch=batch) if spec.layers else {}
        return spec, plans, [d.format() for d in spec.diagnostics.sorted()]

    return check


def errors_of(check_spec, text: str, **kw) -> list[str]:
    """The formatted error lines `check_spec` reports for a spec text."""
    _, _, diags = check_spec(text, **kw)
    return [d for d in diags if ": error: " in d]


def warnings_of(check_spec, text: str, **kw) -> list[str]:
    _, _, diags = check_spec(text, **kw)
    return [d for d in diags if ": warning: " in d]
