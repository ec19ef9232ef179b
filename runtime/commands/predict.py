"""`netc predict`: a TEST-phase forward of given input blobs, from a spec + weights or from an
exported artifact. Both walk the graph through Net.apply(outputs=...)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TextIO

import numpy as np

from netc.compiler.layer import fmt_shape
from netc.compiler.xla import jit
from netc.runtime.errors import EXIT_OK, RunError


def read_npz(path: str, what: str = "a readable .npz file") -> dict[str, np.ndarray]:
    """Every array of an .npz the user named (a regular file only: never a FIFO or device; no
    pickles)."""
    from netc.files import FileRefused, open_regular

    try:
        with open_regular(path) as f, np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise RunError(f"{path}: no such file") from None
    except FileRefused as e:
        raise RunError(f"{path}: cannot read this file: it {e.message}") from None
    except Exception as e:  # noqa: BLE001 - not a zip, a pickle, a damaged member...
        raise RunError(f"{path}: not {what} ({e})") from None


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    from netc.runtime.checkpoint import write_bytes_atomic

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.getvalue())


def check_inputs(plan, arrays: dict[str, np.ndarray], source: str) -> None:
    """Every array is an input blob of the net, numeric, of the blob's shape on every axis but
    its batch axis (axis 0, or axis 1 of a time-major T×N×… blob; an input without one is of
    fixed shape), and all have one batch size."""
    from netc.compiler.layer import BATCH
    from netc.spec.errors import did_you_mean

    if not arrays:
        raise RunError(f"{source}: holds no arrays; expected the net's inputs "
                       f"({', '.join(plan.inputs)})")
    sizes: dict[int, list[str]] = {}
    for k, a in arrays.items():
        if k not in plan.inputs:
            raise RunError(f"{source}: array '{k}' is not an input blob of the net"
                           f"{did_you_mean(k, plan.inputs)} (inputs: {', '.join(plan.inputs)})")
        if a.dtype.kind not in "biuf":
            raise RunError(f"{source}: array '{k}' has dtype {a.dtype}; need numbers")
        want = tuple(plan.blobs[k])
        axis = plan.batch_axis(k)
        free = tuple(BATCH if i == axis else d for i, d in enumerate(want))
        if a.ndim != len(want) or any(i != axis and n != d for i, (n, d) in enumerate(zip(a.shape, want))):
            on = "" if axis in (0, None) else f", batch on axis {axis}"
            raise RunError(f"{source}: array '{k}' has shape {tuple(a.shape)}, but the net's "
                           f"blob '{k}' is {fmt_shape(free)}{on} ({fmt_shape(want)} in the spec)")
        if axis is not None:
            sizes.setdefault(int(a.shape[axis]), []).append(k)
    if len(sizes) > 1:
        which = "; ".join(f"{n} ({', '.join(ks)})" for n, ks in sorted(sizes.items()))
        raise RunError(f"{source}: the arrays have different batch sizes: {which}")


def choose_outputs(plan, requested: list[str] | None, given: set[str], source: str) -> list[str]:
    """The blobs to compute: the requested ones, else the net's outputs computable from `given`,
    else the deploy outputs (those `netc export` exports) computable from it."""
    from netc.runtime.export import ExportError, deploy_graph
    from netc.spec.errors import did_you_mean

    if requested:
        for b in requested:
            if b not in plan.blobs:
                raise RunError(f"--blobs: the TEST net has no blob '{b}'"
                               f"{did_you_mean(b, plan.blobs)}")
        blobs = list(requested)
    else:
        # the net's outputs the given arrays can compute; failing that (a train/test spec given
        # only `data`), the deploy outputs `netc export` would export (the classifier's scores)
        try:
            deploy = deploy_graph(plan).outputs
        except ExportError:
            deploy = []
        candidates = list(plan.outputs)
        blobs = [b for b in candidates if set(plan.needed_inputs([b])) <= given]
        if not blobs:
            candidates += [b for b in deploy if b not in candidates]
            blobs = [b for b in deploy if set(plan.needed_inputs([b])) <= given]
        if not blobs:
            raise RunError(f"{source}: none of the net's outputs ({', '.join(candidates)}) can be "
                           f"computed from the given arrays ({', '.join(sorted(given))}); add "
                           "the missing inputs or name blobs with --blobs")
    for b in blobs:
        missing = set(plan.needed_inputs([b])) - given
        if missing:
            raise RunError(f"blob '{b}' needs the input(s) {', '.join(sorted(missing))}, which "
                           f"{source} does not hold")
    return blobs


def forward(net, params: dict, state: dict, arrays: dict[str, np.ndarray],
            blobs: list[str]) -> dict[str, np.ndarray]:
    """A jitted TEST-phase forward of `blobs` from `arrays` (float32)."""
    feed = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}

    def fwd(params, state, feed):
        return net.apply(params, state, feed, rng=None, train=False, outputs=blobs)[0]

    result = jit(fwd)(params, state, feed)
    return {k: np.asarray(v) for k, v in result.items()}


def run(spec_path: str, weights: str, input_path: str, output_path: str,
        blobs: list[str] | None, err: TextIO) -> int:
    """TEST-phase forward of the arrays in `input_path` (keys: the net's input blob names);
    writes the requested blobs (default: the deploy outputs computable from the given inputs) to
    `output_path` (.npz)."""
    from netc.compiler.lower import lower
    from netc.runtime.context import load_context
    from netc.runtime.weights import init_with_weights

    ctx = load_context(spec_path)
    plan = ctx.plan("TEST")
    arrays = read_npz(input_path)
    check_inputs(plan, arrays, input_path)
    blobs = choose_outputs(plan, blobs, set(arrays), input_path)
    net = lower(plan)
    params, state = init_with_weights(net, weights, err)
    result = forward(net, params, state, arrays, blobs)
    write_npz(output_path, result)
    for k, v in result.items():
        err.write(f"{k}: {fmt_shape(v.shape)}\n")
    return EXIT_OK


def run_exported(folder: str, input_path: str, output_path: str, err: TextIO) -> int:
    """Run an artifact of `netc export` (digests verified before it is loaded)."""
    from netc.runtime.exported import ExportedError, load_exported, run_exported

    loaded = load_exported(folder)
    arrays = read_npz(input_path)
    names = [s["name"] for s in loaded[1]["inputs"]]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ExportedError(f"{input_path}: missing input array(s) {', '.join(missing)} "
                            f"(it holds {', '.join(arrays) or 'nothing'})")
    try:
        outputs = run_exported(loaded, {n: arrays[n] for n in names})
    except (OSError, ValueError) as e:
        raise ExportedError(str(e)) from None
    write_npz(output_path, outputs)
    err.write(f"wrote {', '.join(f'{k} {v.shape}' for k, v in outputs.items())} to "
              f"{output_path}\n")
    return EXIT_OK
