"""Data feeds: every Data layer of a phase read from its source through a BatchStream, and
Caffe's Solver::Test over them (the TEST net's scalar outputs averaged over batches).

Nothing here compares a layer type: data layers describe themselves (`unit.is_data`, their
data_param) and losses/metrics say which labels they expect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netc.runtime.errors import RunError

__all__ = ["DataFeed", "data_feeds", "make_eval_fn", "evaluate", "metric_names"]


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
    real_labels: bool = False  # float targets (EuclideanLoss, ...) rather than class indices

    def stream(self, seed: int, position: dict | None = None, prefetch: int = 4):
        from netc.runtime.data import BatchStream

        return BatchStream(self.dataset, batch_size=self.batch_size, transform=self.transform,
                           train=self.train, seed=seed, shuffle=self.shuffle, position=position,
                           prefetch=prefetch, real_labels=self.real_labels)

    def feed(self, batch: dict) -> dict:
        """A BatchStream batch ({data, label}) keyed by this layer's top names."""
        out = {self.tops[0]: batch["data"]}
        if len(self.tops) > 1:
            out[self.tops[1]] = batch["label"]
        return out


def _feed(plan, pl, fact, spec_dir: str, train: bool) -> DataFeed:
    from netc.runtime.data import DataError, check_dataset, label_requirements, load_source

    need_label = "label" in fact.roles
    try:
        ds = load_source(fact.source, base_dir=spec_dir, need_label=need_label)
        labels = label_requirements(plan, pl.tops[fact.roles.index("label")]) if need_label \
            else None
        check_dataset(ds, sample_shape=fact.sample_shape, labels=labels,
                      transform=fact.transform, need_label=need_label)
    except DataError as e:
        raise RunError(str(e)) from None
    return DataFeed(pl.name, pl.tops, ds, int(fact.batch_size), fact.transform,
                    fact.shuffle and train, train,
                    real_labels=labels is not None and labels.kind == "target")


def data_feeds(plan, spec_dir: str) -> list[DataFeed]:
    """Load and check the source of every data layer of `plan` that reads one (raises RunError
    with the DataError message). A net fed by Input layers has no feeds. The layers describe
    themselves (`data_fact`, and the losses' `label_fact`): nothing here knows a layer type."""
    train = plan.state.phase == "TRAIN"
    feeds = []
    for pl in plan.layers:
        fact = pl.unit.data_fact()
        if fact is not None and fact.source is not None:
            feeds.append(_feed(plan, pl, fact, spec_dir, train))
    return feeds


# --- evaluation ---


def metric_names(net) -> list[str]:
    return list(net.metric_blobs())


def make_eval_fn(net):
    """A jitted TEST forward returning every scalar net output (accuracies, losses)."""
    import jax

    names = metric_names(net)

    def ev(params, state, inputs):
        return net.apply(params, state, inputs, rng=None, train=False, outputs=names)[0]

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
