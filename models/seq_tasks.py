"""Data for the sequence-to-sequence and captioning examples, written as .npz files whose arrays
are named as the specs' Data-layer tops (models/seq2seq_reverse.yaml, models/caption_digits.yaml):

    python -m netc.models.seq_tasks reverse  -o models/data     # digit strings and their reverse
    python -m netc.models.seq_tasks captions -o models/data     # built-in digits + English words

Token ids: 0 is padding, 1 is "$" (the start and end symbol), then the task's symbols. Decoder
targets are padded with -1 (the specs' ignore_label), inputs with 0. Each run also writes the
vocabulary as `<task>_vocab.json` ({"kind": "chars", "symbols": [...]}) for `netc sample --vocab`.
Deterministic: the same seed gives the same files.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np

PAD, END = 0, 1
IGNORE = -1
DIGIT_SYMBOLS = ["_", "$"] + [str(d) for d in range(10)]  # "_" stands for padding
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LETTERS = sorted(set("".join(WORDS)))
CAPTION_SYMBOLS = ["_", "$"] + LETTERS


def _decoder_arrays(targets: list[list[int]], steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(decoder input: "$" then the target; decoder output: the target then "$"), padded."""
    n = len(targets)
    dec_in = np.full((n, steps), PAD, np.int32)
    dec_out = np.full((n, steps), IGNORE, np.int32)
    for i, t in enumerate(targets):
        dec_in[i, : len(t) + 1] = [END] + t
        dec_out[i, : len(t) + 1] = t + [END]
    return dec_in, dec_out


def reverse_digits(n: int, min_len: int = 3, max_len: int = 8, seed: int = 0) -> dict:
    """Source digit strings of random length and their reverse as the target."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, n)
    src = np.full((n, max_len), PAD, np.int32)
    targets = []
    for i, k in enumerate(lengths):
        digits = (rng.integers(0, 10, k) + 2).tolist()
        src[i, :k] = digits
        targets.append(digits[::-1])
    dec_in, dec_out = _decoder_arrays(targets, max_len + 1)
    return {"src": src, "src_len": lengths.astype(np.int32), "dec_in": dec_in, "dec_out": dec_out}


def digit_captions(split: str) -> dict:
    """The built-in digits (netc:digits/SPLIT) with their English words as captions."""
    from importlib import resources

    from netc.compiler.layers.data import BUILTIN

    ds = BUILTIN["digits"]
    info = ds.splits[split]
    raw = resources.files("netc.runtime").joinpath(ds.resource).read_bytes()
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        images, labels = z[info.data_key], z[info.label_key]
    index = {s: i for i, s in enumerate(CAPTION_SYMBOLS)}
    targets = [[index[c] for c in WORDS[int(y)]] for y in labels]
    dec_in, dec_out = _decoder_arrays(targets, max(len(w) for w in WORDS) + 1)
    return {"image": images, "dec_in": dec_in, "dec_out": dec_out}


def _save(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def write(task: str, out: Path, n_train: int = 20000, n_test: int = 1000) -> list[Path]:
    out = Path(out)
    if task == "reverse":
        files = {"reverse_train.npz": reverse_digits(n_train, seed=1),
                 "reverse_test.npz": reverse_digits(n_test, seed=2)}
        symbols = DIGIT_SYMBOLS
    elif task == "captions":
        files = {"captions_train.npz": digit_captions("train"),
                 "captions_test.npz": digit_captions("test")}
        symbols = CAPTION_SYMBOLS
    else:
        raise ValueError(f"unknown task {task!r}: reverse or captions")
    written = []
    for name, arrays in files.items():
        _save(out / name, arrays)
        written.append(out / name)
    vocab = out / f"{task}_vocab.json"
    vocab.write_text(json.dumps({"kind": "chars", "symbols": symbols}))
    return written + [vocab]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=["reverse", "captions"])
    ap.add_argument("-o", "--out", default="models/data")
    ap.add_argument("--train", type=int, default=20000, help="reverse: training pairs")
    args = ap.parse_args()
    for p in write(args.task, Path(args.out), n_train=args.train):
        print(p)


if __name__ == "__main__":
    main()


def decode(spec: str, weights: str, arrays: dict, *, token: str = "dec_in",
           scores: str = "logits", beams: int = 1, steps: int | None = None) -> np.ndarray:
    """Greedy (beams = 1) or beam-search decoding of every sample of `arrays` (the spec's other
    inputs: src + src_len, or image) with a trained spec; returns N×steps token ids."""
    import jax

    from netc.runtime.context import load_context, net_state
    from netc.runtime.generate import Decoder, beam_search, greedy
    from netc.runtime.weights import init_with_weights

    ctx = load_context(spec)
    fixed = {k: v for k, v in arrays.items() if k not in (token, "dec_out")}
    n = len(next(iter(fixed.values())))
    steps = steps or arrays[token].shape[1]
    dec = Decoder.build(ctx.spec, net_state("TEST", ctx.solver, ctx.spec), n * beams,
                        token=token, scores=scores)
    dec.set_inputs({k: np.repeat(np.asarray(v), beams, axis=0) for k, v in fixed.items()
                    if k in dec.net.plan.inputs})
    params, state = init_with_weights(dec.net, weights, None, rng=jax.random.PRNGKey(0))
    prime = np.full((n, 1), END, np.int32)
    if beams == 1:
        return greedy(dec, params, state, prime, steps, end=END)
    return beam_search(dec, params, state, prime, steps, beams, end=END)[0]


def exact_match(decoded: np.ndarray, dec_out: np.ndarray) -> float:
    """Fraction of samples whose decoded sequence (up to and including "$") equals the target."""
    hits = 0
    for got, want in zip(decoded, dec_out):
        k = int(np.sum(want != IGNORE))
        hits += bool(np.array_equal(got[:k], want[:k]))
    return hits / len(decoded)
