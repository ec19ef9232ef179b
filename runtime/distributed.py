"""Data-parallel training over many devices and hosts (`netc train --devices N`, `--coordinator`).

One run is one program: every process runs the same Solver on the same data stream, the batch
of each step is split over a 1-D `jax.sharding.Mesh` (axis "batch") and everything else —
parameters, state, optimizer state, the loss — is replicated. XLA turns the mean over the
sharded batch into an all-reduce of the gradients; nothing here writes a collective.

The global batch is the spec's batch_size (times iter_size); each of the D devices gets
batch_size / D samples, so a run gives the same numbers on 1 or D devices up to float
rounding of the reduction order. A batch that does not divide over the devices is refused.

The carried recurrent state of a net with `carry` blobs (ParamDecl.carry) has a batch axis too:
it is kept replicated like the rest of the state (the step gathers the new carry from the
devices), which is exact and cheap for a state of N×H floats. Only the step's inputs are
sharded.

Multi-host: `initialize(...)` wraps `jax.distributed.initialize` (explicit coordinator / count /
id, or whatever it detects from the environment: JAX_COORDINATOR_ADDRESS, SLURM, Open MPI). It
must run before JAX touches a backend. Each process reads the whole global batch from its own
copy of the data (the same seed and stream position everywhere) and hands its devices their
slices (`jax.make_array_from_callback`), so a run on H hosts equals one on one host. Only
process 0 (`is_primary()`) writes the run directory, metrics, checkpoints and the display;
CPU processes talk through gloo (JAX's default `jax_cpu_collectives_implementation`).

With a single device overall nothing here is used: the step, placement and numbers are those
of a plain one-device run.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from netc.runtime.errors import RunError

__all__ = ["Cluster", "initialize", "is_primary", "process_count", "DataParallel",
           "select_devices", "check_batch"]

AXIS = "batch"


@dataclass(frozen=True)
class Cluster:
    """How a run is spread: `devices` per process (None: all local devices), and the
    multi-host parameters (None: single process unless the environment says otherwise)."""

    devices: int | None = None
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    distributed: bool = False  # initialize from the cluster environment alone

    @property
    def multi_host(self) -> bool:
        return bool(self.distributed or self.coordinator or self.num_processes is not None
                    or self.process_id is not None or os.environ.get("JAX_COORDINATOR_ADDRESS"))


_initialized = False


def initialize(cluster: Cluster) -> None:
    """`jax.distributed.initialize` for a multi-host run (once per process; nothing for a
    single-process one). Raises RunError with what to fix."""
    global _initialized
    if not cluster.multi_host or _initialized:
        return
    import jax

    if cluster.coordinator is not None:
        host, _, port = cluster.coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise RunError(f"--coordinator {cluster.coordinator}: expected HOST:PORT "
                           "(e.g. 10.0.0.1:1234), the address of process 0")
    explicit = cluster.coordinator or cluster.num_processes is not None \
        or cluster.process_id is not None
    if explicit and None in (cluster.num_processes, cluster.process_id) and not \
            _cluster_env_present():
        raise RunError("a multi-host run needs --coordinator HOST:PORT, --num-processes N and "
                       "--process-id I (0 on the coordinator's host), or a cluster environment "
                       "jax.distributed.initialize detects (SLURM, Open MPI, "
                       "JAX_COORDINATOR_ADDRESS...)")
    if cluster.num_processes is not None and cluster.process_id is not None and not (
            0 <= cluster.process_id < cluster.num_processes):
        raise RunError(f"--process-id {cluster.process_id} must be in 0..{cluster.num_processes - 1}"
                       f" (--num-processes {cluster.num_processes})")
    kw: dict[str, Any] = {"coordinator_address": cluster.coordinator,
                          "num_processes": cluster.num_processes,
                          "process_id": cluster.process_id}
    if jax.config.jax_cpu_collectives_implementation is None:  # CPU processes need one
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeout = int(os.environ.get("NETC_DISTRIBUTED_TIMEOUT", "300"))
    # JAX's coordination client aborts the process (not a Python error) when the coordinator
    # never answers: say first what this process is waiting for
    where = cluster.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or "(from the environment)"
    who = (f"process {cluster.process_id} of {cluster.num_processes}"
           if cluster.process_id is not None and cluster.num_processes is not None else "this process")
    sys.stderr.write(f"note: {who} joins the job coordinated at {where} (waiting up to {timeout} s "
                     "for every process; NETC_DISTRIBUTED_TIMEOUT)\n")
    sys.stderr.flush()
    try:
        jax.distributed.initialize(**{k: v for k, v in kw.items() if v is not None},
                                   initialization_timeout=timeout)
    except (ValueError, TypeError) as e:
        raise RunError(f"cannot start the multi-host run: {e}") from None
    except RuntimeError as e:  # the coordinator did not answer, a backend already started...
        raise RunError(f"cannot start the multi-host run (coordinator "
                       f"{cluster.coordinator or os.environ.get('JAX_COORDINATOR_ADDRESS', '?')}"
                       f"): {str(e).strip().splitlines()[0] if str(e).strip() else e}") from None
    _initialized = True


def _cluster_env_present() -> bool:
    env = os.environ
    return bool(env.get("JAX_COORDINATOR_ADDRESS") or "SLURM_JOB_ID" in env
                or "OMPI_MCA_orte_hnp_uri" in env or "PMIX_SERVER_URI2" in env)


def process_index() -> int:
    import jax

    return jax.process_index()


def process_count() -> int:
    import jax

    return jax.process_count()


def is_primary() -> bool:
    """Process 0: the one that writes the run directory, metrics, checkpoints and the display."""
    return process_index() == 0


def select_devices(requested: int | None) -> list:
    """The devices of the run: `requested` of each process's local devices (all when None), in
    (process, id) order. Raises RunError when a process has fewer."""
    import jax

    local = jax.local_devices()
    n = len(local) if requested is None else requested
    if n < 1:
        raise RunError(f"--devices {requested}: must be at least 1")
    if n > len(local):
        kind = local[0].platform if local else jax.default_backend()
        hint = (" (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N)"
                if kind == "cpu" else "")
        raise RunError(f"--devices {n}: only {len(local)} {kind} device"
                       f"{'s' if len(local) != 1 else ''} available on this host{hint}")
    per_proc: dict[int, list] = {}
    for d in jax.devices():
        per_proc.setdefault(d.process_index, []).append(d)
    chosen = []
    for p in sorted(per_proc):
        chosen.extend(sorted(per_proc[p], key=lambda d: d.id)[:n])
    return chosen


def check_batch(batch: int, devices: int, available: int, processes: int = 1) -> None:
    """The global batch must split evenly over the devices (netc never changes the batch).
    `available`: the devices there are in all (local devices × processes)."""
    if batch % devices == 0:
        return
    per = max(available // processes, 1)
    options = [d for d in range(1, per + 1) if batch % (d * processes) == 0] or [1]
    flag = " or ".join(f"--devices {d}" for d in options[-3:])
    total = f" ({devices // processes} per process × {processes} processes)" if processes > 1 else ""
    raise RunError(f"batch {batch} does not divide over {devices} devices{total}: the spec's "
                   f"batch_size is the global batch, split evenly over the devices; use {flag}, "
                   "or change batch_size")


class DataParallel:
    """A mesh over the run's devices and how each kind of array lives on it."""

    def __init__(self, devices: list):
        import jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        self.devices = devices
        self.n = len(devices)
        self.mesh = Mesh(np.array(devices), (AXIS,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self._P, self._NS = PartitionSpec, NamedSharding
        self.processes = jax.process_count()
        self.multi_process = self.processes > 1
        self.local = jax.local_devices()[0]

    def batch_sharding(self, axis: int | None, ndim: int):
        """Split `axis` over the mesh (replicated when the input has no batch axis)."""
        if axis is None:
            return self.replicated
        spec = [None] * ndim
        spec[axis] = AXIS
        return self._NS(self.mesh, self._P(*spec))

    def _put(self, x, sharding):
        import jax

        x = np.asarray(x)
        if not self.multi_process:
            return jax.device_put(x, sharding)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    def replicate(self, tree):
        """Host or one-device arrays -> arrays replicated on every device of the mesh."""
        import jax

        return jax.tree_util.tree_map(lambda a: self._put(a, self.replicated), tree)

    def shard_batch(self, inputs: dict, axes: dict) -> dict:
        """Each input split on its batch axis (`axes[name]`; None: replicated)."""
        return {k: self._put(v, self.batch_sharding(axes.get(k), np.ndim(v)))
                for k, v in inputs.items()}

    def to_local(self, tree):
        """Replicated arrays -> this process's copy on its first local device (for the TEST net
        and for host copies; no cross-process traffic)."""
        import jax

        def one(a):
            if not isinstance(a, jax.Array) or len(a.sharding.device_set) == 1:
                return a
            for shard in a.addressable_shards:
                if shard.device == self.local:
                    return shard.data
            return jax.device_put(a.addressable_data(0), self.local)

        return jax.tree_util.tree_map(one, tree)

    def describe(self, batch: int) -> str:
        return f"batch {batch} global = {batch // self.n} per device"
