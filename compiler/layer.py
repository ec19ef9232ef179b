"""The layer unit: Caffe's Reshape / LayerSetUp / Forward trio for one layer type.

A unit is registered under its Caffe type string. Everything that lists layer types — validation,
`netc layers`, `netc schema`, the generic tests — derives from `REGISTRY`. Shape rules are pure
Python; `apply` imports JAX lazily so that `netc check` never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from netc.errors import NetcError
from netc.spec.errors import SpecError
from netc.spec.messages import FillerParameter, Message

# A blob shape in Caffe's order (N×C×H×W). The batch axis (axis 0, or axis 1 of a time-major
# T×N×… blob) holds the symbolic batch "N", or a BatchSize when the batch is concrete.
Dim = int | str
Shape = tuple[Dim, ...]
BATCH = "N"


class BatchSize(int):
    """A concrete batch size standing on a blob's batch axis: an int in every respect (arithmetic
    gives plain ints, it equals and hashes as its value, prints as one), so shape rules need not
    know it; the planner marks the data layers' batch axes with it, and the layers that copy a
    dimension (`x[:axis] + …`) carry the mark along, so `batch_axis` finds the batch of a concrete
    T×N×… blob as it finds the symbol "N"."""

    __slots__ = ()
    __repr__ = int.__repr__
    __str__ = int.__repr__


def is_batch(d: Dim) -> bool:
    """The dimension is the batch: the symbol "N" or a concrete BatchSize."""
    return d == BATCH if isinstance(d, str) else isinstance(d, BatchSize)


def batch_axes(shape: Sequence[Dim]) -> list[int]:
    """Every axis of `shape` that holds the batch (normally at most one)."""
    return [i for i, d in enumerate(shape) if is_batch(d)]


def batch_axis(shape: Sequence[Dim]) -> int | None:
    """The axis of `shape` that holds the batch (the first, if several), or None when no axis is
    known to (a blob whose batch a layer merged away, a parameter-like input)."""
    axes = batch_axes(shape)
    return axes[0] if axes else None


# One blob may hold at most this many elements (2**40 floats is already 4 TiB).
MAX_ELEMENTS = 2**40


@dataclass(frozen=True)
class ParamDecl:
    """One parameter blob of a layer: its shape, filler, and whether the solver learns it."""

    shape: tuple[int, ...]
    filler: FillerParameter | None = None  # None: unset in the spec (Caffe fills constant 0)
    default_filler: FillerParameter = field(default_factory=FillerParameter)
    learned: bool = True  # False: state updated by the layer itself (BatchNorm statistics)
    # A carried state (a recurrent layer's last hidden state, read back by the next batch as
    # Caffe's RecurrentLayer does): per batch, not a parameter. Never counted, never shared
    # between the TRAIN and TEST nets, never part of the architecture or loaded by --weights;
    # kept in checkpoints so that a resumed run continues exactly. Always `learned=False`, and
    # its role is named "carry_..." (is_carry_role) so that trees of arrays say it too.
    carry: bool = False

    def __post_init__(self):
        if self.carry and self.learned:
            raise ValueError("a carried state is not learned")

    @property
    def count(self) -> int:
        return math.prod(self.shape)


CARRY_PREFIX = "carry_"


def is_carry_role(role: str) -> bool:
    """A (layer, role) entry of a state tree that is a carried state, not a statistic."""
    return role.startswith(CARRY_PREFIX)


def cpu_dot_dtype(dtype):
    """The dtype a matmul or convolution that XLA lowers runs in for `dtype` operands: float32
    for bfloat16/float16 on a CPU, else `dtype` itself. XLA's CPU backend computes a narrow dot
    or convolution in float32 anyway (operands widened, the result rounded), but as separate
    conversions around each op, and its narrow-precision paths are slower: LeNet's conv1 (im2col
    + matmul) forward+backward 8.3 ms in bfloat16 against 3.4 in float32, ip1 1.4 against 0.9
    (`netc time`, batch 64). Widening explicitly gives XLA's own numerics at float32's speed.
    (The recurrent layers do the same for their scans; oneDNN's kernels take bfloat16 where the
    CPU computes it natively.)"""
    import jax
    import jax.numpy as jnp

    dt = jnp.dtype(dtype)
    if jnp.issubdtype(dt, jnp.floating) and jnp.finfo(dt).bits < 32 \
            and jax.default_backend() == "cpu":
        return jnp.dtype(jnp.float32)
    return dt


def wide(x):
    """`x` as float32 when it is a narrower float (bfloat16, float16), else unchanged: what the
    reductions that lose too much in 8 or 11 mantissa bits (softmax, normalisation statistics,
    losses and metrics) compute in when a net runs in mixed precision (runtime/precision.py).
    A no-op for float32 blobs and for integer labels."""
    import jax.numpy as jnp

    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
        return x.astype(jnp.float32)
    return x


class LoweringError(NetcError):
    """A net that planned cleanly cannot run as asked: an input blob not given, a parameter file a
    layer reads at run time that is unusable. Defined here (not in lower.py) so that layer units
    can raise it without importing the lowering."""


def fmt_shape(shape: Sequence[Dim]) -> str:
    """The one way netc writes a blob shape: 64×1×28×28, N×10, or "scalar" for ()."""
    return "×".join(str(d) for d in shape) if len(shape) else "scalar"


def canonical_axis(axis: int, ndim: int, path: tuple = ("axis",)) -> int:
    """Caffe's Blob::CanonicalAxisIndex: negative axes count from the end."""
    if not -ndim <= axis < ndim:
        raise SpecError(f"axis {axis} is out of range for a {ndim}-axis blob", path)
    return axis % ndim


def count(shape: Shape, start: int = 0, end: int | None = None) -> int:
    """Number of elements in shape[start:end]; the symbolic batch has no count."""
    dims = shape[start:end]
    if any(isinstance(d, str) for d in dims):
        raise SpecError("needs a concrete batch size here (use --batch N or give the Input a batch)")
    return math.prod(dims)


@dataclass(frozen=True)
class LabelFact:
    """What a loss or metric needs of the blob it reads as labels (Layer.label_fact).

    `shape` is the label's shape per sample, without the batch axis: for class indices Caffe's
    rule, the prediction's shape with its class axis removed (N×C → (), N×C×H×W with classes on
    axis 1 → (H, W)); for real-valued targets (`kind == "target"`) the prediction's own shape per
    sample. Only the element count must match (Caffe also accepts N×1×H×W for N×H×W).
    """

    layer: str  # the consumer's name (several, comma-separated, when merged)
    bottom: int  # index of the label among the layer's bottoms
    shape: tuple[int, ...]
    classes: int | None  # labels lie in [0, classes); None: any integer (or not classes)
    ignore_label: int | None = None  # a label value that is skipped, if any
    kind: str = "class"  # "class": integer class indices; "target": real-valued targets
    rule: str = ""  # why this shape, for messages ("predictions score 8×3×16×16, classes on axis 1")

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class DataFact:
    """What a data layer produces and from where (Layer.data_fact): `source` (None for an Input
    layer, whose blobs the caller gives), `roles` of its tops in order ("data", "label")."""

    source: str | None
    batch_size: int | None
    shuffle: bool = False
    transform: Any = None  # TransformationParameter or None
    roles: tuple[str, ...] = ("data",)
    sample_shape: tuple[int, ...] | None = None  # one data sample before the transform, if known
    batch_axis: int = 0  # the axis of the tops that indexes samples (1 for time-major T×N)
    # top role -> number of distinct integer ids it holds (a text source's vocabulary size), for
    # checks by the layers that read them (Embed's input_dim)
    vocab: dict[str, int] = field(default_factory=dict)
    # what the source's reader needs besides the source (an image source: the size images are
    # resized to, colour, root folder, split), passed to runtime.data.load_source as `options`
    options: dict[str, Any] = field(default_factory=dict)


class Layer:
    """Base of every layer unit. Subclasses set the class attributes and override the methods."""

    type: ClassVar[str]
    # The `*_param` message this type reads, and the name of its field in the layer mapping.
    param_field: ClassVar[str | None] = None
    Param: ClassVar[type[Message] | None] = None
    # Other Caffe fields the type accepts, e.g. {"loss_param": LossParameter}.
    extra_params: ClassVar[dict[str, type[Message]]] = {}
    bottoms: ClassVar[tuple[int, int | None]] = (1, 1)  # (min, max); max None = unbounded
    tops: ClassVar[tuple[int, int | None]] = (1, 1)
    bottom_names: ClassVar[tuple[str, ...]] = ("input",)  # for arity messages
    is_loss: ClassVar[bool] = False  # its first top has loss_weight 1 by default
    is_data: ClassVar[bool] = False  # produces the net's inputs
    is_metric: ClassVar[bool] = False  # a scalar score reported, not minimised (Accuracy)
    # How the layer maps spatial positions (for receptive fields): "window" (override window()),
    # "pointwise" (keeps the spatial grid), or "none" (mixes or drops spatial positions).
    geometry: ClassVar[str] = "none"
    summary: ClassVar[str] = ""
    example: ClassVar[str] = ""  # YAML of one layer; tests check that it validates and plans
    # A data layer's first top as `--input-shape` declared it (compiler/input_shapes.py; the
    # planner sets it): the sizes of a source that lives outside the spec (an LMDB database).
    declared_shape: Shape | None = None

    def __init__(self, spec: Any, spec_dir: str | None = None):
        self.spec = spec
        self.spec_dir = spec_dir  # folder of the spec file: relative data paths start there
        self.p = getattr(spec, self.param_field) if self.param_field else None
        self.warnings: list[tuple[str, tuple]] = []

    # --- shape rule -------------------------------------------------------------------------
    def infer(self, bottoms: list[Shape]) -> list[Shape]:
        raise NotImplementedError

    def params(self, bottoms: list[Shape]) -> dict[str, ParamDecl]:
        return {}

    def macs(self, bottoms: list[Shape], tops: list[Shape]) -> int:
        """Multiply-accumulates per sample of the forward pass."""
        return 0

    def window(self, bottoms: list[Shape]) -> list[tuple[int, int]] | None:
        """Per spatial axis (effective kernel extent, stride); only for geometry == "window"."""
        return None

    def resolve(self, bottoms: list[Shape]) -> Any:
        """Per-shape decisions made once at plan time (window, pads, output dims, the lowering
        algorithm), stored on the PlannedLayer as `resolved`; apply reads ctx.layer.resolved
        instead of recomputing them from the arrays' shapes. Default: nothing."""
        return None

    def label_fact(self, bottoms: list[Shape]) -> LabelFact | None:
        """For a loss or metric that reads labels or targets: what it needs of them (see
        LabelFact), given its planned bottom shapes. None: the layer reads no labels."""
        return None

    def data_fact(self) -> DataFact | None:
        """For a data layer: its source, batch size, shuffle, transform and tops' roles."""
        return None

    def describe(self) -> str:
        """Extra detail for `netc check`'s table (e.g. a pooling layer's round mode)."""
        return ""

    def describe_lowering(self, resolved: Any, kernel_dtype: str = "float32") -> str:
        """The algorithm the lowering runs this layer with, given its plan-time decisions
        (PlannedLayer.resolved), for `netc time`: "im2col+matmul", "lax.conv", "lax.scan"...
        `kernel_dtype`: what a native kernel computes in, for a layer that calls one ("float32",
        "bfloat16", "bfloat16 widened to float32"). Default: the layer type (no choice to
        report)."""
        return self.type

    def weight_roles(self, params: dict[str, ParamDecl]) -> list[str]:
        """The roles that are weights (not biases): an unset filler leaves them constant 0 and
        every unit equal, which `netc check` warns about. Default: the role "weight"."""
        return [r for r in params if r == "weight"]

    def saved_elements(self, bottoms: list[Shape], tops: list[Shape]) -> int:
        """Elements the backward pass keeps beyond the layer's tops (a recurrent layer's per-step
        gate pre-activations and states), for the memory estimate. Default: none."""
        return 0

    def state_pairs(self) -> list[tuple[int, int]]:
        """(bottom index, top index) of each initial state the layer reads as a bottom and
        gives back, advanced, as a top (a recurrent layer with expose_hidden: h0 → hT): a
        step-by-step generator feeds each top back into its bottom. Default: none."""
        return []

    def warn(self, message: str, *path: str | int) -> None:
        self.warnings.append((message, path))

    # --- lowering (JAX) ---------------------------------------------------------------------
    def apply(self, params: dict, bottoms: list, ctx: Any) -> list:
        raise NotImplementedError(f"{self.type} has no JAX lowering yet")


REGISTRY: dict[str, type[Layer]] = {}


def register(cls: type[Layer]) -> type[Layer]:
    """Class decorator: add a unit to the closed registry under its Caffe type string."""
    if cls.type in REGISTRY:
        raise ValueError(f"layer type {cls.type!r} registered twice")
    REGISTRY[cls.type] = cls
    return cls


def same_shape(bottoms: list[Shape]) -> list[Shape]:
    return [bottoms[0]]


# --- what made a value in one walk of the net (lower.Net.apply), for layers that fuse -------


@dataclass(frozen=True)
class Made:
    """What made a value in one walk of the net: the layer, the parameters it used, its
    bottoms."""

    layer: Any  # PlannedLayer
    params: dict
    bottoms: list
    notes: dict  # what the layer left for layers that fuse with it (Context.notes)


class Sources:
    """The producers of one walk's values, so that a layer may fuse with what made its input
    (an LSTM projects an Embed's table; an activation folds a BatchNorm + Scale into one pass):
    by blob name (the last writer) and by the value itself (in-place chains rewrite the name)."""

    def __init__(self):
        self._by_blob: dict[str, Made] = {}
        self._by_value: dict[int, tuple[Any, Made]] = {}
        # {layer: (the layers it computes as one, itself included; how)} for the layers that
        # fused with their producers in this walk (`netc time` names them)
        self.fused: dict[str, tuple[tuple[str, ...], str]] = {}

    def record(self, blob: str, value, made: Made) -> None:
        self._by_blob[blob] = made
        self._by_value[id(value)] = (value, made)  # the value is held: its id stays its own

    def of_blob(self, blob: str) -> Made | None:
        return self._by_blob.get(blob)

    def of_value(self, value) -> Made | None:
        """The layer that made `value` in this walk (None for inputs and values made outside)."""
        got = self._by_value.get(id(value))
        return got[1] if got is not None and got[0] is value else None


def stops_gradient(layer, i: int) -> bool:
    """Whether the layer's (a PlannedLayer's) propagate_down stops the gradient of its bottom
    `i`."""
    pd = layer.unit.spec.propagate_down
    return bool(pd) and not pd[i]
