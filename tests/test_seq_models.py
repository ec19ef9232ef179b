"""The sequence models in models/ check clean with the figures they should have, and a text
source's vocabulary is checked against the layers that read its ids at `netc check` time."""

from __future__ import annotations

import json

from conftest import ROOT, jit_fast, netc


def _check_json(path, *args):
    r = netc("check", str(path), "--format", "json", *args)
    return r, json.loads(r.stdout)


def test_char_lstm_spec_counts():
    r, doc = _check_json(ROOT / "models" / "char_lstm_hamlet.yaml")
    assert r.returncode == 0, r.stderr
    rep = doc["specs"][0]
    # Embed 66×64 + LSTM layer 1 4·(256·(64+256) + 256) + layer 2 4·(256·512 + 256) + IP 256·66+66
    assert rep["params"]["trainable"] == 66 * 64 + 4 * (256 * 320 + 256) + 4 * (256 * 512 + 256) \
        + 256 * 66 + 66 == 875_202


def test_vocabulary_larger_than_the_embedding_is_a_check_error(tmp_path):
    spec = (ROOT / "models" / "char_lstm_hamlet.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.replace("input_dim: 66", "input_dim: 60")
                   .replace("num_output: 66, axis", "num_output: 65, axis"))
    r = netc("check", str(bad))
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if ": error: " in line]
    assert any("layer 'embed' (Embed): bottom: 'data' holds ids 0…65 (the 66 symbols of "
               "netc:hamlet), but the layer takes only 60 classes" in e for e in errors), errors
    assert any("layer 'loss' (SoftmaxWithLoss): bottom: 'label' holds ids 0…65" in e
               and "make it at least 66" in e for e in errors), errors
    assert all(e.startswith(f"{bad}:") for e in errors)  # FILE:LINE:COL


def test_seq2seq_and_caption_specs_plan(tmp_path):
    from netc.models import seq_tasks

    for task, spec in (("reverse", "seq2seq_reverse.yaml"), ("captions", "caption_digits.yaml")):
        seq_tasks.write(task, tmp_path / "data", n_train=32, n_test=8)
        (tmp_path / spec).write_text((ROOT / "models" / spec).read_text())
        r = netc("check", str(tmp_path / spec), "-q")
        assert r.returncode == 0, r.stderr


def test_export_of_a_carried_state_lstm_starts_each_call_from_zeros(tmp_path):
    """The carried state is a training stream's: the exported forward (symbolic batch, cont as
    an input) starts from zeros, and equals the net run on the same batch with no carry."""
    import jax
    import numpy as np

    import netc
    from netc.runtime.export import export_model
    from netc.runtime.exported import load_exported, run_exported

    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 20)
    spec = tmp_path / "lm.yaml"
    spec.write_text("""\
name: lm
layers:
- {name: text, type: Data, top: [data, label, cont],
   data_param: {source: "text:t.txt", batch_size: 4, seq_len: 8}}
- {name: embed, type: Embed, bottom: data, top: emb,
   embed_param: {input_dim: 11, num_output: 6, weight_filler: {type: gaussian, std: 1}}}
- {name: lstm, type: LSTM, bottom: [emb, cont], top: h,
   recurrent_param: {num_output: 5, weight_filler: {type: gaussian, std: 0.5}}}
- {name: out, type: InnerProduct, bottom: h, top: logits,
   inner_product_param: {num_output: 11, axis: 2, weight_filler: {type: xavier}}}
- {name: loss, type: SoftmaxWithLoss, bottom: [logits, label], top: loss, softmax_param: {axis: 2}}
""")
    model = netc.load(str(spec), phase="TEST")
    params, state = jit_fast(model.net.init)(jax.random.PRNGKey(2))  # one program, not eager
    assert state["lstm"]["carry_h"].shape == (1, 4, 5)
    state = {"lstm": {k: v + 1.0 for k, v in state["lstm"].items()}}  # a non-zero carry
    export_model(spec, {"params": params, "state": state}, tmp_path / "art")
    art = load_exported(tmp_path / "art")
    rng = np.random.default_rng(0)
    apply = jit_fast(lambda p, s, x: model.net.apply(p, s, x, outputs=["logits"]))
    for n in (3, 7):
        ids = rng.integers(0, 11, (8, n)).astype(np.float32)
        cont = np.ones((8, n), np.float32)
        got = run_exported(art, {"data": ids, "cont": cont})
        zero = {"lstm": {k: np.zeros((1, n, 5), np.float32) for k in state["lstm"]}}
        want, _ = apply(params, zero, {"data": ids.astype(np.int32), "cont": cont})
        np.testing.assert_allclose(np.asarray(got["logits"]), np.asarray(want["logits"]),
                                   rtol=1e-5, atol=1e-5)


def test_recurrent_layer_without_weight_filler_warns_once(tmp_path):
    spec = tmp_path / "nofill.yaml"
    spec.write_text("""\
name: nofill
layers:
- {name: data, type: Input, top: [x, label], input_param: {shape: [{dim: [5, 2, 3]}, {dim: [2]}]}}
- {name: lstm, type: LSTM, bottom: x, top: h,
   recurrent_param: {num_output: 4, num_layers: 2, bidirectional: true, sequence_input: NONE,
                     output: LAST}}
- {name: ip, type: InnerProduct, bottom: h, top: s,
   inner_product_param: {num_output: 2, weight_filler: {type: xavier}}}
- {name: loss, type: SoftmaxWithLoss, bottom: [s, label], top: loss}
""")
    r = netc("check", str(spec))
    warnings = [line for line in r.stderr.splitlines() if "weight_filler: not set" in line]
    assert len(warnings) == 1 and "layer 'lstm' (LSTM): recurrent_param.weight_filler" in warnings[0]


def test_memory_estimate_counts_what_the_recurrence_saves():
    import netc
    from netc.compiler.memory import estimate

    model = netc.load(str(ROOT / "models" / "char_lstm_hamlet.yaml"), phase="TRAIN")
    est = estimate(model.plan, "Adam")
    # 2 layers × T 100 × N 32 × H 256 × (2 × 4 gates + h and c), float32
    saved = 2 * 100 * 32 * 256 * (2 * 4 + 2) * 4
    tops = sum(4 * 100 * 32 * d for d in (1, 1, 1, 64, 256, 256, 66)) + 4  # data..logits, loss
    assert est.activations >= saved + tops
    assert est.forward < saved  # inference keeps none of it


# --- smaller, faster versions of the models' measured results (the full runs: the specs' headers)


def _train_and_decode(tmp_path, spec_name: str, arrays: dict, iterations: int, beams: int = 1):
    import numpy as np

    import netc
    from netc.models import seq_tasks

    spec = tmp_path / spec_name
    # the shipped spec; the test overrides only the solver: fewer iterations, and no TEST pass
    # at iteration 0 (the decoding below is the measure)
    text = (ROOT / "models" / spec_name).read_text()
    assert text.count("  test_interval: 500\n") == 1
    spec.write_text(text.replace("  test_interval: 500\n",
                                 "  test_interval: 500\n  test_initialization: false\n"))
    assert netc.train(str(spec), max_iter=iterations, out=str(tmp_path / "run"),
                      progress=False, tensorboard=False) == 0
    out = seq_tasks.decode(str(spec), str(tmp_path / "run"), arrays, beams=beams)
    assert out.shape == arrays["dec_in"].shape and np.isin(out, np.arange(-1, 20)).all()
    return seq_tasks.exact_match(out, arrays["dec_out"])


def test_seq2seq_reverse_learns_to_reverse(tmp_path):
    """models/seq2seq_reverse.yaml on strings of 3-5 digits: 150 iterations give most test
    strings exactly reversed by greedy decoding (measured 93% with random_seed 1, 92.5% with 2;
    100 iterations are too few: 41%, or 79.5% with warmup_iter 30; the full run: 99.9%)."""
    import numpy as np

    from netc.models import seq_tasks

    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "reverse_train.npz", **seq_tasks.reverse_digits(4000, 3, 5, seed=1))
    test = seq_tasks.reverse_digits(200, 3, 5, seed=2)
    np.savez(tmp_path / "data" / "reverse_test.npz", **test)
    assert _train_and_decode(tmp_path, "seq2seq_reverse.yaml", test, 150) >= 0.85


def test_caption_digits_learns_the_words(tmp_path):
    """models/caption_digits.yaml: 150 iterations caption most test digits exactly (measured
    on the first 300: 95.3% with the spec's random_seed 1, 95.7% with 2; 200 iterations: 95.7%;
    120 iterations: 93.0-94.7% over seeds 1-3; the full run: 97.2% on all 1,000)."""
    import numpy as np

    from netc.models import seq_tasks

    seq_tasks.write("captions", tmp_path / "data")
    z = np.load(tmp_path / "data" / "captions_test.npz")
    test = {k: z[k][:300] for k in z.files}
    assert _train_and_decode(tmp_path, "caption_digits.yaml", test, 150) >= 0.9


def test_sequence_model_figures(tmp_path):
    """The trainable counts of every sequence spec in models/ (tests/test_zoo.py SEQUENCE_MODELS),
    each computed from the layer formulas (Caffe's single LSTM bias; GRU reset_after: two)."""
    import importlib

    zoo = importlib.import_module("test_zoo")
    lstm = lambda i, h: 4 * (h * (i + h) + h)  # noqa: E731
    gru = lambda i, h: 3 * (h * (i + h) + 2 * h)  # noqa: E731
    want = {
        "char_lstm_hamlet.yaml": 66 * 64 + lstm(64, 256) + lstm(256, 256) + 256 * 66 + 66,
        "imdb_lstm_keras.yaml": 2_691_713,
        "seq2seq_reverse.yaml": 12 * 32 + 2 * gru(32, 128) + 256 * 128 + 128 + 12 * 32
        + gru(32, 128) + 128 * 12 + 12,
        "caption_digits.yaml": (20 * 25 + 20) + (50 * 20 * 25 + 50) + (800 * 128 + 128)
        + 17 * 32 + gru(32, 128) + 128 * 17 + 17,
        "sentiment_rotten_tomatoes.yaml": 18768 * 64 + 2 * lstm(64, 64) + 128 * 2 + 2,
    }
    assert set(want) == zoo.SEQUENCE_MODELS
    for name, count in want.items():
        folder = ROOT / "models"
        if "data/" in (folder / name).read_text():
            folder = tmp_path / name.replace(".yaml", "")
            folder.mkdir()
            (folder / name).write_text((ROOT / "models" / name).read_text())
            zoo._make_data(name, folder)
        r, doc = _check_json(folder / name)
        assert r.returncode == 0, r.stderr
        assert doc["specs"][0]["params"] == {"trainable": count, "non_trainable": 0}, name
