"""Caffe's protobuf messages as frozen pydantic models (names, defaults and meaning from
BVLC/caffe's src/caffe/proto/caffe.proto).

The YAML mapping is mechanical: message -> mapping; repeated field -> list (one element may be
written as a scalar); enum -> its name as a string. Fields Caffe marks deprecated but that real
prototxt files still use (`pad_h`, `concat_dim`, ...) are accepted. Fields that only select a Caffe
engine (`engine`) are accepted and ignored: XLA chooses the kernels.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

# Dimensions and counts are bounded so that products stay far from overflow.
MAX_DIM = 2**31 - 1


def _as_tuple(value: Any) -> Any:
    """A repeated field may be written as a list or, for one element, as a scalar."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, tuple):
        return value
    return (value,)


class Message(BaseModel):
    """Base of every message: unknown fields are errors, numbers are never parsed from strings,
    NaN/inf are refused, instances are immutable and hashable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False,
                              defer_build=True)

    def set_fields(self) -> set[str]:
        """Fields the spec wrote explicitly (protobuf's `has_*`)."""
        return set(self.model_fields_set)


def Repeated(item: Any) -> Any:  # noqa: N802 - reads like a type
    # The JSON Schema admits both spellings editors will see: a list, or one element.
    return Annotated[tuple[item, ...], BeforeValidator(_as_tuple, json_schema_input_type=item | list[item])]


PosInt = Annotated[int, Field(ge=1, le=MAX_DIM)]
NonNegInt = Annotated[int, Field(ge=0, le=MAX_DIM)]
Axis = Annotated[int, Field(ge=-32, le=32)]
Phase = Literal["TRAIN", "TEST"]
Engine = Literal["DEFAULT", "CAFFE", "CUDNN"]


def _size_hw(v: tuple[int, ...]) -> tuple[int, ...]:
    if len(v) not in (1, 2):
        raise ValueError(f"size must be one value or [h, w], got {len(v)} values")
    return v


SizeHW = Annotated[Repeated(PosInt), AfterValidator(_size_hw)]  # one side, or [h, w]


# --- generic messages --------------------------------------------------------------------------


class BlobShape(Message):
    dim: Repeated(Annotated[int, Field(ge=-1, le=MAX_DIM)]) = ()


class FillerParameter(Message):
    # `orthogonal` and its `gain` are netc extensions (Saxe et al. 2014, Keras's Orthogonal): see
    # compiler/fillers.py for how a blob is cut into orthogonal blocks.
    type: Literal["constant", "gaussian", "positive_unitball", "uniform", "xavier", "msra", "bilinear",
                  "orthogonal"] = "constant"
    value: float = 0.0
    min: float = 0.0
    max: float = 1.0
    mean: float = 0.0
    std: Annotated[float, Field(ge=0)] = 1.0
    sparse: int = -1
    variance_norm: Literal["FAN_IN", "FAN_OUT", "AVERAGE"] = "FAN_IN"
    gain: float = 1.0  # netc extension: the orthogonal filler's scale


class NetState(Message):
    phase: Phase = "TEST"
    level: int = 0
    stage: Repeated(str) = ()


class NetStateRule(Message):
    phase: Phase | None = None
    min_level: int | None = None
    max_level: int | None = None
    stage: Repeated(str) = ()
    not_stage: Repeated(str) = ()

    def matches(self, state: NetState) -> bool:
        """Caffe's Net::StateMeetsRule."""
        if self.phase is not None and self.phase != state.phase:
            return False
        if self.min_level is not None and state.level < self.min_level:
            return False
        if self.max_level is not None and state.level > self.max_level:
            return False
        return all(s in state.stage for s in self.stage) and not any(
            s in state.stage for s in self.not_stage
        )


class ParamSpec(Message):
    name: str | None = None
    share_mode: Literal["STRICT", "PERMISSIVE"] = "STRICT"
    lr_mult: Annotated[float, Field(ge=0)] = 1.0
    decay_mult: Annotated[float, Field(ge=0)] = 1.0
    # netc extensions (regularisers of a learned blob): after each update, every slice along
    # axis 0 (an output unit's weights: a row of InnerProduct's N_out×K, a filter of
    # Convolution's C_out×C_in×kh×kw, an Embed vector) longer than max_norm in L2 is scaled back
    # to it (Srivastava et al. 2014); weight_noise adds N(0, std²) to the blob in each TRAIN
    # forward pass (Graves 2011), the gradient going to the noiseless blob.
    max_norm: Annotated[float, Field(gt=0)] | None = None
    weight_noise: Annotated[float, Field(ge=0)] = 0.0


# --- transform_param's netc extensions: on-the-fly augmentation (runtime/augment.py applies them,
# compiler/transform.py has their shape rule). Random ones act in TRAIN only.

Probability = Annotated[float, Field(ge=0, le=1)]


def _range_of(values: tuple[float, ...], what: str, *, upper: float | None = None,
              single: bool = False) -> tuple[float, float]:
    """[a, b] with 0 < a ≤ b (≤ upper); one value v stands for [v, v] when `single`."""
    if single and len(values) == 1:
        values = (values[0], values[0])
    bound = "" if upper is None else f" ≤ {upper:g}"
    shown = ", ".join(f"{v:g}" for v in values)
    if len(values) != 2 or not (0 < values[0] <= values[1] and (upper is None
                                                                 or values[1] <= upper)):
        raise ValueError(f"{what} must be {'one value or ' if single else ''}two values [a, b] "
                         f"with 0 < a ≤ b{bound}, got [{shown}]")
    return values


class RandomResizedCropParameter(Message):
    """torchvision's RandomResizedCrop: a box of area fraction in `scale` of the image and aspect
    ratio (w/h) in `ratio` (log-uniform), resized bilinearly to `size`; TEST: the central box of
    side fraction `test_crop`, resized to `size`."""

    size: SizeHW
    scale: Repeated(float) = (0.08, 1.0)
    ratio: Repeated(float) = (0.75, 4 / 3)
    test_crop: Annotated[float, Field(gt=0, le=1)] = 1.0

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return _range_of(v, "scale (the box's area fraction)", upper=1.0)

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return _range_of(v, "ratio (the box's width / height)")


class FlipParameter(Message):
    """Flips with these probabilities (Caffe's `mirror` is horizontal: 0.5)."""

    horizontal: Probability = 0.0
    vertical: Probability = 0.0


class Rotate90Parameter(Message):
    """A rotation by one of `angles` (degrees, counter-clockwise), each equally likely."""

    angles: Repeated(Literal[0, 90, 180, 270]) = (0, 90, 180, 270)


class RotateParameter(Message):
    """A rotation by an angle uniform in [-degrees, degrees], bilinear; `fill` outside (one
    warp: rotate's fill and translate's must agree when both are given)."""

    degrees: Annotated[float, Field(ge=0, le=180)]
    fill: float = 0.0


class TranslateParameter(Message):
    """A shift by whole pixels, uniform in [-m, m] on each axis: m = `pixels`, or `fraction` of
    the height (rows) and width (columns); `fill` where the image moved away."""

    pixels: NonNegInt | None = None
    fraction: Annotated[float, Field(ge=0, lt=1)] | None = None
    fill: float = 0.0

    @model_validator(mode="after")
    def _one(self) -> TranslateParameter:
        if (self.pixels is None) == (self.fraction is None):
            raise ValueError("give one of pixels (the largest shift) or fraction (of the size)")
        return self


class ColorJitterParameter(Message):
    """torchvision's ColorJitter: brightness, contrast and saturation factors uniform in
    [max(0, 1 - v), 1 + v], hue shifted by up to ±hue of a turn; values clipped to the data's
    range after each."""

    brightness: Annotated[float, Field(ge=0)] = 0.0
    contrast: Annotated[float, Field(ge=0)] = 0.0
    saturation: Annotated[float, Field(ge=0)] = 0.0
    hue: Annotated[float, Field(ge=0, le=0.5)] = 0.0


class ColorDropParameter(Message):
    """Grayscale (ITU-R 601 luma in all three channels) with probability `p` (SimCLR)."""

    p: Probability


class CutoutParameter(Message):
    """`holes` holes of size×size (or [h, w]) set to `fill`, centred anywhere in the image (so a
    hole may be cut by the border; DeVries & Taylor 2017)."""

    holes: PosInt = 1
    size: SizeHW
    fill: float = 0.0


class GaussianNoiseParameter(Message):
    """Independent N(0, std²) noise added to every value (not clipped)."""

    std: Annotated[float, Field(ge=0)]


class GaussianBlurParameter(Message):
    """A gaussian blur with sigma uniform in `sigma` ([a, b], or one value), with probability
    `p`; kernel_size (odd) defaults to 2·ceil(3·b) + 1; borders replicate the edge."""

    sigma: Repeated(float) = (0.1, 2.0)
    kernel_size: PosInt | None = None
    p: Probability = 1.0

    @field_validator("sigma")
    @classmethod
    def _sigma(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return _range_of(v, "sigma", single=True)

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int | None) -> int | None:
        if v is not None and v % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {v}")
        return v


class SobelParameter(Message):
    """Deterministic edge maps (DeepCluster's input): the image made grayscale, then its Sobel
    derivatives (2 channels: d/dx, d/dy) or their magnitude (1 channel); in TEST too."""

    output: Literal["gradients", "magnitude"] = "gradients"


class TransformationParameter(Message):
    scale: float = 1.0
    mirror: bool = False
    crop_size: NonNegInt = 0
    crop_h: NonNegInt = 0
    crop_w: NonNegInt = 0
    mean_file: str | None = None
    mean_value: Repeated(float) = ()
    force_color: bool = False
    force_gray: bool = False
    # netc extensions (see above), applied in this order after crop and mirror: one geometric
    # warp (random_resized_crop, flip, rotate90, rotate, translate), color_jitter, color_drop,
    # gaussian_blur, gaussian_noise, cutout, then sobel.
    random_resized_crop: RandomResizedCropParameter | None = None
    flip: FlipParameter | None = None
    rotate90: Rotate90Parameter | None = None
    rotate: RotateParameter | None = None
    translate: TranslateParameter | None = None
    color_jitter: ColorJitterParameter | None = None
    color_drop: ColorDropParameter | None = None
    gaussian_blur: GaussianBlurParameter | None = None
    gaussian_noise: GaussianNoiseParameter | None = None
    cutout: CutoutParameter | None = None
    sobel: SobelParameter | None = None


class LossParameter(Message):
    ignore_label: int | None = None
    normalization: Literal["FULL", "VALID", "BATCH_SIZE", "NONE"] = "VALID"
    normalize: bool | None = None


class SoftmaxLossParameter(LossParameter):
    """SoftmaxWithLoss's loss_param: Caffe's LossParameter, plus netc's label_smoothing ε
    (Szegedy et al. 2016, PyTorch's cross_entropy): the target is (1 − ε)·onehot + ε/C, so each
    position's loss is (1 − ε)·(−log p_label) + ε·mean_c(−log p_c)."""

    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0


# --- layer parameters (alphabetical, as in caffe.proto) ------------------------------------------


class AccuracyParameter(Message):
    top_k: PosInt = 1
    axis: Axis = 1
    ignore_label: int | None = None


class ConcatParameter(Message):
    axis: Axis = 1
    concat_dim: NonNegInt | None = None  # deprecated alias of axis


class ConvolutionParameter(Message):
    num_output: PosInt
    bias_term: bool = True
    pad: Repeated(NonNegInt) = ()
    kernel_size: Repeated(PosInt) = ()
    stride: Repeated(PosInt) = ()
    dilation: Repeated(PosInt) = ()
    pad_h: NonNegInt | None = None
    pad_w: NonNegInt | None = None
    kernel_h: PosInt | None = None
    kernel_w: PosInt | None = None
    stride_h: PosInt | None = None
    stride_w: PosInt | None = None
    group: PosInt = 1
    weight_filler: FillerParameter | None = None
    bias_filler: FillerParameter | None = None
    engine: Engine = "DEFAULT"
    axis: Axis = 1
    force_nd_im2col: bool = False
    # netc extensions: padding beyond Caffe's symmetric `pad`. pad_mode SAME (output = ceil(in /
    # stride)), VALID (no padding), CAUSAL (1-D: left pad dilation·(k − 1), WaveNet); or explicit
    # per-side pads `pad_begin` / `pad_end` (one value for every spatial axis, or one per axis).
    pad_mode: Literal["CAFFE", "SAME", "VALID", "CAUSAL"] = "CAFFE"
    pad_begin: Repeated(NonNegInt) = ()
    pad_end: Repeated(NonNegInt) = ()


class DataParameter(Message):
    source: str | None = None
    batch_size: PosInt | None = None
    rand_skip: NonNegInt = 0
    backend: Literal["LEVELDB", "LMDB"] = "LEVELDB"
    scale: float = 1.0
    mean_file: str | None = None
    crop_size: NonNegInt = 0
    mirror: bool = False
    force_encoded_color: bool = False
    prefetch: PosInt = 4
    # netc extension: worker processes that make the TRAIN phase's batches (through grain,
    # runtime/data_workers.py) instead of one thread; 0: the thread. The batches are the same.
    workers: Annotated[int, Field(ge=0, le=64)] = 0
    # netc extension: reshuffle the source every epoch (Caffe reads its DB in order). For a text
    # source: start each epoch's streams at a random offset instead.
    shuffle: bool = False
    # netc extensions for text sources ("text:PATH", "netc:hamlet"):
    # steps per batch T (required for text); tops are T×N (Caffe's time-major) or, with
    # batch_first, N×T; split [a, b]: the fraction range of the text's characters read.
    seq_len: PosInt | None = None
    batch_first: bool = False
    split: Repeated(float) = (0.0, 1.0)


class DropoutParameter(Message):
    dropout_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.5
    scale_train: bool = True
    # netc extension: spatial dropout (Tompson et al. 2015, Keras's SpatialDropout2D) drops whole
    # channels: one draw per sample and channel of an N×C×… blob.
    spatial: bool = False


class EltwiseParameter(Message):
    operation: Literal["PROD", "SUM", "MAX"] = "SUM"
    coeff: Repeated(float) = ()
    stable_prod_grad: bool = True


class FlattenParameter(Message):
    axis: Axis = 1
    end_axis: Axis = -1


class ImageListParameter(Message):
    """The fields ImageData's message shares with DenseImageData's (SegNet's fork)."""

    # source: a list file of `path label` lines (Caffe), or `folder:PATH` (netc extension: one
    # subfolder per class). Paths are relative to the list file's folder, or root_folder + path.
    source: str | None = None
    batch_size: PosInt | None = None
    rand_skip: NonNegInt = 0
    shuffle: bool = False
    new_height: NonNegInt = 0
    new_width: NonNegInt = 0
    is_color: bool = True
    root_folder: str = ""


class ImageDataParameter(ImageListParameter):
    # deprecated in Caffe (transform_param does these); netc refuses them when set
    scale: float = 1.0
    mean_file: str | None = None
    crop_size: NonNegInt = 0
    mirror: bool = False
    # netc extension: the fraction range [a, b] of each class's images read (a fixed permutation
    # per class, so [0, 0.8] and [0.8, 1] are disjoint and together hold every image)
    split: Repeated(float) = (0.0, 1.0)


class InnerProductParameter(Message):
    num_output: PosInt
    bias_term: bool = True
    weight_filler: FillerParameter | None = None
    bias_filler: FillerParameter | None = None
    axis: Axis = 1
    transpose: bool = False


class InputParameter(Message):
    shape: Repeated(BlobShape) = ()


class PoolingParameter(Message):
    # L2 pooling (sqrt of the sum of squares over the window) is a netc extension.
    pool: Literal["MAX", "AVE", "STOCHASTIC", "L2"] = "MAX"
    pad: Repeated(NonNegInt) = ()
    pad_h: NonNegInt | None = None
    pad_w: NonNegInt | None = None
    kernel_size: Repeated(PosInt) = ()
    kernel_h: PosInt | None = None
    kernel_w: PosInt | None = None
    stride: Repeated(PosInt) = ()
    stride_h: PosInt | None = None
    stride_w: PosInt | None = None
    engine: Engine = "DEFAULT"
    global_pooling: bool = False
    round_mode: Literal["CEIL", "FLOOR"] = "CEIL"
    # Adaptive pooling (a netc extension, PyTorch's AdaptiveAvgPool / AdaptiveMaxPool): the output's
    # spatial size, one value for every axis or one per axis; output bin i of an axis of size n
    # pools [floor(i·n/out), ceil((i+1)·n/out)). Replaces kernel_size / stride / pad.
    output_size: Repeated(PosInt) = ()


class ReLUParameter(Message):
    negative_slope: float = 0.0
    engine: Engine = "DEFAULT"


class ReshapeParameter(Message):
    shape: BlobShape = BlobShape()
    axis: Axis = 0
    num_axes: Annotated[int, Field(ge=-1, le=32)] = -1


class SigmoidParameter(Message):
    engine: Engine = "DEFAULT"


class SoftmaxParameter(Message):
    engine: Engine = "DEFAULT"
    axis: Axis = 1


class TanHParameter(Message):
    engine: Engine = "DEFAULT"


# --- the complete convolutional catalogue (BVLC caffe.proto; netc extensions marked) ------------


class ArgMaxParameter(Message):
    out_max_val: bool = False
    top_k: PosInt = 1
    axis: Axis | None = None


class BatchNormParameter(Message):
    use_global_stats: bool | None = None  # unset: TRAIN batch statistics, TEST global
    moving_average_fraction: Annotated[float, Field(ge=0, le=1)] = 0.999
    eps: Annotated[float, Field(gt=0)] = 1e-5


class BiasParameter(Message):
    axis: Axis = 1
    num_axes: Annotated[int, Field(ge=-1, le=32)] = 1
    filler: FillerParameter | None = None


class ClipParameter(Message):
    min: float
    max: float


class ContrastiveLossParameter(Message):
    margin: float = 1.0
    legacy_version: bool = False


class CropParameter(Message):
    axis: Axis = 2
    offset: Repeated(NonNegInt) = ()


class EmbedParameter(Message):
    """Caffe's Embed: a lookup table of `input_dim` rows of `num_output` values."""

    num_output: PosInt
    input_dim: PosInt
    bias_term: bool = True
    weight_filler: FillerParameter | None = None
    bias_filler: FillerParameter | None = None


class ELUParameter(Message):
    alpha: float = 1.0


class ExpParameter(Message):
    base: float = -1.0
    scale: float = 1.0
    shift: float = 0.0


class GELUParameter(Message):
    """netc extension: GELU; `approximate` selects the tanh approximation."""

    approximate: bool = False


class HingeLossParameter(Message):
    norm: Literal["L1", "L2"] = "L1"


class InfogainLossParameter(Message):
    source: str | None = None  # an .npz holding an array `H` (C×C); identity when unset
    axis: Axis = 1


class LogParameter(Message):
    base: float = -1.0
    scale: float = 1.0
    shift: float = 0.0


class LRNParameter(Message):
    local_size: PosInt = 5
    alpha: float = 1.0
    beta: float = 0.75
    norm_region: Literal["ACROSS_CHANNELS", "WITHIN_CHANNEL"] = "ACROSS_CHANNELS"
    k: float = 1.0
    engine: Engine = "DEFAULT"


class MaxoutParameter(Message):
    """netc extension: the max over `num_pieces` linear pieces (Goodfellow et al.): channel c of the
    output is the max of input channels c·k .. c·k + k − 1."""

    num_pieces: PosInt = 2
    axis: Axis = 1


class MVNParameter(Message):
    normalize_variance: bool = True
    across_channels: bool = False
    eps: Annotated[float, Field(ge=0)] = 1e-9


class PowerParameter(Message):
    power: float = 1.0
    scale: float = 1.0
    shift: float = 0.0


class PReLUParameter(Message):
    filler: FillerParameter | None = None  # Caffe's default: constant 0.25
    channel_shared: bool = False


class RecurrentParameter(Message):
    """Caffe's RecurrentParameter (RNN, LSTM) and netc's GRU. Caffe's fields first; the rest are
    netc extensions (compiler/layers/recurrent.py says what each does)."""

    num_output: PosInt
    weight_filler: FillerParameter | None = None
    bias_filler: FillerParameter | None = None
    debug_info: bool = False  # accepted, ignored (Caffe prints its unrolled net)
    expose_hidden: bool = False
    # netc extensions
    sequence_input: Literal["CONT", "MASK", "LENGTHS", "NONE"] = "CONT"
    batch_first: bool = False
    bidirectional: bool = False
    merge_mode: Literal["CONCAT", "SUM"] = "CONCAT"
    num_layers: Annotated[int, Field(ge=1, le=1024)] = 1
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    output: Literal["SEQUENCE", "LAST"] = "SEQUENCE"
    reset_after: bool = True  # GRU only
    output_layer: bool = True  # RNN only
    recurrent_weight_filler: FillerParameter | None = None
    bptt_steps: NonNegInt = 0
    weight_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0  # DropConnect on W_h (AWD-LSTM)


class ReductionParameter(Message):
    operation: Literal["SUM", "ASUM", "SUMSQ", "MEAN"] = "SUM"
    axis: Axis = 0
    coeff: float = 1.0


class ScaleParameter(Message):
    axis: Axis = 1
    num_axes: Annotated[int, Field(ge=-1, le=32)] = 1
    filler: FillerParameter | None = None  # Caffe's default: constant 1
    bias_term: bool = False
    bias_filler: FillerParameter | None = None


class SliceParameter(Message):
    axis: Axis = 1
    slice_point: Repeated(PosInt) = ()
    slice_dim: NonNegInt | None = None  # deprecated alias of axis


class SPPParameter(Message):
    pyramid_height: PosInt
    pool: Literal["MAX", "AVE", "STOCHASTIC"] = "MAX"
    engine: Engine = "DEFAULT"


class SwishParameter(Message):
    beta: float = 1.0


class ThresholdParameter(Message):
    threshold: float = 0.0


class TileParameter(Message):
    axis: Axis = 1
    tiles: PosInt


class UpsampleParameter(Message):
    """SegNet's Caffe fork: `Upsample` with two bottoms (values, MAX-pooling mask) puts values back
    at the argmax positions. netc extension: with one bottom, `mode` NEAREST or BILINEAR."""

    scale: PosInt | None = None
    scale_h: PosInt | None = None
    scale_w: PosInt | None = None
    pad_out_h: bool = False
    pad_out_w: bool = False
    upsample_h: PosInt | None = None
    upsample_w: PosInt | None = None
    mode: Literal["NEAREST", "BILINEAR"] = "NEAREST"
