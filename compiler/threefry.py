"""JAX's default PRNG (threefry2x32, "partitionable" bits) in NumPy, for drawing initial weights
without compiling XLA programs.

Net.init used to run each filler as a JAX program: `PRNGKey`, `fold_in` per blob and one uniform
draw per blob shape, each compiled by XLA (cold: most of a second for LeNet) or at least traced,
lowered and looked up in the compile cache (warm). Threefry is integer arithmetic, so NumPy
computes the very same bits, and JAX's uniform maps bits to floats with bit operations, one
multiply and one add, which float32 NumPy rounds as XLA does. tests/test_threefry.py checks every
function here against JAX bit for bit (keys, fold_in, uniform over sizes, ranges and seeds).

Only the configuration these mirror is served: `available()` is False when JAX is set to another
PRNG implementation or to the original (non-partitionable) threefry bits, and callers then use JAX.
"""

from __future__ import annotations

import numpy as np

__all__ = ["available", "fold_in", "key", "uniform"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA


def available() -> bool:
    """JAX draws with threefry2x32 and partitionable bits (its defaults), which this mirrors."""
    import jax

    return jax.config.jax_default_prng_impl == "threefry2x32" and bool(
        jax.config.jax_threefry_partitionable
    )


def _hash(k1: np.uint32, k2: np.uint32, x1: np.ndarray, x2: np.ndarray):
    """The Threefry-2x32 hash of the counter pairs (x1, x2) under the key (k1, k2): 20 rounds,
    in place (4x faster than building new arrays per operation)."""
    k1, k2 = int(k1), int(k2)
    ks = [np.uint32(k) for k in (k1, k2, k1 ^ k2 ^ _PARITY)]
    a = x1.astype(np.uint32) + ks[0]
    b = x2.astype(np.uint32) + ks[1]
    spill = np.empty_like(b)
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            a += b
            np.left_shift(b, np.uint32(r), out=spill)  # b rotated left by r
            b >>= np.uint32(32 - r)
            b |= spill
            b ^= a
        a += ks[(i + 1) % 3]
        b += np.uint32((int(ks[(i + 2) % 3]) + i + 1) & 0xFFFFFFFF)
    return a, b


def key(seed: int) -> np.ndarray:
    """jax.random.PRNGKey(seed)'s data for a seed in [0, 2**32): (0, seed) as uint32."""
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed {seed} is not in [0, 2**32)")
    return np.array([0, seed], np.uint32)


def fold_in(k: np.ndarray, data: int) -> np.ndarray:
    """jax.random.fold_in(k, data) for data in [0, 2**32): the hash of the pair (0, data)."""
    k = np.asarray(k, np.uint32)
    a, b = _hash(k[0], k[1], np.zeros(1, np.uint32), np.array([data], np.uint32))
    # JAX hashes the seed's two words as one counter vector split in halves: (0 | data)
    return np.concatenate([a, b])


def _bits(k: np.ndarray, n: int) -> np.ndarray:
    """jax.random.bits(k, (n,), uint32): counters (index >> 32, index & 0xFFFFFFFF)."""
    k = np.asarray(k, np.uint32)
    if n >= 2**32:
        raise ValueError("at most 2**32 - 1 values per draw")
    a, b = _hash(k[0], k[1], np.zeros(n, np.uint32), np.arange(n, dtype=np.uint32))
    return a ^ b


def uniform(k: np.ndarray, n: int, lo: float, hi: float) -> np.ndarray:
    """jax.random.uniform(k, (n,), float32, lo, hi), bit for bit."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    mantissa = (_bits(k, n) >> np.uint32(32 - 23)) | np.float32(1.0).view(np.uint32)
    floats = mantissa.view(np.float32) - np.float32(1.0)
    return np.maximum(lo32, _fma32(floats, hi32 - lo32, lo32))


def _fma32(x: np.ndarray, y: np.float32, z: np.float32) -> np.ndarray:
    """x * y + z rounded once to float32, as XLA CPU computes it (a fused multiply-add). The
    float64 product of two float32 values is exact; the float64 sum is rounded once more to
    float32, which is wrong only when it lands exactly halfway between two float32 values and
    was inexact: then it is moved one float64 ulp towards the exact value (musl's fmaf)."""
    xy = x.astype(np.float64)
    xy *= np.float64(y)
    z64 = np.float64(z)
    r = xy + z64
    bits = r.view(np.uint64)
    near = np.flatnonzero((bits & np.uint64(0x1FFFFFFF)) == np.uint64(0x10000000))  # ~2^-29 of all
    if near.size:
        p, q = xy[near], r[near]
        fix = ((q - p != z64) | (q - z64 != p)) & np.isfinite(q)  # halfway and inexact
        neg = q < 0
        err = np.where(neg == (z64 > p), p - q + z64, z64 - q + p)
        step = np.where(neg == (err < 0), np.uint64(1), np.uint64(-1 & 0xFFFFFFFFFFFFFFFF))
        bits[near] = np.where(fix, bits[near] + step, bits[near])
    return r.astype(np.float32)
