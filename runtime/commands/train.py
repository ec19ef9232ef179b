"""`netc train`: the Solver (runtime/trainer.py) on a TrainConfig."""

from __future__ import annotations

from typing import TextIO

from netc.runtime.trainer import TrainConfig, train


def run(cfg: TrainConfig, out: TextIO | None = None, err: TextIO | None = None) -> int:
    return train(cfg, out=out, err=err)
