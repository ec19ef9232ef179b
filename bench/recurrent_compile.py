"""Compile time and step time of a recurrent net against the sequence length T: a char-LSTM
(Embed 65→128, LSTM 256 with Caffe's cont and carried state, InnerProduct 65 over axis 2,
SoftmaxWithLoss, Adam) at batch 32, T = 10, 100, 1000, through netc's own train step (the one
`netc train` runs, via the public API).

Each recurrent layer lowers to one lax.scan over time, so lowering and compiling should take
about the same time at every T (an unrolled loop would grow with T), while a step grows linearly.

Run: python bench/recurrent_compile.py [--batch 32] [--lengths 10,100,1000] [--steps 5]
Prints one row per T. Not a test: numbers vary by machine and load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from char_lstm import E, V, spec_text  # noqa: E402 - the same char-LSTM as bench/char_lstm.py

H = 256

def measure(t: int, n: int, steps: int) -> dict:
    import jax

    import netc

    path = Path(tempfile.mkdtemp()) / f"char_lstm_t{t}.yaml"
    path.write_text(spec_text(t, n, H, cont=True))
    model = netc.load(str(path), phase="TRAIN")
    params, state = model.init(0)
    opt_state, step = model.train_step()
    rng = np.random.default_rng(0)
    cont = np.ones((t, n), np.float32)
    cont[0] = 0
    inputs = {"data": rng.integers(0, V, (t, n)).astype(np.float32),
              "label": rng.integers(0, V, (t, n)).astype(np.float32), "cont": cont}

    start = time.perf_counter()
    lowered = step.lower(params, state, opt_state, inputs, np.int32(0))
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    hlo_chars = len(lowered.as_text())

    carry = [params, state, opt_state]
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        carry[0], carry[1], carry[2], loss = compiled(*carry, inputs, np.int32(i))
        jax.block_until_ready(loss)
        if i:  # the first call also allocates: not counted
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    return {"T": t, "lower_s": lower_s, "compile_s": compile_s, "hlo_chars": hlo_chars,
            "step_ms": 1e3 * step_s, "seq_s": n / step_s, "chars_s": n * t / step_s}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lengths", default="10,100,1000")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    import jax

    rows = [measure(int(t), args.batch, args.steps) for t in args.lengths.split(",")]
    print(f"char-LSTM (Embed {V}→{E}, LSTM {H}, cont + carried state, Adam) train step, batch "
          f"{args.batch}; {os.cpu_count()} CPU(s), jax {jax.__version__}, "
          f"python {sys.version.split()[0]}")
    print(f"  {'T':>5} {'lower s':>8} {'compile s':>10} {'HLO chars':>10} {'step ms':>9} "
          f"{'seq/s':>8} {'chars/s':>9}")
    for r in rows:
        print(f"  {r['T']:>5} {r['lower_s']:>8.2f} {r['compile_s']:>10.2f} {r['hlo_chars']:>10,} "
              f"{r['step_ms']:>9.1f} {r['seq_s']:>8.1f} {r['chars_s']:>9,.0f}")


if __name__ == "__main__":
    main()
