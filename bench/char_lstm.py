"""Char-LSTM training step, side by side: netc (a spec: Embed 65→128, LSTM 256, InnerProduct 65
over axis 2, SoftmaxWithLoss) vs the best hand-written JAX program we have (jax_step: the tricks
of netc's lowering written out by hand) vs the plain hand-written JAX scan differentiated by JAX
(jax-scan) vs PyTorch eager nn.LSTM, on the same work: batch 32 of 100-step sequences
(time-major), Adam at 2e-3. REFERENCE §4's anchors on this kind of machine: PyTorch 543
sequences/s, JAX lax.scan 319.

Measured here (2 CPUs shared with other jobs; medians of 20 steps × 5 repeats), after netc and
jax took the input projection from the embedding table (2026-12-01, load average 4.6-6.4, two
runs): netc 197.0 / 185.6, jax 188.2 / 212.3, jax-scan 124.0 / 123.9 sequences/s, PyTorch 14.6 /
17.9 (its OpenMP threads collapse under load, so no PyTorch ratio from these). One thread each
(XLA_FLAGS=--xla_cpu_multi_thread_eigen=false, its thread count not checked; torch 1 thread;
10 steps × 5 repeats, load 5.0 → 2.9): netc 296.1, jax 251.3, PyTorch 173.8 (netc 1.70× per
core). Before the table lookup, the last quiet run (bench/results/cpu/RESULTS.md, load 0.6):
netc 421.3, jax 424.6, PyTorch 492.1.

Run: python bench/char_lstm.py [--batch 32] [--steps 20] [--repeats 3] [--hidden 256]
       [--only netc,jax,jax-scan,torch]
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


def netc_step(t: int, n: int, h: int, precision: str = "float32"):
    return netc_train_run(spec_text(t, n, h), precision=precision)


def jax_step(t: int, n: int, h: int, lstm=None, gates=None):
    """The best hand-written JAX char-LSTM we have, with the tricks netc's lowering uses written
    out (hand_lstm, table_gates): the input projection of the embedding's 65 rows once
    (emb·W_xᵀ) and each step's rows looked up from it, the bias added inside the step; one
    (N×H)·(H×4H) matmul per step; a custom VJP whose backward scan carries the state's gradient
    alone and writes dz over the saved z in place; W_h's gradient as one T·N-deep matmul."""
    import jax
    import jax.numpy as jnp
    import optax

    k = jax.random.split(jax.random.key(0), 4)
    params = {
        "emb": 0.1 * jax.random.normal(k[0], (V, E)),
        "wx": jax.random.uniform(k[1], (4 * h, E), minval=-0.05, maxval=0.05),
        "wh": jax.random.uniform(k[2], (4 * h, h), minval=-0.05, maxval=0.05),
        "b": jnp.zeros(4 * h),
        "wo": jax.random.uniform(k[3], (h, V), minval=-0.05, maxval=0.05),
        "bo": jnp.zeros(V),
    }
    lstm, gates = lstm or hand_lstm(), gates or table_gates

    def loss_fn(p, x, y):
        hs = lstm(gates(p["emb"], p["wx"], x), p["b"], p["wh"])
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


def jax_scan_step(t: int, n: int, h: int):
    """The plain hand-written JAX char-LSTM (what bench/ had before jax_step): the same network,
    the input projection outside the scan, one fused gate matmul per step, differentiated by
    JAX itself."""
    import jax
    import jax.numpy as jnp

    def lstm(gx, b, wh):
        gx = gx + b

        def cell(carry, gx_t):
            hh, c = carry
            g = gx_t + hh @ wh.T
            i, f, o, u = jnp.split(g, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(u)
            hh = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (hh, c), hh

        z = jnp.zeros((gx.shape[1], wh.shape[1]), gx.dtype)
        return jax.lax.scan(cell, (z, z), gx)[1]

    return jax_step(t, n, h, lstm=lstm, gates=lambda emb, wx, x: emb[x] @ wx.T)


def weight_grad(x, dz):
    """dzᵀ·x for x K×I, dz K×G (K = T·N) as (xᵀ·dz)ᵀ with the smaller xᵀ laid out first: XLA's
    YNNPACK matmul takes it; dzᵀ·x as written runs through Eigen or transposes the larger dz."""
    import jax

    xt = jax.lax.optimization_barrier(x.T)
    return jax.lax.optimization_barrier(xt @ dz).T


def table_gates(emb, wx, x):
    """Every step's input projection emb[x]·W_xᵀ (T×N×4H) as rows of the projected embedding
    table emb·W_xᵀ (65×4H): no T·N-row matmul forward, nor for W_x's and the embedding's
    gradients (JAX's VJP of the lookup sums dz per id, then two 65-row matmuls)."""
    import jax.numpy as jnp

    return jnp.take(emb @ wx.T, x, axis=0)


def _cell(c, z):
    """The LSTM's elementwise step from z (gates i, f, o, g): (h, c', what its VJP reads)."""
    import jax
    import jax.numpy as jnp

    H = c.shape[-1]
    sig, g = jax.nn.sigmoid(z[:, :3 * H]), jnp.tanh(z[:, 3 * H:])
    c2 = sig[:, H:2 * H] * c + sig[:, :H] * g
    tc = jnp.tanh(c2)
    return sig[:, 2 * H:] * tc, c2, (sig, g, tc)


def _cell_vjp(c, sig, g, tc, dh, dc):
    """(dc_prev, dz): the gate gradients joined by one concatenation."""
    import jax.numpy as jnp

    H = c.shape[-1]
    dc = dc + dh * sig[:, 2 * H:] * (1 - tc * tc)
    dsig = jnp.concatenate([dc * g, dc * c, dh * tc], axis=-1) * sig * (1 - sig)
    return dc * sig[:, H:2 * H], jnp.concatenate([dsig, dc * sig[:, :H] * (1 - g * g)], axis=-1)


def hand_lstm():
    """lstm(gx, b, wh) → T×N×H: the recurrence over gx (T×N×4H), zero initial state."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    def forward(gx, b, wh):  # (final carry, (h_{t-1}, c_{t-1}, h_t) stacked), z over gx
        zero = jnp.zeros((gx.shape[1], wh.shape[1]), gx.dtype)

        def body(state, t):
            hh, c, buf = state
            buf = lax.dynamic_update_index_in_dim(
                buf, (lax.dynamic_index_in_dim(buf, t, keepdims=False) + b) + hh @ wh.T, t, 0)
            h2, c2, _ = _cell(c, lax.dynamic_index_in_dim(buf, t, keepdims=False))
            return (h2, c2, buf), (hh, c, h2)

        return lax.scan(body, (zero, zero, gx), jnp.arange(gx.shape[0]))

    @jax.custom_vjp
    def lstm(gx, b, wh):
        return forward(gx, b, wh)[1][2]

    def fwd(gx, b, wh):
        (_, _, zs), (hs, cs, ys) = forward(gx, b, wh)
        return ys, (zs, hs, cs, wh)

    def bwd(res, dys):
        zs, hs, cs, wh = res

        def body(state, xs):
            dh, dc, buf = state
            t, dy, c = xs
            _, _, (sig, g, tc) = _cell(c, lax.dynamic_index_in_dim(buf, t, keepdims=False))
            dc, dz = _cell_vjp(c, sig, g, tc, dh + dy, dc)
            return (dz @ wh, dc, lax.dynamic_update_index_in_dim(buf, dz, t, 0)), None

        zero = jnp.zeros_like(hs[0])
        (_, _, dzs), _ = lax.scan(body, (zero, zero, zs), (jnp.arange(zs.shape[0]), dys, cs),
                                  reverse=True)
        dz2 = dzs.reshape(-1, dzs.shape[-1])
        return dzs, dz2.sum(0), weight_grad(hs.reshape(-1, hs.shape[-1]), dz2)

    lstm.defvjp(fwd, bwd)
    return lstm


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
    ap.add_argument("--only", default="netc,jax,jax-scan,torch")
    args = ap.parse_args()
    torch = torch_threads()
    rng = np.random.default_rng(0)
    x = rng.integers(0, V, (args.seq, args.batch)).astype(np.int32)
    y = rng.integers(0, V, (args.seq, args.batch)).astype(np.int32)
    makers = {"netc": netc_step, "jax": jax_step, "jax-scan": jax_scan_step, "torch": torch_step}
    chosen = {n: (lambda m=makers[n]: m(args.seq, args.batch, args.hidden))
              for n in args.only.split(",") if not (n == "torch" and torch is None)}
    results = compare(chosen, (x, y), args.batch, args.steps, args.repeats)
    report(f"char-LSTM train step (embed {V}→{E}, LSTM {args.hidden}, T {args.seq}, batch "
           f"{args.batch}, Adam), {args.steps} steps × {args.repeats} repeats", results,
           unit="sequences/s")


if __name__ == "__main__":
    main()
