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
