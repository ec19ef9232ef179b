"""The sequence layers' plan-time facts: parameter counts against the published formulas
(REFERENCE §2), blob roles and order, the carried state, shape errors and warnings with their
messages, the orthogonal filler, and that the lowering's size (and compile time) does not grow
with the sequence length (one lax.scan, not an unrolled loop)."""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MODELS, errors_of, jit_fast, netc, warnings_of

from netc.compiler.fillers import orthogonal
from netc.compiler.lower import lower


def seq_net(kind: str, x=(5, "N"), feat=128, param=None, extra_inputs=(), bottoms=("x", "cont"),
            tops=("y",)) -> str:
    """A spec: Input x (T×N×feat, or the dims given) and cont T×N, then one recurrent layer."""
    dims = list(x) + ([feat] if feat else [])
    tn = list(x[:2])
    shapes = [{"dim": [-1 if d == "N" else d for d in dims]},
              {"dim": [-1 if d == "N" else d for d in tn]}]
    names = ["x", "cont"]
    for name, shape in extra_inputs:
        names.append(name)
        shapes.append({"dim": [-1 if d == "N" else d for d in shape]})
    layers = [{"name": "in", "type": "Input", "top": names, "input_param": {"shape": shapes}},
              {"name": "rec", "type": kind, "bottom": list(bottoms), "top": list(tops),
               "recurrent_param": {"num_output": 256, **(param or {})}}]
    return "name: t\nlayers:\n" + "".join(f"  - {json.dumps(layer)}\n" for layer in layers)


def planned(check_spec, text: str, phase="TRAIN"):
    spec, plans, diags = check_spec(text, phase=phase)
    assert not [d for d in diags if ": error: " in d], diags
    p = plans[phase]
    return p, {pl.name: pl for pl in p.layers}


# --- parameter counts (REFERENCE §2, i = 128, h = 256) -------------------------------------------

LSTM_ONE = 4 * (256 * (128 + 256) + 256)  # Keras / Caffe: one bias


@pytest.mark.parametrize("kind,param,want", [
    ("LSTM", {}, 394_240),  # Keras 4·(h·(i+h) + h); PyTorch's two biases would be 395,264
    ("GRU", {}, 296_448),  # reset_after: 3·(h·(i+h) + 2h), PyTorch and Keras
    ("GRU", {"reset_after": False}, 295_680),  # Keras reset_before: 3·(h·(i+h) + h)
    ("RNN", {"output_layer": False}, 256 * (128 + 256) + 256),  # h(i+h) + h: one bias (98,560)
    ("RNN", {}, 256 * (128 + 256) + 256 + 256 * 256 + 256),  # + Caffe's W_ho, b_o (164,352)
    # stacked: layer 1 reads 256 (or 512 from two directions, concatenated)
    ("LSTM", {"num_layers": 2}, LSTM_ONE + 4 * (256 * 512 + 256)),
    ("LSTM", {"num_layers": 2, "bidirectional": True},
     2 * LSTM_ONE + 2 * 4 * (256 * (512 + 256) + 256)),
    ("LSTM", {"num_layers": 2, "bidirectional": True, "merge_mode": "SUM"},
     2 * LSTM_ONE + 2 * 4 * (256 * (256 + 256) + 256)),
])
def test_parameter_counts_follow_the_published_formulas(check_spec, kind, param, want):
    p, _ = planned(check_spec, seq_net(kind, param=param))
    assert p.param_counts() == (want, 0)


def test_roles_and_order_are_caffes_then_the_suffixes(check_spec):
    _, layers = planned(check_spec, seq_net(
        "LSTM", x=(5, 2), param={"num_layers": 2, "bidirectional": True},
        extra_inputs=[("xs", (2, 7))], bottoms=("x", "cont", "xs")))
    params = layers["rec"].params
    assert {r: d.shape for r, d in params.items()} == {
        "W_xc": (1024, 128), "b_c": (1024,), "W_xc_static": (1024, 7), "W_hc": (1024, 256),
        "W_xc_reverse": (1024, 128), "b_c_reverse": (1024,), "W_xc_static_reverse": (1024, 7),
        "W_hc_reverse": (1024, 256),
        "W_xc_l1": (1024, 512), "b_c_l1": (1024,), "W_hc_l1": (1024, 256),
        "W_xc_l1_reverse": (1024, 512), "b_c_l1_reverse": (1024,), "W_hc_l1_reverse": (1024, 256),
        "carry_h": (4, 2, 256), "carry_c": (4, 2, 256)}
    assert list(params) == list({r: 0 for r in params})  # (dict order is the declaration order)
    _, layers = planned(check_spec, seq_net("GRU", x=(5, 2), param={"output_layer": True}))
    assert list(layers["rec"].params) == ["W_xg", "b_g", "W_hg", "b_hg", "carry_h"]
    _, layers = planned(check_spec, seq_net("RNN", x=(5, 2)))
    assert list(layers["rec"].params) == ["W_xh", "b_h", "W_hh", "W_ho", "b_o", "carry_h"]


def test_imdb_lstm_keras_reports_the_published_count():
    r = netc("check", MODELS / "imdb_lstm_keras.yaml", "--format", "json")
    assert r.returncode == 0, r.stderr
    (doc,) = json.loads(r.stdout)["specs"]
    assert doc["params"] == {"trainable": 2_691_713, "non_trainable": 0}
    layers = {layer["name"]: layer for layer in doc["layers"]}
    assert layers["embedding"]["params"] == 2_560_000
    assert layers["lstm"]["params"] == 131_584
    assert layers["lstm"]["tops"] == {"lstm": [32, 128]}
    assert layers["lstm"]["macs"] == 80 * 4 * 128 * (128 + 128)
    assert layers["lstm"]["detail"] == "LSTM 128, no cont, batch first, last step"


# --- shapes, MACs, describe ---------------------------------------------------------------------


def test_shapes_time_major_batch_first_last_and_states(check_spec):
    _, layers = planned(check_spec, seq_net(
        "LSTM", x=(5, "N"), feat=None, param={"num_layers": 3, "bidirectional": True,
                                              "expose_hidden": True},
        extra_inputs=[("h0", (6, "N", 256)), ("c0", (6, "N", 256))],
        bottoms=("x", "cont", "h0", "c0"), tops=("y", "hT", "cT")))
    rec = layers["rec"]
    assert rec.top_shapes == [(5, "N", 512), (6, "N", 256), (6, "N", 256)]
    assert rec.bottom_shapes[0] == (5, "N")  # x T×N: one feature per step
    assert rec.params["W_xc"].shape == (1024, 1)
    assert not any(d.carry for d in rec.params.values())  # expose_hidden: the caller holds it
    assert rec.unit.describe() == "LSTM 256, 3 layers, bidirectional concat, exposes hidden"
    # batch_first, trailing axes flattened, LAST
    _, layers = planned(check_spec, seq_net(
        "GRU", x=("N", 7, 2, 3), feat=None,
        param={"batch_first": True, "output": "LAST", "sequence_input": "MASK"}))
    rec = layers["rec"]
    assert rec.top_shapes == [("N", 256)]
    assert rec.params["W_xg"].shape == (768, 6)
    assert rec.macs == 7 * 768 * (6 + 256)
    assert rec.unit.describe() == "GRU 256, reset after, masked, batch first, last step"


def test_carried_state_is_in_the_state_tree_and_not_counted(check_spec):
    p, layers = planned(check_spec, seq_net("LSTM", x=(5, 3), feat=4,
                                            param={"num_output": 6, "num_layers": 2}))
    rec = layers["rec"]
    carry = {r: d for r, d in rec.params.items() if d.carry}
    assert {r: d.shape for r, d in carry.items()} == {"carry_h": (2, 3, 6), "carry_c": (2, 3, 6)}
    assert all(not d.learned for d in carry.values())
    learned = sum(d.count for d in rec.params.values() if d.learned)
    assert p.param_counts() == (learned, 0)  # the carried state is no parameter
    assert rec.unit.describe() == "LSTM 6, 2 layers, carries state"
    params, state = lower(p).init(jax.random.PRNGKey(0))
    assert set(state["rec"]) == {"carry_h", "carry_c"}
    assert "carry_h" not in params["rec"]
    assert np.all(np.asarray(state["rec"]["carry_h"]) == 0)
    # the forward writes the final state back; the next batch reads it
    x = jnp.ones((5, 3, 4))
    blobs, new = lower(p).apply(params, state, {"x": x, "cont": jnp.ones((5, 3))})
    assert new["rec"]["carry_h"].shape == (2, 3, 6)
    np.testing.assert_allclose(new["rec"]["carry_h"][1], blobs["y"][-1], rtol=1e-6)
    # no carried state: symbolic batch, MASK / LENGTHS / NONE, expose_hidden
    for param, x in [({}, (5, "N")), ({"sequence_input": "MASK"}, (5, 3))]:
        _, layers = planned(check_spec, seq_net("LSTM", x=x, param=param))
        assert not any(d.carry for d in layers["rec"].params.values())


# --- errors and warnings -------------------------------------------------------------------------


def test_wrong_cont_shape_names_the_bottom_and_both_shapes(check_spec):
    text = seq_net("LSTM", x=(5, 3), feat=4).replace('"dim": [5, 3]}', '"dim": [3, 5]}')
    assert errors_of(check_spec, text) == [
        "spec.yaml:4:53: error: layer 'rec' (LSTM): bottom: cont ('cont') must be T×N (one value "
        "per step and sequence) = 5×3 for x 5×3×4, got 3×5"]
    text = seq_net("LSTM", x=(3, 5), feat=4, param={"batch_first": True})
    assert [e.split("error: ")[1] for e in errors_of(check_spec, text.replace(
        '"dim": [3, 5]}', '"dim": [5, 3]}'))] == [
        "layer 'rec' (LSTM): bottom: cont ('cont') must be N×T (one value per step and sequence) "
        "= 3×5 for x 3×5×4, got 5×3"]


def test_wrong_lengths_h0_static_and_counts(check_spec):
    def err(text):
        return [e.split("error: ")[1] for e in errors_of(check_spec, text)]

    lengths = seq_net("GRU", x=(5, 3), feat=4, param={"sequence_input": "LENGTHS"},
                      extra_inputs=[("len", (5,))], bottoms=("x", "len"))
    assert err(lengths) == ["layer 'rec' (GRU): bottom: lengths ('len') must be N (one length per "
                            "sequence) = 3 for x 5×3×4, got 5"]
    h0 = seq_net("LSTM", x=(5, 3), feat=4, param={"expose_hidden": True, "num_layers": 2},
                 extra_inputs=[("h0", (1, 3, 256)), ("c0", (2, 3, 256))],
                 bottoms=("x", "cont", "h0", "c0"), tops=("y", "hT", "cT"))
    assert err(h0) == ["layer 'rec' (LSTM): bottom: h0 ('h0') must be (layers × directions)×N×H "
                       "= 2×3×256 for x 5×3×4, got 1×3×256"]
    static = seq_net("RNN", x=(5, 3), feat=4, extra_inputs=[("xs", (4, 2))],
                     bottoms=("x", "cont", "xs"))
    assert err(static) == ["layer 'rec' (RNN): bottom: x_static ('xs') must be N×… with N = 3 as "
                           "x 5×3×4, got 4×2"]
    tops = seq_net("LSTM", x=(5, 3), feat=4, param={"expose_hidden": True},
                   extra_inputs=[("h0", (1, 3, 256)), ("c0", (1, 3, 256))],
                   bottoms=("x", "cont", "h0", "c0"), tops=("y", "hT"))
    assert err(tops) == ["layer 'rec' (LSTM): top: produces 3 tops (y, hT, cT) with "
                         "expose_hidden, got 2"]
    few = seq_net("LSTM", x=(5, 3), feat=4, param={"expose_hidden": True},
                  extra_inputs=[("h0", (1, 3, 256))], bottoms=("x", "cont", "h0"),
                  tops=("y", "hT", "cT"))
    assert err(few) == ["layer 'rec' (LSTM): bottom: takes the bottoms (x, cont, h0, c0) or (x, "
                        "cont, x_static, h0, c0) with sequence_input CONT and expose_hidden, got 3"]
    on_time = seq_net("LSTM", x=("N", 3), feat=4)
    assert err(on_time) == ["layer 'rec' (LSTM): bottom: x ('x') is N×3×4: the symbolic batch "
                            "must be on its batch axis (T×N×… (time-major): axis 1), not on the "
                            "time axis 0 or a feature axis"]


def test_param_validation_messages(check_spec):
    def err(param):
        text = seq_net("LSTM", x=(5, 3), feat=4, param=param)
        return [e.split("error: ")[1] for e in errors_of(check_spec, text)]

    assert err({"num_output": 0}) == [
        "layer 'rec' (LSTM): recurrent_param.num_output: must be ≥ 1, got 0"]
    assert err({"dropout": 1.0}) == [
        "layer 'rec' (LSTM): recurrent_param.dropout: must be < 1.0, got 1"]
    assert err({"num_layers": 0}) == [
        "layer 'rec' (LSTM): recurrent_param.num_layers: must be ≥ 1, got 0"]
    assert err({"sequence_input": "PAD"}) == [
        "layer 'rec' (LSTM): recurrent_param.sequence_input: 'PAD' is not one of CONT, MASK, "
        "LENGTHS, NONE"]


def test_settings_for_another_type_warn(check_spec):
    def warns(kind, param):
        return [w.split("warning: ")[1]
                for w in warnings_of(check_spec, seq_net(kind, x=(5, 3), feat=4, param=param))]

    assert warns("LSTM", {"reset_after": False}) == [
        "layer 'rec' (LSTM): recurrent_param.reset_after: reset_after applies to GRU only; LSTM "
        "ignores it"]
    assert warns("GRU", {"output_layer": False}) == [
        "layer 'rec' (GRU): recurrent_param.output_layer: output_layer applies to RNN only; GRU "
        "ignores it"]
    assert warns("RNN", {"merge_mode": "SUM", "dropout": 0.3}) == [
        "layer 'rec' (RNN): recurrent_param.merge_mode: merge_mode applies to bidirectional "
        "layers only; ignored",
        "layer 'rec' (RNN): recurrent_param.dropout: dropout applies between stacked layers; with "
        "num_layers 1 it does nothing"]
    assert warns("LSTM", {"bptt_steps": 5}) == [
        "layer 'rec' (LSTM): recurrent_param.bptt_steps: bptt_steps 5 is not below the 5 steps of "
        "x: the gradient is never cut inside a batch"]
    assert warns("GRU", {"reset_after": False, "bidirectional": True, "merge_mode": "SUM",
                         "num_layers": 2, "dropout": 0.3, "bptt_steps": 2}) == []


def test_embed_shapes_params_and_label_fact(check_spec):
    text = """
name: t
layers:
  - {name: in, type: Input, top: ids, input_param: {shape: {dim: [7, -1]}}}
  - {name: e, type: Embed, bottom: ids, top: y, embed_param: {num_output: 5, input_dim: 11}}
"""
    p, layers = planned(check_spec, text)
    e = layers["e"]
    assert e.top_shapes == [(7, "N", 5)]
    assert {r: d.shape for r, d in e.params.items()} == {"weight": (11, 5), "bias": (5,)}
    assert e.macs == 0 and p.param_counts() == (60, 0)
    fact = e.unit.label_fact(e.bottom_shapes)
    assert (fact.bottom, fact.shape, fact.classes, fact.kind) == (0, (7,), 11, "class")
    assert e.unit.describe() == "11 ids → 5"
    assert [x.split("error: ")[1] for x in errors_of(check_spec, text.replace(
        "input_dim: 11", "input_dim: 0"))] == [
        "layer 'e' (Embed): embed_param.input_dim: must be ≥ 1, got 0"]


# --- the orthogonal filler -----------------------------------------------------------------------


def test_orthogonal_filler_blocks_and_gain(check_spec):
    key = jax.random.PRNGKey(3)
    w = np.asarray(orthogonal(key, (4 * 6, 6), gain=2.0), np.float64)
    for g in range(4):  # each gate's H×H block orthogonal, scaled by the gain
        b = w[6 * g:6 * (g + 1)]
        np.testing.assert_allclose(b @ b.T, 4 * np.eye(6), atol=1e-5)
    wide = np.asarray(orthogonal(key, (3, 7)), np.float64)  # rows orthonormal
    np.testing.assert_allclose(wide @ wide.T, np.eye(3), atol=1e-5)
    tall = np.asarray(orthogonal(key, (7, 3)), np.float64)  # columns orthonormal
    np.testing.assert_allclose(tall.T @ tall, np.eye(3), atol=1e-5)
    assert not np.allclose(w[:6], w[6:12])  # blocks are drawn independently
    # the layer gives recurrent_weight_filler to W_h* only
    p, layers = planned(check_spec, seq_net("GRU", x=(5, 2), feat=4, param={
        "num_output": 8, "weight_filler": {"type": "constant", "value": 0.5},
        "recurrent_weight_filler": {"type": "orthogonal"}}))
    params, _ = lower(p).init(jax.random.PRNGKey(0))
    wh = np.asarray(params["rec"]["W_hg"], np.float64)
    for g in range(3):
        np.testing.assert_allclose(wh[8 * g:8 * (g + 1)] @ wh[8 * g:8 * (g + 1)].T, np.eye(8),
                                   atol=1e-5)
    assert np.all(np.asarray(params["rec"]["W_xg"]) == 0.5)
    assert np.all(np.asarray(params["rec"]["b_g"]) == 0)  # unset: Caffe's constant 0


def test_orthogonal_filler_is_the_q_of_qr_and_no_lapack_call_in_a_program():
    """The Q of NumPy's float64 QR of the same Gaussian draw (R's diagonal made positive), per
    block, tall and wide: eagerly that QR itself; traced, Householder in XLA with no custom call
    in the program: jaxlib's CPU QR (LAPACK) deadlocked a jitted Net.init with several
    orthogonal blobs on a 2-core machine (fillers._householder_q)."""
    key = jax.random.PRNGKey(5)
    for shape, blocks, (m, n) in (((3 * 16, 16), 3, (16, 16)), ((40, 7), 1, (40, 7)),
                                  ((7, 40), 1, (40, 7)), ((2 * 9, 3, 3), 2, (9, 9))):
        a = np.asarray(jax.random.normal(key, (blocks * m * n,)), np.float64).reshape(blocks, m, n)
        want = []
        for blk in a:
            q, r = np.linalg.qr(blk)
            want.append(q * np.sign(np.diag(r)))
        want = np.stack(want)
        if shape[0] < int(np.prod(shape[1:])):  # wide: rows orthonormal
            want = want.transpose(0, 2, 1)
        got = np.asarray(orthogonal(key, shape), np.float64)  # eager: NumPy's QR
        np.testing.assert_allclose(got, want.reshape(shape), atol=1e-6)
        jitted = jax.jit(lambda k, s=shape: orthogonal(k, s))  # traced: Householder in XLA
        assert "custom_call" not in jitted.lower(key).as_text(), shape
        np.testing.assert_allclose(np.asarray(jitted(key), np.float64), want.reshape(shape),
                                   atol=2e-5)


# --- one scan: the program and its compile time do not grow with T -------------------------------


def _lowered_step(check_spec, T: int, N: int):
    p, _ = planned(check_spec, seq_net("LSTM", x=(T, N), feat=16, param={"num_output": 32}))
    net = lower(p)
    params, state = jax.eval_shape(net.init, jax.random.PRNGKey(0))  # shapes: no filler runs

    def loss(params, state, x, cont):
        return jnp.sum(net.apply(params, state, {"x": x, "cont": cont})[0]["y"])

    step = jax.jit(jax.value_and_grad(loss))
    f32 = jnp.float32
    return step.lower(params, state, jax.ShapeDtypeStruct((T, N, 16), f32),
                      jax.ShapeDtypeStruct((T, N), f32))


def test_lowering_and_compile_time_do_not_grow_with_t(check_spec):
    # the program: T=200 has as many operations as T=10 (an unrolled loop would have 20× more)
    small, large = (_lowered_step(check_spec, T, 4).as_text() for T in (10, 200))
    assert len(large) < 1.05 * len(small)
    # lowering + compiling, the smaller of two tries each (N varies so that no cache answers)
    times = {10: [], 200: []}
    for n, T in enumerate([10, 200, 10, 200]):
        start = time.perf_counter()
        _lowered_step(check_spec, T, 5 + n).compile()
        times[T].append(time.perf_counter() - start)
    assert min(times[200]) < 3 * min(times[10]), times


def test_weight_dropout_masks_the_recurrent_weights_in_train_only(check_spec):
    """weight_dropout (AWD-LSTM's DropConnect): in TRAIN one mask per batch zeroes entries of W_h
    for every step (their gradient is exactly 0, about the fraction p of them), the kept entries
    scaled by 1/(1 − p); TEST is the plain layer; W_x is never masked."""
    q = 0.4
    param = {"num_output": 16, "sequence_input": "NONE",
             "weight_filler": {"type": "uniform", "min": -0.3, "max": 0.3}}
    p, _ = planned(check_spec, seq_net("LSTM", x=(6, 3), feat=8,
                                       param=dict(param, weight_dropout=q), bottoms=("x",)))
    plain, _ = planned(check_spec, seq_net("LSTM", x=(6, 3), feat=8, param=param, bottoms=("x",)))
    net, ref = lower(p), lower(plain)
    params, state = jit_fast(net.init)(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 3, 8))
    inputs = {"x": x, "cont": jnp.ones((6, 3))}

    def loss(params, n, train, rng=None):
        return jnp.sum(n.apply(params, state, inputs, train=train, rng=rng)[0]["y"] ** 2)

    def run(params):  # every loss and gradient below in one compiled program
        rng = jax.random.PRNGKey(7)
        test = (loss(params, net, False), loss(params, ref, False))
        train, g = jax.value_and_grad(loss)(params, net, True, rng)
        # the plain layer run with W_h masked where the gradient is 0, the rest rescaled
        w_h = jnp.where(g["rec"]["W_hc"] != 0, params["rec"]["W_hc"] / (1 - q), 0)
        masked = dict(params, rec=dict(params["rec"], W_hc=w_h))
        g2 = jax.grad(loss)(params, net, True, jax.random.PRNGKey(8))  # another batch
        return test, (train, loss(masked, ref, True, rng)), g["rec"], g2["rec"]

    (test, ref_test), (train, ref_train), g, g2 = jit_fast(run)(params)
    # TEST: identical to the layer without weight_dropout
    assert test == pytest.approx(float(ref_test), rel=1e-6)
    # TRAIN: the gradient of a dropped W_h entry is exactly zero, W_x's never
    dropped = np.asarray(g["W_hc"]) == 0
    assert 0.3 < dropped.mean() < 0.5, dropped.mean()
    assert not (np.asarray(g["W_xc"]) == 0).any()
    # ... and the layer equals the plain one run with the masked, rescaled W_h
    assert train == pytest.approx(float(ref_train), rel=1e-5)
    # another batch (another rng) draws another mask
    assert ((np.asarray(g2["W_hc"]) == 0) != dropped).any()
