"""`netc time`: Caffe's `caffe time` — where the time of a forward / backward pass goes.

Each layer's forward and backward run as their own jitted programs on the blobs the layers before
it computed, in plan order, from random inputs of the planned shapes (so integer blobs hold legal
ids and labels, and an in-place layer reads its bottom as it was before it ran):
the forward is `unit.apply`, the backward the VJP of the layer's floating-point tops with respect
to its floating-point bottoms and learned parameters, run from the residuals its forward saved
(Caffe's Backward, without the forward again). Each is the median of N calls after a warm-up
call, each waited for (block_until_ready). Then the whole jitted net forward and the whole train
step (forward + backward + solver update, the program `netc train` runs) are timed the same way.

XLA fuses across layers in the whole programs, so the sum of the layers is not the whole net's
cost: the whole step is what a training iteration costs. The layer rows show where time goes.
Layers the lowering computes as one in the whole programs (BatchNorm + Scale + ReLU in TRAIN,
compiler/layers/norm.py batch_norm_affine) are timed apart in the rows and marked so.

`precision` (bfloat16, float16; the solver's option, `netc train --precision`) times everything
in that compute dtype as `netc train` runs it: the parameters and float inputs cast for the layer
rows and the forward, the train step with float32 master weights (runtime/precision.py). The
lowering column names what runs in that dtype: where the native kernels do not take it
(float16; bfloat16 with NETC_ONEDNN_BF16=0) it names the pure-XLA lowering.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import TextIO

from netc.compiler.xla import jit
from netc.runtime.errors import EXIT_OK, RunError


@dataclass
class LayerTiming:
    name: str
    type: str
    lowering: str
    forward_ms: float | None
    backward_ms: float | None  # None: nothing to differentiate (no float bottom or parameter)
    share: float = 0.0  # (forward + backward) / the sum over layers
    note: str = ""


@dataclass
class Timing:
    spec: str
    phase: str
    batch: int
    iterations: int
    backend: str
    precision: str = "float32"
    layers: list[LayerTiming] = field(default_factory=list)
    layers_forward_ms: float = 0.0
    layers_backward_ms: float = 0.0
    net_forward_ms: float | None = None
    train_step_ms: float | None = None  # forward + backward + update, one batch
    train_step_first_call_s: float | None = None  # compilation included
    train_step_note: str = ""
    # how the native kernels take activations: "channels_last" (onednn.channels_last), else ""
    kernel_layout: str = ""

    def as_json(self) -> dict:
        return asdict(self)


def _median_ms(fn, iterations: int) -> float:
    """Median wall milliseconds of `fn()` (which returns arrays) over `iterations` calls, after
    one warm-up call (compilation)."""
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _is_float(x) -> bool:
    import jax.numpy as jnp

    return jnp.issubdtype(x.dtype, jnp.floating)


def _inputs(plan, seed: int) -> dict:
    """Random arrays for the net's inputs (data-layer tops), of the planned shapes: what a
    layer reads as class indices or ids (a loss's labels, an Embed's input) gets integers in
    [0, classes); a text source's tokens in [0, vocabulary); other blobs Gaussian floats."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes: dict[str, int | None] = {}
    floats: set[str] = set()
    for pl in plan.layers:
        fact = pl.unit.label_fact(list(pl.bottom_shapes))
        if fact is None or fact.bottom >= len(pl.bottoms):
            continue
        b = pl.bottoms[fact.bottom]
        if fact.kind == "class":
            c = fact.classes
            old = classes.get(b, c)
            classes[b] = c if old is None else (old if c is None else min(old, c))
        else:
            floats.add(b)
    vocab: dict[str, int] = {}
    for pl in plan.layers:
        fact = pl.unit.data_fact() if pl.unit.is_data else None
        if fact is not None:
            for role, top in zip(fact.roles, pl.tops):
                if role in fact.vocab:
                    vocab[top] = fact.vocab[role]
                elif role == "label" and top not in floats:
                    classes.setdefault(top, None)
    out = {}
    for b in plan.inputs:
        shape = tuple(int(d) for d in plan.blobs[b])
        if b in classes or b in vocab:
            bounds = [int(x) for x in (classes.get(b), vocab.get(b)) if x]
            out[b] = rng.integers(0, min(bounds) if bounds else 1, size=shape).astype(np.int32)
        else:
            out[b] = rng.standard_normal(shape).astype(np.float32)
    return out


def _layer_params(pl, params: dict, state: dict) -> tuple[dict, dict]:
    """(learned, other) parameter blobs of one layer by role, as Net.apply gathers them."""
    learned, other = {}, {}
    for role, (owner, orole) in pl.param_owner.items():
        decl = pl.params[role]
        src = params if decl.learned else state
        if decl.carry and orole not in src.get(owner, {}):
            continue
        (learned if decl.learned else other)[role] = src[owner][orole]
    return learned, other


def _lowering(pl, kernels_run: bool, precision: str = "float32") -> str:
    """The lowering column: the layer's own description, or its pure-XLA one where it would
    take native kernels that do not run here (none built, NETC_ONEDNN=0, a dtype they refuse).
    A oneDNN layer's description names the dtype oneDNN computes it in (onednn.conv_dtype:
    float32; in bfloat16 natively, or widened to float32)."""
    r = pl.resolved
    if getattr(r, "kernel", "") and not kernels_run and dataclasses.is_dataclass(r):
        r = dataclasses.replace(r, kernel="")
    dt = "float32"
    if getattr(r, "kernel", "") and kernels_run and precision != "float32":
        from netc.compiler.kernels.onednn import conv_dtype

        dt = conv_dtype(precision, depthwise=bool(getattr(r, "depthwise", False)))
        dt = dt if dt == precision else f"{precision} widened to {dt}"
    return pl.unit.describe_lowering(r, dt)


def _kernels_run(net, precision: str) -> bool:
    """Whether the native kernels run in this timing's programs (compiler/kernels/onednn.py)."""
    from netc.compiler.kernels.onednn import conv_dtype

    return bool(net.kernels) and conv_dtype(precision) is not None


def _formats(tree):
    """jax Formats for the arrays of `tree`: 2-D and 3-D float activations channels-last in
    memory, as the native kernels keep them inside the whole step (onednn.activation_layout);
    every other array in XLA's default layout."""
    import jax
    from jax.experimental.layout import Format, Layout

    from netc.compiler.kernels.onednn import activation_layout

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def one(a):
        order = activation_layout(len(a.shape)) if _is_float(a) else None
        return Format(Layout(order) if order else None, device)

    return jax.tree.map(one, tree)


def _place(tree, last: bool):
    """`tree`'s arrays in the memory layouts of _formats (`last`), else as they are."""
    import jax

    return jax.device_put(tree, _formats(tree)) if last else tree


def _jit(fn, args: tuple, last: bool):
    """jax.jit(fn); `last`: its arrays in and out (a VJP's residuals included) in the layouts of
    _formats, so that a layer's own program has no transposes the whole step lacks (its
    arguments must be placed so: _place)."""
    import jax

    if not last:
        return jit(fn)
    return jit(fn, in_shardings=_formats(args),
                   out_shardings=_formats(jax.eval_shape(fn, *args)))


def _time_layer(pl, blobs: dict, params: dict, state: dict, train: bool, key, iterations: int,
                kernels: bool = False, lowering: str = "", last: bool = False) -> LayerTiming:
    """Time one layer on its bottoms in `blobs`, then write its tops there (the net's walk).
    `last`: the layer's programs take and give activations channels-last in memory (_jit)."""
    import jax
    import jax.numpy as jnp

    from netc.compiler.lower import Context

    unit = pl.unit
    lowering = lowering or unit.describe_lowering(pl.resolved)
    bottoms = _place([blobs[b] for b in pl.bottoms], last)
    learned, other = _layer_params(pl, params, state)
    lstate = state.get(pl.name, {})

    def forward(learned, bottoms, other, lstate, key):
        ctx = Context(train, key, lstate, {}, pl, kernels)
        tops = unit.apply({**learned, **other}, list(bottoms), ctx)
        return list(tops), ctx.new_state

    fwd = _jit(forward, (learned, bottoms, other, lstate, key), last)
    fwd_ms = _median_ms(lambda: fwd(learned, bottoms, other, lstate, key), iterations)

    # the backward: d(float tops) / d(float bottoms that propagate down, learned parameters)
    pd = unit.spec.propagate_down or [True] * len(bottoms)
    diff = [i for i, x in enumerate(bottoms) if _is_float(x) and pd[i]]
    dparams = {r: v for r, v in learned.items() if _is_float(v)}
    tops, _ = fwd(learned, bottoms, other, lstate, key)
    blobs.update(zip(pl.tops, tops))
    ftops = [i for i, t in enumerate(tops) if _is_float(t)]
    if not ftops or (not diff and not dparams):
        return LayerTiming(pl.name, pl.type, lowering, fwd_ms, None, note="nothing to differentiate")

    fixed = {r: v for r, v in learned.items() if r not in dparams}  # integer blobs, if any

    def f(dp, db, rest):
        full = list(rest)
        for i, x in zip(diff, db):
            full[i] = x
        tops, _ = forward({**fixed, **dp}, full, other, lstate, key)
        return [tops[i] for i in ftops]

    def fwd_vjp(dp, db, rest):
        return jax.vjp(lambda dp, db: f(dp, db, rest), dp, db)

    rest = [None if i in diff else x for i, x in enumerate(bottoms)]
    db = [bottoms[i] for i in diff]
    try:
        outs, vjp_fn = _jit(fwd_vjp, (dparams, db, rest), last)(dparams, db, rest)
        cot = _place([jnp.ones_like(o) for o in outs], last)
        bwd = _jit(lambda vjp_fn, cot: vjp_fn(cot), (vjp_fn, cot), last)
        bwd_ms = _median_ms(lambda: bwd(vjp_fn, cot), iterations)
    except Exception as e:  # a lowering JAX cannot differentiate: report it, time the others
        return LayerTiming(pl.name, pl.type, lowering, fwd_ms, None,
                           note=f"backward failed: {type(e).__name__}: {str(e).splitlines()[0]}")
    return LayerTiming(pl.name, pl.type, lowering, fwd_ms, bwd_ms)


def _optimizer(ctx, net, precision: str = "float32"):
    from netc.runtime.solver import make_optimizer
    from netc.spec.solver import SolverParameter

    sp = (ctx.solver or SolverParameter(base_lr=0.01, lr_policy="fixed")).resolved()
    sp = sp.model_copy(update={"precision": precision})  # float16 adds the loss scale's state
    return make_optimizer(sp, *net.multipliers()), ("the spec's solver" if ctx.solver is not None
                                                    else "no solver in the spec: plain SGD")


def measure(spec_path: str, *, phase: str = "TRAIN", batch: int | None = None,
            iterations: int = 10, seed: int = 0, progress: TextIO | None = None,
            precision: str = "float32") -> Timing:
    """Time `spec_path`'s `phase` net (see the module docstring) in `precision`. `progress`, if
    given, gets one line per program as it is compiled and timed (a big net compiles two per
    layer)."""
    import jax

    from netc.compiler.lower import lower
    from netc.runtime import precision as mp
    from netc.runtime.context import load_context

    if precision not in mp.DTYPES:
        raise RunError(f"--precision: '{precision}' is not one of {', '.join(mp.DTYPES)}")
    ctx = load_context(spec_path)
    plan = _timed_plan(ctx, spec_path, phase, batch)
    net = lower(plan)
    policy = mp.policy(precision, plan)
    train = phase == "TRAIN"
    root = jax.random.PRNGKey(seed)
    params, state = net.init(jax.random.fold_in(root, 1))
    inputs = jax.device_put(_inputs(plan, seed))
    key = jax.random.fold_in(root, 2)
    apply = jit(lambda p, s, x, k: net.apply(p, s, x, rng=k, train=train,
                                                 outputs=net.sinks()))

    b = plan.batch_size
    result = Timing(spec_path, phase, int(b) if isinstance(b, int) else 0, iterations,
                    jax.default_backend(), precision)
    from netc.compiler.kernels.onednn import channels_last

    if net.kernels and channels_last():
        result.kernel_layout = "channels_last"
    cast = (policy.cast_params(params), state, policy.cast_inputs(inputs))  # as the step casts
    _time_layers(result, plan, net, cast, train, key, progress)
    _name_fused(result, net, cast, train, key)
    if progress is not None:
        progress.write("\rtiming the whole forward and train step\x1b[K")
        progress.flush()
    result.net_forward_ms = _median_ms(lambda: apply(*cast, key)[0], iterations)
    if phase != "TRAIN" or not plan.has_loss:
        result.train_step_note = (f"the {phase} net has no loss" if phase == "TRAIN" else
                                  f"the {phase} net is not trained") + ": no train step to time"
        return result
    _time_train_step(result, ctx, net, (params, state, inputs), jax.random.fold_in(root, 3))
    return result


def _timed_plan(ctx, spec_path: str, phase: str, batch: int | None):
    """The `phase` net's plan; RunError when its batch is symbolic or it has no layer to time."""
    plan = ctx.plan(phase, batch)
    bad = [b for b in plan.inputs if any(isinstance(d, str) for d in plan.blobs[b])]
    if bad:
        raise RunError(f"{spec_path}: the {phase} net's batch is symbolic (input "
                       f"'{bad[0]}'); give --batch N to time it")
    if not any(not pl.unit.is_data for pl in plan.layers):
        raise RunError(f"{spec_path}: the {phase} net has no layer to time")
    return plan


def _time_layers(result: Timing, plan, net, arrays, train: bool, key, progress) -> None:
    """Each non-data layer's forward and backward, in order, and their shares of the sum."""
    import jax

    params, state, inputs = arrays
    blobs = dict(inputs)  # each layer reads what the layers before it wrote, as Net.apply does
    todo = [pl for pl in plan.layers if not pl.unit.is_data]
    kernels_run = _kernels_run(net, result.precision)
    for k, pl in enumerate(todo):
        if progress is not None:
            progress.write(f"\rtiming layer {k + 1}/{len(todo)}: {pl.name}\x1b[K")
            progress.flush()
        lk = jax.random.fold_in(key, net._rng_index[pl.name])
        result.layers.append(_time_layer(pl, blobs, params, state, train, lk, result.iterations,
                                         net.kernels, _lowering(pl, kernels_run, result.precision),
                                         last=bool(result.kernel_layout)))
    scanned = net.scanned_layers()  # the whole programs run these in one lax.scan (Net.apply)
    for t in result.layers:
        if t.name in scanned:
            t.lowering += f" in lax.scan ×{scanned[t.name]}"
    result.layers_forward_ms = sum(t.forward_ms or 0.0 for t in result.layers)
    result.layers_backward_ms = sum(t.backward_ms or 0.0 for t in result.layers)
    total = result.layers_forward_ms + result.layers_backward_ms
    for t in result.layers:
        t.share = ((t.forward_ms or 0.0) + (t.backward_ms or 0.0)) / total if total > 0 else 0.0


def _name_fused(result: Timing, net, arrays, train: bool, key) -> None:
    """Mark the layers the whole programs compute as one (a layer fused with its producers, as
    BatchNorm + Scale + ReLU are in TRAIN): the rows time them apart."""
    import jax

    from netc.compiler.lower import Sources

    params, state, inputs = arrays
    sources = Sources()
    jax.eval_shape(lambda p, s, x, k: net.apply(p, s, x, rng=k, train=train, sources=sources),
                   params, state, inputs, key)
    chains = list(sources.fused.values())  # (layers, how): a Scale's, then its activation's
    by_name = {t.name: t for t in result.layers}
    for chain, how in chains:
        if any(set(chain) < set(other) for other, _ in chains):
            continue  # folded again by a layer after it
        text = f" · in the whole programs: {' + '.join(chain)} as one ({how})"
        for name in chain:
            if name in by_name:
                by_name[name].lowering += text


def _time_train_step(result: Timing, ctx, net, arrays, key) -> None:
    """One whole train step (the spec's optimizer, one batch): its first call and its median."""
    import jax

    from netc.runtime.trainer import make_train_step

    params, state, inputs = arrays
    optimizer, which = _optimizer(ctx, net, result.precision)
    step = make_train_step(net, optimizer, 1, key, precision=result.precision)
    carry = [jax.tree_util.tree_map(lambda x: x.copy(), params),
             jax.tree_util.tree_map(lambda x: x.copy(), state), optimizer.init(params)]
    it = [0]

    def one():
        p, s, o, loss = step(*carry, inputs, it[0])
        carry[:] = [p, s, o]
        it[0] += 1
        return loss

    t0 = time.perf_counter()
    jax.block_until_ready(one())
    result.train_step_first_call_s = time.perf_counter() - t0
    result.train_step_ms = _median_ms(one, result.iterations)
    result.train_step_note = f"one batch, {which}" + (" (iter_size 1)" if ctx.solver is not None
                                                      and int(ctx.solver.iter_size) > 1 else "")


def _fmt(ms: float | None) -> str:
    return "—" if ms is None else f"{ms:.3f}"


def print_table(t: Timing, out: TextIO) -> None:
    out.write(f"{t.spec}: {t.phase} phase, batch {t.batch}, {t.backend}, {t.precision}; median of "
              f"{t.iterations} iterations (ms)\n")
    rows = [("layer", "type", "forward", "backward", "share", "lowering")]
    for lt in t.layers:
        low = lt.lowering + (f" ({lt.note})" if lt.note else "")
        rows.append((lt.name, lt.type, _fmt(lt.forward_ms), _fmt(lt.backward_ms),
                     f"{100 * lt.share:.1f}%", low))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4}
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths))]
        out.write("  " + "  ".join(cells).rstrip() + "\n")
    s = t.layers_forward_ms + t.layers_backward_ms
    out.write(f"  sum of layers: forward {t.layers_forward_ms:.3f} ms, backward "
              f"{t.layers_backward_ms:.3f} ms, forward+backward {s:.3f} ms\n")
    out.write(f"  whole net forward (one jitted program): {_fmt(t.net_forward_ms)} ms\n")
    if t.train_step_ms is not None:
        out.write(f"  whole train step (forward+backward+update, one jitted program): "
                  f"{t.train_step_ms:.3f} ms — {t.train_step_note}; first call "
                  f"{t.train_step_first_call_s:.2f} s (compiled, or loaded from the compile "
                  "cache)\n")
    else:
        out.write(f"  whole train step: {t.train_step_note}\n")
    out.write("  XLA fuses across layers in the whole programs: the whole step is the real cost "
              "per iteration, the layer rows show where it goes.\n")
    if t.kernel_layout == "channels_last":
        out.write("  The native kernels keep activations channels-last in memory "
                  "(NETC_ONEDNN_LAYOUT): each layer's own programs take and give them so too.\n")


def run(spec_path: str, *, phase: str, batch: int | None, iterations: int, as_json: bool,
        out: TextIO, err: TextIO | None = None, precision: str = "float32") -> int:
    """`progress` lines go to `err` when it is a terminal."""
    tty = err is not None and hasattr(err, "isatty") and err.isatty()
    try:
        t = measure(spec_path, phase=phase, batch=batch, iterations=iterations,
                    progress=err if tty else None, precision=precision)
    finally:
        if tty:
            err.write("\r\x1b[K")
            err.flush()
    if as_json:
        out.write(json.dumps(t.as_json(), indent=2) + "\n")
    else:
        print_table(t, out)
    return EXIT_OK
