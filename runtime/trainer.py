"""`netc train`: Caffe's Solver for any spec, with one jitted step per iteration.

    solver = Solver(TrainConfig(spec="models/lenet.yaml", max_iter=100))
    solver.step(10)        # ten iterations (tests and snapshots fall due as in Caffe's Step)
    solver.test()          # {"accuracy": ..., "loss": ...} on the TEST net
    solver.snapshot()      # a checkpoint of the current state
    code = solver.solve()  # the rest of the run: Caffe's Solve (final test and snapshot)

The Solver knows no layer types. Construction resolves everything once — the spec and solver,
the resume point, the seed, the iteration budget, the run directory — into a frozen
`SolverSettings` (`resolve_settings`), then builds the TRAIN and TEST nets (sharing parameters by
layer name), the optimizer (runtime/solver.py's table of update rules) and the data streams.
Caffe's loop, in `step(n)`:

    for iter in [start, max_iter):
        test   when test_interval divides iter (iter 0 only with test_initialization)
        step   forward + backward over iter_size micro-batches (gradients summed) + solver update
        display the loss averaged over the last `average_loss` iterations every `display` iters
        snapshot when `snapshot` divides iter + 1
    final test and snapshot (snapshot_after_train)            <- solve()

Every event goes through `emit` to the callbacks (runtime/callbacks.py): the progress display,
metrics.jsonl and the NaN policy are callbacks, and so is anything a user adds.

The step is one `jax.jit` function that donates params / state / optimizer state. Its randomness is
`fold_in(fold_in(key(seed), STEP), iter)`, the data order depends only on (seed, epoch, index), and
a checkpoint stores params, state, optimizer state, the iteration and the stream position, so a
resumed run computes bit-for-bit what the uninterrupted run would have.

With several devices (all local ones by default, `TrainConfig.devices` to choose; several hosts
through `coordinator` / `num_processes` / `process_id`), the step is data parallel
(runtime/distributed.py): the spec's batch is the global batch, split over a mesh; params, state
and optimizer state are replicated; only process 0 writes the run directory and shows progress.
With one device the step and its numbers are the plain single-device ones.

Run directory (``--out``, default ``runs/<spec name>-<timestamp>``)::

    spec.yaml          the spec text as trained (and solver.yaml when --solver was given)
    solver.json        the resolved SolverParameter (+ the effective max_iter, seed, backend)
    metrics.jsonl      {"event": "train"|"test"|"snapshot"|"stop"|"done", "iter": ..., ...}
    <prefix>_iter_N.{safetensors,json}   checkpoints (runtime/checkpoint.py)

Exit codes: 0 done; 1 spec / data / checkpoint error; 3 the loss became NaN or infinite (no
snapshot of the bad state is written; the last good one stays); 130 SIGINT and 143 SIGTERM (the
current step finishes and a snapshot is written first).
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from netc.compiler.layer import is_carry_role
from netc.compiler.xla import jit
from netc.runtime.callbacks import Diverged, EarlyStopping, Event, MetricsLog, NanGuard, Progress
from netc.runtime.context import RunContext, load_context
from netc.runtime.errors import EXIT_DIVERGED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, RunError
from netc.runtime.rundir import (
    RunLock,
    foreign_files,
    new_run_dir,
    newest_checkpoint,
    resolve_run_dir,
    run_result,
    slug,
    trim_metrics,
)

__all__ = ["TrainConfig", "SolverSettings", "Solver", "train", "resolve_settings",
           "make_train_step", "EXIT_DIVERGED"]

EXIT_SIGNAL = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}
# fold_in tags separating the key streams derived from the run seed
_INIT_TAG, _STEP_TAG = 0x1417, 0x57E9


@dataclass
class TrainConfig:
    """What a user asks for (the `netc train` flags)."""

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
    # data parallelism (runtime/distributed.py): local devices per process (None: all of them)
    # and the multi-host job this process is part of (None: one process, unless the environment
    # says otherwise)
    devices: int | None = None
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    distributed: bool = False  # join the job the cluster environment describes (SLURM, MPI...)
    tensorboard: bool = True  # event files in RUN_DIR/tensorboard/ (runtime/tensorboard.py)
    histograms: int = 0  # ... with weight histograms every N iterations (0: none)
    precision: str | None = None  # overrides the solver's precision (float32, bfloat16, float16)
    # --input-shape: blob -> declared shape, for data layers whose sizes live outside the spec
    input_shapes: dict | None = None

    def cluster(self):
        from netc.runtime.distributed import Cluster

        return Cluster(self.devices, self.coordinator, self.num_processes, self.process_id,
                       self.distributed)


@dataclass(frozen=True)
class SolverSettings:
    """Everything a run needs, resolved once: the loaded spec and solver, where the run lives,
    where it resumes from, its seed and its iteration budget."""

    config: TrainConfig
    context: RunContext = field(repr=False)
    sp: Any = field(repr=False)  # the resolved SolverParameter
    spec_slug: str
    run_dir: Path
    checkpoint: Path | None  # resume from this checkpoint
    checkpoint_meta: dict | None = field(repr=False)
    seed: int
    max_iter: int
    data: str | None  # the TRAIN Data layer's source override (--data, or the resumed run's)
    test_iter: int
    snapshot_prefix: str
    notes: tuple[str, ...] = ()  # warnings found while resolving (e.g. a damaged checkpoint)

    @property
    def resumed(self) -> bool:
        return self.checkpoint is not None


# --- resolving a TrainConfig ------------------------------------------------------------------


def _check_flags(cfg: TrainConfig) -> None:
    if cfg.resume and cfg.weights:
        raise RunError("--resume and --weights exclude each other (a resumed run has its weights)")
    if cfg.resume and cfg.out:
        raise RunError("--resume continues in the run's own directory; do not pass --out")


def _resume_point(cfg: TrainConfig, spec_slug: str, notes: list) -> tuple[Path, Path, dict]:
    from netc.runtime.checkpoint import CheckpointError, read_checkpoint_meta

    run_dir = resolve_run_dir(cfg.resume, spec_slug, cfg.runs_root)
    path = newest_checkpoint(run_dir, warn=notes.append)
    if path is None:
        raise RunError(f"{run_dir}: no complete checkpoint to resume from")
    try:
        record = read_checkpoint_meta(path)
    except CheckpointError as e:
        raise RunError(str(e)) from None
    meta = dict(record["meta"]) if isinstance(record["meta"], dict) else {}
    if "arch_digest" not in meta:
        raise RunError(f"{path}: not a training checkpoint of netc train")
    return run_dir, path, meta


def _primary(cfg: TrainConfig) -> bool:
    """Whether this process writes the run (always, unless it is a non-zero process of a
    multi-host job)."""
    if not cfg.cluster().multi_host:
        return True
    from netc.runtime.distributed import initialize, is_primary

    initialize(cfg.cluster())
    return is_primary()


def _fresh_run_dir(cfg: TrainConfig, spec_slug: str) -> Path:
    from netc.runtime.checkpoint import list_checkpoints

    run_dir = Path(cfg.out) if cfg.out else new_run_dir(spec_slug, cfg.runs_root)
    if not _primary(cfg):  # process 0 checks (and then writes) the directory
        return run_dir
    if list_checkpoints(run_dir):
        raise RunError(f"--out {run_dir}: the directory already holds a run's checkpoints; "
                       f"continue it with --resume {run_dir} or choose another directory")
    taken = foreign_files(run_dir)
    if taken:  # never overwrite what netc did not write in this run
        raise RunError(f"--out {run_dir}: the directory already holds {', '.join(taken)}, which a "
                       "new run would overwrite; choose an empty or new directory")
    return run_dir


def _seed(cfg: TrainConfig, sp, meta: dict | None, err: TextIO) -> int:
    if meta is not None:
        seed = int(meta["seed"])
        if cfg.seed is not None and cfg.seed != seed:
            err.write(f"warning: --seed {cfg.seed} ignored: the resumed run's seed is {seed}\n")
        return seed
    if cfg.seed is not None:
        seed = cfg.seed
    elif sp.random_seed >= 0:
        seed = int(sp.random_seed)
    else:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    if seed < 0:
        raise RunError(f"--seed must be >= 0, got {seed}")
    return seed


def _max_iter(cfg: TrainConfig, sp, meta: dict | None) -> int:
    if cfg.max_iter is not None:
        return cfg.max_iter
    if meta is not None and "max_iter" in meta:
        return int(meta["max_iter"])
    return int(sp.max_iter or 0)


def _precision(cfg: TrainConfig, sp, meta: dict | None) -> str:
    """--precision, else the resumed run's, else the solver's. float16's loss scale is part of
    the solver state, so a run cannot switch into or out of float16 when it resumes."""
    then = (meta or {}).get("precision")
    want = cfg.precision or then or sp.precision
    if then is not None and (want == "float16") != (then == "float16"):
        raise RunError(f"cannot resume a {then} run in {want}: float16 keeps its loss scale in "
                       "the solver state; start a new run (--weights) to change to or from it")
    return want


def resolve_settings(cfg: TrainConfig, err: TextIO | None = None) -> SolverSettings:
    """Resolve `cfg` into SolverSettings; raises RunError for anything the user can fix. Spec
    errors come first, before any solver, resume or data problem."""
    err = err or sys.stderr
    _check_flags(cfg)
    ctx = load_context(cfg.spec, cfg.solver, input_shapes=cfg.input_shapes)
    ctx.plan("TRAIN"), ctx.plan("TEST")
    if ctx.solver is None:
        raise RunError(f"{cfg.spec}: no solver: add a `solver:` section to the spec or pass "
                       "--solver FILE")
    spec_slug = slug(ctx.spec.name or Path(cfg.spec).stem)
    notes: list[str] = []
    if cfg.resume:
        run_dir, ckpt, meta = _resume_point(cfg, spec_slug, notes)
    else:
        run_dir, ckpt, meta = _fresh_run_dir(cfg, spec_slug), None, None
    data = cfg.data if cfg.data is not None or meta is None else meta.get("data")
    if data is not None:
        ctx = load_context(cfg.spec, cfg.solver, data=data, input_shapes=cfg.input_shapes)
    sp = ctx.solver.resolved()
    sp = sp.model_copy(update={"precision": _precision(cfg, sp, meta)})
    test_iter = int(sp.test_iter[0]) if sp.test_iter else 0
    prefix = slug(os.path.basename(sp.snapshot_prefix or "") or spec_slug)
    return SolverSettings(cfg, ctx, sp, spec_slug, run_dir, ckpt, meta, _seed(cfg, sp, meta, err),
                          _max_iter(cfg, sp, meta), data, test_iter, prefix, tuple(notes))


# --- the jitted step --------------------------------------------------------------------------


def _make_grads(net, policy, iter_size: int, mix=None):
    """`grads(params, state, inputs, key, it, scale) -> ((loss, new_state), grads)`: the
    forward and backward in the policy's dtype, the loss multiplied by `scale` (None: not) for
    the backward only; with iter_size > 1 summed over the micro-batches (the loss averaged)."""
    import jax
    import jax.numpy as jnp

    def objective(params, state, inputs, key, scale):
        total, (_, new_state) = net.loss(policy.cast_params(params), state, inputs, rng=key,
                                         train=True, outputs=net.sinks())
        return (total if scale is None else total * scale), (total, new_state)

    value_and_grad = jax.value_and_grad(objective, has_aux=True)

    def grad_fn(params, state, inputs, key, it, scale):
        inputs = policy.cast_inputs(inputs)
        if mix is not None:
            inputs = mix(policy.cast_params(params), state, inputs, key, it)
        (_, aux), grads = value_and_grad(params, state, inputs, key, scale)
        return aux, grads

    def accumulate(params, state, inputs, key, it, scale):
        def micro(carry, xs):
            st, gsum, lsum = carry
            j, mb = xs
            (lj, st), g = grad_fn(params, st, mb, jax.random.fold_in(key, j), it, scale)
            return (st, jax.tree_util.tree_map(jnp.add, gsum, g), lsum + lj), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        (state, grads, lsum), _ = jax.lax.scan(
            micro, (state, zeros, jnp.zeros((), jnp.float32)), (jnp.arange(iter_size), inputs))
        return (lsum / iter_size, state), grads

    return grad_fn if iter_size == 1 else accumulate


def make_train_step(net, optimizer, iter_size: int, step_key, mix=None, replicated=None,
                    precision: str = "float32"):
    """`step(params, state, opt_state, inputs, it) -> (params, state, opt_state, loss)`, jitted,
    donating its first three arguments. With iter_size > 1, `inputs` has a leading micro-batch axis;
    the gradients are summed over the micro-batches (runtime/solver.py divides by iter_size) and
    the loss is their mean, as Caffe reports it. `mix(params, state, inputs, key, it)`, if given,
    rewrites each (micro-)batch's inputs first (scheduled sampling, runtime/scheduled.py).

    `replicated` (a sharding, runtime/distributed.py) makes a data-parallel step: the inputs
    arrive split over a mesh, and params / state / optimizer state / loss leave replicated on
    it (XLA all-reduces the gradients). None: the plain one-device step.

    `precision` (the solver's: float32, bfloat16, float16) is the dtype the forward and backward
    compute in; params and optimizer state stay float32 (runtime/precision.py). float16 scales
    the loss by the optimizer state's `loss_scale` (make_optimizer adds it) and skips a step
    whose gradients are not finite."""
    import jax
    import optax

    from netc.runtime import precision as mp

    policy = mp.policy(precision, net.plan)
    grads_of = _make_grads(net, policy, iter_size, mix)

    def step(params, state, opt_state, inputs, it):
        key = jax.random.fold_in(step_key, it)
        scale = mp.loss_scale(opt_state)
        if policy.scaled and scale is None:
            raise ValueError("precision float16 needs the loss scale in the optimizer state "
                             "(make_optimizer adds it for a float16 solver)")
        (loss, new_state), grads = grads_of(params, state, inputs, key, it, scale)
        if scale is not None:
            grads, finite = mp.unscale(grads, scale)
        updates, new_opt = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if scale is None:
            return new_params, new_state, new_opt, loss
        return (*mp.skip_if_nonfinite(finite, (params, state, opt_state),
                                      (new_params, new_state, new_opt)), loss)

    if replicated is not None:
        return jit(step, donate_argnums=(0, 1, 2), out_shardings=replicated)
    return jit(step, donate_argnums=(0, 1, 2))


# --- timing -----------------------------------------------------------------------------------


class Timer:
    """Wall time split into: the first step (compilation included), the steady-state steps
    after it, testing and snapshotting; throughput is reported for the steady state only."""

    def __init__(self):
        self.start = time.perf_counter()
        self.first_step_s: float | None = None
        self.eval_s = self.snap_s = 0.0
        self.steady_iters = 0
        self._steady_from: float | None = None
        self._paused = 0.0  # eval + snapshot time inside the steady window

    def step_done(self) -> None:
        now = time.perf_counter()
        if self.first_step_s is None:
            self.first_step_s = now - self.start - self.eval_s - self.snap_s
            self._steady_from = now
            self._paused = 0.0
        else:
            self.steady_iters += 1

    def add(self, what: str, seconds: float) -> None:
        setattr(self, what, getattr(self, what) + seconds)
        if self._steady_from is not None:
            self._paused += seconds

    def steady_s(self) -> float:
        if self._steady_from is None:
            return 0.0
        return max(time.perf_counter() - self._steady_from - self._paused, 0.0)

    def steady_rate(self) -> float | None:
        """Iterations per second after the first step (None until there is one to time)."""
        s = self.steady_s()
        return self.steady_iters / s if self.steady_iters and s > 0 else None


# --- the Solver ---------------------------------------------------------------------------------


def _backend() -> tuple[str, int]:
    import jax

    return jax.default_backend(), jax.device_count()


class Solver:
    """Caffe's Solver: construct (everything resolved once), then `step(n)`, `test()`,
    `snapshot()`, `restore(path)`, `solve()`. Events go to `callbacks` (see
    runtime/callbacks.py); the defaults write metrics.jsonl, show progress on `out`, and apply
    the NaN policy."""

    def __init__(self, config: TrainConfig | SolverSettings, *, callbacks=(), out: TextIO | None
                 = None, err: TextIO | None = None, default_callbacks: bool = True):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        cfg = config.config if isinstance(config, SolverSettings) else config
        self.primary = _primary(cfg)  # joins a multi-host job first, before JAX starts a backend
        self.dp = None  # runtime/distributed.DataParallel when the run spans several devices
        s = config if isinstance(config, SolverSettings) else resolve_settings(config, self.err)
        self.settings = s
        self.stop_reason: str | None = None
        self.stop_info: dict = {}  # request_stop's detail, finish and what else it was told
        self._callback_state: dict = {}  # what the checkpoint resumed from holds for callbacks
        self._lock = None
        self._notes: list[str] = list(s.notes)
        self.callbacks: list = []
        self.iter = 0
        self._pending_snapshot = None
        self._next_batch = None
        self._aside = None  # the thread compiling the train step during the first test
        self.streams: list = []
        self._build_plans()
        self._build_nets()
        try:
            self._prepare_run_dir()
        except OSError as e:
            self.close()
            raise RunError(_io_message(e, f"cannot write the run directory {s.run_dir}")) from None
        except BaseException:
            self.close()
            raise
        self.callbacks = list(self._default_callbacks() if default_callbacks else []) + list(callbacks)
        self.callbacks += self._spec_callbacks()
        self._load_callback_state()
        for note in self._notes:
            self.emit("warning", self.iter, message=note)
        self._start_streams(s.checkpoint_meta.get("data_position") if s.resumed else None)
        self.timer = Timer()
        self._window = None  # (time, iteration) where the current display interval began
        self._solve_start = self.iter

    # --- construction -------------------------------------------------------------------------
    def _build_plans(self) -> None:
        s = self.settings
        spec = s.context.spec
        self.train_plan = s.context.plan("TRAIN")
        self.test_plan = s.context.plan("TEST")
        for line in [d.format() for d in spec.diagnostics.sorted()] + s.context.warnings:
            self.err.write(line + "\n")
        if not self.train_plan.has_loss:
            raise RunError(f"{s.config.spec}: the TRAIN net has no loss (no layer with a "
                           "loss_weight), so there is nothing to minimise")
        import jax

        from netc.compiler import memory
        from netc.runtime.feeds import data_feeds

        too_big = memory.refusal(self.train_plan, s.sp.type, memory.available_bytes(jax.devices()[0]),
                                 iter_size=int(s.sp.iter_size))
        if too_big:  # before any parameter, optimizer state or batch is allocated
            raise RunError(f"{s.config.spec}: {too_big}")

        self.feeds = data_feeds(self.train_plan, spec.spec_dir)
        if not self.feeds:
            kind = "Input layers" if self.train_plan.fed_by_inputs_only else "no data layer"
            raise RunError(f"{s.config.spec}: the TRAIN net is fed by {kind}, which hold no data; "
                           "netc train needs a Data layer with data_param.source (a .npz file or "
                           "netc:digits/train). Use `netc predict` to run a net on given inputs.")
        self.test_iter = s.test_iter if self.test_plan.layers else 0
        self.test_feeds = data_feeds(self.test_plan, spec.spec_dir) if self.test_iter else []
        if self.test_iter and not self.test_feeds:
            self.err.write("note: the TEST net has no Data layer; testing is skipped\n")
            self.test_iter = 0
        from netc.runtime.weights import architecture, architecture_digest

        self.arch = architecture(self.train_plan)
        self.digest = architecture_digest(self.arch, s.sp.type)

    def _build_nets(self) -> None:
        import warnings

        import jax

        from netc.compiler.fillers import fold_in, prng_key
        from netc.compiler.lower import lower
        from netc.runtime.solver import make_optimizer, with_max_norm

        s = self.settings
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        self.net = lower(self.train_plan)
        self.iter_size = int(s.sp.iter_size)
        self._build_mesh()
        self.root_key = prng_key(s.seed % (2**32))
        self.params, self.state = self.net.init(fold_in(self.root_key, _INIT_TAG))
        self.optimizer = with_max_norm(make_optimizer(s.sp, *self.net.multipliers()),
                                       self.net.max_norms())
        self.opt_state = self._fresh_opt_state()
        self.losses = collections.deque(maxlen=int(s.sp.average_loss))
        if s.config.weights:
            self._load_weights(s.config.weights)
        if s.resumed:
            self.restore(s.checkpoint)  # places what it loads
        else:
            self._place()
        self.test_net = lower(self.test_plan, kernels=self.net.kernels) if self.test_iter else None
        if self.test_net is not None:
            self._share_test_params()
        ss = s.sp.scheduled_sampling
        if ss is not None:
            from netc.runtime.scheduled import make_mixer

            mix = make_mixer(self.net, ss)
        else:
            mix = None
        self._step_fn = make_train_step(self.net, self.optimizer, self.iter_size,
                                        jax.device_put(fold_in(self.root_key, _STEP_TAG)), mix,
                                        self.dp.replicated if self.dp is not None else None,
                                        precision=s.sp.precision)
        self._skipped = _skipped_steps(self.opt_state)

    def _build_mesh(self) -> None:
        """With more than one device in the run: the mesh, and each input's batch axis (the
        global batch must split evenly). One device: nothing, the plain step."""
        import jax

        from netc.runtime import distributed as dist

        cfg = self.settings.config
        devices = dist.select_devices(cfg.devices)
        self.n_devices = len(devices)
        if len(devices) == 1:
            return
        plan, lead = self.train_plan, int(self.iter_size > 1)  # micro-batches stack in front
        self._batch_axes = {}
        for f in self.feeds:
            for top in f.tops:
                axis = plan.batch_axis(top)
                self._batch_axes[top] = None if axis is None else axis + lead
                if axis is not None:
                    dist.check_batch(int(plan.blobs[top][axis]), len(devices),
                                     len(jax.local_devices()) * jax.process_count(),
                                     jax.process_count())
        self.dp = dist.DataParallel(devices)
        self.net.kernels = False  # XLA cannot partition a native kernel's custom call

    def _place(self) -> None:
        """params, state and optimizer state replicated on the mesh (a no-op on one device)."""
        if self.dp is not None:
            self.params, self.state, self.opt_state = self.dp.replicate(
                (self.params, self.state, self.opt_state))

    def _load_weights(self, weights: str) -> None:
        from netc.runtime.weights import apply_weights, read_weights

        wparams, wstate = read_weights(weights)
        self.params, self.state, report = apply_weights(self.params, self.state, wparams, wstate)
        for line in report.lines():
            self.out.write(line + "\n")
        if not report.loaded:
            raise RunError(f"{weights}: no blob matched the net by layer name and shape")
        self.opt_state = self._fresh_opt_state()

    def _fresh_opt_state(self):
        """The optimizer's initial state: Caffe's solvers make it in NumPy (runtime/solver.py),
        no XLA program; its leaves on the device, as the step's donated argument."""
        import jax

        return jax.device_put(self.optimizer.init(self.params))

    def _share_test_params(self) -> None:
        """The TEST net reads the TRAIN net's blobs of the same (layer, role); its own layers
        keep their fillers' values. A shared blob must have the same shape in both."""
        from netc.compiler.fillers import fold_in
        from netc.compiler.layer import fmt_shape
        from netc.runtime.feeds import make_eval_fn

        tparams, tstate = self.test_net.init(fold_in(self.root_key, _INIT_TAG), self._shared_blobs())
        self._test_own = (tparams, tstate)
        self._test_shared = {}
        for tree, src, what in ((tparams, self.params, "params"), (tstate, self.state, "state")):
            for layer, roles in tree.items():
                for role, v in roles.items() if layer in src else ():
                    if is_carry_role(role):  # each net carries its own recurrent state
                        continue
                    if role not in src[layer] or src[layer][role].shape != v.shape:
                        a = src[layer][role].shape if role in src[layer] else ()
                        hint = ("; --data replaced only the TRAIN Data layer's source"
                                if self.settings.data is not None else "")
                        raise RunError(
                            f"layer '{layer}': its {role} is "
                            f"{fmt_shape(a) if role in src[layer] else 'absent'} in the TRAIN net "
                            f"but {fmt_shape(v.shape)} in the TEST net, which share parameters "
                            f"by layer name{hint}")
            self._test_shared[what] = {layer: (layer in src) for layer in tree}
        self._eval_fn = make_eval_fn(self.test_net, precision=self.settings.sp.precision)

    def _shared_blobs(self) -> dict:
        """{(layer, role): the TRAIN net's value} for the TEST net's blobs it takes from the TRAIN
        net (same layer, same shape; not a carried state): Net.init need not draw them. A blob
        of another shape is drawn, and _share_test_params reports it."""
        given = {}
        for (layer, role), decl in self.test_net.plan.params.items():
            src = self.params if decl.learned else self.state
            value = src.get(layer, {}).get(role)
            if value is not None and not is_carry_role(role) and value.shape == decl.shape:
                given[layer, role] = value
        return given

    def _prepare_run_dir(self) -> None:
        from netc.runtime import checkpoint as ckpt

        s = self.settings
        metrics_path = s.run_dir / "metrics.jsonl"
        if not self.primary:  # a multi-host run's other processes write nothing
            from netc.runtime.rundir import read_metrics

            self.history = [r for r in read_metrics(metrics_path) if r.get("iter", 0) <= self.iter]
            self._set_history()
            return
        s.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = RunLock(s.run_dir)  # before anything is written
        if s.resumed:
            self.history = trim_metrics(metrics_path, self.iter, Path(s.checkpoint))
        else:
            self.history = []
            # atomic writes replace a name; they never write through a link out of the folder
            ckpt.write_bytes_atomic(s.run_dir / "spec.yaml", Path(s.context.spec.file).read_bytes())
            solver_file = s.config.solver or s.context.spec.solver_file
            if solver_file:
                ckpt.write_bytes_atomic(s.run_dir / "solver.yaml", Path(solver_file).read_bytes())
            ckpt.write_bytes_atomic(metrics_path, b"")
        backend, devices = self._backend()
        doc = s.context.solver.record(backend)  # what netc does, not the ignored fields
        doc.update({"max_iter": s.max_iter, "random_seed": s.seed, "devices": devices,
                    "precision": s.sp.precision})
        if self.dp is not None:
            doc.update({"batch_per_device": self.batch_size // devices,
                        "processes": self.dp.processes})
        ckpt.write_json_atomic(s.run_dir / "solver.json", doc)
        vocab = next((v for v in (f.vocab_doc() for f in self.feeds) if v is not None), None)
        if vocab is not None:  # a text source's symbols, for `netc sample` (seqdata.load_vocab)
            ckpt.write_json_atomic(s.run_dir / "vocab.json", vocab)
        self._set_history()

    def _set_history(self) -> None:
        self.tested = {r["iter"] for r in self.history if r.get("event") == "test"}
        self.best: dict[str, tuple[float, int]] = {}
        self.last_test: dict[str, float] = {}
        for rec in self.history:
            if rec.get("event") == "test":
                self._record_test(rec["iter"], {k: v for k, v in rec.get("metrics", {}).items()
                                                if v is not None})

    def _backend(self) -> tuple[str, int]:
        """The backend and the number of devices the run uses (all processes together)."""
        backend, _ = _backend()
        return backend, self.n_devices

    def _default_callbacks(self) -> list:
        cfg = self.settings.config
        if not self.primary:  # process 0 shows and logs the run; the NaN policy holds everywhere
            return [NanGuard()]
        live = self.out.isatty() if cfg.progress is None else cfg.progress
        self.progress = Progress(self.out, self.err, live, self.settings.max_iter)
        board = []
        if cfg.tensorboard:
            from netc.runtime.tensorboard import TensorBoard

            board = [TensorBoard(self.settings.run_dir, histograms=cfg.histograms)]
        return [NanGuard(), MetricsLog(self.settings.run_dir / "metrics.jsonl"), self.progress,
                *board]

    def _spec_callbacks(self) -> list:
        """Callbacks the solver spec asks for (every process: they decide when the run stops)."""
        es = self.settings.sp.early_stopping
        if es is not None and not self.test_iter:
            self._warn("early_stopping has no test passes to watch (the TEST net has no Data "
                       "layer): the run trains to max_iter")
        return [EarlyStopping(es)] if es is not None and self.test_iter else []

    def _load_callback_state(self) -> None:
        """Give each checkpointed callback its state from the checkpoint resumed from."""
        for cb in self.callbacks:
            key = getattr(cb, "state_key", None)
            if key and key in self._callback_state:
                cb.load_state_dict(self._callback_state[key])

    def save_weights(self, folder: str, **meta: Any) -> Path | None:
        """The current parameters and state (no optimizer state: not a point to resume from)
        as the newest checkpoint of RUN_DIR/`folder`, written atomically; `meta` is recorded
        with it. Early stopping keeps the best test's parameters so. Process 0 writes; None
        elsewhere."""
        from netc.runtime import checkpoint as ckpt

        if not self.primary:
            return None
        s, t0 = self.settings, time.perf_counter()
        tensors = {"params": self._host(self.params), "state": self._host(self.state)}
        meta = {"iteration": self.iter, "seed": s.seed, "spec": s.context.spec.name, **meta}
        try:
            path = ckpt.save_checkpoint(s.run_dir / folder, f"{s.snapshot_prefix}_iter_{self.iter}",
                                        tensors, meta)
        except OSError as e:
            raise RunError(_io_message(e, f"cannot write {folder}/ in {s.run_dir}")) from None
        self.timer.add("snap_s", time.perf_counter() - t0)
        return path

    def _start_streams(self, positions) -> None:
        for st in self.streams:
            st.close()
        seed = self.settings.seed
        self.streams = [f.stream(seed + k, position=(positions[k] if positions else None))
                        for k, f in enumerate(self.feeds)]
        self.positions = positions
        self._next_batch = None

    # --- events -------------------------------------------------------------------------------
    def emit(self, kind: str, it: int, **data: Any) -> None:
        """Hand one event to every callback, in order (the one place events flow through)."""
        event = Event(kind, it, data)
        for cb in self.callbacks:
            cb(self, event)

    def _warn(self, message: str) -> None:
        """A warning event (stderr and metrics.jsonl); held until the callbacks exist."""
        if self.callbacks:
            self.emit("warning", self.iter, message=message)
        else:
            self._notes.append(message)

    def request_stop(self, reason: str, detail: str | None = None, *, finish: bool = False,
                     **info: Any) -> None:
        """Stop after the current step, with a snapshot (a signal, or a callback's decision).
        `finish`: the run is complete (early stopping) and ends as a finished run does (final
        test, snapshot, summary, exit 0), not as an interrupted one. `detail` and `info` go into
        the "stop" event."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_info = {"detail": detail, "final": finish, **info}

    # --- Caffe's Step -------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.feeds[0].batch_size * self.iter_size

    def _fetch(self):
        import jax

        micro = []
        for _ in range(self.iter_size):
            d = {}
            for f, st in zip(self.feeds, self.streams):
                d.update(f.feed(next(st)))
            micro.append(d)
        x = micro[0] if self.iter_size == 1 else {
            k: np.stack([m[k] for m in micro]) for k in micro[0]}
        x = jax.device_put(x) if self.dp is None else self.dp.shard_batch(x, self._batch_axes)
        return x, [st.position() for st in self.streams]

    def _test_due(self) -> bool:
        sp, it = self.settings.sp, self.iter
        return bool(self.test_iter and sp.test_interval and it % sp.test_interval == 0
                    and (it > 0 or sp.test_initialization) and it not in self.tested)

    def _compile_step_aside(self) -> None:
        """Before the first test of this process: compile the train step for the batch it will
        take, in a thread, while the test compiles and runs in this one (XLA compiles release
        the GIL; jax.jit reuses the executable), so the two compiles overlap on a multi-core
        machine. The test waits until the step is traced and lowered (Python, holding the GIL):
        the step's compile, the longest, starts first instead of after both traces interleaved.
        Any failure is left to the real call, which compiles again and reports it."""
        import threading

        if self._aside is not None or self._next_batch is not None:
            return
        self._next_batch = self._fetch()
        args = (self.params, self.state, self.opt_state, self._next_batch[0], self.iter)
        lowered = threading.Event()

        def compile_() -> None:
            try:
                program = self._step_fn.lower(*args)
                lowered.set()
                program.compile()
            except Exception:  # noqa: BLE001 - the real call reports it
                pass
            finally:
                lowered.set()

        self._aside = threading.Thread(target=compile_, name="netc-compile-step", daemon=True)
        self._aside.start()
        lowered.wait()

    def _one_iteration(self) -> None:
        from netc.runtime.solver import learning_rate

        s = self.settings
        it = self.iter
        inputs, pos = self._next_batch or self._fetch()
        self._next_batch = None
        if self._aside is not None and self._aside.is_alive():
            self._aside.join()
        self.params, self.state, self.opt_state, loss = self._step_fn(
            self.params, self.state, self.opt_state, inputs, it)
        if it + 1 < s.max_iter:
            self._next_batch = self._fetch()  # overlaps the step running on the device
        loss_v = float(loss)
        self._report_skipped(it)
        self.timer.step_done()
        self.positions = pos
        lr = learning_rate(s.sp, it)
        self.losses.append(loss_v)
        smoothed = sum(self.losses) / len(self.losses)
        self.emit("iteration", it, loss=loss_v, smoothed=smoothed, lr=lr)
        self._flush_snapshot()  # the deferred snapshot's parameters gave a finite loss
        display = int(s.sp.display or 0)
        if display and it % display == 0:
            now = time.perf_counter()
            t0, i0 = self._window or (self.timer.start, self._solve_start)
            rate = (it + 1 - i0) / (now - t0) if now > t0 else 0.0
            self._window = (now, it + 1)
            extra = {}
            if s.sp.scheduled_sampling is not None:
                extra["teacher_prob"] = s.sp.scheduled_sampling.teacher_prob(it)
            self.emit("train", it, loss=smoothed, lr=lr, it_per_s=rate, **extra)
        self.iter = it + 1

    def _report_skipped(self, it: int) -> None:
        """float16: a warning when the step just taken was skipped (a gradient was not finite,
        so the update was dropped and the loss scale halved)."""
        skipped = _skipped_steps(self.opt_state)
        if skipped is not None and skipped > self._skipped:
            scale = float(self.opt_state["loss_scale"]["scale"])
            self.emit("warning", it, message=f"float16: a gradient was not finite at iteration "
                      f"{it}: the update was skipped and the loss scale lowered to {scale:g}")
        self._skipped = skipped

    def step(self, n: int) -> None:
        """Run up to `n` iterations (not past max_iter), testing and snapshotting when due.
        Stops early when a stop is requested; raises Diverged on a non-finite loss."""
        s = self.settings
        end = min(self.iter + n, s.max_iter)
        while self.iter < end and self.stop_reason is None:
            if self._test_due():
                self._compile_step_aside()
                self.test()
                if self.stop_reason is not None:
                    break
            self._one_iteration()
            if s.sp.snapshot and self.iter % s.sp.snapshot == 0:
                self.snapshot(defer=self.iter < s.max_iter)

    # --- test ---------------------------------------------------------------------------------
    def _record_test(self, it: int, result: dict[str, float]) -> None:
        import math

        from netc.runtime.callbacks import lower_is_better

        self.last_test = result
        for k, v in result.items():
            better = (v < self.best[k][0] if lower_is_better(k) else v > self.best[k][0]) \
                if k in self.best else True
            if math.isfinite(v) and better:
                self.best[k] = (v, it)

    def test(self) -> dict[str, float]:
        """Caffe's Solver::Test on the TEST net with the current parameters; emits "test"."""
        from netc.runtime.feeds import evaluate

        if self.test_net is None:
            raise RunError("the spec has no TEST net with a Data layer and test_iter to test on")
        t0 = time.perf_counter()
        own_p, own_s = self._test_own
        params, state = (self.params, self.state) if self.dp is None else \
            self.dp.to_local((self.params, self.state))  # each process tests on one device
        tp = {layer: (params[layer] if shared else own_p[layer])
              for layer, shared in self._test_shared["params"].items()}
        # statistics come from the TRAIN net; a carried recurrent state is the TEST net's own
        ts = {layer: ({r: (v if is_carry_role(r) else state[layer][r])
                       for r, v in own_s[layer].items()} if shared else own_s[layer])
              for layer, shared in self._test_shared["state"].items()}
        result = evaluate(self._eval_fn, tp, ts, self.test_feeds, self.test_iter,
                          self.settings.seed)
        self._record_test(self.iter, result)
        self.tested.add(self.iter)
        self.timer.add("eval_s", time.perf_counter() - t0)
        self.emit("test", self.iter, metrics=result)
        return result

    # --- snapshot / restore -------------------------------------------------------------------
    def host_params(self) -> dict:
        """The parameters as host numpy arrays (this process's copy when data parallel)."""
        return self._host(self.params)

    def _host(self, tree):
        import jax

        if self.dp is not None:  # replicated: this process's own copy, no gather
            tree = self.dp.to_local(tree)
        return jax.tree_util.tree_map(lambda a: np.array(a, copy=True), tree)

    def snapshot(self, *, defer: bool = False) -> Path | None:
        """Snapshot the state after `self.iter` iterations. With `defer`, the host copy is
        written only once the next step's loss is known to be finite, so a checkpoint never
        holds parameters that already produce a NaN; otherwise it is written now."""
        s = self.settings
        t0 = time.perf_counter()
        params = self._host(self.params)
        self.emit("checkpoint", self.iter, params=params)
        meta = {
            "iteration": self.iter, "seed": s.seed, "max_iter": s.max_iter, "data": s.data,
            "data_position": self.positions, "arch": self.arch, "arch_digest": self.digest,
            "solver_type": s.sp.type, "spec": s.context.spec.name,
            "recent_losses": list(self.losses), "versions": _versions(),
            "devices": self.n_devices, "precision": s.sp.precision,
        }
        tensors = {"params": params, "state": self._host(self.state),
                   "opt_state": self._host(self.opt_state)}
        self.last_snapshot = self.iter
        self._pending_snapshot = (self.iter, tensors, meta)
        self.timer.add("snap_s", time.perf_counter() - t0)
        return None if defer else self._flush_snapshot()

    def _flush_snapshot(self) -> Path | None:
        from netc.runtime import checkpoint as ckpt

        if self._pending_snapshot is None:
            return None
        t0 = time.perf_counter()
        it, tensors, meta = self._pending_snapshot
        # the callbacks' state after every test up to `it` (which a resumed run does not repeat)
        meta = {**meta, "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks
                                      if getattr(cb, "state_key", None)}}
        self._pending_snapshot = None
        if not self.primary:  # process 0 writes the checkpoints of a multi-host run
            return None
        stem = f"{self.settings.snapshot_prefix}_iter_{it}"
        try:
            path = ckpt.save_checkpoint(self.settings.run_dir, stem, tensors, meta)
        except OSError as e:
            kept = ckpt.latest_checkpoint(self.settings.run_dir)
            raise RunError(_io_message(e, f"cannot write checkpoint {stem} in "
                                          f"{self.settings.run_dir}") + "; the previous "
                           f"checkpoint {'is kept: ' + str(kept) if kept else 'does not exist'}"
                           ) from None
        self.timer.add("snap_s", time.perf_counter() - t0)
        self.emit("snapshot", it, path=path)
        return path

    def restore(self, path: str | Path) -> None:
        """Continue from a checkpoint of this spec and solver: parameters, state, optimizer
        state, iteration, data position and the recent losses."""
        import jax

        from netc.runtime.checkpoint import CheckpointError, load_checkpoint
        from netc.runtime.weights import architecture_diff

        try:
            tree, meta = load_checkpoint(path)
        except CheckpointError as e:
            raise RunError(str(e)) from None
        if "arch_digest" not in meta or "params" not in tree:
            raise RunError(f"{path}: not a training checkpoint of netc train")
        if meta.get("arch_digest") != self.digest:
            diffs = architecture_diff(meta.get("arch", []), self.arch,
                                      meta.get("solver_type", "?"), self.settings.sp.type)
            raise RunError(f"cannot resume from {path}: the spec no longer matches the "
                           "checkpoint:\n" + "\n".join(
                               f"  - {d}" for d in diffs or ["architecture digest differs"]))
        loaded = (tree["params"], tree.get("state", {}), tree.get("opt_state", {}))
        fresh = jax.tree_util.tree_structure((self.params, self.state, self.opt_state))
        if jax.tree_util.tree_structure(loaded) != fresh:
            raise RunError(f"cannot resume from {path}: its tensors do not have the layout this "
                           "spec and solver need")
        self.params, self.state, self.opt_state = loaded
        self._place()
        self._skipped = _skipped_steps(self.opt_state)
        self.iter = self.last_snapshot = int(meta["iteration"])
        then, now = meta.get("versions"), _versions()
        if then != now:
            differ = ", ".join(f"{k} {(then or {}).get(k, '?')} -> {v}" for k, v in now.items()
                               if (then or {}).get(k) != v)
            self._warn(f"{Path(path).name} was written by different software or hardware "
                       f"({differ}): the resumed run is not promised to be bitwise equal to an "
                       "uninterrupted one")
        was = int(meta.get("devices", 1))
        if was != self.n_devices:
            self._warn(f"{Path(path).name} was trained on {was} device{'s' if was != 1 else ''}, "
                       f"this run uses {self.n_devices}: the global batch is the same, the "
                       "numbers agree up to float rounding, not bit for bit")
        self._callback_state = meta.get("callbacks") or {}
        self._load_callback_state()
        self.losses.clear()
        self.losses.extend(float(x) for x in meta.get("recent_losses", []))
        if self.streams:
            self._start_streams(meta.get("data_position"))

    # --- Caffe's Solve ------------------------------------------------------------------------
    def _start_event(self) -> None:
        s = self.settings
        backend, devices = self._backend()
        extra = {} if self.dp is None else {"batch_per_device": self.batch_size // devices,
                                            "processes": self.dp.processes}
        self.emit("start", self.iter, resumed=s.resumed, checkpoint=str(s.checkpoint),
                  label=f"{s.config.spec}: {s.context.spec.name or s.spec_slug}",
                  solver_type=s.sp.type, batch=self.batch_size, seed=s.seed,
                  backend=backend, devices=devices, run_dir=str(s.run_dir),
                  kernels=self._kernels_note(), **extra)

    def _kernels_note(self) -> str | None:
        """What the start line says of the native kernels (compiler/kernels/): in use, or why
        not, when a layer of the net would use them in this run; None otherwise. A bfloat16 run
        uses them in bfloat16 where the CPU computes it (onednn.bf16_enabled), else widened to
        float32 (compiler/layers/conv.py _by_onednn) unless NETC_ONEDNN_BF16=0; float16 never."""
        precision = self.settings.sp.precision
        if not self.net.kernels or precision == "float16" or not any(
                getattr(pl.resolved, "kernel", "") for pl in self.train_plan.layers):
            return None
        from netc.compiler.kernels.onednn import BF16_ENV, conv_dtype, status

        st = status()
        if not st.ok:
            return f"convolutions in pure XLA ({st.detail})"
        via = conv_dtype(precision)
        if precision != "bfloat16":
            return "oneDNN convolutions"
        if via == "bfloat16":
            depthwise = any(getattr(pl.resolved, "kernel", "") and getattr(pl.resolved, "depthwise", False)
                            for pl in self.train_plan.layers)
            return "oneDNN convolutions in bfloat16" + (
                " (depthwise ones widened to float32)" if depthwise else "")
        if via == "float32":
            return "oneDNN convolutions in float32 (this CPU has no bfloat16 units)"
        return f"bfloat16 convolutions in XLA ({BF16_ENV}=0)"

    def _bfloat16_warning(self) -> None:
        """bfloat16 on a CPU without bfloat16 arithmetic runs slower than float32: say so."""
        from netc.runtime.precision import cpu_bfloat16_units

        if (self.settings.sp.precision == "bfloat16" and self._backend()[0] == "cpu"
                and cpu_bfloat16_units() is False):
            self._warn("precision bfloat16 on a CPU without bfloat16 arithmetic (no avx512_bf16 "
                       "or amx_bf16 flag): it computes through float32 with casts, slower "
                       "than float32 (0.32-0.94x in netc's benchmark on such a CPU); use "
                       "precision float32 here, bfloat16 on a GPU, TPU or a CPU that has it")

    def _finish(self, trained: int) -> None:
        from netc.runtime import checkpoint as ckpt

        s = self.settings
        if trained or not s.resumed or self.iter < s.max_iter:
            if self.test_iter and self.iter not in self.tested:
                self.test()
            if s.sp.snapshot_after_train and getattr(self, "last_snapshot", -1) != self.iter:
                self.snapshot()
        self._flush_snapshot()
        t = self.timer
        steady = t.steady_s()
        sps = t.steady_iters * self.batch_size / steady if t.steady_iters and steady > 0 else None
        latest = ckpt.latest_checkpoint(s.run_dir) if self.primary else None
        result = run_result(s.run_dir) if self.primary else None
        self.emit("done", self.iter, trained=trained,
                  wall_s=round(time.perf_counter() - t.start, 3),
                  train_s=round((t.first_step_s or 0.0) + steady, 3),
                  first_step_s=round(t.first_step_s or 0.0, 3), steady_s=round(steady, 3),
                  steady_iters=t.steady_iters, eval_s=round(t.eval_s, 3),
                  samples_per_s=round(sps, 1) if sps is not None else None,
                  last_test=self.last_test,
                  best_test={k: {"value": v, "iter": i} for k, (v, i) in self.best.items()},
                  snapshot=str(latest) if latest else None, result=str(result) if result else None,
                  result_iter=ckpt.read_checkpoint_meta(result)["iteration"] if result else None)

    def _stopped(self) -> int:
        from netc.runtime import checkpoint as ckpt

        s = self.settings
        if getattr(self, "last_snapshot", -1) != self.iter:
            self.snapshot()
        path = self._flush_snapshot() or (ckpt.latest_checkpoint(s.run_dir) if self.primary
                                          else None)
        self.emit("stop", self.iter, reason=self.stop_reason, path=str(path),
                  resume_hint=f"netc train {s.config.spec} --resume {s.run_dir}")
        codes = {signal.Signals(k).name: v for k, v in EXIT_SIGNAL.items()}
        return codes.get(self.stop_reason, EXIT_OK)

    def _diverged(self, e: Diverged) -> int:
        from netc.runtime import checkpoint as ckpt

        self._pending_snapshot = None
        good = ckpt.latest_checkpoint(self.settings.run_dir) if self.primary else None
        self.emit("stop", self.iter, reason="diverged", detail=str(e),
                  path=str(good) if good else None)
        return EXIT_DIVERGED

    def solve(self) -> int:
        """Caffe's Solve: step to max_iter, then the final test and snapshot. Returns the exit
        code (0 done, 3 diverged, 130/143 stopped by a signal). SIGINT/SIGTERM request a stop
        (a second one interrupts at once)."""
        start = self.iter
        old = _install_signal_handlers(self)
        self.timer, self._window, self._solve_start = Timer(), None, start
        try:
            self._start_event()
            self._bfloat16_warning()
            self.step(self.settings.max_iter - self.iter)
            if self.stop_reason is not None and not self.stop_info.get("final"):
                return self._stopped()
            if self.stop_reason is not None:
                self.emit("stop", self.iter, reason=self.stop_reason, **self.stop_info)
            self._finish(self.iter - start)
            return EXIT_OK
        except Diverged as e:
            return self._diverged(e)
        except OSError as e:  # the run directory became unwritable (read-only, disk full...)
            raise RunError(_io_message(e, f"cannot write to the run directory {self.settings.run_dir}")
                           ) from None
        finally:
            _restore_signal_handlers(old)
            self.close()

    def close(self) -> None:
        """Stop the data streams, close the callbacks and release the run directory."""
        for st in self.streams:
            st.close()
        self.streams = []
        for cb in self.callbacks:
            close = getattr(cb, "close", None)
            if close is not None:
                close()
        self.callbacks = []
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _skipped_steps(opt_state) -> int | None:
    """How many steps float16's loss scaling has skipped so far (None: not float16)."""
    scale = opt_state.get("loss_scale") if isinstance(opt_state, dict) else None
    return None if scale is None else int(scale["skipped"])


def _io_message(e: OSError, what: str) -> str:
    where = f" ({e.filename})" if e.filename else ""
    return f"{what}{where}: {e.strerror or e}"


def _versions() -> dict[str, str]:
    """What produced a checkpoint: bitwise-exact resume is promised only on the same ones."""
    import platform

    import jax
    import jaxlib

    import netc

    return {"netc": netc.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "backend": jax.default_backend(), "machine": platform.machine()}


def _install_signal_handlers(solver: Solver) -> dict:
    def on_signal(signum, frame):
        if solver.stop_reason is not None:  # a second signal: give up at once
            raise KeyboardInterrupt
        solver.request_stop(signal.Signals(signum).name)

    old = {}
    try:
        for s in EXIT_SIGNAL:
            old[s] = signal.signal(s, on_signal)
    except ValueError:  # not the main thread (library use): no signal handling
        pass
    return old


def _restore_signal_handlers(old: dict) -> None:
    for s, h in old.items():
        signal.signal(s, h)


def train(cfg: TrainConfig, out: TextIO | None = None, err: TextIO | None = None,
          callbacks=()) -> int:
    """Train per `cfg`; returns the exit code. Raises RunError for problems the user can fix."""
    return Solver(cfg, callbacks=callbacks, out=out, err=err).solve()
