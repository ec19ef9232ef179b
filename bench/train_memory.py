"""How close is `netc check`'s training-memory estimate to what a train step really takes?
(A benchmark, not a test: run it, read the report.)

For SPEC at BATCH (the TRAIN net; a deploy net gets Σ outputs as its loss, as tests/test_zoo
does), with the trainer's own jitted step (make_train_step) and the SGD solver:

1. XLA's buffer assignment of the compiled step (memory_analysis: arguments + temporaries +
   outputs not aliased to a donated argument);
2. the process's peak RSS after three real steps, less its RSS before the net (Python + jaxlib);

beside compiler/memory.estimate. Run one spec per process (the peak RSS is the process's).

    python bench/train_memory.py models/vgg16.yaml 8
"""

from __future__ import annotations

import argparse
import resource


def _rss_now() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("batch", type=int)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()
    base = _rss_now()

    from netc.compiler.catalogue import layer_models
    from netc.compiler.lower import lower
    from netc.compiler.memory import estimate, fmt_bytes
    from netc.compiler.plan import plan_all_phases
    from netc.runtime.solver import make_optimizer
    from netc.runtime.trainer import make_train_step
    from netc.spec.net import parse_spec
    from netc.spec.solver import SolverParameter

    spec = parse_spec(args.spec, layer_models())
    plan = plan_all_phases(spec, batch=args.batch, phase="TRAIN")["TRAIN"]
    if spec.diagnostics.errors:
        raise SystemExit("\n".join(d.format() for d in spec.diagnostics.errors))
    net = lower(plan)
    if not plan.has_loss:
        apply, outs = net.apply, plan.outputs

        def loss(params, state, inputs, rng=None, train=True):
            blobs, new_state = apply(params, state, inputs, rng=rng)
            return sum(jnp.sum(blobs[o]) for o in outs), (blobs, new_state)

        net.loss = loss
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0))
    params, state = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 1e-3, jnp.float32), shapes)
    sp = SolverParameter.model_validate({"base_lr": 1e-3, "lr_policy": "fixed", "momentum": 0.9})
    optimizer = make_optimizer(sp, *net.multipliers())
    opt_state = optimizer.init(params)
    inputs = {b: jnp.zeros(plan.blobs[b], jnp.float32) for b in plan.inputs}
    step = make_train_step(net, optimizer, 1, jax.random.PRNGKey(1))
    m = step.lower(params, state, opt_state, inputs, 0).compile().memory_analysis()
    xla = m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    for it in range(3):
        params, state, opt_state, loss = step(params, state, opt_state, inputs, it)
        loss.block_until_ready()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    est = estimate(plan, "SGD")
    print(f"{args.spec} at batch {args.batch}:")
    print(f"  estimate   {fmt_bytes(est.total):>10}  ({est.summary()})")
    print(f"  XLA        {fmt_bytes(xla):>10}  estimate {100 * (est.total / xla - 1):+.0f} %")
    print(f"  peak RSS   {fmt_bytes(peak - base):>10}  estimate {100 * (est.total / (peak - base) - 1):+.0f} %"
          f"  (process before the net {fmt_bytes(base)} not included)")


if __name__ == "__main__":
    main()
