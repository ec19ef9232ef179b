"""`netc train`: Caffe's Solver::Solve for any spec, with one jitted step per iteration.

The trainer knows no layer types. It plans the spec's TRAIN and TEST nets, lowers both (they share
parameters by layer name), feeds every Data layer from its source through a prefetching
BatchStream, and runs Caffe's loop:

    for iter in [start, max_iter):
        test   when test_interval divides iter (iter 0 only with test_initialization)
        step   forward + backward over iter_size micro-batches (gradients summed) + solver update
        display the loss averaged over the last `average_loss` iterations every `display` iters
        snapshot when `snapshot` divides iter + 1
    final test and snapshot (snapshot_after_train)

The step is one `jax.jit` function that donates params / state / optimizer state. Its randomness is
`fold_in(fold_in(key(seed), STEP), iter)`, the data order depends only on (seed, epoch, index), and
a checkpoint stores params, state, optimizer state, the iteration and the stream position, so a
resumed run computes bit-for-bit what the uninterrupted run would have.

Run directory (``--out``, default ``runs/<spec name>-<timestamp>``)::

    spec.yaml          the spec text as trained (and solver.yaml when --solver was given)
    solver.json        the resolved SolverParameter (+ the effective max_iter and seed)
    metrics.jsonl      {"event": "train"|"test"|"snapshot"|"stop"|"done", "iter": ..., ...}
    <prefix>_iter_N.{safetensors,json}   checkpoints (runtime/checkpoint.py)

Exit codes: 0 done; 1 spec / data / checkpoint error; 3 the loss became NaN or infinite (no
snapshot of the bad state is written; the last good one stays); 130 SIGINT and 143 SIGTERM (the
current step finishes and a snapshot is written first).
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from netc.runtime.run import (
    EXIT_DIVERGED,
    EXIT_OK,
    RunError,
    apply_weights,
    architecture,
    architecture_diff,
    architecture_digest,
    data_feeds,
    input_only,
    load_spec,
    make_eval_fn,
    make_plan,
    read_weights,
    with_source,
)

__all__ = ["TrainConfig", "train", "make_train_step", "resolve_run_dir", "EXIT_DIVERGED"]

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
# fold_in tags separating the key streams derived from the run seed
_INIT_TAG, _STEP_TAG = 0x1417, 0x57E9


@dataclass
class TrainConfig:
    spec: str
    solver: str | None = None
    weights: str | None = None
    resume: str | None = None  # a run directory or "last"
    out: str | None = None
    seed: int | None = None
    max_iter: int | None = None
    data: str | None = None
    progress: bool | None = None  # live progress bar; None: when stdout is a terminal
    runs_root: str = "runs"


# --- the jitted step ------------------------------------------------------------------------------


def make_train_step(net, optimizer, iter_size: int, step_key):
    """`step(params, state, opt_state, inputs, it) -> (params, state, opt_state, loss)`, jitted,
    donating its first three arguments. With iter_size > 1, `inputs` has a leading micro-batch axis;
    the gradients are summed over the micro-batches (runtime/solver.py divides by iter_size) and
    the loss is their mean, as Caffe reports it."""
    import jax
    import jax.numpy as jnp
    import optax

    def objective(params, state, inputs, key):
        total, (_, new_state) = net.loss(params, state, inputs, rng=key, train=True)
        return total, new_state

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def step(params, state, opt_state, inputs, it):
        key = jax.random.fold_in(step_key, it)
        if iter_size == 1:
            (loss, state), grads = grad_fn(params, state, inputs, key)
        else:
            def micro(carry, xs):
                st, gsum, lsum = carry
                j, mb = xs
                (lj, st), g = grad_fn(params, st, mb, jax.random.fold_in(key, j))
                return (st, jax.tree_util.tree_map(jnp.add, gsum, g), lsum + lj), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
            (state, grads, lsum), _ = jax.lax.scan(
                micro, (state, zeros, jnp.zeros((), jnp.float32)),
                (jnp.arange(iter_size), inputs))
            loss = lsum / iter_size
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, state, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1, 2))


# --- run directories ------------------------------------------------------------------------------


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "net"


def resolve_run_dir(resume: str, spec_slug: str, runs_root: str = "runs") -> Path:
    """`--resume` argument -> run directory. "last": the run under runs_root for this spec whose
    newest checkpoint is the most recent."""
    from netc.runtime.checkpoint import latest_checkpoint

    if resume != "last":
        p = Path(resume)
        if p.is_file() or p.suffix == ".json" and p.parent.is_dir():
            p = p.parent
        if not p.is_dir():
            raise RunError(f"--resume {resume}: no such run directory")
        return p
    root = Path(runs_root)
    best = None
    if root.is_dir():
        for d in root.iterdir():
            if not d.is_dir() or not d.name.startswith(spec_slug + "-"):
                continue
            ck = latest_checkpoint(d)
            if ck is None:
                continue
            mtime = ck.stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, d)
    if best is None:
        raise RunError(f"--resume last: no run of '{spec_slug}' with a checkpoint under {root}/")
    return best[1]


def _new_run_dir(spec_slug: str, runs_root: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(runs_root) / f"{spec_slug}-{stamp}"
    p, n = base, 1
    while p.exists():
        n += 1
        p = base.with_name(f"{base.name}-{n}")
    return p


class _Metrics:
    """metrics.jsonl, one flushed JSON object per event."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, event: str, **fields: Any) -> None:
        rec = {"event": event, **fields, "time": round(time.time(), 3)}
        self.f.write(json.dumps(rec, sort_keys=False) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _read_metrics(path: Path) -> list[dict]:
    out = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _trim_metrics(path: Path, iteration: int) -> list[dict]:
    """On resume: drop the events the interrupted run logged after its last checkpoint (they are
    logged again), keep the rest."""
    from netc.runtime.checkpoint import write_bytes_atomic

    kept = []
    for rec in _read_metrics(path):
        it = rec.get("iter", 0)
        if rec.get("event") == "train" and it >= iteration:
            continue
        if rec.get("event") in ("test", "snapshot") and it > iteration:
            continue
        if rec.get("event") in ("stop", "done"):
            continue
        kept.append(rec)
    text = "".join(json.dumps(r) + "\n" for r in kept)
    write_bytes_atomic(path, text.encode("utf-8"))
    return kept


# --- output ---------------------------------------------------------------------------------------


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _shape(shape) -> str:
    return "×".join(str(d) for d in shape) if isinstance(shape, tuple) else str(shape)


def _fmt_metrics(m: dict[str, float]) -> str:
    return ", ".join(f"{k} = {v:.6g}" for k, v in m.items())


class _Progress:
    """A live one-line bar on a terminal; nothing otherwise (plain lines come from display)."""

    def __init__(self, out: TextIO, live: bool, max_iter: int):
        self.out, self.live, self.max_iter = out, live, max_iter
        self.last_draw = 0.0
        self.shown = False

    def update(self, it: int, loss: float, lr: float, rate: float, force: bool = False) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        width = 24
        frac = it / self.max_iter if self.max_iter else 1.0
        filled = int(round(frac * width))
        eta = (self.max_iter - it) / rate if rate > 0 else float("nan")
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {it}/{self.max_iter} "
                f"loss {loss:.4g} lr {lr:.3g} {rate:.1f} it/s ETA {_fmt_time(eta)}")
        self.out.write("\r\x1b[2K" + line)
        self.out.flush()
        self.shown = True

    def clear(self) -> None:
        if self.live and self.shown:
            self.out.write("\r\x1b[2K")
            self.out.flush()
            self.shown = False

    def echo(self, text: str) -> None:
        self.clear()
        self.out.write(text + "\n")
        self.out.flush()


# --- the trainer ----------------------------------------------------------------------------------


class _Diverged(Exception):
    """A non-finite loss or parameter: stop without snapshotting the bad state."""


def _better(name: str, new: float, old: float) -> bool:
    return new < old if "loss" in name.lower() else new > old


def train(cfg: TrainConfig, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Train per `cfg`; returns the exit code. Raises RunError for problems the user can fix."""
    out = out or sys.stdout
    err = err or sys.stderr
    if cfg.resume and cfg.weights:
        raise RunError("--resume and --weights exclude each other (a resumed run has its weights)")
    if cfg.resume and cfg.out:
        raise RunError("--resume continues in the run's own directory; do not pass --out")

    spec, solver = load_spec(cfg.spec, cfg.solver)
    make_plan(spec, "TRAIN", solver)  # spec errors first, before any solver or resume problem
    make_plan(spec, "TEST", solver)
    if solver is None:
        raise RunError(f"{cfg.spec}: no solver: add a `solver:` section to the spec or pass "
                       "--solver FILE")
    spec_slug = _slug(spec.name or Path(cfg.spec).stem)

    # --- resume: read the checkpoint first (its seed, max_iter and data override apply) ---------
    ckpt_tree = ckpt_meta = ckpt_path = None
    run_dir: Path
    if cfg.resume:
        from netc.runtime.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint

        run_dir = resolve_run_dir(cfg.resume, spec_slug, cfg.runs_root)
        ckpt_path = latest_checkpoint(run_dir)
        if ckpt_path is None:
            raise RunError(f"{run_dir}: no complete checkpoint to resume from")
        try:
            ckpt_tree, ckpt_meta = load_checkpoint(ckpt_path)
        except CheckpointError as e:
            raise RunError(str(e)) from None
        if "arch_digest" not in ckpt_meta or "params" not in ckpt_tree:
            raise RunError(f"{ckpt_path}: not a training checkpoint of netc train")
    else:
        run_dir = Path(cfg.out) if cfg.out else _new_run_dir(spec_slug, cfg.runs_root)
        from netc.runtime.checkpoint import list_checkpoints

        if list_checkpoints(run_dir):
            raise RunError(f"--out {run_dir}: the directory already holds a run's checkpoints; "
                           f"continue it with --resume {run_dir} or choose another directory")

    data_override = cfg.data
    if ckpt_meta is not None and data_override is None:
        data_override = ckpt_meta.get("data")
    if data_override is not None:
        spec = with_source(spec, data_override)

    train_plan = make_plan(spec, "TRAIN", solver)
    test_plan = make_plan(spec, "TEST", solver)
    for d in spec.diagnostics.sorted():
        err.write(d.format() + "\n")
    if not train_plan.has_loss:
        raise RunError(f"{cfg.spec}: the TRAIN net has no loss (no layer with a loss_weight), "
                       "so there is nothing to minimise")
    feeds = data_feeds(train_plan, spec.spec_dir)
    if not feeds:
        kind = "Input layers" if input_only(train_plan) else "no data layer"
        raise RunError(f"{cfg.spec}: the TRAIN net is fed by {kind}, which hold no data; "
                       "netc train needs a Data layer with data_param.source (a .npz file or "
                       "netc:digits/train). Use `netc predict` to run a net on given inputs.")

    sp = solver.resolved()
    solver_type = sp.type
    arch = architecture(train_plan)
    digest = architecture_digest(arch, solver_type)
    if ckpt_meta is not None and ckpt_meta.get("arch_digest") != digest:
        diffs = architecture_diff(ckpt_meta.get("arch", []), arch,
                                  ckpt_meta.get("solver_type", "?"), solver_type)
        raise RunError(f"cannot resume from {ckpt_path}: the spec no longer matches the checkpoint:\n"
                       + "\n".join(f"  - {d}" for d in diffs or ["architecture digest differs"]))

    if cfg.max_iter is not None:
        max_iter = cfg.max_iter
    elif ckpt_meta is not None and "max_iter" in ckpt_meta:
        max_iter = int(ckpt_meta["max_iter"])
    else:
        max_iter = int(sp.max_iter or 0)
    if ckpt_meta is not None:
        seed = int(ckpt_meta["seed"])
        if cfg.seed is not None and cfg.seed != seed:
            err.write(f"warning: --seed {cfg.seed} ignored: the resumed run's seed is {seed}\n")
    elif cfg.seed is not None:
        seed = cfg.seed
    elif sp.random_seed >= 0:
        seed = int(sp.random_seed)
    else:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    if seed < 0:
        raise RunError(f"--seed must be >= 0, got {seed}")

    test_iter = int(sp.test_iter[0]) if sp.test_iter else 0
    test_feeds = []
    if test_iter > 0 and test_plan.layers:
        test_feeds = data_feeds(test_plan, spec.spec_dir)
        if not test_feeds:
            err.write("note: the TEST net has no Data layer; testing is skipped\n")
            test_iter = 0
    else:
        test_iter = 0

    # --- JAX from here on -------------------------------------------------------------------
    import warnings

    import jax

    from netc.compiler.lower import lower
    from netc.runtime import checkpoint as ckpt
    from netc.runtime.solver import learning_rate, make_optimizer

    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    train_net = lower(train_plan)
    test_net = lower(test_plan) if test_iter else None
    root = jax.random.PRNGKey(seed % (2**32))
    params, state = train_net.init(jax.random.fold_in(root, _INIT_TAG))
    lr_mult, decay_mult = train_net.multipliers()
    optimizer = make_optimizer(sp, lr_mult, decay_mult)
    opt_state = optimizer.init(params)
    start_iter = 0
    positions = None
    recent_losses: list[float] = []

    if cfg.weights:
        wparams, wstate = read_weights(cfg.weights)
        params, state, report = apply_weights(params, state, wparams, wstate)
        for line in report.lines():
            out.write(line + "\n")
        if not report.loaded:
            raise RunError(f"{cfg.weights}: no blob matched the net by layer name and shape")
        opt_state = optimizer.init(params)

    if ckpt_tree is not None:
        fresh = jax.tree_util.tree_structure((params, state, opt_state))
        loaded = (ckpt_tree["params"], ckpt_tree.get("state", {}), ckpt_tree.get("opt_state", {}))
        if jax.tree_util.tree_structure(loaded) != fresh:
            raise RunError(f"cannot resume from {ckpt_path}: its tensors do not have the layout "
                           "this spec and solver need")
        params, state, opt_state = loaded
        start_iter = int(ckpt_meta["iteration"])
        positions = ckpt_meta.get("data_position")
        recent_losses = [float(x) for x in ckpt_meta.get("recent_losses", [])]

    test_keys = {}
    if test_net is not None:
        tparams, tstate = test_net.init(jax.random.fold_in(root, _INIT_TAG))
        for tree, src, what in ((tparams, params, "params"), (tstate, state, "state")):
            for layer, roles in tree.items():
                if layer in src:
                    for role, v in roles.items():
                        if role not in src[layer] or src[layer][role].shape != v.shape:
                            a = src[layer][role].shape if role in src[layer] else "absent"
                            hint = ("; --data replaced only the TRAIN Data layer's source"
                                    if data_override is not None else "")
                            raise RunError(
                                f"layer '{layer}': its {role} is {_shape(a)} in the TRAIN net but "
                                f"{_shape(v.shape)} in the TEST net, which share parameters by "
                                f"layer name{hint}")
            test_keys[what] = {layer: (layer in src) for layer in tree}
        test_extra = (tparams, tstate)
        eval_fn = make_eval_fn(test_net)

    # --- run directory -----------------------------------------------------------------------
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    if ckpt_meta is not None:
        history = _trim_metrics(metrics_path, start_iter)
    else:
        history = []
        shutil.copyfile(spec.file, run_dir / "spec.yaml")
        solver_file = cfg.solver or spec.solver_file
        if solver_file:
            shutil.copyfile(solver_file, run_dir / "solver.yaml")
        metrics_path.write_text("")
    solver_doc = sp.model_dump(mode="json")
    solver_doc.update({"max_iter": max_iter, "random_seed": seed})
    ckpt.write_json_atomic(run_dir / "solver.json", solver_doc)
    metrics = _Metrics(metrics_path)

    prefix = _slug(os.path.basename(sp.snapshot_prefix or "") or spec_slug)
    live = out.isatty() if cfg.progress is None else cfg.progress
    progress = _Progress(out, live, max_iter)
    iter_size = int(sp.iter_size)
    batch = feeds[0].batch_size * iter_size
    average_loss = int(sp.average_loss)
    display = int(sp.display or 0)
    losses = collections.deque(recent_losses[-average_loss:], maxlen=average_loss)

    streams = [f.stream(seed + k, position=(positions[k] if positions else None))
               for k, f in enumerate(feeds)]
    step = make_train_step(train_net, optimizer, iter_size, jax.random.fold_in(root, _STEP_TAG))

    tested = {rec["iter"] for rec in history if rec.get("event") == "test"}
    best: dict[str, tuple[float, int]] = {}
    last_test: dict[str, float] = {}
    for rec in history:
        if rec.get("event") == "test":
            last_test = rec.get("metrics", {})
            for k, v in last_test.items():
                if v is not None and (k not in best or _better(k, v, best[k][0])):
                    best[k] = (v, rec["iter"])

    def next_inputs():
        micro = []
        for _ in range(iter_size):
            d = {}
            for f, s in zip(feeds, streams):
                d.update(f.feed(next(s)))
            micro.append(d)
        x = micro[0] if iter_size == 1 else {k: np.stack([m[k] for m in micro]) for k in micro[0]}
        return jax.device_put(x), [s.position() for s in streams]

    last_snapshot = [start_iter if ckpt_meta is not None else -1]
    eval_time = [0.0]
    snap_time = [0.0]

    pending: list = [None]  # a snapshot taken but not yet written (see snapshot())

    def snapshot(it: int, pos, *, defer: bool = False) -> Path | None:
        """Snapshot the state after `it` iterations. With `defer`, the host copy is written only
        once the next step's loss is known to be finite (flush()), so a checkpoint never holds
        parameters that already produce a NaN; otherwise it is written now."""
        t0 = time.perf_counter()
        host_params = jax.tree_util.tree_map(lambda a: np.array(a, copy=True), params)
        for layer, roles in host_params.items():
            for role, v in roles.items():
                if not np.isfinite(v).all():
                    raise _Diverged(f"parameter {layer}/{role} is not finite after iteration {it}")
        meta = {
            "iteration": it, "seed": seed, "max_iter": max_iter, "data": data_override,
            "data_position": pos, "arch": arch, "arch_digest": digest,
            "solver_type": solver_type, "spec": spec.name, "recent_losses": list(losses),
        }
        tensors = {"params": host_params,
                   "state": jax.tree_util.tree_map(lambda a: np.array(a, copy=True), state),
                   "opt_state": jax.tree_util.tree_map(lambda a: np.array(a, copy=True), opt_state)}
        last_snapshot[0] = it
        pending[0] = (it, tensors, meta)
        snap_time[0] += time.perf_counter() - t0
        return None if defer else flush()

    def flush() -> Path | None:
        if pending[0] is None:
            return None
        t0 = time.perf_counter()
        it, tensors, meta = pending[0]
        pending[0] = None
        path = ckpt.save_checkpoint(run_dir, f"{prefix}_iter_{it}", tensors, meta)
        metrics.write("snapshot", iter=it, path=path.name)
        snap_time[0] += time.perf_counter() - t0
        return path

    def run_test(it: int) -> None:
        t0 = time.perf_counter()
        tp = {layer: (params[layer] if shared else test_extra[0][layer])
              for layer, shared in test_keys["params"].items()}
        ts = {layer: (state[layer] if shared else test_extra[1][layer])
              for layer, shared in test_keys["state"].items()}
        from netc.runtime.run import evaluate

        result = evaluate(eval_fn, tp, ts, test_feeds, test_iter, seed)
        nonlocal_last[0] = result
        for k, v in result.items():
            if math.isfinite(v) and (k not in best or _better(k, v, best[k][0])):
                best[k] = (v, it)
        metrics.write("test", iter=it, metrics={k: (v if math.isfinite(v) else None)
                                                for k, v in result.items()})
        progress.echo(f"Iteration {it}, Testing net: {_fmt_metrics(result)}")
        tested.add(it)
        eval_time[0] += time.perf_counter() - t0

    nonlocal_last = [last_test]

    # --- signals -----------------------------------------------------------------------------
    stop = {"sig": None}

    def on_signal(signum, frame):
        if stop["sig"] is not None:  # a second signal: give up at once
            raise KeyboardInterrupt
        stop["sig"] = signum

    old_handlers = {}
    try:
        for s in EXIT_SIGNAL:
            old_handlers[s] = signal.signal(s, on_signal)
    except ValueError:  # not the main thread (library use): no signal handling
        pass

    # --- the loop ----------------------------------------------------------------------------
    out_label = f"{cfg.spec}: {spec.name or spec_slug}"
    if ckpt_meta is not None:
        progress.echo(f"Resuming {out_label} from {ckpt_path} at iteration {start_iter} "
                      f"(max_iter {max_iter}, seed {seed})")
    else:
        progress.echo(f"Training {out_label}: {solver_type}, max_iter {max_iter}, batch "
                      f"{batch}, seed {seed}, run directory {run_dir}")
    t_start = time.perf_counter()
    it = start_iter
    consumed = positions
    window_t, window_it = time.perf_counter(), it
    rate = 0.0
    code = EXIT_OK
    try:
        finished = ckpt_meta is not None and start_iter >= max_iter
        if finished:
            progress.echo(f"Nothing to do: the run is at iteration {start_iter} and max_iter is "
                          f"{max_iter} (pass --max-iter to train longer)")
        inputs = pending_pos = None
        if it < max_iter:
            inputs, pending_pos = next_inputs()
        while it < max_iter and stop["sig"] is None:
            if test_iter and sp.test_interval and it % sp.test_interval == 0 \
                    and (it > 0 or sp.test_initialization) and it not in tested:
                run_test(it)
                if stop["sig"] is not None:
                    break
            params, state, opt_state, loss = step(params, state, opt_state, inputs, it)
            consumed = pending_pos
            if it + 1 < max_iter:
                inputs, pending_pos = next_inputs()  # overlaps the step running on the device
            loss_v = float(loss)
            if not math.isfinite(loss_v):
                raise _Diverged(f"the loss is {loss_v} at iteration {it}")
            flush()
            losses.append(loss_v)
            smoothed = sum(losses) / len(losses)
            lr = learning_rate(sp, it)
            if display and it % display == 0:
                now = time.perf_counter()
                done = it + 1 - window_it
                rate = done / (now - window_t) if now > window_t else 0.0
                window_t, window_it = now, it + 1
                metrics.write("train", iter=it, loss=smoothed, lr=lr,
                              it_per_s=round(rate, 3))
                if not live:
                    out.write(f"Iteration {it} ({rate:.2f} iter/s), loss = {smoothed:.6g}, "
                              f"lr = {lr:.6g}\n")
                    out.flush()
            it += 1
            if live:
                elapsed = time.perf_counter() - t_start - eval_time[0] - snap_time[0]
                rate_live = (it - start_iter) / elapsed if elapsed > 0 else 0.0
                progress.update(it, smoothed, lr, rate_live)
            if sp.snapshot and it % sp.snapshot == 0:
                snapshot(it, consumed, defer=it < max_iter)
        train_time = time.perf_counter() - t_start - eval_time[0] - snap_time[0]
        if stop["sig"] is not None:
            if last_snapshot[0] != it:
                snapshot(it, consumed)
            path = flush() or ckpt.latest_checkpoint(run_dir)
            name = signal.Signals(stop["sig"]).name
            metrics.write("stop", iter=it, reason=name)
            progress.echo(f"{name}: stopped at iteration {it}; snapshot {path}")
            progress.echo(f"resume with: netc train {cfg.spec} --resume {run_dir}")
            code = EXIT_SIGNAL[stop["sig"]]
            return code
        if not finished:
            if test_iter and it not in tested:
                run_test(it)
            if sp.snapshot_after_train and last_snapshot[0] != it:
                snapshot(it, consumed)
        flush()
        wall = time.perf_counter() - t_start
        trained = it - start_iter
        sps = trained * batch / train_time if train_time > 0 and trained else 0.0
        summary = {"iter": it, "wall_s": round(wall, 3), "train_s": round(train_time, 3),
                   "eval_s": round(eval_time[0], 3), "samples_per_s": round(sps, 1),
                   "last_test": nonlocal_last[0],
                   "best_test": {k: {"value": v, "iter": i} for k, (v, i) in best.items()}}
        metrics.write("done", **summary)
        progress.echo(f"Done: {trained} iterations in {wall:.1f} s (training {train_time:.1f} s, "
                      f"{sps:,.0f} samples/s; testing {eval_time[0]:.1f} s)")
        if nonlocal_last[0]:
            progress.echo(f"  last test (iteration {it}): {_fmt_metrics(nonlocal_last[0])}")
            progress.echo("  best test: " + ", ".join(
                f"{k} = {v:.6g} (iteration {i})" for k, (v, i) in best.items()))
        latest = ckpt.latest_checkpoint(run_dir)
        if latest is not None:
            progress.echo(f"  snapshot: {latest}")
        return code
    except _Diverged as e:
        progress.clear()
        good = ckpt.latest_checkpoint(run_dir)
        where = f"; the last good checkpoint is {good}" if good else "; no checkpoint was written"
        metrics.write("stop", iter=it, reason="diverged", detail=str(e))
        err.write(f"error: {e}: training diverged and stopped without a snapshot{where}. "
                  "Lower base_lr or check the data.\n")
        return EXIT_DIVERGED
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        for s in streams:
            s.close()
        metrics.close()
