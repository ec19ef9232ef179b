"""Window geometry shared by Convolution, Deconvolution and Pooling: Caffe's normalisation of
`kernel_size/stride/pad/dilation` (one value for every spatial axis, or one per axis) and of the
2-D spellings `kernel_h/kernel_w`, `stride_h/...`, `pad_h/...`."""

from __future__ import annotations

from dataclasses import dataclass

from netc.spec.errors import SpecError


@dataclass(frozen=True)
class Window:
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def extent(self) -> tuple[int, ...]:
        """Effective kernel extent: dilation·(k−1) + 1."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))


def axis_values(p, field: str, n: int, default: int | None, prefix: str) -> tuple[int, ...]:
    """One value per spatial axis from a repeated field (1 value or n) or its `_h`/`_w` spellings."""
    values = getattr(p, field, ())
    h, w = getattr(p, f"{field}_h", None), getattr(p, f"{field}_w", None)
    name = field if field != "kernel" else "kernel_size"
    if field == "kernel":
        values = p.kernel_size
    if h is not None or w is not None:
        if n != 2:
            raise SpecError(f"{field}_h/{field}_w are for 2-D inputs; this input has {n} spatial axes",
                            (prefix, f"{field}_h" if h is not None else f"{field}_w"))
        if values:
            raise SpecError(f"give either {name} or {field}_h/{field}_w, not both", (prefix, name))
        if field == "kernel" and (h is None or w is None):
            missing = "kernel_w" if w is None else "kernel_h"
            raise SpecError(f"kernel_h and kernel_w go together: {missing} is missing", (prefix, missing))
        return (h if h is not None else (default or 0), w if w is not None else (default or 0))
    if not values:
        if default is None:
            raise SpecError("missing required field (the window size)", (prefix, name))
        return (default,) * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise SpecError(
            f"{name} has {len(values)} values, but the input has {n} spatial "
            f"ax{'is' if n == 1 else 'es'} (give 1 or {n})",
            (prefix, name),
        )
    return tuple(values)


def window(p, n: int, prefix: str, *, dilation: bool = True) -> Window:
    """Normalise a ConvolutionParameter / PoolingParameter for `n` spatial axes."""
    kernel = axis_values(p, "kernel", n, None, prefix)
    stride = axis_values(p, "stride", n, 1, prefix)
    pad = axis_values(p, "pad", n, 0, prefix)
    dil = (1,) * n
    if dilation and getattr(p, "dilation", ()):
        d = p.dilation
        if len(d) not in (1, n):
            raise SpecError(f"dilation has {len(d)} values, but the input has {n} spatial axes "
                            f"(give 1 or {n})", (prefix, "dilation"))
        dil = d * n if len(d) == 1 else tuple(d)
    return Window(kernel, stride, pad, dil)


AXIS_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


def axis_name(i: int, n: int) -> str:
    return AXIS_NAMES.get(n, tuple(f"axis {j}" for j in range(n)))[i]


def unread_positions(size: int, extent: int, stride: int, pad_before: int, out: int,
                     dilation: int = 1) -> tuple[int, int]:
    """(never read, of which after the last read one): the real input positions on one axis that
    no window reads. Window j reads positions j·stride − pad_before + t·dilation, t ∈ [0, k)
    (k = (extent − 1) / dilation + 1); positions outside [0, size) are padding.

    Counted without enumerating positions: the k taps of every window fall into residue classes
    modulo the stride; within one class, tap t reads the lattice points [base_t, base_t + out) of
    that class, so a class's read points are a union of intervals."""
    k = (extent - 1) // dilation + 1
    runs: dict[int, list[int]] = {}
    for t in range(k):
        offset = t * dilation - pad_before
        runs.setdefault(offset % stride, []).append(offset // stride)
    read, last = 0, -1
    for c, bases in runs.items():
        real = max(0, -(-(size - c) // stride))  # lattice points c + m·stride inside [0, size)
        end = 0  # the union of [base, base + out) ∩ [0, real), bases in increasing order
        for base in sorted(bases):
            lo, hi = max(base, end), min(base + out, real)
            if hi > lo:
                read += hi - lo
                end = hi
                last = max(last, c + (hi - 1) * stride)
    return size - read, size - 1 - last


def unread_message(axes: list[tuple[str, int, int, int]]) -> str:
    """One warning for the axes (name, size, never read, of which trailing) that skip input:
    "28 of 56 input positions on axis H and 28 of 56 on axis W are never read by any window
    (they fall between windows)"."""
    def where(unread: int, trailing: int) -> str:
        if trailing == unread:
            return "past the last window"
        return "between windows" if not trailing else f"{unread - trailing} between windows, {trailing} past the last one"

    counts = [f"{u} of {n} input positions on axis {name}" if j == 0 else f"{u} of {n} on axis {name}"
              for j, (name, n, u, _) in enumerate(axes)]
    kinds = {where(u, t) for _, _, u, t in axes}
    reason = (next(iter(kinds)) if len(kinds) == 1 else
              "; ".join(f"{name}: {where(u, t)}" for name, _, u, t in axes))
    verb = "is" if len(axes) == 1 and axes[0][2] == 1 else "are"
    return f"{' and '.join(counts)} {verb} never read by any window ({reason})"


def warn_unread(layer, sizes, w: Window, pads_before, out, path: tuple) -> None:
    """Warn (once per layer) when some real input positions are read by no window."""
    n = len(out)
    axes = []
    for i in range(n):
        unread, trailing = unread_positions(sizes[i], w.extent[i], w.stride[i], pads_before[i],
                                            out[i], w.dilation[i])
        if unread:
            axes.append((axis_name(i, n), sizes[i], unread, trailing))
    if axes:
        layer.warn(unread_message(axes), *path)
