"""Data feeds: every Data layer of a phase read from its source through a stream (BatchStream,
or TextStream for a text source), and Caffe's Solver::Test over them (the TEST net's scalar
outputs averaged over batches, the carried recurrent state threaded from batch to batch).

Nothing here compares a layer type: data layers describe themselves (`unit.is_data`, their
data_fact: source, batch size, the roles of their tops) and the layers that read a blob as
indices or targets say what they need of it (`label_fact`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from netc.compiler.xla import jit
from netc.runtime.errors import RunError

__all__ = ["DataFeed", "data_feeds", "make_eval_fn", "evaluate", "metric_names"]


@dataclass
class DataFeed:
    """One Data layer of a phase: its tops, loaded source and stream settings.

    `keys` are the stream's batch keys that feed the tops, in order: ("data", "label") of a
    data/label source, ("data", "label", "cont") of a text, the array names of a source read
    by top names (the tops themselves)."""

    layer: str
    tops: tuple[str, ...]
    dataset: Any  # runtime.data.Dataset, or runtime.seqdata.TextCorpus for a text source
    batch_size: int
    transform: Any
    shuffle: bool
    train: bool
    real_labels: bool = False  # float targets (EuclideanLoss, ...) rather than class indices
    keys: tuple[str, ...] = ("data", "label")
    dtypes: dict = field(default_factory=dict)  # arrays read by name: key -> dtype override
    text: dict = field(default_factory=dict)  # text source: seq_len, split, batch_first
    workers: int = 0  # data_param.workers: processes making TRAIN batches (runtime/data_workers)

    def stream(self, seed: int, position: dict | None = None, prefetch: int = 4):
        if self.text:
            from netc.runtime.seqdata import TextStream

            return TextStream(self.dataset, batch_size=self.batch_size, seed=seed,
                              shuffle=self.shuffle, position=position, **self.text)
        from netc.runtime.data import BatchStream

        return BatchStream(self.dataset, batch_size=self.batch_size, transform=self.transform,
                           train=self.train, seed=seed, shuffle=self.shuffle, position=position,
                           prefetch=prefetch, real_labels=self.real_labels,
                           dtypes=self.dtypes or None, workers=self.workers)

    def feed(self, batch: dict) -> dict:
        """A stream's batch keyed by this layer's top names."""
        return {top: batch[key] for top, key in zip(self.tops, self.keys)}

    def vocab_doc(self) -> dict | None:
        """The vocabulary of a text source, as vocab.json holds it (None for other sources)."""
        return self.dataset.vocab_doc() if self.text else None


def _vocab_check(plan, pl, fact, corpus) -> None:
    """A text's ids run over its whole vocabulary: every layer that reads its data or label as
    indices (an Embed's input_dim, a classifier's outputs) must accept that many. The planner
    checks it against the file as `netc check` read it; this checks the text actually loaded (a
    file changed since the plan was made)."""
    from netc.runtime.data import label_requirements

    for top, role in zip(pl.tops, fact.roles):
        if role not in ("data", "label"):
            continue
        need = label_requirements(plan, top)
        if need is None or need.kind != "class" or need.classes is None:
            continue
        if corpus.vocab > need.classes:
            raise RunError(
                f"{corpus.name}: '{top}' holds character ids in [0, {corpus.vocab}) (the text has "
                f"{corpus.vocab} distinct characters), but layer '{need.layer}' reads it as "
                f"indices in [0, {need.classes}) ({need.rule}): make it accept "
                f"{corpus.vocab} (an Embed's input_dim, a classifier's num_output)")


def _feed(plan, pl, fact, spec_dir: str, train: bool) -> DataFeed:
    from netc.compiler.layers.data import is_text_source
    from netc.runtime.data import (
        DataError,
        check_dataset,
        check_ids,
        check_named,
        label_requirements,
        load_source,
    )

    p = pl.unit.p
    keys = tuple(fact.roles)
    try:
        if is_text_source(fact.source):
            corpus = load_source(fact.source, base_dir=spec_dir)
            _vocab_check(plan, pl, fact, corpus)
            text = {"seq_len": int(p.seq_len), "split": tuple(p.split),
                    "batch_first": bool(p.batch_first)}
            return DataFeed(pl.name, pl.tops, corpus, int(fact.batch_size), None,
                            fact.shuffle and train, train, keys=keys, text=text)
        # what the layers reading each top as indices or targets need of it
        needs = {key: label_requirements(plan, top) for key, top in zip(keys, pl.tops)}
        by_name = keys not in (("data",), ("data", "label"))
        if by_name:
            ds = load_source(fact.source, base_dir=spec_dir, keys=keys)
            check_named(ds, needs, sample_shape=fact.sample_shape, transform=fact.transform)
            dtypes = {k: ("float32" if n.kind == "target" else "int32")
                      for k, n in needs.items() if n is not None}
            return DataFeed(pl.name, pl.tops, ds, int(fact.batch_size), fact.transform,
                            fact.shuffle and train, train, keys=keys, dtypes=dtypes,
                            workers=int(getattr(p, "workers", 0)) if train else 0)
        need_label = "label" in keys
        ds = load_source(fact.source, base_dir=spec_dir, need_label=need_label,
                         options=fact.options or None)
        labels = needs.get("label")
        check_dataset(ds, sample_shape=fact.sample_shape, labels=labels,
                      transform=fact.transform, need_label=need_label)
        if needs["data"] is not None and needs["data"].kind == "class":  # ids read by an Embed
            check_ids(ds.name, "data", ds.data, needs["data"])
    except DataError as e:
        raise RunError(str(e)) from None
    return DataFeed(pl.name, pl.tops, ds, int(fact.batch_size), fact.transform,
                    fact.shuffle and train, train,
                    real_labels=labels is not None and labels.kind == "target", keys=keys,
                    workers=int(getattr(p, "workers", 0)) if train else 0)


def data_feeds(plan, spec_dir: str) -> list[DataFeed]:
    """Load and check the source of every data layer of `plan` that reads one (raises RunError
    with the DataError message). A net fed by Input layers has no feeds. The layers describe
    themselves (`data_fact`, and the readers' `label_fact`): nothing here knows a layer type."""
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


def make_eval_fn(net, extra: tuple[str, ...] = (), precision: str = "float32"):
    """A jitted TEST forward: (params, state, inputs) -> (every scalar net output, new state).
    The new state is `state` with the carried recurrent states (`carry_*` roles) the forward
    wrote; every other entry (statistics) is returned as given. `precision`: the dtype the
    forward computes in, as the train step does (runtime/precision.py)."""

    from netc.compiler.layer import is_carry_role
    from netc.runtime.precision import policy

    names = metric_names(net) + list(extra)  # extra: blobs returned besides (predictions)
    mp = policy(precision, net.plan)

    def ev(params, state, inputs):
        out, new = net.apply(mp.cast_params(params), state, mp.cast_inputs(inputs), rng=None,
                             train=False, outputs=names)
        kept = {layer: {role: (new.get(layer, {}).get(role, v) if is_carry_role(role) else v)
                        for role, v in roles.items()}
                for layer, roles in state.items()}
        return out, kept

    return jit(ev)


def evaluate(eval_fn, params: dict, state: dict, feeds: list[DataFeed], iterations: int,
             seed: int = 0, collect=None) -> dict[str, float]:
    """Caffe's Solver::Test: run `iterations` batches read in order from the start of each TEST
    source and average every scalar output over them. The state each batch leaves (a recurrent
    layer's carried state) is the next batch's, starting from `state` (the TEST net's own
    initial carry) at every call. `collect(outputs)`, if given, receives each batch's other
    outputs (those an eval_fn made with `extra` returns: netc test's predictions)."""
    import jax
    import numpy as np

    streams = [f.stream(seed, prefetch=2) for f in feeds]
    sums: dict[str, float] = {}
    try:
        pending = []
        for _ in range(iterations):
            inputs = {}
            for f, s in zip(feeds, streams):
                inputs.update(f.feed(next(s)))
            out, state = eval_fn(params, state, jax.device_put(inputs))
            pending.append(out)
        for out in pending:
            if collect is not None:
                collect({k: v for k, v in out.items() if np.ndim(v)})
            for k, v in out.items():
                if not np.ndim(v):
                    sums[k] = sums.get(k, 0.0) + float(v)
    finally:
        for s in streams:
            s.close()
    return {k: v / max(iterations, 1) for k, v in sums.items()}
