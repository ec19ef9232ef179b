"""The 2-D convolution lowerings of compiler/layers/conv.py against lax.conv on random legal
geometries (kernel, stride, dilation, asymmetric padding): the gathered patch matrix (the
forward that is not differentiated), the stacked shifted slices (the forward and backward under
differentiation) and the weight-gradient-as-matmuls backward give lax.conv's values and
gradients."""

from __future__ import annotations

import functools

import numpy as np
from conftest import jit_fast

from netc.compiler.layers import conv as C
from netc.compiler.layers.geometry import Window


def _geometries(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        k = tuple(int(v) for v in rng.integers(1, 5, 2))
        s = tuple(int(v) for v in rng.integers(1, 4, 2))
        d = tuple(int(v) for v in rng.integers(1, 3, 2))
        pads = tuple((int(a), int(b)) for a, b in rng.integers(0, 3, (2, 2)))
        size = tuple(int(v) for v in rng.integers(5, 12, 2))
        ext = [(kk - 1) * dd + 1 for kk, dd in zip(k, d)]
        if any(sz + lo + hi < e for sz, (lo, hi), e in zip(size, pads, ext)):
            continue
        o = tuple((sz + lo + hi - e) // st + 1 for sz, (lo, hi), e, st in zip(size, pads, ext, s))
        w = Window(kernel=k, stride=s, pad=(0, 0), dilation=d)
        out.append((size, C.ConvGeometry(1, w, pads, o)))
    return out


def _results(cases):
    """Per case: (gathered patches, stacked patches, im2col forward, lax.conv forward, and the
    (dx, dW) of a fixed objective through lax.conv, im2col and the matmul backward)."""
    import jax
    import jax.numpy as jnp

    def one(g, x, wt):
        def grads(fn):
            return jax.grad(lambda a, b: jnp.sum(fn(a, b) * jnp.cos(fn(a, b))), (0, 1))(x, wt)

        lax_conv = functools.partial(C._lax_conv, g=g)
        return (C._patch_rows(x, g), C._slice_patch_rows(x, g), C._im2col_conv(x, wt, g),
                lax_conv(x, wt), grads(lax_conv),
                grads(functools.partial(C._im2col_conv, g=g)), grads(C._conv_matmul_grad(g)))

    geos = [g for g, _, _ in cases]
    return jit_fast(lambda args: [one(g, x, w) for g, (x, w) in zip(geos, args)])(
        [(x, w) for _, x, w in cases])


def test_patch_matrices_and_im2col_match_lax_conv():
    rng = np.random.default_rng(1)
    cases = []
    for size, g in _geometries(10):
        cin, cout = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        x = rng.standard_normal((2, cin) + size).astype(np.float32)
        wt = rng.standard_normal((cout, cin) + g.window.kernel).astype(np.float32)
        cases.append((g, x, wt))
    for gathered, stacked, im2col, ref, want, *got in _results(cases):
        np.testing.assert_array_equal(gathered, stacked)
        np.testing.assert_allclose(im2col, ref, rtol=1e-5, atol=1e-5)
        for grads in got:
            for a, b in zip(grads, want):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_depthwise_matches_grouped_lax_conv():
    """Groups == input channels (channel multiplier 1 and 2): the shifted multiply-adds give
    lax.conv's grouped values and gradients."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(2)
    cases = []
    for k, (size, g) in enumerate(_geometries(8, seed=4)):
        c, mult = int(rng.integers(2, 5)), 1 + k % 2
        x = rng.standard_normal((2, c) + size).astype(np.float32)
        wt = rng.standard_normal((c * mult, 1) + g.window.kernel).astype(np.float32)
        cases.append((g, x, wt))

    def one(g, x, wt):
        def grads(fn):
            return jax.grad(lambda a, b: jnp.sum(fn(a, b) * jnp.cos(fn(a, b))), (0, 1))(x, wt)

        def ref(a, b):
            return C._lax_conv(a, b, g, group=x.shape[1])

        dwc = functools.partial(C._depthwise_conv, g=g)
        return dwc(x, wt), ref(x, wt), grads(dwc), grads(ref)

    geos = [g for g, _, _ in cases]
    results = jit_fast(lambda args: [one(g, x, w) for g, (x, w) in zip(geos, args)])(
        [(x, w) for _, x, w in cases])
    for y, want, grads, want_grads in results:
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads, want_grads):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
