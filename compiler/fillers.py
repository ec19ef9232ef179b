"""Caffe's fillers (include/caffe/filler.hpp), drawn with JAX's PRNG.

fan_in = count / shape[0], fan_out = count / shape[1] (Caffe's definitions). xavier is uniform on
±sqrt(3/n) — NOT Glorot's sqrt(6/(fan_in+fan_out)) — and msra is N(0, 2/n), where n is fan_in,
fan_out or their mean (`variance_norm`). An unset filler is constant 0, as in Caffe.

`orthogonal` (netc extension; Saxe et al. 2014, Keras's Orthogonal): `gain` × a (semi-)orthogonal
matrix from the QR decomposition of a Gaussian one, signs corrected so that the draw is uniform
(Haar). A blob is seen as a matrix shape[0] × (the rest). When its rows are a whole multiple k > 1
of its columns — a recurrent layer's G·H × H hidden-to-hidden weights — each of the k square row
blocks (each gate's H × H block) is orthogonal on its own; otherwise the whole matrix is: its rows
orthonormal when it is wide, its columns when it is tall."""

from __future__ import annotations

import functools
import math

import numpy as np

from netc.compiler import threefry
from netc.compiler.xla import jit
from netc.spec.messages import FillerParameter

# Uniform and xavier blobs up to this many elements are drawn in NumPy (compiler/threefry.py, the
# same bits as JAX): no XLA program to compile, trace or look up. NumPy draws ~10 M values/s on one
# core, so a bigger blob is drawn by XLA, whose compile then costs less than NumPy's time.
HOST_DRAW_MAX = 2**20


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    count = math.prod(shape)
    fan_in = count // shape[0] if shape else 1
    fan_out = count // shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _norm(f: FillerParameter, shape) -> float:
    fan_in, fan_out = fans(shape)
    return {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2}[f.variance_norm]


def bilinear_kernel(shape: tuple[int, ...]) -> np.ndarray:
    """Caffe's BilinearFiller: the upsampling kernel FCN uses for Deconvolution (square kernels)."""
    k = shape[-1]
    f = math.ceil(k / 2)
    # BVLC/caffe#5713 (ef2eb4b): c = (k − 1)/(2f). The older (2f − 1 − f % 2)/(2f) agrees only for
    # k ≡ 0, 1 (mod 4) and gives an off-centre kernel otherwise (k 2 → [1 0], k 3 → [.25 .75 .75]).
    c = (k - 1) / (2.0 * f)
    out = np.zeros(shape, np.float32)
    flat = out.reshape(-1)
    h_, w_ = shape[-2], shape[-1]
    for i in range(flat.size):
        x = i % w_
        y = (i // w_) % h_
        flat[i] = (1 - abs(x / f - c)) * (1 - abs(y / f - c))
    return out


def orthogonal(key, shape: tuple[int, ...], gain: float = 1.0, dtype=None):
    """gain × a (semi-)orthogonal matrix per square row block (see the module's docstring)."""
    import jax
    import jax.numpy as jnp

    if len(shape) < 2:
        raise ValueError(f"the orthogonal filler needs a blob of at least 2 axes, got {shape}")
    dtype = jnp.dtype(dtype or jnp.float32)
    if isinstance(key, jax.core.Tracer):  # inside a traced program (Net.init under jax.jit)
        return _orthogonal_fn()(key, tuple(shape), float(gain), dtype)
    return _orthogonal_host(key, tuple(shape), float(gain), dtype)


def _blocks(shape: tuple[int, ...]) -> tuple[int, int, int, bool]:
    """(blocks, big, small, wide): the blob as `blocks` row blocks of r × cols, each factored as
    a big × small matrix, transposed back when the block is wide (r < cols: orthonormal rows)."""
    rows, cols = shape[0], math.prod(shape[1:])
    blocks = rows // cols if rows > cols and rows % cols == 0 else 1
    r = rows // blocks
    return blocks, max(r, cols), min(r, cols), r < cols


def _orthogonal_host(key, shape: tuple[int, ...], gain: float, dtype):
    """The eager draw (Net.init's, blob after blob): the same Gaussian bits from XLA, factored by
    NumPy's float64 LAPACK on this thread, outside XLA's thread pool (see _householder_q for why
    not in it). Faster than the Householder loops for big blobs (4 × 2048 × 2048: those take
    ~20 s), and the exact Q; a jitted draw of the same key agrees to float32 rounding."""
    import jax

    blocks, big, small, wide = _blocks(shape)
    n = blocks * big * small
    a = _host_normal(key, n, None)
    a = (np.asarray(_normal_fn()(key, n)) if a is None else a).astype(np.float64)
    a = a.reshape(blocks, big, small)
    q = np.empty_like(a)
    for b in range(blocks):
        qb, rb = np.linalg.qr(a[b])
        d = np.sign(np.diag(rb))
        q[b] = qb * np.where(d == 0, 1.0, d)
    if wide:
        q = np.swapaxes(q, -1, -2)
    return jax.device_put((gain * q).reshape(shape).astype(dtype))


@functools.cache
def _normal_fn():
    import jax
    import jax.numpy as jnp

    return jit(lambda key, n: jax.random.normal(key, (n,), jnp.float32), static_argnums=1)


# jax.random.normal is √2·erf⁻¹(u) of a uniform u on (−1, 1): NumPy draws u (the same bits as
# JAX), XLA maps it in chunks of this many values, one compiled program for every blob
NORMAL_CHUNK = 2**16


@functools.cache
def _erf_inv_fn():
    from jax import lax

    return jit(lambda u: lax.mul(np.float32(np.sqrt(2)), lax.erf_inv(u)))


def _host_normal(key, n: int, dtype) -> np.ndarray | None:
    """jax.random.normal(key, (n,), float32) as a NumPy array, for a float32 draw of at most
    HOST_DRAW_MAX values from a host key (else None: JAX draws it): the uniform in NumPy and
    erf⁻¹ by one XLA program over fixed-size chunks, so that blobs of any count compile nothing
    new (eagerly, each count was a program of its own: MobileNet v2's Net.init compiled for
    7.3 s). JAX's values bit for bit (tests/test_threefry.py)."""
    import jax.numpy as jnp

    host = host_key(key)
    if host is None or jnp.dtype(dtype or jnp.float32) != jnp.float32 or n > HOST_DRAW_MAX:
        return None
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = threefry.uniform(host, n, lo, 1.0)
    chunks = -(-n // NORMAL_CHUNK)
    u = np.concatenate([u, np.zeros(chunks * NORMAL_CHUNK - n, np.float32)])
    f = _erf_inv_fn()
    return np.concatenate([np.asarray(f(part)) for part in np.split(u, chunks)])[:n]


@functools.cache
def _orthogonal_fn():
    import jax
    import jax.numpy as jnp

    def draw(key, shape, gain, dtype):
        blocks, big, small, wide = _blocks(shape)
        # drawn flat (the same bits as in 3-d, compiled faster: see fill)
        a = jax.random.normal(key, (blocks * big * small,), jnp.float32).reshape(blocks, big, small)
        q = _householder_q(a)  # big × small, orthonormal columns, R's diagonal made >= 0
        if wide:
            q = jnp.swapaxes(q, -1, -2)
        return (gain * q).reshape(shape).astype(dtype)

    # one compiled program per shape, traced into the caller's program (so plain jax.jit:
    # compiler options are for top-level programs only)
    return jax.jit(draw, static_argnums=(1, 2, 3))


def _householder_q(a):
    """The traced draw's QR (a jitted Net.init; eager draws use NumPy, _orthogonal_host): Q of
    the thin QR factorization A = QR of each b × m × n (m ≥ n) matrix, with its columns'
    signs chosen so that R's diagonal is positive (Haar measure for a Gaussian A; a zero on the
    diagonal keeps its column's sign): Householder reflections in plain XLA operations.

    Not jnp.linalg.qr: on CPU that is LAPACK (jaxlib's custom call into SciPy's OpenBLAS), and
    jaxlib 0.10 runs a batch of matrices by parting it out to XLA's intra-op thread pool and
    blocking its own pool thread until the parts are done, while OpenBLAS spins its own threads:
    two QRs in flight at once — one program that draws several orthogonal blobs (Net.init under
    jax.jit), or two programs — left a 2-core machine's pool with every thread waiting for
    another, for ever (gdb: both tf_XLAEigen threads in ParallelBatchMap under lapack_sgeqrf_ffi,
    or both in OpenBLAS's exec_blas_async_wait). This is the same factorization (LAPACK's sgeqrf
    is Householder too: the results agree to float32 rounding, 3e-5 at worst on 128 × 128),
    orthonormal to 1e-6, at 1.5–4× LAPACK's time (4 × 1024 × 1024: 1.5 s against 0.36 s)."""
    import jax.numpy as jnp
    from jax import lax

    b, m, n = a.shape
    rows = jnp.arange(m)

    def reflect(k, carry):  # zero column k below the diagonal; keep the reflector's vector
        r, vs = carry
        x = jnp.where(rows >= k, lax.dynamic_index_in_dim(r, k, axis=2, keepdims=False), 0.0)
        xk = lax.dynamic_index_in_dim(x, k, axis=1, keepdims=False)
        norm = jnp.sqrt(jnp.sum(x * x, axis=1))
        v = x + (jnp.where(xk >= 0, 1.0, -1.0) * norm)[:, None] * (rows == k)
        vv = jnp.sum(v * v, axis=1)
        w = (jnp.where(vv > 0, jnp.sqrt(2.0 / jnp.where(vv > 0, vv, 1.0)), 0.0))[:, None] * v
        r = r - w[:, :, None] * jnp.einsum("bm,bmn->bn", w, r)[:, None, :]  # (I - w wᵀ) r
        return r, lax.dynamic_update_index_in_dim(vs, w, k, axis=2)

    r, vs = lax.fori_loop(0, n, reflect, (a, jnp.zeros_like(a)))

    def apply(i, q):  # Q = H_0 H_1 … H_{n-1} I[:, :n], the last reflector first
        w = lax.dynamic_index_in_dim(vs, n - 1 - i, axis=2, keepdims=False)
        return q - w[:, :, None] * jnp.einsum("bm,bmn->bn", w, q)[:, None, :]

    q = lax.fori_loop(0, n, apply, jnp.broadcast_to(jnp.eye(m, n, dtype=a.dtype), a.shape))
    d = jnp.sign(jnp.diagonal(r, axis1=1, axis2=2))
    return q * jnp.where(d == 0, 1.0, d)[:, None, :]


def host_key(rng) -> np.ndarray | None:
    """`rng` as a NumPy uint32[2] threefry key when NumPy can draw from it with JAX's bits (a
    concrete raw key, or a typed threefry2x32 key, JAX's default PRNG configured), else None (a
    traced key, a key of another PRNG)."""
    import jax

    if isinstance(rng, jax.core.Tracer) or not threefry.available():
        return None
    if isinstance(rng, jax.Array) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        if rng.shape or str(jax.random.key_impl(rng)) != "threefry2x32":
            return None
        rng = jax.random.key_data(rng)  # the same bits: a typed key wraps the raw one
    key = np.asarray(rng)
    return key if key.shape == (2,) and key.dtype == np.uint32 else None


def prng_key(seed: int):
    """jax.random.PRNGKey(seed), as NumPy data when NumPy derives JAX's keys (no XLA program)."""
    if threefry.available():
        return threefry.key(seed)
    import jax

    return jax.random.PRNGKey(seed)


def fold_in(rng, data: int):
    """jax.random.fold_in(rng, data), computed in NumPy when `rng` is a host key (host_key)."""
    import jax

    host = host_key(rng)
    return threefry.fold_in(host, data) if host is not None else jax.random.fold_in(rng, data)


def _uniform(key, lo: float, hi: float, shape: tuple[int, ...], dtype):
    """U(lo, hi) of `shape`: in NumPy for a float32 blob of at most HOST_DRAW_MAX elements from a
    host key, else by XLA."""
    import jax
    import jax.numpy as jnp

    host = host_key(key)
    n = math.prod(shape)
    if host is not None and jnp.dtype(dtype) == jnp.float32 and n <= HOST_DRAW_MAX:
        return jax.device_put(threefry.uniform(host, n, lo, hi).reshape(shape))
    return _uniform_fn()(jnp.asarray(key), lo, hi, tuple(shape), jnp.dtype(dtype))


@functools.cache
def _uniform_fn():
    """U(lo, hi) drawn flat and reshaped in one compiled program per shape (lo, hi traced: all
    xavier blobs of a shape share it; eagerly, the reshape was an XLA compile of its own). Plain
    jax.jit: a jitted Net.init traces it into its own program, and compiler options are for
    top-level programs only."""
    import jax

    def draw(key, lo, hi, shape, dtype):
        return jax.random.uniform(key, (math.prod(shape),), dtype, lo, hi).reshape(shape)

    return jax.jit(draw, static_argnums=(3, 4))


def fill(key, f: FillerParameter | None, shape: tuple[int, ...], dtype=None):
    """The blob's initial value. Random fillers draw the blob's elements as one flat vector and
    reshape it: JAX's random bits depend only on an element's row-major index, so the values are
    bit for bit those of a draw in `shape`, but XLA CPU compiles a flat draw several times faster
    than an N-d one (a 4-d conv weight's normal draw 8 s vs 0.7 s), and blobs of the same count
    share one compiled program (Net.init draws each blob eagerly). Uniform and xavier blobs of
    float32 are drawn in NumPy when `key` is concrete (see _uniform), with the same bits.
    `key`: a raw threefry key, a JAX or a NumPy uint32[2] array."""
    import jax
    import jax.numpy as jnp

    dtype = dtype or jnp.float32
    f = f or FillerParameter()
    t = f.type
    flat = (math.prod(shape),)
    if t == "constant":  # NumPy then one transfer: no XLA program to compile per shape
        return jax.device_put(np.full(shape, f.value, jnp.dtype(dtype)))
    if t == "uniform":
        return _uniform(key, f.min, f.max, tuple(shape), dtype)
    if t == "xavier":
        s = math.sqrt(3.0 / _norm(f, shape))
        return _uniform(key, -s, s, tuple(shape), dtype)
    z = None
    if t == "msra" or (t == "gaussian" and f.sparse < 0):
        z = _host_normal(key, flat[0], dtype)
    if z is not None:  # scaled in float32 as JAX's eager multiply and add round (once each;
        # fused into the draw's program, some bits would move by an ulp)
        if t == "msra":
            w = np.float32(math.sqrt(2.0 / _norm(f, shape))) * z
        else:
            w = np.float32(f.mean) + np.float32(f.std) * z
        return jax.device_put(w.reshape(shape))
    key = jnp.asarray(key)  # the remaining fillers draw with JAX
    if t == "gaussian":
        w = f.mean + f.std * jax.random.normal(key, flat, dtype)
        if f.sparse >= 0:  # keep each weight with probability sparse / num_outputs
            k2 = jax.random.fold_in(key, 1)
            keep = jax.random.bernoulli(k2, min(1.0, f.sparse / shape[0]), flat)
            w = jnp.where(keep, w, 0)
        return w.reshape(shape)
    if t == "msra":  # eager: fusing the multiply into the draw's program moves some bits by an ulp
        return (math.sqrt(2.0 / _norm(f, shape)) * jax.random.normal(key, flat, dtype)).reshape(shape)
    if t == "positive_unitball":
        w2 = jax.random.uniform(key, flat, dtype).reshape(shape[0], -1)
        return (w2 / w2.sum(axis=1, keepdims=True)).reshape(shape)
    if t == "bilinear":
        return jax.device_put(bilinear_kernel(shape).astype(jnp.dtype(dtype)))
    if t == "orthogonal":
        return orthogonal(key, shape, f.gain, dtype)
    raise ValueError(f"unknown filler {t}")  # unreachable: the spec validated the name
