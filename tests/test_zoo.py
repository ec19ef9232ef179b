"""The model zoo (models/*.yaml): every file checks clean; the published figures (REFERENCE §2 and
each file's header comment) are netc's figures; every zoo net compiles and runs one forward +
backward step at batch 1.

- parameters: trainable and non-trainable apart. netc's BatchNorm is Caffe's (running mean C,
  running variance C and a 1-element scale factor, all non-trainable; γ/β in a following Scale), so
  its non-trainable count is the framework's 2C per BatchNorm plus one per BatchNorm layer;
- MACs per sample: exact where the publication is exact, else rounded to the published precision
  (plus netc's exact figure, so a change of convention is noticed);
- forward + backward: `jax.jit(jax.value_and_grad(Σ w·outputs))` (w fixed random) in the TRAIN
  phase (batch statistics, dropout) at batch 1. Big nets run at a smaller legal input (FB_INPUT:
  the Input shape is overridden; the full-size shapes and counts are checked above, without JAX),
  so the file runs in about 2 minutes on 2 CPU cores (the step compiled with XLA options for
  compile speed: FAST_COMPILE below).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import FAST_XLA, fast_xla_options, jit_fast

from netc.compiler.catalogue import layer_models
from netc.compiler.plan import plan_all_phases
from netc.spec.net import parse_spec
from netc.spec.prototxt import dump_yaml
from netc.spec.yaml_io import read_yaml

MODELS = Path(__file__).resolve().parents[1] / "models"


@dataclass
class Figures:
    trainable: int
    frozen: int
    outputs: dict[str, tuple]  # the net's output blobs (blobs no layer consumes) and shapes
    macs: int | None = None  # netc's exact multiply-accumulates per sample
    published_macs: str | None = None  # e.g. "15.47 G" (compared at that precision) or exact
    phase: str = "TEST"
    blobs: dict[str, tuple] = field(default_factory=dict)  # more shapes worth pinning


ZOO: dict[str, Figures] = {
    # Caffe's own nets (models/lenet.yaml is kept by others; its figures are checked here too)
    "lenet.yaml": Figures(431_080, 0, {"loss": ()}, 2_293_000, "2293000", phase="TRAIN",
                          blobs={"conv1": (64, 20, 24, 24), "pool1": (64, 20, 12, 12),
                                 "conv2": (64, 50, 8, 8), "pool2": (64, 50, 4, 4),
                                 "ip1": (64, 500), "ip2": (64, 10)}),
    "bvlc_alexnet.yaml": Figures(60_965_224, 0, {"prob": (10, 1000)}, 724_406_816, "724406816"),
    "bvlc_googlenet.yaml": Figures(
        6_998_552, 0, {"prob": (10, 1000)}, 1_582_671_872,
        blobs={"pool1/3x3_s2": (10, 64, 56, 56), "pool2/3x3_s2": (10, 192, 28, 28),
               "pool3/3x3_s2": (10, 480, 14, 14), "pool4/3x3_s2": (10, 832, 7, 7),
               "pool5/7x7_s1": (10, 1024, 1, 1)}),
    "resnet50_caffe.yaml": Figures(25_557_096, 53_173, {"prob": (1, 1000)}, 3_857_973_248,
                                   "3857973248", blobs={"pool1": (1, 64, 56, 56)}),
    # the hand-written zoo
    "lenet5_1998.yaml": Figures(61_706, 0, {"output": (1, 10)}, 416_520,
                                blobs={"C1": (1, 6, 28, 28), "S2": (1, 6, 14, 14),
                                       "C3": (1, 16, 10, 10), "S4": (1, 16, 5, 5),
                                       "C5": (1, 120, 1, 1), "F6": (1, 84)}),
    "alexnet_torchvision.yaml": Figures(61_100_840, 0, {"classifier_6": (1, 1000)}, 714_188_480,
                                        "0.714 G", blobs={"features_12": (1, 256, 6, 6),
                                                          "avgpool": (1, 256, 6, 6)}),
    "vgg16.yaml": Figures(138_357_544, 0, {"fc8": (1, 1000)}, 15_470_264_320, "15.47 G",
                          blobs={"pool5": (1, 512, 7, 7)}),
    "vgg16_torchvision.yaml": Figures(138_357_544, 0, {"classifier_6": (1, 1000)},
                                      15_470_264_320, "15.47 G",
                                      blobs={"features_30": (1, 512, 7, 7),
                                             "avgpool": (1, 512, 7, 7)}),
    "vgg11_torchvision.yaml": Figures(132_863_336, 0, {"classifier_6": (1, 1000)}, 7_609_090_048,
                                      "7.609 G", blobs={"features_20": (1, 512, 7, 7),
                                                        "avgpool": (1, 512, 7, 7)}),
    # torchvision 9,600 BN statistics + 20 BatchNorm scale factors
    "resnet18_torchvision.yaml": Figures(11_689_512, 9_600 + 20, {"fc": (1, 1000)},
                                         1_814_073_344, "1.814 G",
                                         blobs={"maxpool": (1, 64, 56, 56)}),
    # torchvision 53,120 + 53 scale factors
    "resnet50_torchvision.yaml": Figures(25_557_032, 53_120 + 53, {"fc": (1, 1000)},
                                         4_089_184_256, "4.089 G"),
    # Keras 21,888 non-trainable + 27 scale factors
    "mobilenet_v1_keras.yaml": Figures(4_231_976, 21_888 + 27, {"prob": (1, 1000)}, 568_740_352,
                                       "568740352"),
    # torchvision 34,112 + 52 scale factors
    "mobilenet_v2_torchvision.yaml": Figures(3_504_872, 34_112 + 52, {"classifier": (1, 1000)},
                                             300_774_272, "0.301 G"),
    # torchvision 83,648 + 121 scale factors
    "densenet121_torchvision.yaml": Figures(7_978_856, 83_648 + 121, {"classifier": (1, 1000)},
                                            2_834_161_664, "2.834 G",
                                            blobs={"block4_layer16_concat": (1, 1024, 7, 7)}),
    "unet.yaml": Figures(31_030_658, 0, {"score": (1, 2, 388, 388)}, 150_428_424_448,
                         blobs={"conv_d5_2": (1, 1024, 28, 28), "crop1": (1, 64, 392, 392)}),
    "fcn8s.yaml": Figures(134_362_751, 21 * 21 * 16 * 2 + 21 * 21 * 256, {"score": (1, 21, 500, 500)},
                          181_529_034_048,
                          blobs={"pool5": (1, 512, 22, 22), "fc7": (1, 4096, 16, 16),
                                 "upscore2": (1, 21, 34, 34), "upscore8": (1, 21, 568, 568)}),
    "segnet.yaml": Figures(29_449_355, 2 * 7_936 + 25, {"conv1_1_D": (1, 11, 360, 480)},
                           106_712_432_640,
                           blobs={"pool4": (1, 512, 23, 30), "pool5": (1, 512, 12, 15),
                                  "pool5_D": (1, 512, 23, 30), "pool4_D": (1, 512, 45, 60)}),
    "wavenet_stack.yaml": Figures(93_088, 0, {"logits": (1, 256, 4096)}, 373_424_128),
    "tdnn.yaml": Figures(4_099, 0, {"scores": (1, 3)}, 203_040, blobs={"tdnn1": (1, 16, 50)}),
    "xor_mlp.yaml": Figures(9, 0, {"out": (4, 1)}, 6),
}

# Published counts that the table above reproduces (REFERENCE §2), asserted separately so that a
# change to ZOO cannot quietly move away from them.
PUBLISHED_PARAMS = {
    "lenet.yaml": 431_080, "bvlc_alexnet.yaml": 60_965_224, "bvlc_googlenet.yaml": 6_998_552,
    "resnet50_caffe.yaml": 25_557_096 + 53_173, "alexnet_torchvision.yaml": 61_100_840,
    "vgg16.yaml": 138_357_544, "vgg16_torchvision.yaml": 138_357_544,
    "vgg11_torchvision.yaml": 132_863_336,
    "resnet18_torchvision.yaml": 11_689_512,
    "resnet50_torchvision.yaml": 25_557_032, "mobilenet_v1_keras.yaml": 4_231_976,
    "mobilenet_v2_torchvision.yaml": 3_504_872, "densenet121_torchvision.yaml": 7_978_856,
    "unet.yaml": 31_030_658,
}
# BatchNorm running statistics as the framework counts them (2C per BatchNorm), and BN layers
PUBLISHED_BN_STATS = {"resnet18_torchvision.yaml": (9_600, 20),
                      "resnet50_torchvision.yaml": (53_120, 53),
                      "mobilenet_v1_keras.yaml": (21_888, 27),
                      "mobilenet_v2_torchvision.yaml": (34_112, 52),
                      "densenet121_torchvision.yaml": (83_648, 121),
                      "resnet50_caffe.yaml": (53_120, 53)}


# Sequence models: their figures are checked in tests/test_seq_models.py (no forward/backward here).
SEQUENCE_MODELS = {"char_lstm_hamlet.yaml", "imdb_lstm_keras.yaml", "seq2seq_reverse.yaml",
                   "caption_digits.yaml", "sentiment_rotten_tomatoes.yaml"}


def _make_data(name: str, folder: Path) -> None:
    """The data a sequence spec reads from models/data/, made as its header says (the Rotten
    Tomatoes arrays in their documented format: the corpus itself is not installed here)."""
    import numpy as np

    from netc.models import seq_tasks

    if name == "seq2seq_reverse.yaml":
        seq_tasks.write("reverse", folder / "data", n_train=16, n_test=8)
    elif name == "caption_digits.yaml":
        seq_tasks.write("captions", folder / "data")
    elif name == "sentiment_rotten_tomatoes.yaml":
        (folder / "data").mkdir()
        for split in ("train", "test"):
            np.savez(folder / "data" / f"rotten_tomatoes_{split}.npz",
                     data=np.zeros((8, 80), np.int32), label=np.zeros(8, np.int32),
                     lengths=np.ones(8, np.int32))


def load(name: str, batch: int | None = None, phase: str | None = None, folder: Path = MODELS):
    spec = parse_spec(str(folder / name), layer_models())
    plans = plan_all_phases(spec, batch=batch, phase=phase) if spec.layers else {}
    return spec, plans


def _errors(spec) -> list[str]:
    return [d.format() for d in spec.diagnostics.errors]


@pytest.mark.parametrize("name", sorted(p.name for p in MODELS.glob("*.yaml")))
def test_every_model_checks_clean(name, tmp_path):
    """`netc check models/NAME` in both phases: no errors (a spec that reads generated data is
    checked in a copy beside that data)."""
    folder = MODELS
    if name in SEQUENCE_MODELS and "data/" in (MODELS / name).read_text():
        folder = tmp_path
        (tmp_path / name).write_text((MODELS / name).read_text())
        _make_data(name, tmp_path)
    spec, plans = load(name, folder=folder)
    assert spec.layers and set(plans) == {"TRAIN", "TEST"}
    assert not _errors(spec), _errors(spec)


def test_zoo_table_covers_the_zoo():
    mine = {p.name for p in MODELS.glob("*.yaml")} - {"small_resnet_digits.yaml"} - SEQUENCE_MODELS
    assert mine == set(ZOO), "every model needs its figures in tests/test_zoo.py"


def _published_macs_match(macs: int, published: str) -> bool:
    if published.endswith(" G"):
        value = published[:-2]
        decimals = len(value.split(".")[1]) if "." in value else 0
        return round(macs / 1e9, decimals) == float(value)
    return macs == int(published)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_figures(name):
    fig = ZOO[name]
    spec, plans = load(name, phase=fig.phase)
    assert not _errors(spec), _errors(spec)
    p = plans[fig.phase]
    assert p.param_counts() == (fig.trainable, fig.frozen)
    assert {o: p.blobs[o] for o in p.outputs} == fig.outputs
    for blob, shape in fig.blobs.items():
        assert p.blobs[blob] == shape, blob
    if fig.macs is not None:
        assert p.macs == fig.macs, f"{p.macs:,}"
    if fig.published_macs is not None:
        assert _published_macs_match(p.macs, fig.published_macs), f"{p.macs:,} vs {fig.published_macs}"


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_parameter_counts(name):
    trainable, frozen = ZOO[name].trainable, ZOO[name].frozen
    published = PUBLISHED_PARAMS[name]
    if name == "resnet50_caffe.yaml":  # Caffe counts every blob
        assert trainable + frozen == published == 25_610_269
    else:
        assert trainable == published
    if name in PUBLISHED_BN_STATS:
        stats, n_bn = PUBLISHED_BN_STATS[name]
        spec, plans = load(name, phase="TEST")
        bns = [pl for pl in plans["TEST"].layers if pl.type == "BatchNorm"]
        assert len(bns) == n_bn
        assert sum(d.count for pl in bns for r, d in pl.params.items() if d.shape != (1,)) == stats
        assert frozen == stats + n_bn  # + one scale-factor scalar per Caffe BatchNorm


def test_header_comments_state_the_figures():
    """Each zoo file's header comment names its netc parameter count."""
    for name, fig in ZOO.items():
        head = (MODELS / name).read_text().split("\nname:")[0]
        assert head.startswith("#"), name
        if name != "lenet.yaml":
            assert f"{fig.trainable:,}" in head, name
            if fig.frozen:
                assert f"{fig.frozen:,}" in head, name


def test_encoder_and_backbone_parts():
    """Sub-totals the headers state: SegNet's and FCN-8s's encoders are VGG16's 13 convolutions;
    U-Net's up-convolutions are 2×2 stride-2 Deconvolutions; the depthwise convolutions have
    group = channels."""
    for name in ("segnet.yaml", "fcn8s.yaml"):
        _, plans = load(name, phase="TEST")
        convs = [pl for pl in plans["TEST"].layers
                 if pl.type == "Convolution" and pl.name.startswith("conv") and "_D" not in pl.name]
        assert len(convs) == 13
        assert sum(d.count for pl in convs for d in pl.params.values()) == 14_714_688
    _, plans = load("unet.yaml", phase="TEST")
    ups = [pl for pl in plans["TEST"].layers if pl.type == "Deconvolution"]
    assert [pl.top_shapes[0][2] for pl in ups] == [56, 104, 200, 392]
    for name, n_dw in (("mobilenet_v1_keras.yaml", 13), ("mobilenet_v2_torchvision.yaml", 17)):
        _, plans = load(name, phase="TEST")
        dw = [pl for pl in plans["TEST"].layers
              if pl.type == "Convolution" and pl.unit.p.group > 1]
        assert len(dw) == n_dw
        assert all(pl.unit.p.group == pl.bottom_shapes[0][1] == pl.unit.p.num_output for pl in dw)


def test_wavenet_receptive_field():
    _, plans = load("wavenet_stack.yaml", phase="TEST")
    p = plans["TEST"]
    rf = {pl.tops[0]: pl.rf for pl in p.layers}
    assert rf["logits"] == [(1024, 1)]  # 1 + Σ (2 − 1)·d, d = 1 … 512
    assert rf["block0_gated"] == [(2, 1)] and rf["block1_gated"] == [(4, 1)]
    dil = [pl.unit.p.dilation[0] for pl in p.layers if pl.name.endswith("_filter")]
    assert dil == [2**i for i in range(10)]
    assert p.blobs["logits"][2] == p.blobs["data"][2]  # CAUSAL keeps the length


def test_tdnn_receptive_field():
    _, plans = load("tdnn.yaml", phase="TEST")
    rf = {pl.tops[0]: pl.rf for pl in plans["TEST"].layers}
    assert rf["tdnn1"] == [(15, 1)] and rf["tdnn2"] == [(19, 1)]


# --- one compiled forward + backward step per zoo net ---------------------------------------------

# Input overrides for the forward + backward step (None: the published size). Each is legal for
# the net: global pooling heads take any size; U-Net needs 16k + 124 (204 → 20×20 output) and keeps
# its crop offsets; FCN-8s's pad 100 makes 16×16 legal (pool5 7×7 → fc6 1×1; the crops stay inside); VGG16/AlexNet's fc6
# sees a smaller map (fewer fc6 weights); GoogLeNet and the Caffe ResNet-50 end in a fixed 7×7 pool
# and stay at 224. SegNet runs at 64×64 with its Upsample sizes taken from the scale alone.
FB_INPUT: dict[str, list[int] | None] = {
    "bvlc_alexnet.yaml": None,
    "bvlc_googlenet.yaml": None,
    "resnet50_caffe.yaml": None,
    "lenet5_1998.yaml": None,
    "alexnet_torchvision.yaml": [1, 3, 127, 127],
    "vgg16.yaml": [1, 3, 64, 64],
    "vgg11_torchvision.yaml": [1, 3, 32, 32],  # features 1×1, adaptive pool → 7×7
    "resnet18_torchvision.yaml": [1, 3, 64, 64],
    "resnet50_torchvision.yaml": [1, 3, 64, 64],
    "mobilenet_v1_keras.yaml": [1, 3, 64, 64],
    "mobilenet_v2_torchvision.yaml": [1, 3, 64, 64],
    "densenet121_torchvision.yaml": [1, 3, 64, 64],
    "unet.yaml": [1, 1, 204, 204],
    "fcn8s.yaml": [1, 3, 16, 16],
    "segnet.yaml": [1, 3, 64, 64],
    "wavenet_stack.yaml": [1, 1, 2048],
    "tdnn.yaml": None,
    "xor_mlp.yaml": None,
}


def _with_input(name: str, dims: list[int] | None, tmp_path: Path) -> Path:
    if dims is None:
        return MODELS / name
    data = copy.deepcopy(read_yaml((MODELS / name).read_text()).data)
    if "input_dim" in data:
        data["input_dim"] = dims
    else:
        (first,) = [x for x in data["layers"] if x["type"] == "Input"]
        first["input_param"]["shape"] = {"dim": dims}
    for layer in data["layers"]:
        if layer["type"] == "Upsample":  # SegNet: sizes for 360×480; at 64×64 the scale suffices
            layer["upsample_param"] = {"scale": layer["upsample_param"]["scale"]}
    path = tmp_path / name
    path.write_text(dump_yaml(data))
    return path


# XLA CPU options for the forward + backward step: this checks that each net lowers, compiles and
# differentiates, not its speed. The compile dominates: with the backend optimisations off and the
# classic loop emitters instead of the MLIR fusion emitters it is 2-10× faster than with either
# alone (measured on 2 busy CPU cores: DenseNet-121 21 s instead of 46 s with the optimisations
# off only; ResNet-18 2.8 s instead of 16.5 s by default). The values agree with the default options to
# float32 rounding (measured on every zoo net: the objective within 5e-6 relative, every gradient
# within 1e-5 of its largest element, except the gradients that are 0 up to rounding noise, e.g. a
# Scale bias feeding a BatchNorm, which differ in their noise under any two option sets). Nets with
# more than 10 G multiply-accumulates at their FB_INPUT (FCN-8s) run faster with the backend
# optimisations on (unvectorised elementwise loops over 214×214 maps otherwise), so they keep them.
FAST_COMPILE = FAST_XLA  # conftest's: optimisations off, classic emitters
OPTIMISED_COMPILE = {"xla_cpu_use_fusion_emitters": False}
BIG_MACS = 10e9


def compile_options(macs: int) -> dict:
    """The options for a net of `macs` multiply-accumulates, less those this jaxlib lacks."""
    return fast_xla_options(OPTIMISED_COMPILE if macs > BIG_MACS else FAST_COMPILE)


def numpy_params(net, rng):
    """(params, state) of init's structure, filled from NumPy: weights uniform with mean 0 and
    variance 1/fan_in, vectors (biases, γ, BN state) ones. netc's fillers cost more compile time
    than the step itself (one XLA program per blob shape); these checks only need values of the
    right shapes: init's structure comes from eval_shape (nothing compiled). NumPy arrays all
    through (jnp.ones would compile a broadcast per distinct shape): the compiled step takes them
    as they are."""
    import jax
    import numpy as np

    def fill(s):
        if len(s.shape) >= 2:  # drawn in float32, centred and scaled in place (FCN-8s: 134 M
            w = rng.random(s.shape, dtype=np.float32)  # weights; uniform: 0.6 s of CPU less per
            w -= np.float32(0.5)  # 100 M than standard_normal)
            w *= np.float32(math.sqrt(12 / math.prod(s.shape[1:])))
            return w
        return np.ones(s.shape, np.float32)

    return jax.tree_util.tree_map(fill, jax.eval_shape(net.init, jax.random.PRNGKey(0)))


# Zoo nets whose forward + backward adds nothing the table's nets do not cover, with the reason
# (each such compile costs the suite ~30 s of 2 CPU cores).
FB_COVERED = {"vgg16_torchvision.yaml": "vgg16.yaml's conv stack + vgg11_torchvision's adaptive "
                                        "pool and classifier, layer for layer"}


def test_forward_backward_table_covers_the_zoo():
    assert set(FB_INPUT) | set(FB_COVERED) == set(ZOO) - {"lenet.yaml"}
    assert not set(FB_INPUT) & set(FB_COVERED)


@pytest.mark.parametrize("name", sorted(FB_INPUT))
def test_forward_backward(name, tmp_path):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from netc.compiler.lower import lower

    path = _with_input(name, FB_INPUT[name], tmp_path)
    spec = parse_spec(str(path), layer_models())
    p = plan_all_phases(spec, batch=1, phase="TRAIN")["TRAIN"]
    assert not _errors(spec), _errors(spec)
    net = lower(p)
    rng = np.random.default_rng(0)
    params, state = numpy_params(net, rng)
    inputs = {b: rng.standard_normal(p.blobs[b]).astype(np.float32) for b in p.inputs}

    # Σ outputs, each element weighted by a fixed random number: a plain sum of a Softmax top is
    # always 1 (zero gradient), as it is for the Caffe deploy nets' `prob`.
    weights = {o: rng.standard_normal(p.blobs[o]).astype(np.float32) for o in p.outputs}

    def objective(params, state, inputs, key):
        blobs, new_state = net.apply(params, state, inputs, rng=key)
        total = sum(jnp.sum(blobs[o] * weights[o]) for o in p.outputs)
        return total, ({o: blobs[o] for o in p.outputs}, new_state)

    step = jax.jit(jax.value_and_grad(objective, has_aux=True))
    args = (params, state, inputs, jax.random.PRNGKey(1))
    compiled = step.lower(*args).compile(compiler_options=compile_options(p.macs))
    (value, (outs, new_state)), grads = compiled(*args)
    assert np.isfinite(float(value))
    for o in p.outputs:
        assert outs[o].shape == tuple(p.blobs[o])
    leaves = [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)]  # checked in NumPy
    assert len(leaves) == len(jax.tree_util.tree_leaves(params)) > 0
    assert all(np.isfinite(g).all() for g in leaves)
    assert any(np.abs(g).max() > 0 for g in leaves)
    # every learned blob got a gradient of its own shape
    assert jax.tree_util.tree_map(jnp.shape, grads) == jax.tree_util.tree_map(jnp.shape, params)


def test_xor_weights_of_reference_section_3():
    import jax.numpy as jnp
    import numpy as np

    from netc.compiler.lower import lower

    spec, plans = load("xor_mlp.yaml", phase="TEST")
    net = lower(plans["TEST"])
    params = {"hidden": {"weight": jnp.array([[1.0, 1.0], [1.0, 1.0]]), "bias": jnp.array([0.0, -1.0])},
              "out": {"weight": jnp.array([[1.0, -2.0]]), "bias": jnp.array([0.0])}}
    x = jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]], jnp.float32)
    blobs = jit_fast(lambda p, x: net.apply(p, {}, {"data": x})[0])(params, x)  # no per-op compiles
    np.testing.assert_array_equal(np.asarray(blobs["out"][:, 0]), [0, 1, 1, 0])


def test_wavenet_is_causal():
    """Changing input sample t changes no output before t (pad_mode CAUSAL)."""
    import jax
    import numpy as np

    from netc.compiler.lower import lower

    spec, plans = load("wavenet_stack.yaml", phase="TEST")
    p = plans["TEST"]
    net = lower(p)
    rng = np.random.default_rng(0)
    params, state = numpy_params(net, rng)  # no filler compiled; biases 0 as the fillers make
    params = jax.tree_util.tree_map(lambda a: a if a.ndim >= 2 else np.zeros_like(a), params)
    # (numpy_params' ones saturate the gates: the far end of the field would go unseen)
    x = rng.standard_normal((1, 1, 4096)).astype(np.float32)
    run = jax.jit(lambda x: net.apply(params, state, {"data": x})[0]["logits"]).lower(x).compile(
        compiler_options=compile_options(p.macs))
    t = 2000
    x2 = x.copy()
    x2[0, 0, t] += 1.0
    diff = np.abs(np.asarray(run(x)) - np.asarray(run(x2))).max(axis=(0, 1))
    assert diff[:t].max() == 0
    assert diff[t] > 0 and diff[t + 1023] > 0 and diff[t + 1024:].max() == 0  # rf 1024
