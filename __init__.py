"""netc: a declarative neural-network spec compiler (Caffe-style YAML -> JAX).

The Python API (nothing here imports JAX until it is used):

    netc.load(spec, phase="TEST", batch=None, weights=None) -> netc.Model
        .check()  .init(key)  .apply(params, state, inputs, outputs=...)  .predict(arrays)
    netc.train(spec, **options) -> exit code      (the `netc train` run, in-process)
    netc.Solver(netc.TrainConfig(spec, ...))       .step(n) .test() .snapshot() .restore() .solve()
    netc.Callback                                   a base for your own Solver callbacks
    netc.NetcError                                  every error a user can fix
"""

from __future__ import annotations

from typing import Any

from netc.errors import NetcError

__version__ = "0.1.0"

__all__ = ["__version__", "NetcError", "load", "train", "Model", "Solver", "TrainConfig",
           "Callback"]

_LAZY = {
    "Model": ("netc.runtime.api", "Model"),
    "Solver": ("netc.runtime.trainer", "Solver"),
    "TrainConfig": ("netc.runtime.trainer", "TrainConfig"),
    "Callback": ("netc.runtime.callbacks", "Callback"),
}


def load(spec: str, *, phase: str = "TEST", batch: int | None = None,
         weights: str | None = None, solver: str | None = None):
    """Load, validate and plan a spec; see netc.runtime.api.load."""
    from netc.runtime.api import load as _load

    return _load(spec, phase=phase, batch=batch, weights=weights, solver=solver)


def train(spec: str, *, callbacks=(), stdout=None, stderr=None, **options: Any) -> int:
    """Train `spec` as `netc train` does; `options` are TrainConfig's fields (solver, weights,
    resume, out (the run directory), seed, max_iter, data, progress, runs_root). Progress goes
    to `stdout`, warnings to `stderr` (default: sys's). Returns the exit code."""
    from netc.runtime.trainer import TrainConfig
    from netc.runtime.trainer import train as _train

    return _train(TrainConfig(spec=spec, **options), out=stdout, err=stderr, callbacks=callbacks)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'netc' has no attribute {name!r}")
