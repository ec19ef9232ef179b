"""The XLA compile options netc gives the programs it compiles: `jit` is jax.jit with them.

On a CPU, netc asks XLA for its classic LLVM IR emitters for fused elementwise and reduction
loops (`xla_cpu_use_fusion_emitters=false`) instead of the MLIR fusion emitters XLA 0.10 turns on
by default. `python bench/compile_options.py` (one process, each variant built twice in A B B A
order without the persistent cache, then alternating timing windows; 2 cores, jaxlib 0.10.2;
bench/results/cpu/compile_options.txt): LeNet's XLA compiling 0.65 s instead of 1.58 s and its
first call 0.98 s instead of 1.94 s, its steps 1.07x as fast; CIFAR ResNet-18, MobileNet v2 and
the char-LSTM compile in the same time either way (2.90 vs 2.94 s, 5.11 vs 4.89 s, 0.91 vs 1.05
s) and run within the windows' spread (1.07x, 1.02-1.05x, 0.97x). Convolutions and matmuls are
not fusions (oneDNN or Eigen calls), so the choice only touches the elementwise code around them.

The option is passed per program (jax.jit's compiler_options), not through XLA_FLAGS: a library
user's own programs keep XLA's defaults, the persistent compilation cache keys on it, and an
option a jaxlib does not know would abort the process from XLA_FLAGS. It is given only where it
was measured: jaxlib 0.10.x (`KNOWN`), the CPU backend, and not when the user's XLA_FLAGS already
choose it (`XLA_FLAGS=--xla_cpu_use_fusion_emitters=true` brings XLA's default back)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["CPU_OPTIONS", "KNOWN", "compiler_options", "jit"]

CPU_OPTIONS: dict[str, Any] = {"xla_cpu_use_fusion_emitters": False}
# jaxlib releases (major, minor) on which CPU_OPTIONS were measured and are known options: an
# unknown one fails every compile ("No such compile option"), so a newer jaxlib gets none until
# measured again
KNOWN = {(0, 10)}


def _jaxlib_release() -> tuple[int, int]:
    import jaxlib

    major, minor = jaxlib.__version__.split(".")[:2]
    return int(major), int(minor)


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """The options netc compiles with on `backend` (None: JAX's default backend)."""
    import jax

    if (backend or jax.default_backend()) != "cpu" or _jaxlib_release() not in KNOWN:
        return {}
    user = os.environ.get("XLA_FLAGS", "")
    return {k: v for k, v in CPU_OPTIONS.items() if k not in user}


def jit(fn, **kw):
    """jax.jit(fn, **kw) compiling with `compiler_options()` (a caller's own compiler_options
    win). Inside another jitted function the options are the outer program's, as with jax.jit."""
    import jax

    opts = {**compiler_options(), **(kw.pop("compiler_options", None) or {})}
    return jax.jit(fn, compiler_options=opts or None, **kw)
