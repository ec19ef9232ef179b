"""netc inspect: filters, feature maps, top patches, occlusion, saliency and t-SNE of a small CNN
trained once on the built-in digits (module fixture), each checked for something that must hold
of a trained net, not for pixels."""

import dataclasses
import sys
import textwrap

import numpy as np
import pytest
import sklearn.manifold  # noqa: F401 - loaded before threadpool_limits, so that it applies
from conftest import fast_xla_options, netc
from PIL import Image
from threadpoolctl import threadpool_limits

from netc.runtime import inspect as ins
from netc.runtime.errors import RunError

SPEC = """
name: tinycnn
layers:
  - {name: digits, type: Data, top: [data, label], include: {phase: TRAIN},
     transform_param: {scale: 0.00390625},
     data_param: {source: "netc:digits/train", batch_size: 32, shuffle: true}}
  - {name: digits, type: Data, top: [data, label], include: {phase: TEST},
     transform_param: {scale: 0.00390625},
     data_param: {source: "netc:digits/test", batch_size: 100}}
  - {name: conv1, type: Convolution, bottom: data, top: conv1,
     convolution_param: {num_output: 8, kernel_size: 5, weight_filler: {type: xavier}}}
  - {name: relu1, type: ReLU, bottom: conv1, top: conv1}
  - {name: pool1, type: Pooling, bottom: conv1, top: pool1,
     pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}
  - {name: conv2, type: Convolution, bottom: pool1, top: conv2,
     convolution_param: {num_output: 16, kernel_size: 5, pad: 1, weight_filler: {type: xavier}}}
  - {name: relu2, type: ReLU, bottom: conv2, top: conv2}
  - {name: pool2, type: Pooling, bottom: conv2, top: pool2,
     pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}
  - {name: ip1, type: InnerProduct, bottom: pool2, top: ip1,
     inner_product_param: {num_output: 32, weight_filler: {type: xavier}}}
  - {name: relu3, type: ReLU, bottom: ip1, top: ip1}
  - {name: ip2, type: InnerProduct, bottom: ip1, top: ip2,
     inner_product_param: {num_output: 10, weight_filler: {type: xavier}}}
  - {name: accuracy, type: Accuracy, bottom: [ip2, label], top: accuracy, include: {phase: TEST}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip2, label], top: loss}
solver: {base_lr: 0.05, momentum: 0.9, lr_policy: fixed, max_iter: 150, display: 0,
         snapshot: 150, random_seed: 1}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(spec, weights .npz) of the CNN trained for 150 iterations of `netc train`'s step (the
    spec's solver, its TRAIN Data layer). The step is compiled without XLA's fusion emitters
    (half the compile time here, as fast per step): the weights are only the tests' means."""
    import jax

    from netc.runtime.api import load
    from netc.runtime.checkpoint import flatten
    from netc.runtime.commands.predict import write_npz
    from netc.runtime.feeds import data_feeds

    root = tmp_path_factory.mktemp("inspect")
    spec = root / "cnn.yaml"
    spec.write_text(textwrap.dedent(SPEC).lstrip())
    model = load(str(spec), phase="TRAIN")
    model.params, model.state = jax.jit(model.net.init)(jax.random.PRNGKey(1))
    opt_state, step = model.train_step()
    (feed,) = data_feeds(model.plan, str(root))
    params, state, losses = model.params, model.state, []
    with feed.stream(seed=1) as batches:
        inputs = feed.feed(next(batches))
        options = fast_xla_options({"xla_cpu_use_fusion_emitters": False})
        step = step.lower(params, state, opt_state, inputs, 0).compile(compiler_options=options)
        for it in range(150):
            params, state, opt_state, loss = step(params, state, opt_state, inputs, it)
            losses.append(loss)
            inputs = feed.feed(next(batches))
    assert np.mean(losses[-20:]) < 0.6  # from 2.3
    write_npz(str(root / "weights.npz"), flatten(jax.device_get(params)))
    return spec, root / "weights.npz"


@pytest.fixture(scope="module")
def net(trained):
    return ins.open_net(str(trained[0]), str(trained[1]), "netc:digits/test")


@pytest.fixture(scope="module")
def digits(net):
    """150 test digits; the one forward program every test below reuses is compiled here."""
    s = net.samples(limit=150)
    net.forward(s.x, ["conv2", "ip1", "ip2"])
    return s


def test_filters_grid_has_one_tile_per_filter_each_on_its_own_scale(net):
    layer, w = ins.first_filters(net, None)
    assert layer == "conv1" and w.shape == (8, 1, 5, 5)
    tiles, cols = ins.filter_tiles(w)
    g = ins.grid(tiles, cols=cols)
    assert g.count == 8 and g.cols == 3 and g.tile == (5 * g.scale, 5 * g.scale)
    assert g.image.size == (2 + 3 * (g.tile[1] + 2), 2 + 3 * (g.tile[0] + 2))
    pixels = np.asarray(g.image)
    assert len(_tiles_in(pixels)) == 8
    for i in range(8):
        x0, y0, x1, y1 = g.box(i)
        tile = pixels[y0 : y1 : g.scale, x0 : x1 : g.scale, 0]
        assert tile.min() == 0 and tile.max() == 255  # per-filter normalisation
        assert np.corrcoef(tile.ravel(), w[i, 0].ravel())[0, 1] > 0.999
    rgb, cols = ins.filter_tiles(np.random.default_rng(0).normal(size=(6, 3, 3, 3)))
    assert rgb.shape == (6, 3, 3, 3) and cols is None  # one colour tile per filter
    many, cols = ins.filter_tiles(np.random.default_rng(0).normal(size=(4, 5, 3, 3)))
    assert len(many) == 20 and cols == 5  # a row of input channels per filter


def test_features_command_draws_one_tile_per_channel(trained, tmp_path):
    out = tmp_path / "maps.png"
    r = netc(
        "inspect",
        "features",
        trained[0],
        "--weights",
        trained[1],
        "--blob",
        "conv2",
        "--index",
        4,
        "-o",
        out,
    )
    assert r.returncode == 0, r.stderr
    assert "16 channels of 'conv2' (10×10)" in r.stdout
    tiles = _tiles_in(np.asarray(Image.open(out).convert("RGB")))
    assert len(tiles) == 16
    assert len({(y1 - y0, x1 - x0) for y0, y1, x0, x1 in tiles}) == 1  # one size, square
    assert tiles[0][1] - tiles[0][0] == tiles[0][3] - tiles[0][2]


def _runs(mask):
    """(start, stop) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def _tiles_in(pixels):
    """The boxes (top, bottom, left, right) of a grid picture's tiles: what is not the gap."""
    gap = (pixels == pixels[0, 0]).all(axis=2)  # the corner is gap
    boxes = []
    for y0, y1 in _runs(~gap.all(axis=1)):
        boxes += [(y0, y1, x0, x1) for x0, x1 in _runs(~gap[y0:y1].all(axis=0))]
    return boxes


def test_top_patches_are_the_strongest_and_their_windows_are_the_receptive_fields(net, digits):
    tp = ins.top_patches(net, digits.x, "conv2", channel=3, k=5)
    acts = net.forward(digits.x, ["conv2"])["conv2"][:, 3]
    maxima = acts.reshape(len(acts), -1).max(axis=1)
    others = np.delete(maxima, tp.images)
    assert (tp.activations >= others.max()).all()
    assert (np.diff(tp.activations) <= 0).all()
    for i, (r, c), a in zip(tp.images, tp.positions, tp.activations):
        assert acts[i, r, c] == pytest.approx(a)
    # the plan's receptive field of conv2 is 14×14 with jump 2; pad 1 shifts it by -2
    assert net.receptive_field("conv2") == [(14, 2, -2), (14, 2, -2)]
    # the activation at each position depends on its window only: noise outside it changes
    # nothing, noise inside it changes the value
    noisy = np.random.default_rng(1).uniform(0, 1, size=(len(tp.images), *digits.x.shape[1:]))
    outside, inside = noisy.astype(np.float32), digits.x[tp.images].copy()
    for n, (top, left, bottom, right) in enumerate(tp.boxes):
        t, l_ = max(top, 0), max(left, 0)
        outside[n, :, t:bottom, l_:right] = digits.x[tp.images[n], :, t:bottom, l_:right]
        inside[n, :, t:bottom, l_:right] = noisy[n, :, t:bottom, l_:right]
    # with the digits after them: the batch shape (and the program) of the fixture's forward
    again = net.forward(np.concatenate([outside, inside, digits.x]), ["conv2"])["conv2"][:, 3]
    at = (np.arange(len(tp.images)), tp.positions[:, 0], tp.positions[:, 1])
    np.testing.assert_allclose(again[: len(tp.images)][at], tp.activations, rtol=1e-4, atol=1e-5)
    assert not np.allclose(
        again[len(tp.images) : 2 * len(tp.images)][at], tp.activations, rtol=1e-2
    )
    assert tp.patches.shape == (5, 1, 14, 14)


def _strokes(img):
    return img[0] > 0.5  # ink: the digits are white on black, scaled to [0, 1]


def test_occluding_strokes_lowers_the_class_more_than_occluding_background(net, digits):
    on, off = [], []
    for i in range(6):
        img, label = digits.x[i], int(digits.labels[i])
        occ = ins.occlusion(net, img, label, patch=4, stride=2)
        ink = _strokes(img)
        covered = np.array([[ink[r : r + 4, c : c + 4].mean() for c in occ.cols] for r in occ.rows])
        on.append(occ.drop[covered >= 0.25].mean())
        off.append(occ.drop[covered == 0].mean())
        assert occ.heat.shape == img.shape[1:]
    on, off = np.array(on), np.array(off)
    assert (on > off).sum() >= 5 and on.mean() > 5 * max(off.mean(), 1e-6), (on, off)


def test_saliency_is_larger_on_strokes_than_on_background(net, digits):
    x, labels = digits.x[:16], digits.labels[:16]
    sal = ins.saliency(net, x, labels)
    assert sal.shape == (16, 28, 28)
    ink = np.stack([_strokes(img) for img in x])
    on = np.array([s[m].mean() for s, m in zip(sal, ink)])
    off = np.array([s[~m].mean() for s, m in zip(sal, ink)])
    assert (on > off).mean() >= 0.9 and on.mean() > 2 * off.mean(), (on, off)


def test_tsne_of_the_last_hidden_layer_separates_classes_better_than_pixels(net, digits):
    """Measure: leave-one-out 5-NN accuracy of the class in the 2-D embedding (150 samples)."""
    feats = net.forward(digits.x, ["ip1"])["ip1"]
    labels = digits.labels.astype(np.int64)
    with threadpool_limits(1):  # OpenMP threads spinning on a busy machine cost 5x the CPU
        hidden = ins.knn_accuracy(ins.tsne(feats), labels)
        pixels = ins.knn_accuracy(ins.tsne(digits.x.reshape(len(digits.x), -1)), labels)
    assert hidden >= 0.9 and hidden > pixels + 0.03, (hidden, pixels)


def test_an_image_file_is_read_as_the_data_layer_reads_its_source(net, digits, tmp_path):
    from netc.runtime.data import load_source

    raw = load_source("netc:digits/test").data[7, 0]
    Image.fromarray(raw).save(tmp_path / "seven.png")
    as_file = dataclasses.replace(net, source=str(tmp_path / "seven.png"), _fns={})
    s = as_file.samples(indices=[0])
    np.testing.assert_array_equal(s.x[0], digits.x[7])
    assert s.labels is None


def test_without_scikit_learn_the_embedding_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import fails, as if missing
    with pytest.raises(RunError, match=r"needs scikit-learn: pip install 'netc\[inspect\]'"):
        ins.tsne(np.zeros((10, 4)))


def test_user_errors_are_messages(trained, net, tmp_path):
    spec, run = trained
    r = netc("inspect", "filters", spec, "--weights", run, "-o", tmp_path / "f.jpg")
    assert r.returncode == 1 and "netc inspect writes PNG images; name the file *.png" in r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(RunError, match=r"--blob: the TEST net has no blob 'conv3' \(did you mean"):
        ins.top_patches(net, np.zeros((1, 1, 28, 28), np.float32), "conv3", 0, 1)
    with pytest.raises(RunError, match=r"--channel 16: blob 'conv2' has 16 channels \(0..15\)"):
        ins.top_patches(net, np.zeros((1, 1, 28, 28), np.float32), "conv2", 16, 1)
    with pytest.raises(RunError, match=r"blob 'ip1' \(100×32\) has no receptive field"):
        net.receptive_field("ip1")
    with pytest.raises(RunError, match=r"--index 1000: netc:digits/test has 1,000 samples"):
        net.samples(indices=[1000])
    with pytest.raises(RunError, match=r"--layer: 'ip1' has no 2-D kernels"):
        ins.first_filters(net, "ip1")
