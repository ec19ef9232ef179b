"""Generation (runtime/generate.py, `netc sample`) and scheduled sampling (runtime/scheduled.py).

Beam search is checked against brute force on a Markov chain whose greedy path is not the most
likely sequence; the net-driven decoder against the whole-sequence forward (stepping a recurrent
net one token at a time, with its state threaded or fed back, must give the same scores as
running the sequence at once); scheduled sampling's mix against a hand computation."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from conftest import jit_fast, netc

from netc.runtime.generate import Decoder, beam_search, greedy, sample

# --- beam search on a fixed Markov chain ----------------------------------------------------


class ChainDecoder:
    """A stand-in decoder: the next-token log-probabilities depend only on the last token."""

    pairs: list = []

    def __init__(self, table: np.ndarray, rows: int):
        self.table, self.rows = table, rows

    def step_fn(self):
        def run(params, state, inputs):
            return np.log(self.table[inputs["tok"]]), {}, state

        return run

    def inputs(self, tokens, first, feedback):
        return {"tok": np.asarray(tokens).reshape(-1)}


def _chain(seed: int, v: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.random((v, v)) ** 3
    return t / t.sum(1, keepdims=True)


def _logp(table, start, seq):
    prev, total = start, 0.0
    for tok in seq:
        total += np.log(table[prev, tok])
        prev = tok
    return total


@pytest.mark.parametrize("seed", range(6))
def test_beam_search_with_every_beam_is_exhaustive_search(seed):
    table = _chain(seed)
    v, length = table.shape[0], 4
    # Paths that use the same transitions in another order tie exactly (seed 4: 2,2,0,2 and
    # 2,0,2,2), and which of them wins is float rounding; so the check is on the score: the beam's
    # sequence must be one of the most likely ones and report that log-probability.
    best = max(_logp(table, 0, s) for s in itertools.product(range(v), repeat=length))
    k = v ** (length - 1)  # enough beams to keep every prefix
    dec = ChainDecoder(table, k)
    out, score = beam_search(dec, None, {}, np.zeros((1, 1), np.int32), length, k)
    assert _logp(table, 0, out[0]) == pytest.approx(best, abs=1e-9)
    assert score[0] == pytest.approx(best)


def test_beam_one_is_greedy_and_wider_beams_never_score_worse():
    table = np.array([[0.0, 0.6, 0.4], [0.0, 0.5, 0.5], [0.0, 0.05, 0.95]]) + 1e-12
    table /= table.sum(1, keepdims=True)
    start = np.zeros((1, 1), np.int32)
    g = greedy(ChainDecoder(table, 1), None, {}, start, 3)
    b1, _ = beam_search(ChainDecoder(table, 1), None, {}, start, 3, 1)
    np.testing.assert_array_equal(g, b1)
    assert g[0].tolist() == [1, 1, 1]  # greedy takes 0.6 first ...
    b2, s2 = beam_search(ChainDecoder(table, 2), None, {}, start, 3, 2)
    assert b2[0].tolist() == [2, 2, 2]  # ... the better path starts with 0.4 (0.4·0.95² > 0.6·0.5²)
    assert s2[0] > _logp(table, 0, g[0])


def test_beam_search_stops_finished_beams_and_length_penalty_prefers_longer():
    # token 3 ends a sequence; from 0 it is likely, so short sequences score well
    table = np.array([[0.05, 0.45, 0.05, 0.45], [0.1, 0.8, 0.05, 0.05],
                      [0.3, 0.3, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25]])
    start = np.zeros((1, 1), np.int32)
    out, score = beam_search(ChainDecoder(table, 3), None, {}, start, 6, 3, end=3)
    assert out[0].tolist()[0] == 3 and set(out[0].tolist()) == {3}  # "end" at once, padded
    assert score[0] == pytest.approx(np.log(0.45))
    long, _ = beam_search(ChainDecoder(table, 3), None, {}, start, 6, 3, end=3,
                          length_penalty=1.0)
    assert long[0].tolist()[0] == 1  # per-token score favours staying on 1 (0.8) before ending


def test_sampling_temperature_zero_is_greedy_and_top_k_one_is_greedy():
    table = _chain(3)
    start = np.zeros((4, 1), np.int32)
    g = greedy(ChainDecoder(table, 4), None, {}, start, 5)
    s = sample(ChainDecoder(table, 4), None, {}, start, 5, temperature=1.0, top_k=1, seed=7)
    np.testing.assert_array_equal(g, s)
    a = sample(ChainDecoder(table, 4), None, {}, start, 5, seed=7)
    b = sample(ChainDecoder(table, 4), None, {}, start, 5, seed=7)
    np.testing.assert_array_equal(a, b)  # seeded


# --- a real recurrent net stepped one token at a time --------------------------------------

LM = """\
name: tiny_lm
layers:
- {{name: data, type: Input, top: [data, label, cont], input_param: {{shape: {{dim: [6, -1]}}}}}}
- {{name: embed, type: Embed, bottom: data, top: emb,
   embed_param: {{input_dim: 5, num_output: 4, weight_filler: {{type: gaussian, std: 1}}}}}}
- name: rnn
  type: {kind}
  bottom: [emb, cont]
  top: h
  recurrent_param: {{num_output: 7, num_layers: 2, weight_filler: {{type: gaussian, std: 0.5}},
                    bias_filler: {{type: gaussian, std: 0.5}}}}
- {{name: out, type: InnerProduct, bottom: h, top: logits,
   inner_product_param: {{num_output: 5, axis: 2, weight_filler: {{type: gaussian, std: 1}}}}}}
- {{name: loss, type: SoftmaxWithLoss, bottom: [logits, label], top: loss, softmax_param: {{axis: 2}}}}
"""


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_stepping_a_carried_state_net_equals_the_whole_sequence(tmp_path, kind):
    import jax

    import netc
    from netc.runtime.context import load_context, net_state

    path = tmp_path / "lm.yaml"
    path.write_text(LM.format(kind=kind))
    model = netc.load(str(path), phase="TRAIN")
    params, state = jit_fast(model.net.init)(jax.random.PRNGKey(1))  # one program, not eager
    tokens = np.random.default_rng(0).integers(0, 5, (6, 3)).astype(np.int32)
    cont = np.ones((6, 3), np.float32)
    cont[0] = 0
    whole, _ = jit_fast(lambda p, s, x: model.apply(p, s, x, outputs=["logits"]))(
        params, state, {"data": tokens, "label": tokens, "cont": cont})
    ctx = load_context(str(path))
    dec = Decoder.build(ctx.spec, net_state("TEST", ctx.solver, ctx.spec), 3, token="data",
                        scores="logits", cont="cont")
    assert dec.time_axis == 0
    step = dec.step_fn()
    st = jit_fast(dec.net.init)(jax.random.PRNGKey(0))[1]  # the generation net's own (zero) state
    got = []
    for t in range(6):
        scores, _, st = step(params, st, dec.inputs(tokens[t], t == 0, None))
        got.append(np.asarray(scores))
    np.testing.assert_allclose(np.stack(got), np.asarray(whole["logits"]), rtol=1e-5, atol=1e-5)


def test_seq2seq_decoder_feeds_back_exposed_state_and_runs_the_encoder_once(tmp_path):
    from netc.models import seq_tasks

    seq_tasks.write("reverse", tmp_path / "data", n_train=64, n_test=8)
    spec = tmp_path / "seq2seq_reverse.yaml"
    from pathlib import Path

    spec.write_text((Path(seq_tasks.__file__).parent / "seq2seq_reverse.yaml").read_text())
    import jax

    import netc

    model = netc.load(str(spec), phase="TEST", batch=None)
    params, state = jit_fast(model.net.init)(jax.random.PRNGKey(3))
    z = np.load(tmp_path / "data" / "reverse_test.npz")
    arrays = {k: z[k] for k in z.files}
    # teacher-forced scores of the whole target at once ...
    whole, _ = jit_fast(lambda p, s, x: model.apply(p, s, x, outputs=["logits"]))(
        params, state, {k: arrays[k][:8] for k in ("src", "src_len", "dec_in")})
    # ... equal the decoder's, stepping with the true previous tokens
    from netc.runtime.context import load_context, net_state

    ctx = load_context(str(spec))
    dec = Decoder.build(ctx.spec, net_state("TEST", ctx.solver, ctx.spec), 8, token="dec_in",
                        scores="logits")
    assert [(h0, hT) for h0, hT in dec.pairs] == [("h0", "hT")]
    dec.set_inputs({"src": arrays["src"][:8], "src_len": arrays["src_len"][:8]})
    step = dec.step_fn()
    feedback, st, got = None, state, []
    for t in range(arrays["dec_in"].shape[1]):
        scores, feedback, st = step(params, st, dec.inputs(arrays["dec_in"][:8, t], t == 0,
                                                            feedback))
        got.append(np.asarray(scores))
    np.testing.assert_allclose(np.stack(got, 1), np.asarray(whole["logits"]), rtol=1e-5,
                               atol=1e-5)
    # beam search with one beam is greedy decoding
    g = greedy(dec, params, st, np.full((8, 1), 1, np.int32), 9, end=1)
    b, _ = beam_search(dec, params, state, np.full((8, 1), 1, np.int32), 9, 1, end=1)
    np.testing.assert_array_equal(g, b)


# --- scheduled sampling --------------------------------------------------------------------


def _ss_model(tmp_path, schedule: str):
    import netc

    path = tmp_path / "ss.yaml"
    path.write_text(LM.format(kind="GRU").replace("name: tiny_lm", "name: ss") + f"""\
solver:
  base_lr: 0.1
  lr_policy: fixed
  scheduled_sampling: {{input: data, output: logits, {schedule}}}
""")
    return netc.load(str(path), phase="TRAIN")


@pytest.mark.parametrize("decode", ["ARGMAX", "SAMPLE"])
def test_scheduled_sampling_mix(tmp_path, decode):
    import jax

    from netc.runtime.scheduled import make_mixer

    model = _ss_model(tmp_path, f"schedule: linear, k: 1, c: 0.5, decode: {decode}")
    params, state = jit_fast(model.net.init)(jax.random.PRNGKey(0))
    ss = model.context.solver.scheduled_sampling
    mix = make_mixer(model.net, ss)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 5, (6, 3)).astype(np.int32)
    cont = np.ones((6, 3), np.float32)
    inputs = {"data": tokens, "label": tokens, "cont": cont}
    key = jax.random.PRNGKey(5)
    assert np.array_equal(mix(params, state, inputs, key, 0)["data"], tokens)  # eps = 1
    mixed = np.asarray(mix(params, state, inputs, key, 2)["data"])  # eps = 0: all predicted
    assert np.array_equal(mixed[0], tokens[0])  # the first step keeps its token
    logits = np.asarray(model.apply(params, state, inputs, outputs=["logits"], train=True,
                                    rng=jax.random.fold_in(jax.random.fold_in(key, 0x5353), 2)
                                    )[0]["logits"])
    if decode == "ARGMAX":
        np.testing.assert_array_equal(mixed[1:], logits.argmax(-1)[:-1])
    else:
        assert mixed.min() >= 0 and mixed.max() < 5 and not np.array_equal(mixed, tokens)


def test_scheduled_sampling_schedules_and_errors(tmp_path):
    from netc.runtime.errors import RunError
    from netc.runtime.scheduled import check_blobs
    from netc.spec.solver import ScheduledSampling

    inv = ScheduledSampling(input="a", output="b", schedule="inverse_sigmoid", k=10)
    assert inv.teacher_prob(0) == pytest.approx(10 / 11)
    assert inv.teacher_prob(100) == pytest.approx(10 / (10 + np.exp(10)))
    assert ScheduledSampling(input="a", output="b", schedule="exponential", k=0.99).teacher_prob(
        10) == pytest.approx(0.99 ** 10)
    lin = ScheduledSampling(input="a", output="b", schedule="linear", k=1, c=0.01, epsilon_min=0.2)
    assert [lin.teacher_prob(i) for i in (0, 50, 100)] == pytest.approx([1, 0.5, 0.2])
    import jax.numpy as jnp

    assert float(lin.teacher_prob(jnp.int32(50))) == pytest.approx(0.5)  # traced form agrees

    model = _ss_model(tmp_path, "k: 5")
    bad = ScheduledSampling(input="dat", output="logits")
    with pytest.raises(RunError, match="no blob 'dat'.*did you mean 'data'"):
        check_blobs(model.plan, bad)
    with pytest.raises(RunError, match="scores"):
        check_blobs(model.plan, ScheduledSampling(input="data", output="loss"))


def test_scheduled_sampling_trains_and_logs_teacher_prob(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abcab cabca bcabc " * 40)
    spec = tmp_path / "ss_train.yaml"
    spec.write_text("""\
name: ss_train
layers:
- {name: text, type: Data, top: [data, label, cont],
   data_param: {source: "text:t.txt", batch_size: 4, seq_len: 10}}
- {name: embed, type: Embed, bottom: data, top: emb,
   embed_param: {input_dim: 4, num_output: 8, weight_filler: {type: xavier}}}
- {name: lstm, type: LSTM, bottom: [emb, cont], top: h,
   recurrent_param: {num_output: 16, weight_filler: {type: xavier}}}
- {name: out, type: InnerProduct, bottom: h, top: logits,
   inner_product_param: {num_output: 4, axis: 2, weight_filler: {type: xavier}}}
- {name: loss, type: SoftmaxWithLoss, bottom: [logits, label], top: loss, softmax_param: {axis: 2}}
solver:
  type: Adam
  base_lr: 0.01
  lr_policy: fixed
  max_iter: 40
  display: 20
  scheduled_sampling: {input: data, output: logits, schedule: linear, k: 1, c: 0.02}
""")
    r = netc("train", str(spec), "--out", str(tmp_path / "run"), "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "teacher forcing p = 0.6" in r.stdout  # iteration 20: 1 − 0.02·20
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trains = [x for x in recs if x["event"] == "train"]
    assert [x["teacher_prob"] for x in trains] == pytest.approx([1.0, 0.6])
    # the vocabulary the run saved drives `netc sample`
    assert json.loads((tmp_path / "run" / "vocab.json").read_text())["symbols"] == [" ", "a", "b", "c"]
    r = netc("sample", str(spec), "--weights", str(tmp_path / "run"), "--prime", "ab",
             "--length", "12", "--temperature", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    line = r.stdout.rstrip("\n").splitlines()[-1]  # a sample may end in a space: keep it
    assert line.startswith("ab") and len(line) == 14 and set(line) <= set(" abc")
    r = netc("sample", str(spec), "--weights", str(tmp_path / "run"), "--prime", "ab",
             "--length", "12", "--beam", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip("\n").splitlines()[0] == line  # one beam is greedy
    r = netc("sample", str(spec), "--weights", str(tmp_path / "run"), "--prime", "xyz")
    assert r.returncode == 1 and "'x', 'y', 'z' not in the vocabulary of 4 symbols" in r.stderr
