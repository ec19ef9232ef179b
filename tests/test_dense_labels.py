"""Dense labels: a Data layer whose label is a map (N×H×W) feeds Caffe's SoftmaxWithLoss and
Accuracy over N×C×H×W predictions, with ignore_label, through the plan, the data checks, the
transform (crop and mirror follow the image) and the trainer."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest

from netc.compiler.catalogue import layer_models
from netc.compiler.layer import DataFact, LabelFact
from netc.compiler.plan import plan
from netc.runtime.data import (
    BatchStream,
    DataError,
    Dataset,
    check_dataset,
    label_requirements,
    load_source,
)
from netc.spec.messages import NetState
from netc.spec.messages import TransformationParameter as T
from netc.spec.net import parse_spec

IGNORE = 255


def rectangles(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """n 1×size×size images of two random rectangles on a noisy background; the label is the
    class of each pixel (0 background, 1 mid-grey rectangle, 2 bright rectangle; the bright one
    is drawn last), with a one-pixel frame of IGNORE."""
    rng = np.random.default_rng(seed)
    label = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for cls in (1, 2):
            h, w = rng.integers(5, 11, size=2)
            top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            label[i, top : top + h, left : left + w] = cls
    level = np.array([0.0, 0.5, 1.0], np.float32)[label]
    data = (level + rng.normal(0, 0.15, label.shape)).astype(np.float32)[:, None]
    label[:, [0, -1], :] = IGNORE
    label[:, :, [0, -1]] = IGNORE
    return data, label


SPEC = """\
name: rectangles
layers:
  - {name: data, type: Data, top: [data, label], include: {phase: TRAIN},
     transform_param: {crop_size: 14, mirror: true},
     data_param: {source: train.npz, batch_size: 16, shuffle: true}}
  - {name: data, type: Data, top: [data, label], include: {phase: TEST},
     data_param: {source: test.npz, batch_size: 32}}
  - {name: conv1, type: Convolution, bottom: data, top: conv1,
     convolution_param: {num_output: 8, kernel_size: 3, pad: 1, weight_filler: {type: xavier}}}
  - {name: relu1, type: ReLU, bottom: conv1, top: conv1}
  - {name: score, type: Convolution, bottom: conv1, top: score,
     convolution_param: {num_output: 3, kernel_size: 1, weight_filler: {type: xavier}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [score, label], top: loss,
     loss_param: {ignore_label: 255}}
  - {name: accuracy, type: Accuracy, bottom: [score, label], top: accuracy,
     include: {phase: TEST}, accuracy_param: {ignore_label: 255}}
solver:
  test_iter: 2
  test_interval: 120
  base_lr: 0.1
  momentum: 0.9
  lr_policy: fixed
  display: 0
  max_iter: 120
  random_seed: 1
"""


@pytest.fixture
def seg_spec(tmp_path):
    for name, n, seed in (("train.npz", 256, 0), ("test.npz", 64, 1)):
        data, label = rectangles(n, seed)
        np.savez(tmp_path / name, data=data, label=label)
    path = tmp_path / "seg.yaml"
    path.write_text(SPEC)
    return path


def planned(path, phase):
    spec = parse_spec(str(path), layer_models())
    p = plan(spec, NetState(phase=phase))
    assert not spec.diagnostics.errors, [d.format() for d in spec.diagnostics.sorted()]
    return p


# --- facts and plan ------------------------------------------------------------------------------


def test_plan_gives_the_label_map_its_shape_and_the_facts_say_what_is_needed(seg_spec):
    train, test = planned(seg_spec, "TRAIN"), planned(seg_spec, "TEST")
    tops = {pl.name: pl.top_shapes for pl in train.layers}
    assert tops["data"] == [(16, 1, 14, 14), (16, 14, 14)]  # the crop cuts the label map too
    data = next(pl for pl in train.layers if pl.name == "data").unit.data_fact()
    assert data == DataFact("train.npz", 16, True, data.transform, ("data", "label"), (1, 16, 16))
    assert data.transform.crop_size == 14
    fact = label_requirements(train, "label")
    assert fact == LabelFact("loss", 1, (14, 14), 3, IGNORE, "class",
                             "predictions score are 16×3×14×14 with classes on axis 1")
    merged = label_requirements(test, "label")  # loss and accuracy agree
    assert (merged.layer, merged.shape, merged.classes, merged.ignore_label) == (
        "loss, accuracy", (16, 16), 3, IGNORE)
    assert label_requirements(test, "score") is None  # read as predictions, not labels


def test_readers_that_disagree_on_ignore_label_keep_none(seg_spec):
    seg_spec.write_text(SPEC.replace("accuracy_param: {ignore_label: 255}", "accuracy_param: {}"))
    test = planned(seg_spec, "TEST")
    fact = label_requirements(test, "label")
    assert fact.ignore_label is None and "ignore_label 255 on 'loss' only" in fact.rule
    ds = load_source("test.npz", base_dir=seg_spec.parent)
    with pytest.raises(DataError, match=r"labels range over \[0, 255\], outside \[0, 3\)"):
        check_dataset(ds, sample_shape=(1, 16, 16), labels=fact)


def test_facts_of_other_label_readers():
    from netc.compiler.layer import REGISTRY

    class Spec:  # the fields the facts read
        name, bottom = "l", ["p", "t"]
        loss_param = None

    def fact(kind, bottoms, p=None):
        unit = REGISTRY[kind].__new__(REGISTRY[kind])
        unit.spec, unit.p = Spec(), p
        return unit.label_fact(bottoms)

    assert fact("HingeLoss", [(8, 10), (8,)]).shape == () and fact(
        "HingeLoss", [(8, 10), (8,)]).classes == 10
    assert fact("MultinomialLogisticLoss", [(8, 5, 1, 1), (8,)]).classes == 5
    assert fact("EuclideanLoss", [(8, 3, 4), (8, 3, 4)]).shape == (3, 4)
    assert fact("EuclideanLoss", [(8, 3, 4), (8, 3, 4)]).kind == "target"
    assert REGISTRY["Convolution"].label_fact is REGISTRY["ReLU"].label_fact  # the default: None


# --- data checks ---------------------------------------------------------------------------------


def test_check_dataset_names_the_layer_and_the_shapes(tmp_path):
    data, label = rectangles(4, 0)
    fact = LabelFact("loss", 1, (14, 14), 3, IGNORE, "class",
                     "predictions score are 4×3×14×14 with classes on axis 1")
    ds = Dataset("seg.npz", data, label)
    check_dataset(ds, sample_shape=(1, 16, 16), labels=fact, transform=T(crop_size=14))
    with pytest.raises(DataError) as e:
        check_dataset(ds, sample_shape=(1, 16, 16), labels=fact)  # no crop: 16×16 labels
    assert str(e.value) == (
        "seg.npz: 'label' holds 16×16 per sample, but layer 'loss' needs 14×14 per sample "
        "(predictions score are 4×3×14×14 with classes on axis 1)")
    small = Dataset("seg.npz", data, label[:, :8, :8])
    with pytest.raises(DataError, match="'label' holds 8×8 per sample, but layer 'loss' needs"):
        check_dataset(small, sample_shape=(1, 16, 16), labels=fact, transform=T(crop_size=14))
    bad = label.copy()
    bad[0, 5, 5] = 3
    with pytest.raises(DataError) as e:
        check_dataset(Dataset("seg.npz", data, bad), sample_shape=None, labels=fact,
                      transform=T(crop_size=14))
    assert str(e.value).startswith("seg.npz: labels range over [0, 3], outside [0, 3), except "
                                   "the ignore_label 255, for a classifier with 3 outputs")
    floats = label.astype(np.float32)  # whole-valued floats are fine; a half is not
    check_dataset(Dataset("seg.npz", data, floats), sample_shape=None, labels=fact,
                  transform=T(crop_size=14))
    floats[2, 3, 4] = 0.5
    with pytest.raises(DataError, match=r"labels must be integers, but label\[2, 3, 4\] = 0.5"):
        check_dataset(Dataset("seg.npz", data, floats), sample_shape=None, labels=fact,
                      transform=T(crop_size=14))


def test_real_valued_targets_are_not_classes():
    data = np.zeros((4, 3), np.float32)
    fact = LabelFact("loss", 1, (3,), None, None, "target", "pred is 4×3, one target per value")
    check_dataset(Dataset("t", data, np.full((4, 3), 0.25, np.float32)), sample_shape=None,
                  labels=fact)
    nan = np.zeros((4, 3), np.float32)
    nan[2, 1] = np.nan
    with pytest.raises(DataError, match="'label' contains NaN or infinite values"):
        check_dataset(Dataset("t", data, nan), sample_shape=None, labels=fact)
    (batch,) = [next(BatchStream(Dataset("t", data, np.full((4, 3), 0.25)), batch_size=2,
                                 transform=None, train=True, seed=0, shuffle=False, prefetch=0,
                                 real_labels=True))]
    assert batch["label"].dtype == np.float32 and np.all(batch["label"] == 0.25)


# --- transform: the label map follows its image --------------------------------------------------


def traceable(n=5, h=7, w=9):
    """Images whose pixels encode (sample, row, col) and labels equal to the same code, so a
    label map that is cropped or flipped as its image stays equal to it."""
    code = np.arange(n * h * w, dtype=np.int64).reshape(n, h, w)
    return code[:, None].astype(np.float32), code.astype(np.int32)


@pytest.mark.parametrize("label_dims", [(), (1,)])
@pytest.mark.parametrize("train", [True, False])
def test_crop_and_mirror_apply_to_the_label_map_exactly_as_to_the_image(label_dims, train):
    x, y = traceable()
    y = y.reshape(y.shape[0], *label_dims, *y.shape[1:])
    ds = Dataset("mem", x, y)
    s = BatchStream(ds, batch_size=3, transform=T(crop_h=4, crop_w=6, mirror=True, scale=2.0),
                    train=train, seed=3, shuffle=True, prefetch=0)
    flips = 0
    for _ in range(6):
        b = next(s)
        assert b["data"].shape == (3, 1, 4, 6) and b["label"].shape == (3, *label_dims, 4, 6)
        assert b["label"].dtype == np.int32
        np.testing.assert_array_equal(b["data"][:, 0] / 2, b["label"].reshape(3, 4, 6))
        flips += int(np.sum(np.diff(b["label"].reshape(3, 4, 6), axis=2)[:, 0, 0] < 0))
    assert (flips > 0) == train  # TRAIN mirrors some samples; TEST never


def test_a_resumed_stream_repeats_the_dense_batches():
    x, y = traceable(n=7)
    kw = dict(batch_size=3, transform=T(crop_size=5, mirror=True), train=True, seed=11,
              shuffle=True)
    whole = BatchStream(Dataset("mem", x, y), prefetch=2, **kw)
    first = [next(whole) for _ in range(4)]
    rest = [next(whole) for _ in range(4)]
    resumed = BatchStream(Dataset("mem", x, y), prefetch=0, position=_pos_after(x, y, kw, 4),
                          **kw)
    for a, b in zip(rest, [next(resumed) for _ in range(4)]):
        np.testing.assert_array_equal(a["data"], b["data"])
        np.testing.assert_array_equal(a["label"], b["label"])
    whole.close()
    assert first[0]["label"].shape == (3, 5, 5)


def _pos_after(x, y, kw, k):
    s = BatchStream(Dataset("mem", x, y), prefetch=0, **kw)
    for _ in range(k):
        next(s)
    return s.position()


def test_a_grid_label_that_is_not_the_images_size_cannot_be_cropped():
    x, y = traceable()
    with pytest.raises(DataError, match="a label map must be H×W"):
        BatchStream(Dataset("mem", x, y[:, :5, :5]), batch_size=2, transform=T(crop_size=4),
                    train=True, seed=0, shuffle=False, prefetch=0)


# --- training ------------------------------------------------------------------------------------


def test_a_small_segmentation_net_learns_per_pixel_classes(seg_spec, tmp_path):
    from netc.runtime.trainer import TrainConfig, train

    out = tmp_path / "run"
    t0 = time.perf_counter()
    code = train(TrainConfig(spec=str(seg_spec), out=str(out), max_iter=120, seed=1),
                 out=io.StringIO(), err=io.StringIO())
    wall = time.perf_counter() - t0
    assert code == 0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tests = [r for r in recs if r["event"] == "test"]
    first, last = tests[0]["metrics"]["accuracy"], tests[-1]["metrics"]["accuracy"]
    print(f"\nper-pixel accuracy {first:.3f} -> {last:.3f} in 120 iterations, {wall:.1f} s")
    assert tests[0]["iter"] == 0 and tests[-1]["iter"] == 120
    assert first <= 0.5 and last >= 0.8
