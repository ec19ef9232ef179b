"""The hand-written JAX programs netc is measured against: what a skilled user writes instead of a
spec. NHWC activations and HWIO kernels (XLA CPU's preferred convolution layout), lax.conv, and
depthwise convolutions as k·k shifted, strided slices times per-channel weights (XLA CPU's grouped
convolution is several times slower: bench/conv_variants.py depthwise), BatchNorm in training mode with running statistics
updated as the spec's nets do, optax SGD with momentum 0.9 and weight decay 5e-4, one jitted step
with donated buffers.

Networks: CIFAR ResNet-18 (3×3/1 stem, no max pool, 10 classes) and torchvision's MobileNet v2
(any input size, dropout 0.2 before the classifier).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

DN = ("NHWC", "HWIO", "NHWC")
EPS, MOMENTUM = 1e-5, 0.1


class Builder:
    """Collects parameters (trainable) and BatchNorm statistics while a net is declared."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)  # numpy: eager JAX would compile per shape
        self.params: dict = {}
        self.stats: dict = {}

    def conv(self, name: str, k: int, cin: int, cout: int, groups: int = 1) -> None:
        fan_in = k * k * cin // groups
        w = self.rng.standard_normal((k, k, cin // groups, cout), np.float32) * (2 / fan_in) ** .5
        self.params[name] = jnp.asarray(w)

    def bn(self, name: str, c: int) -> None:
        one, zero = np.ones(c, np.float32), np.zeros(c, np.float32)
        self.params[name] = {"g": jnp.asarray(one), "b": jnp.asarray(zero)}
        self.stats[name] = {"mean": jnp.asarray(zero), "var": jnp.asarray(one)}

    def fc(self, name: str, cin: int, cout: int) -> None:
        w = self.rng.standard_normal((cin, cout), np.float32) * (1 / cin) ** .5
        self.params[name] = {"w": jnp.asarray(w), "b": jnp.asarray(np.zeros(cout, np.float32))}


def conv(x, w, stride: int = 1, groups: int = 1):
    k = w.shape[0]
    pad = ((k - 1) // 2, (k - 1) // 2)
    return lax.conv_general_dilated(x, w, (stride, stride), (pad, pad), dimension_numbers=DN,
                                    feature_group_count=groups)


def depthwise(x, w, stride: int = 1):
    """groups == channels (multiplier 1), NHWC: Σ over the k·k taps of a shifted, strided slice
    of the padded input times that tap's per-channel weights."""
    k = w.shape[0]
    pad = (k - 1) // 2
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n, h, wd, c = x.shape
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    y = None
    for i in range(k):
        for j in range(k):
            tap = lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * stride + 1,
                                               j + (wo - 1) * stride + 1, c), (1, stride, stride, 1))
            y = tap * w[i, j, 0] if y is None else y + tap * w[i, j, 0]
    return y


def bn(x, p, s, new_stats: dict, name: str):
    mean = x.mean((0, 1, 2))
    var = x.var((0, 1, 2))
    n = x.size // x.shape[-1]
    new_stats[name] = {"mean": (1 - MOMENTUM) * s["mean"] + MOMENTUM * mean,
                       "var": (1 - MOMENTUM) * s["var"] + MOMENTUM * var * n / (n - 1)}
    return (x - mean) * lax.rsqrt(var + EPS) * p["g"] + p["b"]


# --- CIFAR ResNet-18 -----------------------------------------------------------------------

RESNET_STAGES = [(64, 1), (128, 2), (256, 2), (512, 2)]


def resnet18_blocks():
    cin = 64
    for i, (cout, stride) in enumerate(RESNET_STAGES):
        for j in range(2):
            s = stride if j == 0 else 1
            yield f"l{i}b{j}", cin, cout, s
            cin = cout


def resnet18_init(classes: int = 10, seed: int = 0) -> tuple[dict, dict]:
    b = Builder(seed)
    b.conv("stem", 3, 3, 64)
    b.bn("stem_bn", 64)
    for name, cin, cout, s in resnet18_blocks():
        b.conv(f"{name}c1", 3, cin, cout)
        b.bn(f"{name}n1", cout)
        b.conv(f"{name}c2", 3, cout, cout)
        b.bn(f"{name}n2", cout)
        if s != 1 or cin != cout:
            b.conv(f"{name}sc", 1, cin, cout)
            b.bn(f"{name}sn", cout)
    b.fc("fc", 512, classes)
    return b.params, b.stats


def resnet18_apply(p, s, x, key):
    del key
    ns: dict = {}
    x = jax.nn.relu(bn(conv(x, p["stem"]), p["stem_bn"], s["stem_bn"], ns, "stem_bn"))
    for name, _, _, stride in resnet18_blocks():
        y = conv(x, p[f"{name}c1"], stride)
        y = jax.nn.relu(bn(y, p[f"{name}n1"], s[f"{name}n1"], ns, f"{name}n1"))
        y = bn(conv(y, p[f"{name}c2"]), p[f"{name}n2"], s[f"{name}n2"], ns, f"{name}n2")
        if f"{name}sc" in p:
            x = bn(conv(x, p[f"{name}sc"], stride), p[f"{name}sn"], s[f"{name}sn"], ns,
                   f"{name}sn")
        x = jax.nn.relu(x + y)
    x = x.mean((1, 2))
    return x @ p["fc"]["w"] + p["fc"]["b"], ns


# --- MobileNet v2 (torchvision) ------------------------------------------------------------

MOBILENET_CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1)]


def mobilenet_blocks():
    cin = 32
    for i, (t, c, n, s) in enumerate(MOBILENET_CFG):
        for j in range(n):
            yield f"b{i}_{j}", cin, c, t, (s if j == 0 else 1)
            cin = c


def mobilenet_v2_init(classes: int = 1000, seed: int = 0) -> tuple[dict, dict]:
    b = Builder(seed)
    b.conv("stem", 3, 3, 32)
    b.bn("stem_bn", 32)
    for name, cin, cout, t, _ in mobilenet_blocks():
        hidden = cin * t
        if t != 1:
            b.conv(f"{name}e", 1, cin, hidden)
            b.bn(f"{name}en", hidden)
        b.conv(f"{name}d", 3, hidden, hidden, groups=hidden)
        b.bn(f"{name}dn", hidden)
        b.conv(f"{name}p", 1, hidden, cout)
        b.bn(f"{name}pn", cout)
    b.conv("head", 1, 320, 1280)
    b.bn("head_bn", 1280)
    b.fc("fc", 1280, classes)
    return b.params, b.stats


def mobilenet_v2_apply(p, s, x, key):
    ns: dict = {}

    def cbr(x, name, stride=1, groups=1, act=True):
        y = depthwise(x, p[name], stride) if groups > 1 else conv(x, p[name], stride)
        y = bn(y, p[name + "n"], s[name + "n"], ns, name + "n")
        return jnp.clip(y, 0, 6) if act else y

    x = jnp.clip(bn(conv(x, p["stem"], 2), p["stem_bn"], s["stem_bn"], ns, "stem_bn"), 0, 6)
    for name, cin, cout, t, stride in mobilenet_blocks():
        y = cbr(x, f"{name}e") if t != 1 else x
        y = cbr(y, f"{name}d", stride, groups=y.shape[-1])
        y = cbr(y, f"{name}p", act=False)
        x = x + y if stride == 1 and cin == cout else y
    x = jnp.clip(bn(conv(x, p["head"]), p["head_bn"], s["head_bn"], ns, "head_bn"), 0, 6)
    x = x.mean((1, 2))
    keep = jax.random.bernoulli(key, 0.8, x.shape)
    x = jnp.where(keep, x / 0.8, 0)
    return x @ p["fc"]["w"] + p["fc"]["b"], ns


# --- the train step ------------------------------------------------------------------------

def train_step(init, apply):
    """A `run(x, y)` doing one SGD step (NCHW numpy input, transposed inside the jitted step)."""
    params, stats = init()
    opt = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9))
    opt_state = jax.jit(opt.init)(params)

    def loss_fn(p, s, x, y, key):
        logits, ns = apply(p, s, x, key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), ns

    def step(p, s, o, x, y, key):
        x = jnp.transpose(x, (0, 2, 3, 1))
        (_, ns), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, x, y, key)
        u, o = opt.update(g, o, p)
        return optax.apply_updates(p, u), ns, o

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    carry = [params, stats, opt_state, jax.random.key(1)]

    def run(x, y):
        carry[3], sub = jax.random.split(carry[3])
        carry[0], carry[1], carry[2] = step(carry[0], carry[1], carry[2], x, y, sub)
        return carry[0]

    return run
