"""`netc test`: Caffe's `caffe test` — the TEST net's scalar outputs averaged over batches."""

from __future__ import annotations

from typing import TextIO

from netc.runtime.errors import EXIT_OK, RunError


def run(spec_path: str, weights: str, iterations: int | None, out: TextIO, err: TextIO) -> int:
    """Print every scalar TEST-net output (accuracy, loss) averaged over `iterations` batches
    (default: the solver's test_iter, else 50 as in Caffe)."""
    scores(spec_path, weights, iterations, out, err)
    return EXIT_OK


def scores(spec_path: str, weights: str, iterations: int | None, out: TextIO,
           err: TextIO) -> dict[str, float]:
    from netc.compiler.lower import lower
    from netc.runtime.context import load_context
    from netc.runtime.feeds import data_feeds, evaluate, make_eval_fn, metric_names
    from netc.runtime.weights import init_with_weights

    ctx = load_context(spec_path)
    tplan = ctx.plan("TEST")
    feeds = data_feeds(tplan, ctx.spec.spec_dir)
    if not feeds:
        raise RunError(f"{spec_path}: the TEST net has no Data layer to read batches from; "
                       "use `netc predict` to run it on given inputs")
    net = lower(tplan)
    if not metric_names(net):
        raise RunError(f"{spec_path}: the TEST net has no scalar outputs (accuracy, loss) to report")
    solver = ctx.solver
    if iterations is None:
        iterations = int(solver.test_iter[0]) if solver is not None and solver.test_iter else 50
    params, state = init_with_weights(net, weights, err)
    result = evaluate(make_eval_fn(net), params, state, feeds, iterations)
    n = feeds[0].batch_size * iterations
    out.write(f"{spec_path}: TEST phase, {iterations} iterations ({n:,} samples)\n")
    for k, v in result.items():
        out.write(f"{k} = {v:.6g}\n")
    return result
