"""The pre-commit hooks (.pre-commit-hooks.yaml): valid under pre-commit's own schema
(pre_commit.clientlib), and run for real by `pre-commit run` in a temporary git repository that
points at a temporary git clone of the hook definitions — offline. The `netc-check-system` hook
(language: system, the netc on PATH) runs end to end: a good spec passes, a broken one fails the
run with its FILE:LINE:COL error. The `netc-check` hook (language: python) would make pre-commit
pip-install netc and its dependencies (JAX) into a fresh environment, minutes of downloads: here
its definition is validated and its entry run directly on the same files instead."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MODELS, ROOT, netc

pytest.importorskip("pre_commit")

HOOKS = ROOT / ".pre-commit-hooks.yaml"
BROKEN = """name: broken
layers:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [1, 3, 8, 8]}}}
  - name: conv
    type: Convolution
    bottom: data
    top: conv
    convolution_param: {num_output: 4, kernel_size: 11}
"""


def _hooks() -> dict:
    from pre_commit.clientlib import load_manifest

    return {h["id"]: h for h in load_manifest(str(HOOKS))}


def test_hooks_file_is_valid_for_pre_commit():
    hooks = _hooks()
    assert set(hooks) == {"netc-check", "netc-check-system"}
    assert hooks["netc-check"]["language"] == "python"
    for h in hooks.values():
        assert shlex.split(h["entry"])[:2] == ["netc", "check"]
        assert h["types"] == ["yaml"] and h["pass_filenames"]


def _git(cwd: Path, *args: str, env: dict) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_pre_commit_runs_netc_check(tmp_path):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", PRE_COMMIT_HOME=str(tmp_path / "cache"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("GIT_DIR", None)
    env.pop("GIT_INDEX_FILE", None)
    hook_repo = tmp_path / "hooks"  # a git repository holding the hook definitions, as published
    hook_repo.mkdir()
    shutil.copy(HOOKS, hook_repo / ".pre-commit-hooks.yaml")
    _git(hook_repo, "init", "-q", env=env)
    _git(hook_repo, "add", ".pre-commit-hooks.yaml", env=env)
    _git(hook_repo, "commit", "-q", "-m", "hooks", env=env)
    rev = _git(hook_repo, "rev-parse", "HEAD", env=env)

    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    shutil.copy(MODELS / "lenet.yaml", project / "models" / "lenet.yaml")
    (project / "notes.yaml").write_text("not: a spec\n")  # outside files: never checked
    # the three lines a user adds under `repos:`
    (project / ".pre-commit-config.yaml").write_text(
        f"repos:\n"
        f"  - repo: {hook_repo.as_uri()}\n"
        f"    rev: {rev}\n"
        f"    hooks: [{{id: netc-check-system, files: ^models/}}]\n")
    _git(project, "init", "-q", env=env)
    _git(project, "add", ".", env=env)

    def run():
        return subprocess.run([sys.executable, "-m", "pre_commit", "run", "--all-files"],
                              cwd=project, env=env, capture_output=True, text=True, timeout=300)

    r = run()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "netc check (netc on PATH)" in r.stdout and "Passed" in r.stdout

    (project / "models" / "broken.yaml").write_text(BROKEN)
    _git(project, "add", ".", env=env)
    r = run()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Failed" in r.stdout
    assert "models/broken.yaml:8:" in r.stdout and "kernel extent 11" in r.stdout

    # the python hook's entry, run directly on the same files (what pre-commit would run in the
    # environment it builds)
    entry = shlex.split(_hooks()["netc-check"]["entry"])
    r = netc(*entry[1:], "models/lenet.yaml", cwd=project)
    assert r.returncode == 0, r.stderr
    r = netc(*entry[1:], "models/lenet.yaml", "models/broken.yaml", cwd=project)
    assert r.returncode == 1 and "models/broken.yaml:8:" in r.stderr
