"""Data feeds: every Data layer of a phase read from its source through a BatchStream, and
Caffe's Solver::Test over them (the TEST net's scalar outputs averaged over batches).

Nothing here compares a layer type: data layers describe themselves (`unit.is_data`, their
data_param) and losses/metrics say which labels they expect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netc.runtime.errors import RunError

__all__ = ["DataFeed", "data_feeds", "input_only", "make_eval_fn", "evaluate", "metric_names"]


@dataclass
class DataFeed:
    """One Data layer of a phase: its tops, loaded data set and BatchStream settings."""

    layer: str
    tops: tuple[str, ...]
    dataset: Any
    batch_size: int
    transform: Any
    shuffle: bool
    train: bool

    def stream(self, seed: int, position: dict | None = None, prefetch: int = 4):
        from netc.runtime.data import BatchStream

        return BatchStream(self.dataset, batch_size=self.batch_size, transform=self.transform,
                           train=self.train, seed=seed, shuffle=self.shuffle, position=position,
                           prefetch=prefetch)

    def feed(self, batch: dict) -> dict:
        """A BatchStream batch ({data, label}) keyed by this layer's top names."""
        out = {self.tops[0]: batch["data"]}
        if len(self.tops) > 1:
            out[self.tops[1]] = batch["label"]
        return out


def _class_count(plan, label_top: str) -> tuple[int | None, int | None]:
    """(classes, ignore_label) of the first layer that takes `label_top` as its second bottom
    beside predictions (a classifier loss or metric), read from the plan's shapes."""
    for pl in plan.layers:
        if len(pl.bottoms) != 2 or pl.bottoms[1] != label_top:
            continue
        if tuple(pl.unit.bottom_names) != ("predictions", "label"):
            continue
        pred = pl.bottom_shapes[0]
        axis = getattr(pl.unit.p, "axis", 1) if pl.unit.p is not None else 1
        axis = axis + len(pred) if axis < 0 else axis
        if not (0 < axis < len(pred)) or not isinstance(pred[axis], int):
            return None, None
        ignore = None
        for holder in (getattr(pl.unit.spec, "loss_param", None), pl.unit.p):
            value = getattr(holder, "ignore_label", None) if holder is not None else None
            if value is not None:
                ignore = value
                break
        return int(pred[axis]), ignore
    return None, None


def data_feeds(plan, spec_dir: str) -> list[DataFeed]:
    """Load and check the source of every Data layer of `plan` (raises RunError with the
    DataError message). A net fed by Input layers has no feeds."""
    from netc.runtime.data import DataError, check_dataset, load_source

    feeds = []
    train = plan.state.phase == "TRAIN"
    for pl in plan.layers:
        if not pl.unit.is_data:
            continue
        dp = getattr(pl.unit.spec, "data_param", None)
        if dp is None:
            continue
        need_label = len(pl.tops) > 1
        try:
            ds = load_source(dp.source, base_dir=spec_dir, need_label=need_label)
            sample = pl.unit.sample_shape() if hasattr(pl.unit, "sample_shape") else None
            classes, ignore = _class_count(plan, pl.tops[1]) if need_label else (None, None)
            check_dataset(ds, sample_shape=sample, num_classes=classes, ignore_label=ignore,
                          need_label=need_label)
        except DataError as e:
            raise RunError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - e.g. a SpecError from sample_shape
            raise RunError(f"{dp.source}: {getattr(e, 'message', e)}") from None
        feeds.append(DataFeed(pl.name, pl.tops, ds, int(dp.batch_size),
                              getattr(pl.unit.spec, "transform_param", None),
                              bool(dp.shuffle) and train, train))
    return feeds


def input_only(plan) -> bool:
    return any(pl.unit.is_data for pl in plan.layers) and not any(
        getattr(pl.unit.spec, "data_param", None) is not None for pl in plan.layers if pl.unit.is_data)


# --- evaluation ---


def metric_names(net) -> list[str]:
    return list(net.metric_blobs())


def make_eval_fn(net):
    """A jitted TEST forward returning every scalar net output (accuracies, losses)."""
    import jax

    names = metric_names(net)

    def ev(params, state, inputs):
        blobs, _ = net.apply(params, state, inputs, rng=None, train=False)
        return {n: blobs[n] for n in names}

    return jax.jit(ev)


def evaluate(eval_fn, params: dict, state: dict, feeds: list[DataFeed], iterations: int,
             seed: int = 0) -> dict[str, float]:
    """Caffe's Solver::Test: run `iterations` batches read in order from the start of each TEST
    source and average every scalar output over them."""
    import jax

    streams = [f.stream(seed, prefetch=2) for f in feeds]
    sums: dict[str, float] = {}
    try:
        pending = []
        for _ in range(iterations):
            inputs = {}
            for f, s in zip(feeds, streams):
                inputs.update(f.feed(next(s)))
            pending.append(eval_fn(params, state, jax.device_put(inputs)))
        for out in pending:
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    finally:
        for s in streams:
            s.close()
    return {k: v / max(iterations, 1) for k, v in sums.items()}
