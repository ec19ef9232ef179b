"""Char-LSTM training step, side by side: netc (a spec: Embed 65→128, LSTM 256, InnerProduct 65
over axis 2, SoftmaxWithLoss) vs a hand-written JAX program (lax.scan, input projection hoisted out
of the scan, one fused gate matmul per step) vs PyTorch eager nn.LSTM, on the same work: batch 32
of 100-step sequences (time-major), Adam at 2e-3. REFERENCE §4's anchors on this kind of machine:
PyTorch 543 sequences/s, JAX lax.scan 319.

Run: python bench/char_lstm.py [--batch 32] [--steps 20] [--repeats 3] [--hidden 256]
Prints sequences/s (medians of alternating repeats) and ratios. Not a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from harness import compare, netc_train_run, report, torch_threads  # noqa: E402

V, E = 65, 128

SPEC = """\
name: char_lstm_t{t}
layers:
- {{name: data, type: Input, top: [data, label{cont_top}], input_param: {{shape: {{dim: [{t}, {n}]}}}}}}
- name: embed
  type: Embed
  bottom: data
  top: emb
  embed_param: {{input_dim: {v}, num_output: {e}, bias_term: false, weight_filler: {{type: gaussian, std: 0.1}}}}
- name: lstm
  type: LSTM
  bottom: {lstm_bottom}
  top: h
  recurrent_param: {{num_output: {h}, sequence_input: {seq}, weight_filler: {{type: xavier}},
                    recurrent_weight_filler: {{type: orthogonal}}}}
- name: out
  type: InnerProduct
  bottom: h
  top: logits
  inner_product_param: {{num_output: {v}, axis: 2, weight_filler: {{type: xavier}}}}
- name: loss
  type: SoftmaxWithLoss
  bottom: [logits, label]
  top: loss
  softmax_param: {{axis: 2}}
solver: {{type: Adam, base_lr: 0.002, lr_policy: fixed, momentum: 0.9, momentum2: 0.999}}
"""


def spec_text(t: int, n: int, h: int = 256, cont: bool = False) -> str:
    """The char-LSTM spec at T×N: plain sequences (`cont` False, the same work as PyTorch's
    nn.LSTM), or Caffe's form with a cont input and the state carried between batches."""
    return SPEC.format(t=t, n=n, v=V, e=E, h=h, cont_top=", cont" if cont else "",
                       lstm_bottom="[emb, cont]" if cont else "emb",
                       seq="CONT" if cont else "NONE")


def netc_step(t: int, n: int, h: int):
    return netc_train_run(spec_text(t, n, h))


def jax_step(t: int, n: int, h: int):
    """The best hand-written JAX char-LSTM we have: input projection for all steps as one matmul
    outside the scan, one (N×H)·(H×4H) matmul per step."""
    import jax
    import jax.numpy as jnp
    import optax

    k = jax.random.split(jax.random.key(0), 4)
    params = {
        "emb": 0.1 * jax.random.normal(k[0], (V, E)),
        "wx": jax.random.uniform(k[1], (E, 4 * h), minval=-0.05, maxval=0.05),
        "wh": jax.random.uniform(k[2], (h, 4 * h), minval=-0.05, maxval=0.05),
        "b": jnp.zeros(4 * h),
        "wo": jax.random.uniform(k[3], (h, V), minval=-0.05, maxval=0.05),
        "bo": jnp.zeros(V),
    }

    def loss_fn(p, x, y):
        xs = p["emb"][x] @ p["wx"] + p["b"]  # T×N×4H, outside the scan

        def cell(carry, gx):
            hh, c = carry
            g = gx + hh @ p["wh"]
            i, f, o, u = jnp.split(g, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(u)
            hh = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (hh, c), hh

        z = jnp.zeros((x.shape[1], h))
        _, hs = jax.lax.scan(cell, (z, z), xs)
        logits = hs @ p["wo"] + p["bo"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    opt = optax.adam(2e-3)
    opt_state = opt.init(params)

    @jax.jit
    def step(p, s, x, y):
        g = jax.grad(loss_fn)(p, x, y)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    carry = [params, opt_state]

    def run(x, y):
        carry[0], carry[1] = step(carry[0], carry[1], x, y)
        return carry[0]

    return run


def torch_step(t: int, n: int, h: int):
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, E)
            self.lstm = nn.LSTM(E, h)
            self.out = nn.Linear(h, V)

        def forward(self, x):
            return self.out(self.lstm(self.emb(x))[0])

    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    lossf = nn.CrossEntropyLoss()

    def run(x, y):
        xt, yt = torch.from_numpy(np.asarray(x)).long(), torch.from_numpy(np.asarray(y)).long()
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(xt).reshape(-1, V), yt.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="netc,jax,torch")
    args = ap.parse_args()
    torch = torch_threads()
    rng = np.random.default_rng(0)
    x = rng.integers(0, V, (args.seq, args.batch)).astype(np.int32)
    y = rng.integers(0, V, (args.seq, args.batch)).astype(np.int32)
    makers = {"netc": netc_step, "jax": jax_step, "torch": torch_step}
    chosen = {n: (lambda m=makers[n]: m(args.seq, args.batch, args.hidden))
              for n in args.only.split(",") if not (n == "torch" and torch is None)}
    results = compare(chosen, (x, y), args.batch, args.steps, args.repeats)
    report(f"char-LSTM train step (embed {V}→{E}, LSTM {args.hidden}, T {args.seq}, batch "
           f"{args.batch}, Adam), {args.steps} steps × {args.repeats} repeats", results,
           unit="sequences/s")


if __name__ == "__main__":
    main()
