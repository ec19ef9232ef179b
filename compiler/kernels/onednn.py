"""oneDNN's convolutions (forward, backward-data, backward-weights; float32 or bfloat16, N-D,
grouped) as XLA FFI custom calls in netc's compiled programs.

Why: XLA CPU's convolutions, and netc's pure-XLA lowerings of them, run slower than the oneDNN
primitives PyTorch calls: forward+backward 1.3-3x on CIFAR ResNet-18's 3×3 layers, 7-8x on
AlexNet's grouped ones, up to 38x on a transposed one (bench/conv_variants.py onednn). The kernels are used only where
they are measured to win (compiler/layers/conv.py decides per layer shape), only for float32
(and bfloat16: natively where the CPU computes it, bf16_enabled, else widened to float32), only in a Net lowered for this
process (`lower()`: not in exported artifacts, which must run anywhere,
and not across several devices, where XLA cannot partition a custom call); everywhere else the
convolution stays pure XLA, which is also the fallback when the kernels cannot be built.

Where oneDNN comes from: the `onednn` extra (`pip install 'netc[onednn]'`: Intel's
onednn-cpu-gomp and onednn-devel-cpu-gomp wheels, oneDNN 3.2 with GNU OpenMP), or any oneDNN 3.x
under $NETC_ONEDNN_ROOT (include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so). The C++ beside this
module (onednn_conv.cc, and batch_norm.cc: BatchNorm's statistics and folded backward, OpenMP)
is compiled once with the system's C++ compiler ($CXX, else c++ or g++; ~8 s) into $NETC_KERNEL_DIR (default ~/.cache/netc/kernels, private like the compile
cache: what is in it is code), under a hash of the source, the compiler, jaxlib's version and
the oneDNN library, and loaded with ctypes. NETC_ONEDNN=0 turns the kernels off;
NETC_ONEDNN_BF16=0 keeps bfloat16 convolutions in XLA (bf16_allowed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

ENV = "NETC_ONEDNN"
LAYOUT_ENV = "NETC_ONEDNN_LAYOUT"
SOURCE = Path(__file__).with_name("onednn_conv.cc")
# compiled together into one library: the convolutions, and BatchNorm's backward (batch_norm.cc)
SOURCES = (SOURCE, Path(__file__).with_name("batch_norm.cc"))
LIBRARY = "libnetc_onednn.so"
# the FFI targets netc registers, by the C++ handler symbol each one names
TARGETS = {"netc_onednn_conv_forward": "NetcConvForward",
           "netc_onednn_conv_backward_data": "NetcConvBackwardData",
           "netc_onednn_conv_backward_weights": "NetcConvBackwardWeights",
           "netc_onednn_conv_backward_weights_bias": "NetcConvBackwardWeightsBias",
           "netc_batch_norm_stats": "NetcBatchNormStats",
           "netc_batch_norm_backward": "NetcBatchNormBackward",
           "netc_batch_norm_stats_last": "NetcBatchNormStatsLast",
           "netc_batch_norm_backward_last": "NetcBatchNormBackwardLast"}

__all__ = ["Status", "activation_layout", "available", "batch_norm_backward_call", "batch_norm_stats_call", "conv_call",
           "bf16_allowed", "bf16_enabled", "bf16_native", "channels_last", "conv_dtype", "enabled_by_env", "kernel_dir", "status", "usable"]


@dataclass(frozen=True)
class Status:
    ok: bool
    detail: str  # the library loaded, or why the kernels are not in use


class BuildError(Exception):
    pass


def enabled_by_env() -> bool:
    return os.environ.get(ENV, "").strip().lower() not in ("0", "false", "no", "off")


def kernel_dir() -> Path:
    own = os.environ.get("NETC_KERNEL_DIR")
    if own:
        return Path(own).expanduser()
    from netc.files import user_cache_dir

    return user_cache_dir() / "kernels"


def find_onednn() -> tuple[Path, Path] | None:
    """(include dir, libdnnl.so) of the first oneDNN found: $NETC_ONEDNN_ROOT, then this Python's
    prefix (where the wheels of the `onednn` extra put it), then /usr/local and /usr."""
    roots = [os.environ.get("NETC_ONEDNN_ROOT"), sys.prefix, sys.base_prefix, "/usr/local", "/usr"]
    for root in dict.fromkeys(r for r in roots if r):
        inc = Path(root) / "include"
        if not (inc / "oneapi" / "dnnl" / "dnnl.hpp").is_file():
            continue
        for libdir in ("lib", "lib64", "lib/x86_64-linux-gnu"):
            lib = Path(root) / libdir / "libdnnl.so"
            if lib.is_file():
                return inc, lib
    return None


def _compiler() -> str | None:
    for c in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def _build(out: Path, cxx: str, jax_include: str, inc: Path, lib: Path) -> None:
    """Compile the kernels into `out`, atomically (a half-written library is never loaded)."""
    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, "-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-w", f"-I{jax_include}",
           f"-I{inc}", *map(str, SOURCES), "-o", tmp, str(lib), f"-Wl,-rpath,{lib.parent}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            first = [ln for ln in lines if "error" in ln][:2] or lines[-4:]
            raise BuildError(f"{Path(cxx).name} failed: " + " | ".join(first))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _library_path(cxx: str, jax_include: str, inc: Path, lib: Path) -> Path:
    import jaxlib

    h = hashlib.sha256(b"".join(src.read_bytes() for src in SOURCES))
    st = lib.stat()
    for part in (cxx, jax_include, jaxlib.__version__, str(inc), str(lib.resolve()),
                 str(st.st_size), str(int(st.st_mtime))):
        h.update(part.encode() + b"\0")
    return kernel_dir() / h.hexdigest()[:20] / LIBRARY


_lock = threading.Lock()
_status: Status | None = None
_handles: list = []  # the loaded library, kept alive for the process
_bf16_native = False  # this CPU computes bfloat16 convolutions natively (set when loaded)
BF16_ENV = "NETC_ONEDNN_BF16"


def _load() -> Status:
    import ctypes

    import jax

    if not enabled_by_env():
        return Status(False, f"turned off by {ENV}=0")
    if jax.default_backend() != "cpu":  # the custom calls are registered for the CPU only
        return Status(False, f"CPU kernels; this process computes on {jax.default_backend()}")
    found = find_onednn()
    if found is None:
        return Status(False, "oneDNN not found (pip install 'netc[onednn]', or set "
                             "NETC_ONEDNN_ROOT)")
    cxx = _compiler()
    if cxx is None:
        return Status(False, "no C++ compiler (c++, g++ or $CXX) to build the kernels")
    inc, lib = found
    path = _library_path(cxx, jax.ffi.include_dir(), inc, lib)
    try:
        if not path.is_file():
            print(f"netc: building the oneDNN convolution kernels once into {path.parent} ...",
                  file=sys.stderr, flush=True)
            _build(path, cxx, jax.ffi.include_dir(), inc, lib)
        handle = ctypes.CDLL(str(path))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handle, symbol)),
                                        platform="cpu")
    except (BuildError, OSError, subprocess.SubprocessError, AttributeError) as e:
        return Status(False, f"the oneDNN kernels could not be built or loaded: {e}")
    _handles.append(handle)
    global _bf16_native
    _bf16_native = bool(handle.NetcOnednnBf16Native())
    return Status(True, f"oneDNN kernels {path} (oneDNN {lib})")


def status() -> Status:
    """Whether the kernels are in use in this process (built and loaded on the first call)."""
    global _status
    with _lock:
        if _status is None:
            _status = _load()
        return _status


def available() -> bool:
    return status().ok


def usable(ctx, x, bfloat16: bool = False) -> bool:
    """Whether a layer may call the native kernels on x in this walk of the net: the Net allows
    them (Context.kernels), the library is built and loaded, and x is float32 — or bfloat16,
    for a kernel that takes it (`bfloat16`: the convolutions) where bf16_enabled()."""
    if not ctx.kernels:
        return False
    if x.dtype == "float32":
        return available()
    return bfloat16 and x.dtype == "bfloat16" and available() and bf16_enabled()


def bf16_enabled() -> bool:
    """Whether bfloat16 convolutions (the solver's `precision: bfloat16`) run through oneDNN
    in bfloat16: where this CPU computes bfloat16 natively (AVX-512 BF16, AMX, AVX2-VNNI-2; the
    library's NetcOnednnBf16Native), as PyTorch's bfloat16 convolutions do. Elsewhere oneDNN 3.2
    has no bfloat16 convolution at all (it cannot create the primitive): the convolutions widen
    to float32 instead (compiler/layers/conv.py _by_onednn). NETC_ONEDNN_BF16=0 keeps bfloat16
    convolutions in XLA everywhere; read when a program is traced."""
    return bf16_allowed() and bf16_native()


def conv_dtype(dtype, depthwise: bool = False) -> str | None:
    """The dtype netc's oneDNN convolutions compute a `dtype` (de)convolution in, or None when it
    stays in XLA: float32 as itself; bfloat16 natively where bf16_enabled, else widened to
    float32 (compiler/layers/conv.py casts around the call) unless NETC_ONEDNN_BF16=0; nothing
    else. A depthwise bfloat16 convolution is widened to float32 even where the CPU has
    bfloat16 units: oneDNN 3.2's bfloat16 depthwise backward ran 4-30x slower than its float32
    one on an AVX-512 BF16 CPU (MobileNet v2 at 96, batch 64, `netc time`: 57-64 ms against 2-17
    ms a layer). Needs the kernels built; whether a Net may call them at all is Context.kernels.
    The one rule behind conv.py's lowering, `netc train`'s start line and `netc time`'s column."""
    name = str(getattr(dtype, "name", dtype))
    if name not in ("float32", "bfloat16") or not available():
        return None
    if name == "float32" or (bf16_enabled() and not depthwise):
        return name
    return "float32" if bf16_allowed() else None


def bf16_allowed() -> bool:
    """Whether bfloat16 convolutions may go to oneDNN at all: NETC_ONEDNN_BF16 is not 0."""
    return os.environ.get(BF16_ENV, "").strip().lower() not in ("0", "false", "no", "off")


def bf16_native() -> bool:
    """Whether oneDNN computes bfloat16 convolutions natively on this CPU (the kernels loaded)."""
    return available() and _bf16_native


def conv_call(which: str, result, a, b, *, strides, dilation, pads, groups: int):
    """One oneDNN convolution primitive on (a, b) → an array like `result`: `which` is
    "forward" (x, w → y), "backward_data" (dy, w → dx), "backward_weights" (x, dy → dw) or
    "backward_weights_bias" (x, dy → (dw, db): float32; `result` a pair).
    Activations are N×C×spatial (logically: in memory as activation_layout says), weights
    O×(C/groups)×k; pads are (before, after) per axis."""
    import jax
    import numpy as np

    st = status()  # builds and registers the kernels on first use
    if not st.ok:
        raise RuntimeError(st.detail)
    last = activation_layout(a.ndim)
    kw = {}
    if last:  # XLA hands over and takes back N×spatial×C memory (layout 2)
        weights = which.startswith("backward_weights")
        kw = {"input_layouts": [last, last if weights else None],
              "output_layouts": None if weights else last}
        layout = 2
    else:  # N×C×spatial memory, reordered inside: oneDNN's choice (0) or channel-blocked (1)
        layout = int(which == "forward" and _blocked_forward(b.shape, groups, strides))
    call = jax.ffi.ffi_call(f"netc_onednn_conv_{which}", result, vmap_method="sequential", **kw)
    i64 = np.int64
    return call(a, b, strides=np.asarray(strides, i64), dilation=np.asarray(dilation, i64),
                pad_lo=np.asarray([p[0] for p in pads], i64),
                pad_hi=np.asarray([p[1] for p in pads], i64), groups=i64(groups),
                layout=i64(layout))


def _blocked_forward(w_shape, groups: int, strides) -> bool:
    """Whether the forward runs on channel-blocked activations (nChw8c, the layout of oneDNN's
    AVX2 backward kernels) instead of its own choice (channels-last on AVX2). Reordering netc's
    N×C×H×W to and from channels-last is a transpose, ~2.5× the cost of a blocked reorder
    (ONEDNN_VERBOSE, MobileNet v2: 2.3 vs 0.9 ms per call). It pays where the convolution is
    cheap next to its activations: stride-1 1×1 and depthwise layers (`python
    bench/onednn_layout.py mobilenet 6`, MobileNet v2 96 b64: 87.9 vs 83.0 samples/s, 1.32 vs
    1.49 CPU s/step). For CIFAR ResNet-18 (3×3 and strided 1×1 layers) two runs of every layer
    blocked disagreed (25.9 vs 27.5 samples/s, then 33.6 vs 30.8; bench/results/cpu/
    onednn_layout.txt), so those layers keep oneDNN's choice until a measurement settles it.
    NETC_ONEDNN_FORWARD_LAYOUT = "any" or "blocked" sets it for every layer (read when a program
    is traced)."""
    v = os.environ.get("NETC_ONEDNN_FORWARD_LAYOUT", "").strip().lower()
    if v in ("any", "blocked"):
        return v == "blocked"
    pointwise = all(k == 1 for k in w_shape[2:]) and all(int(s) == 1 for s in strides)
    depthwise = groups > 1 and w_shape[1] == 1
    return pointwise or depthwise


def channels_last() -> bool:
    """Whether the native kernels exchange activations with XLA channels-last (the default):
    each custom call asks XLA for its activations as N×spatial×C in memory (jax.ffi.ffi_call's
    input/output layouts; the arrays stay N×C×spatial to the program), and XLA's layout
    assignment carries that layout through the elementwise ops, pooling and BatchNorm kernels
    between two convolutions, so a net transposes once at its input instead of reordering every
    convolution's operands inside oneDNN, whose AVX-512 kernels take channels-last as it is.
    Same process, alternating windows, a 2-core AVX-512 host (`python bench/onednn_layout.py
    resnet|mobilenet|lenet 6`; bench/results/cpu/onednn_layout.txt), samples/s: CIFAR ResNet-18
    batch 128 85.6 -> 91.3, MobileNet v2 96 batch 64 148.8 -> 214.5, LeNet 5,479 -> 5,955.
    NETC_ONEDNN_LAYOUT=channels_first keeps N×C×spatial memory (oneDNN reorders inside each
    call; NETC_ONEDNN_FORWARD_LAYOUT then picks the forward's inner layout). Read when a program
    is traced. Only a performance choice: XLA converts wherever a producer and
    a consumer disagree, so values never depend on it."""
    return os.environ.get(LAYOUT_ENV, "").strip().lower() != "channels_first"


def activation_layout(ndim: int) -> tuple | None:
    """The major-to-minor memory order (N, spatial..., C) the kernels ask XLA for on an
    ndim-axis activation, or None for XLA's default row-major N×C×spatial: channels-last for 2
    or 3 spatial axes (oneDNN's nhwc, ndhwc) where channels_last(). Not for one spatial axis:
    1-D convolutions stay in XLA (compiler/layers/conv.py), so a BatchNorm or pooling between
    them asking for channels-last would only make XLA transpose around it."""
    if 4 <= ndim <= 5 and channels_last():
        return (0, *range(2, ndim), 1)
    return None


def batch_norm_stats_call(x):
    """(mean, biased variance) of x per channel (axis 1), each (C,) float32, by batch_norm.cc:
    one pass over x (float32 or bfloat16, read as it is)."""
    import jax

    st = status()
    if not st.ok:
        raise RuntimeError(st.detail)
    c = jax.ShapeDtypeStruct((x.shape[1],), "float32")
    last = activation_layout(x.ndim)
    if last:
        return jax.ffi.ffi_call("netc_batch_norm_stats_last", (c, c), vmap_method="sequential",
                                input_layouts=[last])(x)
    return jax.ffi.ffi_call("netc_batch_norm_stats", (c, c), vmap_method="sequential")(x)


def batch_norm_backward_call(dy, x, mean, inv, gamma, beta, lo: float, hi: float):
    """(dx, dgamma, dbeta) of clamp(gamma·(x − mean)·inv + beta, lo, hi) per channel (axis 1)
    with the batch's statistics, by batch_norm.cc (lo/hi ±inf for no bound): dy, x and dx
    float32 or all bfloat16, the per-channel operands and results float32."""
    import jax
    import numpy as np

    st = status()
    if not st.ok:
        raise RuntimeError(st.detail)
    c = (x.shape[1],)
    result = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(c, "float32"),
              jax.ShapeDtypeStruct(c, "float32"))
    last = activation_layout(x.ndim)
    kw = {}
    if last:
        kw = {"input_layouts": [last, last, None, None, None, None],
              "output_layouts": [last, None, None]}
    call = jax.ffi.ffi_call("netc_batch_norm_backward" + ("_last" if last else ""), result,
                            vmap_method="sequential", **kw)
    return call(dy, x, mean.reshape(c), inv.reshape(c), gamma.reshape(c), beta.reshape(c),
                lo=np.float32(lo), hi=np.float32(hi))
