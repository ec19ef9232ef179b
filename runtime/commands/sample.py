"""`netc sample`: generate from a trained sequence model — sampling (temperature, top-k) or beam
search — with the vocabulary its run saved (runtime/generate.py does the stepping)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from netc.runtime.errors import EXIT_OK, RunError


@dataclass(frozen=True)
class SampleConfig:
    spec: str
    weights: str
    prime: str = ""
    length: int = 200
    temperature: float = 1.0
    top_k: int = 0
    beam: int = 0  # 0: sample; K ≥ 1: beam search with K beams
    length_penalty: float = 0.0
    seed: int = 0
    count: int = 1
    end: str | None = None
    token: str | None = None  # the token input blob
    scores: str | None = None  # the next-token scores blob
    inputs: str | None = None  # .npz with the net's other inputs (an image, a source sentence)
    vocab: str | None = None  # vocab.json, if not the run's


def _vocab(cfg: SampleConfig) -> list[str] | None:
    """The symbols: --vocab, else the run's (its vocab.json, or rebuilt from its spec's text
    source: runtime/seqdata.load_vocab); None for a run that read token ids, not text."""
    from netc.runtime.data import DataError
    from netc.runtime.seqdata import load_vocab, read_vocab_file

    try:
        if cfg.vocab:
            return read_vocab_file(cfg.vocab)
        return load_vocab(cfg.weights, spec_dir=str(Path(cfg.spec).parent))
    except DataError as e:
        if cfg.vocab or (Path(cfg.weights).is_dir() and (Path(cfg.weights) / "vocab.json").exists()):
            raise RunError(str(e)) from None
        return None  # token ids in and out


def _words(symbols: list[str] | None) -> bool:
    """A word vocabulary (symbols longer than one character): text is split on spaces."""
    return symbols is not None and any(len(s) > 1 for s in symbols)


def _encode(text: str, symbols: list[str] | None, what: str) -> list[int]:
    if symbols is None:
        try:
            return [int(t) for t in text.split()]
        except ValueError:
            raise RunError(f"{what}: without a vocabulary give token ids separated by spaces") \
                from None
    index = {s: i for i, s in enumerate(symbols)}
    tokens = text.split() if _words(symbols) else list(text)
    missing = sorted({c for c in tokens if c not in index})
    if missing:
        raise RunError(f"{what}: {', '.join(repr(c) for c in missing[:10])} not in the "
                       f"vocabulary of {len(symbols)} symbols")
    return [index[c] for c in tokens]


def _decode(ids, symbols: list[str] | None, end: int | None) -> str:
    out = []
    for i in ids:
        if end is not None and int(i) == end:
            break
        out.append(symbols[int(i)] if symbols is not None else str(int(i)))
    return ("" if symbols is not None and not _words(symbols) else " ").join(out)


def _fixed_inputs(dec, cfg: SampleConfig, rows: int) -> dict:
    """The net's other inputs from --inputs (first sample of each array, one copy per row)."""
    if cfg.inputs is None:
        return {}
    from netc.runtime.commands.predict import read_npz

    arrays = read_npz(cfg.inputs)
    net_inputs = set(dec.net.plan.inputs)
    out = {}
    for k, a in arrays.items():
        if k not in net_inputs:
            raise RunError(f"{cfg.inputs}: array '{k}' is not an input blob of the net "
                           f"(inputs: {', '.join(sorted(net_inputs))})")
        if k == dec.token:
            continue
        out[k] = np.repeat(np.asarray(a)[:1], rows, axis=0)
    return out


def run(cfg: SampleConfig, out: TextIO, err: TextIO) -> int:
    import jax

    from netc.runtime.context import load_context, net_state
    from netc.runtime.generate import Decoder, beam_search, sample
    from netc.runtime.weights import init_with_weights

    if cfg.temperature < 0:
        raise RunError("--temperature must be ≥ 0 (0 is greedy)")
    ctx = load_context(cfg.spec)
    symbols = _vocab(cfg)
    end = _encode(cfg.end, symbols, "--end")[0] if cfg.end else None
    rows = cfg.count * cfg.beam if cfg.beam else cfg.count
    dec = Decoder.build(ctx.spec, net_state("TEST", ctx.solver, ctx.spec), rows,
                        token=cfg.token, scores=cfg.scores)
    dec.set_inputs(_fixed_inputs(dec, cfg, rows))
    params, state = init_with_weights(dec.net, cfg.weights, err, rng=jax.random.PRNGKey(0))
    prime_ids = _encode(cfg.prime, symbols, "--prime") if cfg.prime else []
    if not prime_ids:  # generation starts from one token: the end symbol, else id 0
        prime_ids = [end if end is not None else 0]
    shown_prime = cfg.prime
    prime = np.tile(np.asarray(prime_ids, np.int32), (cfg.count, 1))
    if cfg.beam:
        ids, scores = beam_search(dec, params, state, prime, cfg.length, cfg.beam, end=end,
                                  length_penalty=cfg.length_penalty)
        for row, s in zip(ids, scores):
            out.write(shown_prime + _decode(row, symbols, end) + "\n")
            err.write(f"(beam score {s:.4f})\n")
    else:
        ids = sample(dec, params, state, prime, cfg.length,
                     temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed, end=end)
        for row in ids:
            out.write(shown_prime + _decode(row, symbols, end) + "\n")
    out.flush()
    return EXIT_OK
