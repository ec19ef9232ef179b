"""The performance structure of the recurrent lowering (compiler/layers/recurrent.py): the LSTM
cell's hand-written VJP agrees with JAX's own, and a char-LSTM train step keeps its saved
pre-activations and their gradients in place (XLA's temp memory: without the in-place forward and
backward the same step needs 5.7 T×N×4H buffers' worth, with them 3.5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import netc
from netc.compiler.layers.recurrent import _lstm_cell

SPEC = """\
name: char_lstm_small
layers:
- {{name: data, type: Input, top: [data, label], input_param: {{shape: {{dim: [{t}, {n}]}}}}}}
- {{name: embed, type: Embed, bottom: data, top: emb,
   embed_param: {{input_dim: 65, num_output: 128, bias_term: false,
                 weight_filler: {{type: gaussian, std: 0.1}}}}}}
- {{name: lstm, type: LSTM, bottom: emb, top: h,
   recurrent_param: {{num_output: {h}, sequence_input: NONE, weight_filler: {{type: xavier}}}}}}
- {{name: out, type: InnerProduct, bottom: h, top: logits,
   inner_product_param: {{num_output: 65, axis: 2, weight_filler: {{type: xavier}}}}}}
- {{name: loss, type: SoftmaxWithLoss, bottom: [logits, label], top: loss,
   softmax_param: {{axis: 2}}}}
solver: {{type: Adam, base_lr: 0.002, lr_policy: fixed}}
"""


def _reference_cell(c, z):
    """The LSTM step as JAX differentiates it (gates i, f, o, g)."""
    H = c.shape[-1]
    i, f, o = (jax.nn.sigmoid(z[:, k * H : (k + 1) * H]) for k in range(3))
    c2 = f * c + i * jnp.tanh(z[:, 3 * H :])
    return o * jnp.tanh(c2), c2


def test_lstm_cell_vjp_matches_jax_autodiff():
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    c = jax.random.normal(k[0], (5, 7))
    z = 2 * jax.random.normal(k[1], (5, 28))
    cot = (jax.random.normal(k[2], (5, 7)), jax.random.normal(k[3], (5, 7)))
    out, vjp = jax.vjp(_lstm_cell(), c, z)
    want_out, want_vjp = jax.vjp(_reference_cell, c, z)
    for got, want in zip(out, want_out):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(vjp(cot), want_vjp(cot)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_char_lstm_train_step_keeps_its_buffers_in_place(tmp_path):
    t, n, h = 50, 16, 64
    path = tmp_path / "char_lstm.yaml"
    path.write_text(SPEC.format(t=t, n=n, h=h))
    model = netc.load(str(path), phase="TRAIN")
    params, state = jax.eval_shape(lambda: model.init(0))
    opt_state, step = model.train_step()
    inputs = {"data": np.zeros((t, n), np.int32), "label": np.zeros((t, n), np.int32)}
    compiled = step.lower(
        params, state, jax.eval_shape(lambda: opt_state), inputs, np.int32(0)
    ).compile()
    gates = t * n * 4 * h * 4  # bytes of one T×N×4H float32 buffer
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 4 * gates, f"temp {temp / gates:.2f} T×N×4H buffers"


LOOKUP_SPEC = """\
name: embed_lstm
layers:
- {name: data, type: Input, top: [data, label], input_param: {shape: [{dim: [3, 6]}, {dim: [3]}]}}
- {name: embed, type: Embed, bottom: data, top: emb,
   embed_param: {input_dim: %d, num_output: 5, weight_filler: {type: gaussian, std: 0.5},
                 bias_filler: {type: gaussian, std: 0.5}}}
- {name: lstm, type: LSTM, bottom: emb, top: h,%s
   recurrent_param: {num_output: 8, sequence_input: NONE, batch_first: true, bidirectional: true,
                     output: LAST, weight_filler: {type: gaussian, std: 0.5}}}
- {name: out, type: InnerProduct, bottom: h, top: logits, inner_product_param: {num_output: 4}}
- {name: loss, type: SoftmaxWithLoss, bottom: [logits, label], top: loss}
"""


def _loss_and_grads(model, params, state, inputs, run=True):
    def loss(p):
        return model.net.loss(p, state, inputs, train=True, outputs=model.net.sinks())[0]

    jaxpr = jax.make_jaxpr(loss)(params).jaxpr
    return (jax.jit(jax.value_and_grad(loss))(params) if run else None), jaxpr


def _projects_every_row(jaxpr, rows: int) -> bool:
    """Whether a dot_general (in the jaxpr or one nested in it) multiplies a rows×… operand
    (the T·N rows of every step)."""
    for e in jaxpr.eqns:
        if e.primitive.name == "dot_general" and e.invars[0].aval.shape[0] == rows:
            return True
        for v in e.params.values():
            inner = getattr(v, "jaxpr", v)
            if hasattr(inner, "eqns") and _projects_every_row(inner, rows):
                return True
    return False


def test_lstm_projects_its_embeddings_table(tmp_path, monkeypatch):
    """An LSTM reading an Embed's rows projects the Embed's table instead of every step's row
    (both directions, batch_first): the same loss and gradients as projecting every row; not
    where propagate_down stops the gradient into the Embed, nor from a table with more rows
    (40) than the batch has steps (18)."""
    from netc.compiler.layers import recurrent

    inputs = {
        "data": np.random.default_rng(0).integers(0, 11, (3, 6)).astype(np.int32),
        "label": np.array([0, 3, 1], np.int32),
    }
    for stop, vocab in ((False, 11), (True, 11), (False, 40)):
        path = tmp_path / f"net{stop}{vocab}.yaml"
        path.write_text(LOOKUP_SPEC % (vocab, " propagate_down: [false]," if stop else ""))
        every_row = stop or vocab > 18
        model = netc.load(str(path), phase="TRAIN")
        params, state = model.init(0)
        got, jaxpr = _loss_and_grads(model, params, state, inputs, run=not every_row)
        assert _projects_every_row(jaxpr, 18) == every_row
        if every_row:
            continue
        loss, grads = got
        with monkeypatch.context() as m:
            m.setattr(recurrent._Recurrent, "_input_lookup", lambda self, ctx: None)
            (want_loss, want), jaxpr = _loss_and_grads(model, params, state, inputs)
        assert _projects_every_row(jaxpr, 18)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
        for (where, got), ref in zip(
            jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(want)
        ):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=str(where))
