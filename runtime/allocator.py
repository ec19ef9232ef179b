"""The C allocator setting netc's compute commands run under (Linux with glibc only).

Why: XLA's CPU runtime allocates each program's buffers afresh on every execution. glibc's
malloc serves a block over its mmap threshold (at most 32 MiB) with a new mmap and unmaps it on
free, so every step of a real-size net faults its large buffers in again, page by page, and the
kernel zeroes each page: CIFAR ResNet-18's train step at batch 128 took 227,400 minor page faults
and 0.63-0.68 s of system CPU time per step here (bench/allocator_faults.py), and its 33 MiB
activations' elementwise layers ran 3-5x slower than on warm memory (`netc time`). With the
setting below, 2 of 3 steps took 0 faults (one still 227,400) and the steps 3.37-3.60 s instead
of 3.81-4.34 s (same script, one run).
PyTorch's step gains as well (bench/resnet18_cifar.py, same setting: torch channels_last 38.3 →
41.1 samples/s), so benchmarks run every contender under it (bench/harness.py).

The setting: all threads allocate from the main heap (arena_max=1), never with mmap
(mmap_max=0; the heap still falls back to mmap when it cannot grow), and freed memory stays with
the process (trim_threshold 4 GiB, top_pad 64 MiB): the process keeps its peak memory until it
exits, which is what a training run does anyway. glibc reads GLIBC_TUNABLES only when a program
starts (mallopt() at run time cannot raise the mmap threshold past 32 MiB, and measured here it
did not stop the faults), so `netc train`, `test`, `predict`, `time`, ... re-execute themselves
once with it set, before importing anything heavy (~0.1 s). NETC_MALLOC=0 turns it off; a
GLIBC_TUNABLES that already sets any glibc.malloc tunable is the user's and is left alone. To
get the same in your own process (the Python API), start it with the variable set:
GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:... (`TUNABLES` below).
"""

from __future__ import annotations

import os
import sys

ENV = "NETC_MALLOC"
TUNABLES = ("glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:"
            "glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=67108864")

__all__ = ["ENV", "TUNABLES", "environment", "reexec"]


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def environment(environ=None) -> dict | None:
    """The environment to re-execute under, or None when this one is as wanted: not Linux with
    glibc, turned off with NETC_MALLOC=0, or GLIBC_TUNABLES already sets the allocator."""
    env = dict(os.environ if environ is None else environ)
    if env.get(ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return None
    if not sys.platform.startswith("linux") or not _glibc():
        return None
    own = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in own:
        return None
    env["GLIBC_TUNABLES"] = f"{own}:{TUNABLES}" if own else TUNABLES
    return env


def reexec() -> None:
    """Replace this process by the same command under `environment()`, when it differs (the
    command line as Python was started: sys.orig_argv). Returns only when nothing is to do."""
    env = environment()
    argv = getattr(sys, "orig_argv", None)
    if env is None or not argv:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:  # no exec here (a sandbox): run on with the system's allocator
        return
