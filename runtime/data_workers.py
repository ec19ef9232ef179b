"""Batches made by worker processes (``data_param.workers``), through Google's grain loader.

One prefetch thread is enough while the train step is slower than the loader (on CPU: LeNet's
step at ~7,400 samples/s hides the augmentation on the digits, 30,000+ samples/s). On an
accelerator the step is faster than one Python thread can augment (LeNet on an H200: 124,000
samples/s alone, 33,000 fed by the thread), and threads do not help: numpy's small operations
hold the GIL between loops (measured slower with 4 and 8 threads). Worker processes do, and grain
runs them: a spawned process per worker, batches handed back in order, errors re-raised here.
bench/data_pipeline.py has the numbers.

What grain makes is netc's own producer's batch at a place of the stream: batch ``i`` of a
stream that starts at place ``p`` is ``producer.batch`` at place ``p + i·batch_size`` (the
places of the epochs in a row). So the batches are exactly BatchStream's — the same permutation,
the same augmentation draws (a function of seed, epoch and place) — and BatchStream's position
stays the resume state (grain's own iterator state is not needed).
"""

from __future__ import annotations

from typing import Any

from netc.errors import NetcError

__all__ = ["worker_batches"]

# grain's range of batch numbers: endless in practice (2**48 batches)
_ENDLESS = 2**48


class WorkerError(NetcError):
    """Worker processes were asked for but cannot run."""


class _BatchAt:
    """Batch number i of a stream starting at `start` (a place: epoch·N + index)."""

    def __init__(self, producer: Any, start: int, batch_size: int, size: int):
        self.producer, self.start, self.batch_size, self.size = producer, start, batch_size, size

    def __call__(self, i: int) -> dict:
        epoch, index = divmod(self.start + int(i) * self.batch_size, self.size)
        return self.producer.batch(epoch, index)[0]


def worker_batches(
    producer: Any, start: tuple[int, int], size: int, batch_size: int, workers: int, prefetch: int
) -> Any:
    """An iterator (with ``close()``) over the producer's batches from position `start`, made by
    `workers` processes, each `prefetch` batches ahead at most."""
    try:
        import grain
        from absl import flags
    except ImportError as e:
        raise WorkerError(
            f"data_param.workers needs the grain package ({e}): pip install 'netc[grain]'"
        ) from None
    if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
        flags.FLAGS.mark_as_parsed()
    first = start[0] * size + start[1]
    batches = grain.MapDataset.range(_ENDLESS).map(_BatchAt(producer, first, batch_size, size))
    read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)
    options = grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(1, prefetch)
    )
    return iter(batches.to_iter_dataset(read).mp_prefetch(options))
