"""transform_param's augmentation extensions (runtime/augment.py): each operation on a constructed
image, the determinism that makes a resume exact, TEST phase without random transforms, the shape
rule and its errors in `netc check`, and short training runs (one resumed) with augmentation on."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import errors_of, netc

from netc.runtime import augment as A
from netc.runtime.checkpoint import flatten, latest_checkpoint, load_checkpoint
from netc.runtime.data import BatchStream, DataError, Dataset, load_source, transformed_shape
from netc.spec.messages import TransformationParameter as T


def ds_of(x: np.ndarray) -> Dataset:
    return Dataset("mem", x, np.zeros(len(x), dtype=np.int64))


def batch(x, t: dict, *, train=True, seed=0, n=None, position=None, shuffle=False) -> np.ndarray:
    with BatchStream(
        ds_of(x),
        batch_size=n or len(x),
        transform=T.model_validate(t),
        train=train,
        seed=seed,
        shuffle=shuffle,
        prefetch=0,
        position=position,
    ) as s:
        return next(s)["data"]


def images(n=8, c=1, h=6, w=6, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w)).astype(np.uint8)


# --- each operation ------------------------------------------------------------------------------


def test_flips_and_rot90_are_exact():
    x = images()
    f = np.float32
    np.testing.assert_array_equal(batch(x, {"flip": {"horizontal": 1.0}}), x[..., ::-1].astype(f))
    np.testing.assert_array_equal(batch(x, {"flip": {"vertical": 1.0}}), x[..., ::-1, :].astype(f))
    for angle in (0, 90, 180, 270):
        got = batch(x, {"rotate90": {"angles": [angle]}})
        np.testing.assert_array_equal(got, np.rot90(x, angle // 90, axes=(2, 3)).astype(f))
    # all four angles occur, each an exact rotation of its sample
    got = batch(images(n=64), {"rotate90": {}})
    seen = {
        next(k for k in range(4) if np.array_equal(g, np.rot90(s, k, axes=(1, 2))))
        for g, s in zip(got, images(n=64))
    }
    assert seen == {0, 1, 2, 3}


def test_rotation_by_zero_is_identity_and_by_90_matches_rot90():
    x = images(h=7, w=7)
    np.testing.assert_array_equal(batch(x, {"rotate": {"degrees": 0}}), x.astype(np.float32))
    quarter = A._rotation(np.full(len(x), np.pi / 2), 7, 7)
    turned = A.sample(x.astype(np.float32), quarter, (7, 7), fill=-1.0)
    np.testing.assert_allclose(turned, np.rot90(x, 1, axes=(2, 3)), atol=1e-3)
    # a small angle moves pixels but keeps the centre one; the corners read the fill
    got = batch(x, {"rotate": {"degrees": 30, "fill": -5.0}}, seed=3)
    np.testing.assert_allclose(got[:, :, 3, 3], x[:, :, 3, 3], atol=1e-3)
    assert not np.allclose(got, x) and (got[:, :, 0, 0] == -5.0).any()


def test_translate_shifts_whole_pixels_with_fill():
    x = images(n=32, h=8, w=8) + 1  # no zeros: the fill is recognisable
    got = batch(x, {"translate": {"pixels": 2, "fill": 0.0}}, seed=1)
    shifts = set()
    for g, s in zip(got, x.astype(np.float32)):
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = np.zeros_like(s)
                ref[:, max(dy, 0) : 8 + min(dy, 0), max(dx, 0) : 8 + min(dx, 0)] = s[
                    :, max(-dy, 0) : 8 + min(-dy, 0), max(-dx, 0) : 8 + min(-dx, 0)
                ]
                if np.array_equal(g, ref):
                    shifts.add((dy, dx))
                    break
            else:
                continue
            break
        else:
            pytest.fail("a sample is not a whole-pixel shift of its image")
    assert len(shifts) > 5


def test_cutout_sets_exactly_the_holes():
    op = A.Cutout(holes=1, size=(3, 2), fill=-1.0, hw=(8, 8))
    x = np.ones((2, 3, 8, 8), dtype=np.float32)
    got = op.apply(x, {"top_left": np.array([[[2, 5]], [[-1, 7]]])})  # the second cut by edges
    want = np.ones_like(x)
    want[0, :, 2:5, 5:7] = -1
    want[1, :, 0:2, 7:8] = -1
    np.testing.assert_array_equal(got, want)
    # through the stream: every hole of size 4 lies in the image or is cut by its border
    got = batch(np.full((64, 1, 10, 10), 200, np.uint8), {"cutout": {"size": 4, "fill": 0}})
    holes = (got == 0).sum(axis=(1, 2, 3))
    assert set(np.unique(got)) == {0.0, 200.0} and holes.max() == 16 and 4 <= holes.min()


def test_color_jitter_keeps_the_range_and_color_drop_makes_gray():
    x = images(n=32, c=3, h=5, w=5)
    t = {
        "scale": 1 / 255,
        "color_jitter": {"brightness": 0.9, "contrast": 0.9, "saturation": 0.9, "hue": 0.4},
    }
    got = batch(x, t, seed=2)
    assert got.min() >= 0 and got.max() <= 1 and not np.allclose(got, x / 255, atol=1e-2)
    # hue by a full turn is the identity; saturation 0 is gray
    np.testing.assert_allclose(A.hue_matrices(np.array([1.0]))[0], np.eye(3), atol=1e-6)
    drop = batch(x, {"color_drop": {"p": 1.0}})
    luma = np.einsum("c,nchw->nhw", [0.299, 0.587, 0.114], x.astype(np.float64))
    np.testing.assert_allclose(drop, np.repeat(luma[:, None], 3, axis=1), rtol=1e-5)


def test_gaussian_noise_has_its_std_and_blur_keeps_constants():
    got = batch(np.full((16, 3, 32, 32), 100, np.uint8), {"gaussian_noise": {"std": 2.0}})
    assert abs(float((got - 100).std()) - 2.0) < 0.05 and abs(float((got - 100).mean())) < 0.05
    flat = batch(np.full((8, 1, 9, 9), 77, np.uint8), {"gaussian_blur": {"sigma": [0.5, 3.0]}})
    np.testing.assert_allclose(flat, 77, rtol=1e-6)
    # a blur spreads a point into a normalised, symmetric gaussian
    point = np.zeros((1, 1, 9, 9), np.float32)
    point[0, 0, 4, 4] = 1
    k = A.gaussian_kernels(np.array([1.0]), 5)
    spread = A.blur(point, k)[0, 0]
    np.testing.assert_allclose(spread.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(spread[2:7, 2:7], np.outer(k[0], k[0]), rtol=1e-6)


def test_sobel_of_a_vertical_edge_is_a_vertical_line():
    x = np.zeros((1, 1, 6, 8), np.uint8)
    x[..., 4:] = 10
    gx, gy = batch(x, {"sobel": {}})[0]
    assert np.all(gy == 0)
    np.testing.assert_array_equal(gx, np.tile([0, 0, 0, 40, 40, 0, 0, 0], (6, 1)))
    mag = batch(x, {"sobel": {"output": "magnitude"}})
    assert mag.shape == (1, 1, 6, 8) and np.array_equal(mag[0, 0], np.abs(gx))
    # sobel is deterministic: in TEST as well
    np.testing.assert_array_equal(batch(x, {"sobel": {}}, train=False)[0], np.stack([gx, gy]))


def test_random_resized_crop_shape_and_crops_come_from_the_image():
    x = np.arange(16 * 16, dtype=np.float32).reshape(1, 1, 16, 16).repeat(32, axis=0)
    # area 1/4, ratio 1: 8×8 boxes resized to 8×8 — windows of the image, unresampled
    got = batch(x, {"random_resized_crop": {"size": 8, "scale": [0.25, 0.25], "ratio": [1, 1]}})
    assert got.shape == (32, 1, 8, 8)
    corners = {(int(g[0, 0, 0]) // 16, int(g[0, 0, 0]) % 16) for g in got}
    for g, (i, j) in zip(got, [(int(g[0, 0, 0]) // 16, int(g[0, 0, 0]) % 16) for g in got]):
        np.testing.assert_array_equal(g[0], x[0, 0, i : i + 8, j : j + 8])
    assert len(corners) > 10
    # resized boxes read values inside the image's range; [h, w] sizes
    got = batch(x, {"random_resized_crop": {"size": [5, 7], "scale": [0.1, 1.0]}})
    assert got.shape == (32, 1, 5, 7) and got.min() >= 0 and got.max() <= 255
    # TEST: the whole image (test_crop 1) resized; 0.5: its central half
    t = {"random_resized_crop": {"size": 8, "test_crop": 0.5}}
    np.testing.assert_array_equal(batch(x, t, train=False)[0, 0], x[0, 0, 4:12, 4:12])
    assert transformed_shape((3, 16, 16), T.model_validate({**t, "sobel": {}})) == (2, 8, 8)


# --- determinism, resume, TEST -------------------------------------------------------------------

ALL = {
    "scale": 1 / 256,
    "mean_value": [33.0],
    "random_resized_crop": {"size": 24, "scale": [0.5, 1.0]},
    "flip": {"vertical": 0.5},
    "rotate90": {"angles": [0, 180]},
    "rotate": {"degrees": 10},
    "translate": {"fraction": 0.1},
    "color_jitter": {"brightness": 0.3, "contrast": 0.3},
    "gaussian_blur": {"p": 0.5},
    "gaussian_noise": {"std": 0.05},
    "cutout": {"holes": 2, "size": 5},
}


def _take(ds, k, **kw):
    with BatchStream(ds, transform=T.model_validate(ALL), train=True, **kw) as s:
        return [next(s)["data"] for _ in range(k)], s.position()


def test_same_seed_same_batches_and_each_place_its_own_draws():
    ds = load_source("netc:digits/train")
    kw = dict(seed=5, shuffle=True, prefetch=2)
    a, _ = _take(ds, 3, batch_size=64, **kw)
    b, _ = _take(ds, 3, batch_size=64, **kw)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(_take(ds, 1, batch_size=64, **{**kw, "seed": 6})[0][0], a[0])
    # the draws belong to (seed, epoch, place): batches of 48 cut the same stream differently
    c, _ = _take(ds, 4, batch_size=48, **kw)
    np.testing.assert_array_equal(np.concatenate(c), np.concatenate(a))
    # the next epoch draws again: the same samples (no shuffle), other augmentations
    x = ds.data[:40]
    e = batch(x, ALL, n=40, seed=5), batch(x, ALL, n=40, seed=5, position={"epoch": 1, "index": 0})
    assert e[0].shape == (40, 1, 24, 24) and not np.array_equal(*e)


def test_resumed_stream_repeats_the_augmentations():
    digits = load_source("netc:digits/train")
    ds = Dataset("digits[:400]", digits.data[:400], digits.label[:400])
    kw = dict(batch_size=64, seed=7, shuffle=True, prefetch=4)
    ref, _ = _take(ds, 9, **kw)  # the last three cross the epoch boundary (400 samples)
    _, pos = _take(ds, 6, **kw)
    assert pos == {"epoch": 0, "index": 384, "size": 400}
    resumed, _ = _take(ds, 3, position=pos, **kw)
    for x, y in zip(resumed, ref[6:]):
        np.testing.assert_array_equal(x, y)


def test_worker_processes_make_the_same_batches():
    digits = load_source("netc:digits/train")
    ds = Dataset("digits[:300]", digits.data[:300], digits.label[:300])
    kw = dict(batch_size=64, transform=T.model_validate(ALL), train=True, seed=7, shuffle=True)
    with BatchStream(ds, **kw, prefetch=0) as s:
        ref = [next(s) for _ in range(8)]
    start = {"epoch": 0, "index": 192, "size": 300}  # batch 3; batch 4 crosses the epoch
    with BatchStream(ds, **kw, prefetch=2, workers=1, position=start) as s:
        got = [next(s) for _ in range(5)]
        assert s.position() == {"epoch": 1, "index": 192 + 5 * 64 - 300, "size": 300}
    for a, b in zip(got, ref[3:], strict=True):
        np.testing.assert_array_equal(a["data"], b["data"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_test_phase_has_no_random_transforms():
    x = images(n=16, c=3, h=8, w=8)
    random = {k: v for k, v in ALL.items() if k not in ("random_resized_crop", "mean_value")}
    random["color_drop"] = {"p": 1.0}
    plain = batch(x, {"scale": 1 / 256, "crop_size": 6}, train=False)
    np.testing.assert_array_equal(batch(x, {**random, "crop_size": 6}, train=False), plain)
    assert not np.array_equal(batch(x, {**random, "crop_size": 6}), plain)


# --- the shape rule and its errors ---------------------------------------------------------------

NET = """\
name: aug
layers:
  - name: digits
    type: Data
    top: [data, label]
    transform_param: {T}
    data_param: {{source: "netc:digits/train", batch_size: 8}}
  - {{name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {{num_output: 10}}}}
  - {{name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}}
"""


def test_check_infers_the_augmented_shape(check_spec):
    _, plans, diags = check_spec(
        NET.format(T="{random_resized_crop: {size: [20, 24]}, rotate: {degrees: 5}, sobel: {}}")
    )
    assert not [d for d in diags if "error" in d], diags
    assert plans["TRAIN"].blobs["data"] == (8, 2, 20, 24)


@pytest.mark.parametrize(
    "t,message",
    [
        (
            "{cutout: {size: 30}}",
            "6:32: error: layer 'digits' (Data): transform_param.cutout.size: "
            "cutout hole 30×30 is larger than the 28×28 images",
        ),
        (
            "{crop_size: 20, cutout: {size: 21}}",
            "6:47: error: layer 'digits' (Data): transform_param.cutout.size: cutout hole 21×21 is "
            "larger than the 20×20 images (after the crop)",
        ),
        (
            "{crop_size: 24, random_resized_crop: {size: 20}}",
            "6:38: error: layer 'digits' (Data): transform_param.random_resized_crop: "
            "random_resized_crop and crop_size/crop_h/crop_w exclude each other: random_resized_crop's "
            "size is the output size",
        ),
        (
            "{color_drop: {p: 0.2}}",
            "6:23: error: layer 'digits' (Data): transform_param.color_drop: "
            "color_drop needs 3-channel (RGB) images, but they have 1 channel",
        ),
        (
            "{random_resized_crop: {size: [20, 24]}, rotate90: {}}",
            "6:62: error: layer 'digits' (Data): transform_param.rotate90.angles: rotate90 by 90 or 270 "
            "degrees needs square images, but they are 20×24 (after the crop)",
        ),
        (
            "{random_resized_crop: {size: 24, scale: [0.5, 2]}}",
            "6:55: error: layer 'digits' (Data): transform_param.random_resized_crop.scale: scale (the "
            "box's area fraction) must be two values [a, b] with 0 < a ≤ b ≤ 1, got [0.5, 2]",
        ),
        (
            "{gaussian_blur: {kernel_size: 4}}",
            "6:39: error: layer 'digits' (Data): transform_param.gaussian_blur.kernel_size: kernel_size "
            "must be odd, got 4",
        ),
        (
            "{mirror: true, flip: {horizontal: 0.5}}",
            "6:44: error: layer 'digits' (Data): transform_param.flip.horizontal: flip.horizontal and "
            "mirror both flip horizontally: give one of them",
        ),
        (
            "{translate: {pixels: 28}}",
            "6:35: error: layer 'digits' (Data): transform_param.translate"
            ".pixels: translate.pixels 28 would move the 28×28 images out "
            "of view (at most 27)",
        ),
        (
            "{translate: {fill: 1}}",
            "6:23: error: layer 'digits' (Data): transform_param.translate: "
            "give one of pixels (the largest shift) or fraction (of the size)",
        ),
        (
            "{gaussian_noise: {std: -1}}",
            "6:40: error: layer 'digits' (Data): transform_param."
            "gaussian_noise.std: must be ≥ 0.0, got -1",
        ),
        (
            "{rotate: {degrees: 5}, translate: {pixels: 2, fill: 1}}",
            "6:68: error: layer 'digits' (Data): transform_param.translate.fill: rotate and "
            "translate are one warp with one fill: rotate.fill 0 and translate.fill 1 differ",
        ),
    ],
)
def test_check_reports_bad_values_with_layer_and_field(check_spec, t, message):
    assert [e.split("spec.yaml:", 1)[1] for e in errors_of(check_spec, NET.format(T=t))] == [
        message
    ]


def test_workers_are_for_array_and_image_sources(check_spec):
    text = """\
name: chars
layers:
  - name: text
    type: Data
    top: [data, label]
    data_param: {source: "netc:hamlet", batch_size: 4, seq_len: 8, workers: 2}
"""
    assert [e.split("spec.yaml:", 1)[1] for e in errors_of(check_spec, text)] == [
        "6:68: error: layer 'text' (Data): data_param.workers: workers applies to array and "
        "image sources, not to text source 'netc:hamlet'"
    ]


@pytest.mark.parametrize("field", ["transform_param.rotate", "data_param.workers"])
def test_caffe_prototxt_refuses_the_extensions(field):
    from netc.spec.prototxt import NotCaffeError, data_to_prototxt

    section, key = field.split(".")
    value = {"degrees": 5} if key == "rotate" else 2
    layer = {"name": "d", "type": "Data", "top": ["data"], section: {key: value}}
    with pytest.raises(NotCaffeError, match=field.replace(".", r"\.")):
        data_to_prototxt({"layers": [layer]})


def test_the_loader_refuses_what_check_refuses():
    with pytest.raises(DataError, match=r"^mem: transform_param.sobel: sobel needs 1-channel"):
        batch(images(c=2), {"sobel": {}})
    with pytest.raises(
        DataError,
        match=r"^mem: transform_param.color_jitter.saturation: "
        r"color_jitter.saturation needs 3-channel",
    ):
        batch(images(), {"color_jitter": {"saturation": 0.5}})
    x = images(n=4)
    ds = Dataset("mem", x, np.zeros((4, 6, 6), np.int64))  # a label map
    with pytest.raises(DataError, match="rotate would move the images without their label map"):
        BatchStream(
            ds,
            batch_size=2,
            transform=T.model_validate({"rotate": {"degrees": 5}}),
            train=True,
            seed=0,
            shuffle=False,
            prefetch=0,
        )


# --- training ------------------------------------------------------------------------------------

AUGMENTED_MLP = """\
name: mlp_aug
layers:
  - name: digits
    type: Data
    top: [data, label]
    transform_param: {scale: 0.00390625, random_resized_crop: {size: 24, scale: [0.6, 1]},
                      rotate: {degrees: 10}, gaussian_noise: {std: 0.05}, cutout: {size: 6}}
    data_param: {source: "netc:digits/train", batch_size: 32, shuffle: true}
  - {name: ip1, type: InnerProduct, bottom: data, top: ip1, inner_product_param: {num_output: 32}}
  - {name: relu1, type: ReLU, bottom: ip1, top: ip1}
  - {name: ip2, type: InnerProduct, bottom: ip1, top: ip2, inner_product_param: {num_output: 10}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip2, label], top: loss}
solver: {base_lr: 0.05, momentum: 0.9, lr_policy: fixed, max_iter: 20, snapshot: 10,
         display: 10, snapshot_prefix: mlp, random_seed: 7}
"""


@pytest.fixture(scope="module")
def augmented_mlp(tmp_path_factory):
    path = tmp_path_factory.mktemp("aug") / "mlp_aug.yaml"
    path.write_text(AUGMENTED_MLP)
    return path


def test_training_with_augmentation_resumes_exactly(tmp_path, augmented_mlp):
    ref, part = tmp_path / "ref", tmp_path / "part"
    r = netc("train", augmented_mlp, "--out", ref)
    assert r.returncode == 0, r.stderr
    tree, meta = load_checkpoint(latest_checkpoint(ref))
    assert meta["iteration"] == 20 and tree["params"]["ip1"]["weight"].shape == (32, 576)
    r = netc("train", augmented_mlp, "--out", part, "--max-iter", 10)
    assert r.returncode == 0, r.stderr
    # the resumed run makes its batches in a worker process, from the saved position: the same
    with_workers = augmented_mlp.with_name("mlp_aug_workers.yaml")
    with_workers.write_text(AUGMENTED_MLP.replace("shuffle: true}", "shuffle: true, workers: 1}"))
    r = netc("train", with_workers, "--resume", part, "--max-iter", 20)
    assert r.returncode == 0 and "at iteration 10" in r.stdout, r.stderr
    a, b = flatten(tree), flatten(load_checkpoint(latest_checkpoint(part))[0])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
