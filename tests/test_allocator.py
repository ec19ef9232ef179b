"""netc's allocator setting (runtime/allocator.py): which environment the compute commands
re-execute under, that the re-executed process really keeps freed memory (no page faults when a
large buffer is allocated again), and that the `netc` program goes through it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from netc.__main__ import _command
from netc.runtime.allocator import TUNABLES, environment

glibc_linux = pytest.mark.skipif(environment({}) is None, reason="Linux with glibc only")


@glibc_linux
def test_environment_adds_the_tunables_once():
    assert environment({})["GLIBC_TUNABLES"] == TUNABLES
    own = environment({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"})["GLIBC_TUNABLES"]
    assert own == "glibc.cpu.hwcaps=-AVX512F:" + TUNABLES
    assert environment({"GLIBC_TUNABLES": TUNABLES}) is None  # already in force: no loop
    assert environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) is None  # the user's
    assert environment({"NETC_MALLOC": "0"}) is None


def test_command_is_the_first_word():
    assert _command(["--no-compile-cache", "train", "x.yaml"]) == "train"
    assert _command(["check", "train.yaml"]) == "check"
    assert _command(["--help"]) is None


# Allocates a 64 MiB buffer twice and prints the minor page faults of the second allocation
# (touched in full), after re-executing under netc's setting; and GLIBC_TUNABLES as it runs.
PROBE = """
import ctypes, os, resource
from netc.runtime.allocator import reexec
reexec()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 64 << 20
p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
p = libc.malloc(n); ctypes.memset(p, 1, n)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, os.environ.get("GLIBC_TUNABLES") or "-")
"""


def _probe(**env) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True, timeout=120).stdout.split()
    return int(out[0]), out[1]


@glibc_linux
def test_reexecuted_process_keeps_freed_memory():
    env = {"GLIBC_TUNABLES": ""}
    faults, tunables = _probe(**env, NETC_MALLOC="1")
    assert tunables == TUNABLES
    assert faults < 1000  # served from memory the process already has
    faults_off, tunables_off = _probe(**env, NETC_MALLOC="0")
    assert tunables_off == "-"
    assert faults_off > 10_000  # 64 MiB of fresh 4 KiB pages without it


def test_netc_program_runs_through_the_entry():
    done = subprocess.run([sys.executable, "-m", "netc", "time", "--help"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: python -m netc time")
