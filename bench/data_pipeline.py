"""The input pipeline with augmentation, measured: where augmentation should run, and whether
Google's `grain` loader would serve netc better than its hand-written BatchStream.

Sections (all by default; --only NAME to pick):

* numpy — netc's loader-side augmentation (runtime/augment.py through BatchStream, no prefetch
  thread: the producer's own cost) in samples/s, off and on, for the digits (1×28×28, batch 64)
  and CIFAR-size images (3×32×32 uint8, batch 128);
* jax — the same random crop + flip + rotation written in JAX (vmapped bilinear sampling,
  jax.scipy.ndimage.map_coordinates) and jitted, as it would run inside the train step: raw uint8
  batch in, augmented float batch out, on JAX's default device;
* step — LeNet's train step on the digits (batch 64): alone, fed by BatchStream with augmentation
  (prefetch thread: the augmentation overlaps the step; then with data_param.workers, grain's
  worker processes), and with the JAX augmentation fused into the jitted step (then it is on the
  step's critical path);
* grain — the same pipeline in grain (a source of places, batch, a map that gathers and augments
  with the same per-place randomness), with 0 / 1 / 2 ... worker processes, beside BatchStream; and
  grain's iterator checkpoint (get_state / set_state) checked to resume the exact batches.

Run: python bench/data_pipeline.py [--batches 60] [--workers 0,1,2] [--only numpy,jax,step,grain]
Not a test: numbers vary by machine and load (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from netc.runtime.data import BatchStream, Dataset, _make_transform, _Producer, load_source  # noqa: E402
from netc.spec.messages import TransformationParameter as T  # noqa: E402

# The two workloads: (data set maker, batch size, {name: transform_param}).
DIGITS_AUG = {"scale": 1 / 256, "crop_size": 24, "mirror": True, "rotate": {"degrees": 15}}
CIFAR_AUG = {"scale": 1 / 255, "translate": {"pixels": 4}, "flip": {"horizontal": 0.5},
             "rotate": {"degrees": 15}}
CIFAR_FULL = {**CIFAR_AUG, "color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4},
              "color_drop": {"p": 0.2}, "cutout": {"size": 8}}


def digits() -> Dataset:
    return load_source("netc:digits/train")


def cifar_like(n: int = 10_000) -> Dataset:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    return Dataset("cifar-size (random uint8)", data, rng.integers(0, 10, n))


WORKLOADS = {
    "digits b64": (digits, 64, {"off": {"scale": 1 / 256}, "crop+mirror": {
        "scale": 1 / 256, "crop_size": 24, "mirror": True}, "crop+mirror+rotate": DIGITS_AUG}),
    "cifar b128": (cifar_like, 128, {"off": {"scale": 1 / 255}, "shift+flip+rotate": CIFAR_AUG,
                                     "+jitter,drop,cutout": CIFAR_FULL}),
}


def rate(next_batch, batches: int, samples: int, repeats: int = 3) -> float:
    """Median samples/s over `repeats` runs of `batches` calls (after one warm-up call)."""
    next_batch()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            next_batch()
        runs.append(batches * samples / (time.perf_counter() - t0))
    return statistics.median(runs)


# --- numpy on the loader side --------------------------------------------------------------------


def bench_numpy(args) -> None:
    print("numpy augmentation in the loader (BatchStream, prefetch 0: the producer's own cost)")
    for name, (make, b, transforms) in WORKLOADS.items():
        ds = make()
        for label, t in transforms.items():
            with BatchStream(ds, batch_size=b, transform=T.model_validate(t), train=True, seed=1,
                             shuffle=True, prefetch=0) as s:
                r = rate(lambda s=s: next(s), args.batches, b)
            print(f"  {name:11s} {label:22s} {r:10,.0f} samples/s  ({1e3 * b / r:6.2f} ms/batch)")


# --- JAX, as it would run inside the jitted step --------------------------------------------------


def jax_augment(scale: float, out: int, shift: int, degrees: float):
    """(uint8 N×C×H×W, key) -> float32 N×C×out×out: a random crop (offsets in [0, H - out]) or
    shift (±shift with zero fill, out = H), a horizontal flip with probability 1/2, a rotation
    uniform in ±degrees, one bilinear sample per output pixel — what the numpy warp does."""
    import jax
    import jax.numpy as jnp
    from jax.scipy.ndimage import map_coordinates

    def one(img, key, h):
        k1, k2, k3 = jax.random.split(key, 3)
        lo, hi = (-shift, shift) if shift else (0, h - out)
        top, left = jax.random.randint(k1, (2,), lo, hi + 1)
        flip = jax.random.bernoulli(k2)
        theta = jnp.deg2rad(jax.random.uniform(k3, (), minval=-degrees, maxval=degrees))
        i, j = jnp.meshgrid(jnp.arange(out), jnp.arange(out), indexing="ij")
        c = (out - 1) / 2
        r = jnp.cos(theta) * (i - c) + jnp.sin(theta) * (j - c) + c
        q = -jnp.sin(theta) * (i - c) + jnp.cos(theta) * (j - c) + c
        q = jnp.where(flip, out - 1 - q, q)
        coords = [r + top, q + left]
        return jax.vmap(lambda ch: map_coordinates(ch, coords, order=1, cval=0.0))(img)

    @jax.jit
    def augment(x, key):
        keys = jax.random.split(key, x.shape[0])
        imgs = x.astype(jnp.float32) * scale
        return jax.vmap(one, in_axes=(0, 0, None))(imgs, keys, x.shape[2])

    return augment


def bench_jax(args) -> None:
    import jax

    print(f"JAX augmentation, jitted (crop/shift + flip + rotate), on {jax.devices()[0]}")
    for (name, (make, b, _)), (out, shift) in zip(WORKLOADS.items(), [(24, 0), (32, 4)]):
        ds = make()
        aug = jax_augment(1 / 255, out, shift, 15.0)
        raw, key = np.ascontiguousarray(ds.data[:b]), jax.random.key(0)

        def run(aug=aug, raw=raw, key=key):
            return aug(jax.device_put(raw), key).block_until_ready()

        r = rate(run, args.batches, b)
        print(f"  {name:11s} {'crop/shift+flip+rotate':22s} {r:10,.0f} samples/s  "
              f"({1e3 * b / r:6.2f} ms/batch, host->device copy included)")


# --- the train step: augmentation off, on the loader thread, inside the step ---------------------


def bench_step(args) -> None:
    import jax

    import netc

    b = 64
    model = netc.load(str(ROOT / "models" / "lenet.yaml"), phase="TRAIN", batch=b)
    params, state = model.init(jax.random.key(0))
    opt_state, step = model.train_step()
    carry = [params, state, opt_state]
    ds = digits()
    aug = jax_augment(1 / 256, 28, 2, 15.0)  # LeNet takes 28×28: shift ±2 + flip + rotate

    def train(batch):
        carry[0], carry[1], carry[2], loss = step(*carry, batch, np.int32(0))
        return loss

    @jax.jit
    def fused(p, s, o, x, y, key):
        return step(p, s, o, {"data": aug(x, key), "label": y}, np.int32(0))

    def train_fused(x, y, key):
        carry[0], carry[1], carry[2], loss = fused(*carry, x, y, key)
        return loss

    fixed = {"data": (ds.data[:b] / 256).astype(np.float32), "label": ds.label[:b].astype(np.int32)}
    print(f"LeNet train step, digits batch {b}, on {jax.devices()[0]}")
    r = rate(lambda: jax.block_until_ready(train(fixed)), args.batches, b)
    print(f"  {'step alone (one fixed batch)':44s} {r:10,.0f} samples/s")
    shift = {"scale": 1 / 256, "translate": {"pixels": 2}, "flip": {"horizontal": 0.5},
             "rotate": {"degrees": 15}}
    most = max(args.workers)
    for label, t, workers in (("BatchStream, no augmentation", {"scale": 1 / 256}, 0),
                              ("BatchStream + numpy shift+flip+rotate", shift, 0),
                              (f"... with data_param.workers: {most}", shift, most)):
        with BatchStream(ds, batch_size=b, transform=T.model_validate(t), train=True, seed=1,
                         shuffle=True, prefetch=4, workers=workers) as s:
            for _ in range(3 * workers):
                next(s)  # the workers started
            r = rate(lambda s=s: jax.block_until_ready(train(next(s))), args.batches, b)
        how = f"{workers} worker processes" if workers else "prefetch thread"
        print(f"  {label:44s} {r:10,.0f} samples/s  ({how})")
    y = ds.label[:b].astype(np.int32)
    x = np.ascontiguousarray(ds.data[:b])
    keys = iter(jax.random.split(jax.random.key(1), 10_000))
    r = rate(lambda: jax.block_until_ready(train_fused(x, y, next(keys))), args.batches, b)
    print(f"  {'JAX shift+flip+rotate fused into the step':44s} {r:10,.0f} samples/s")


# --- grain ---------------------------------------------------------------------------------------


class Places:
    """grain map: a batch of consecutive places of the stream -> the augmented batch, by netc's
    producer (the same gather, transform and per-place randomness as BatchStream)."""

    def __init__(self, ds: Dataset, batch: int, t: dict, seed: int):
        tr = _make_transform(ds.name, ds.sample_shape, T.model_validate(t))
        self.producer = _Producer(ds, batch, tr, True, seed, True)
        self.n = len(ds)

    def __call__(self, places: np.ndarray) -> dict:
        epoch, index = divmod(int(places[0]), self.n)
        return self.producer.batch(epoch, index)[0]


def grain_pipeline(ds: Dataset, batch: int, t: dict, seed: int, workers: int):
    import grain

    n_batches = 10_000
    # one reading thread and 4 batches ahead, as BatchStream (grain's default is 16 threads
    # and 500 elements: the producer's caches are not made for threads)
    read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
    pipe = (grain.MapDataset.range(n_batches * batch).batch(batch)
            .map(Places(ds, batch, t, seed)).to_iter_dataset(read))
    if workers:
        pipe = pipe.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return pipe


def bench_grain(args) -> None:
    from absl import flags  # grain's worker processes read absl flags

    flags.FLAGS.mark_as_parsed()

    print(f"grain {_version('grain')} vs BatchStream: the pipeline alone (no train step)")
    for name, (make, b, transforms) in WORKLOADS.items():
        ds = make()
        label, t = list(transforms.items())[-1]
        with BatchStream(ds, batch_size=b, transform=T.model_validate(t), train=True, seed=1,
                         shuffle=True, prefetch=4) as s:
            r = rate(lambda s=s: next(s), args.batches, b)
        print(f"  {name:11s} {label:22s} BatchStream, 1 thread  {r:10,.0f} samples/s")
        for k in args.workers:
            it = iter(grain_pipeline(ds, b, t, 1, k))
            for _ in range(2 * max(k, 1)):
                next(it)  # workers started and warm
            r = rate(lambda it=it: next(it), args.batches, b)
            print(f"  {name:11s} {label:22s} grain, {k} worker(s)      {r:10,.0f} samples/s")
            del it
    check_grain_checkpoint()


def check_grain_checkpoint() -> None:
    """get_state after k batches, then set_state on a new iterator: the same batches follow;
    and they are BatchStream's batches (the same places, the same draws)."""
    ds = digits()
    t = {**DIGITS_AUG, "cutout": {"size": 6}}
    for workers in (0, 2):
        it = iter(grain_pipeline(ds, 64, t, 3, workers))
        for _ in range(5):
            next(it)
        state = it.get_state()
        ref = [next(it)["data"] for _ in range(3)]
        it2 = iter(grain_pipeline(ds, 64, t, 3, workers))
        it2.set_state(state)
        same = all(np.array_equal(a, next(it2)["data"]) for a in ref)
        with BatchStream(ds, batch_size=64, transform=T.model_validate(t), train=True, seed=3,
                         shuffle=True, prefetch=0) as s:
            stream = [next(s)["data"] for _ in range(8)][5:]
        as_stream = all(np.array_equal(a, b) for a, b in zip(ref, stream))
        print(f"  grain checkpoint, {workers} worker(s): state {state!r:.60s}...; resumed batches "
              f"identical: {same}; identical to BatchStream's: {as_stream}")


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--only", default="numpy,jax,step,grain")
    args = ap.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    print(f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}, numpy "
          f"{np.__version__}, python {sys.version.split()[0]}")
    sections = {"numpy": bench_numpy, "jax": bench_jax, "step": bench_step, "grain": bench_grain}
    for name in args.only.split(","):
        try:
            sections[name](args)
        except Exception as e:  # noqa: BLE001 - report and go on with the other sections
            print(f"  {name}: failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
