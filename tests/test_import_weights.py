"""`netc import-weights`: PyTorch state dicts (safetensors) → netc checkpoints.

For ResNet-18, MobileNet v2 and VGG-11 the torchvision-structured network is built here in
PyTorch (modules named as torchvision names them; random weights and BatchNorm statistics, no
download), its state dict saved with safetensors, imported with `--map torchvision` into the zoo
spec, and the imported net's logits (its TEST forward, as `netc predict` runs it, every blob
from the import) compared with PyTorch's (float64 reference) at 64×64 (MobileNet v2: 32×32), batch 2.
Then `netc train --weights` fine-tunes only the last layer of the imported ResNet-18 on the
built-in digits (lr_mult 0 and BatchNorm's global statistics elsewhere) and its test accuracy
rises. Errors: pickles refused with the conversion recipe, unmapped / missing / mis-shaped
tensors listed by name with their shapes, exit 1, no traceback.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MODELS, jit_fast, netc
from safetensors.torch import save_file
from torch import nn
from torch_models import vgg11

from netc.spec.prototxt import dump_yaml
from netc.spec.yaml_io import read_yaml

TOL = 1e-4
SIZE = 64


# --- torchvision-structured modules (names as torchvision's resnet.py / mobilenetv2.py / vgg.py) --


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (c, s) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], 1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, c, s), BasicBlock(c, c, 1)))
            cin = c
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def conv_bn_relu6(cin, cout, k, stride, groups=1):  # torchvision's Conv2dNormActivation
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        self.use_res_connect = stride == 1 and cin == cout
        layers = [] if t == 1 else [conv_bn_relu6(cin, hidden, 1, 1)]
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        features = [conv_bn_relu6(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(conv_bn_relu6(cin, 1280, 1, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# (module, zoo spec, logits blob, input size). MobileNet v2 at 32×32: PyTorch's float64
# depthwise convolutions cost 8 s of CPU at 64×64; its 3×3 kernels are still read whole in every
# stage down to 2×2 maps.
NETS = {"resnet18": (ResNet18, "resnet18_torchvision.yaml", "fc", SIZE),
        "mobilenet_v2": (MobileNetV2, "mobilenet_v2_torchvision.yaml", "classifier", 32),
        "vgg11": (vgg11, "vgg11_torchvision.yaml", "classifier_6", SIZE)}


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """torchvision's default init, then every BatchNorm's γ, β and running statistics drawn at
    random (the defaults 1, 0, 0, 1 would hide a swapped or dropped tensor)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def with_input(spec_name: str, dims, tmp_path: Path) -> Path:
    data = copy.deepcopy(read_yaml((MODELS / spec_name).read_text()).data)
    (first,) = [x for x in data["layers"] if x["type"] == "Input"]
    first["input_param"]["shape"] = {"dim": list(dims)}
    path = tmp_path / spec_name
    path.write_text(dump_yaml(data))
    return path


def save_state(model: nn.Module, path: Path) -> Path:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def imported_logits(spec: Path, weights: Path, x: np.ndarray, blob: str) -> np.ndarray:
    """`blob` of `spec`'s TEST forward on `x` with every blob of the net taken from `weights` (none
    left to its filler, none of the weights unused). The forward `netc predict` runs (Net.apply,
    TEST phase, jitted), in this process: the net's structure from eval_shape and its values from
    the file, so no filler is compiled (MobileNet v2's init alone cost 15 s of CPU), and compiled
    with FAST_XLA (float32 either way). `netc predict --weights` on an import is run below by
    test_custom_mapping_file."""
    import jax

    from netc.compiler.lower import lower
    from netc.runtime.context import load_context
    from netc.runtime.weights import apply_weights, read_weights

    net = lower(load_context(str(spec)).plan("TEST"))
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0))
    params, state, report = apply_weights(*shapes, *read_weights(str(weights)))
    assert not report.skipped and not report.unused, report.lines()

    def forward(params, state, feed):
        return net.apply(params, state, feed, rng=None, train=False, outputs=[blob])[0][blob]

    return np.asarray(jit_fast(forward)(params, state, {"data": x}))


# --- logits equal PyTorch's -------------------------------------------------------------------------


@pytest.mark.parametrize("net", sorted(NETS))
def test_imported_logits_equal_pytorch(net, tmp_path):
    cls, spec_name, logits, size = NETS[net]
    torch.manual_seed(0)
    model = randomised(cls(), 0)
    x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():  # logits of about ±5, so that 1e-4 is a tight bound
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        factor = 5 / float(model(torch.from_numpy(x)).abs().max())
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    state = save_state(model, tmp_path / f"{net}.safetensors")
    spec = with_input(spec_name, [2, 3, size, size], tmp_path)
    r = netc("import-weights", spec, state, "--map", "torchvision", "-o", tmp_path / "w")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    n_tensors = len(model.state_dict())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert ("num_batches_tracked" in r.stderr) == bool(n_bn)  # noted, not imported
    assert f"weights: {n_tensors - n_bn} tensor(s) imported" in r.stderr, r.stderr

    got = imported_logits(spec, tmp_path / "w.json", x, logits)
    with torch.no_grad():
        want = model.double()(torch.from_numpy(x).double()).numpy()
    assert got.shape == want.shape == (2, 1000)
    diff = float(np.max(np.abs(got - want)))
    print(f"{net}: max |netc - torch| = {diff:.3g} (logits up to {np.max(np.abs(want)):.3g})")
    assert np.max(np.abs(want)) > 4  # not a degenerate near-zero comparison
    assert diff < TOL


# --- fine-tune the last layer on the digits -------------------------------------------------------


def finetune_spec(tmp_path: Path) -> Path:
    """ResNet-18 (torchvision) reading the digits: the gray 28×28 image repeated into 3 channels;
    every layer but fc frozen (lr_mult 0; BatchNorm on its imported global statistics); a loss and
    a TEST accuracy on fc's 1000 logits (labels 0-9). Every filler constant: each blob comes
    from the import (checked at the end), and the random fillers' draws, thrown away, would cost
    one XLA program per blob shape."""
    data = copy.deepcopy(read_yaml((MODELS / "resnet18_torchvision.yaml").read_text()).data)
    layers = [x for x in data["layers"] if x["type"] != "Input"]
    for layer in layers:
        for field in ("convolution_param", "inner_product_param"):
            if field in layer:
                layer[field]["weight_filler"] = layer[field]["bias_filler"] = {"type": "constant"}
        if layer["type"] == "Convolution":
            layer["param"] = [{"lr_mult": 0, "decay_mult": 0}]
        elif layer["type"] == "Scale":
            layer["param"] = [{"lr_mult": 0, "decay_mult": 0}] * 2
        elif layer["type"] == "BatchNorm":
            layer["batch_norm_param"] = {"use_global_stats": True}
    data["layers"] = [
        {"name": "digits", "type": "Data", "top": ["gray", "label"], "include": {"phase": "TRAIN"},
         "transform_param": {"scale": 0.00390625},
         "data_param": {"source": "netc:digits/train", "batch_size": 32}},
        {"name": "digits", "type": "Data", "top": ["gray", "label"], "include": {"phase": "TEST"},
         "transform_param": {"scale": 0.00390625},
         "data_param": {"source": "netc:digits/test", "batch_size": 100}},
        {"name": "rgb", "type": "Concat", "bottom": ["gray", "gray", "gray"], "top": "data"},
        *layers,
        {"name": "loss", "type": "SoftmaxWithLoss", "bottom": ["fc", "label"], "top": "loss"},
        {"name": "accuracy", "type": "Accuracy", "bottom": ["fc", "label"], "top": "accuracy",
         "include": {"phase": "TEST"}},
    ]
    data["solver"] = {"type": "Adam", "base_lr": 0.002, "momentum": 0.9, "momentum2": 0.999,
                      "lr_policy": "fixed", "max_iter": 20, "test_iter": 5, "test_interval": 20,
                      "test_initialization": True, "display": 10, "snapshot_prefix": "ft",
                      "random_seed": 3}
    path = tmp_path / "resnet18_digits.yaml"
    path.write_text(dump_yaml(data))
    return path


def calibrated_on_digits(model: nn.Module) -> nn.Module:
    """BatchNorm running statistics estimated on the digits (cumulative averages over 500
    training images, as a trained net's would be), the weights left random: the features then
    vary with the image (with statistics that do not fit the data they barely do, and no head
    could be fine-tuned on them)."""
    from netc.runtime.data import load_source

    images = load_source("netc:digits/train").data[:500].astype(np.float32) / 256
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), 250):
            model(torch.from_numpy(images[i:i + 250]).repeat(1, 3, 1, 1))
    return model.eval()


def test_finetune_last_layer_on_digits(tmp_path):
    torch.manual_seed(5)
    model = calibrated_on_digits(randomised(ResNet18(), 5))
    state = save_state(model, tmp_path / "r18.safetensors")
    spec = finetune_spec(tmp_path)
    r = netc("import-weights", spec, state, "-o", tmp_path / "r18")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    r = netc("train", spec, "--weights", tmp_path / "r18.json", "--out", run, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tests = {rec["iter"]: rec["metrics"]["accuracy"] for rec in recs if rec["event"] == "test"}
    before, after = tests[0], tests[max(tests)]
    print(f"digits accuracy: {before:.3f} at iteration 0, {after:.3f} at {max(tests)}")
    assert after > before + 0.3, tests

    # only fc moved: every other blob is still the imported one
    from netc.runtime.weights import read_weights

    start, _ = read_weights(str(tmp_path / "r18.json"))
    end, end_state = read_weights(str(run))
    for layer, roles in start.items():
        for role, value in roles.items():
            same = np.array_equal(np.asarray(end[layer][role]), np.asarray(value))
            assert same == (layer != "fc"), f"{layer}/{role}"


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        if stride != 1 or cin != width * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(width * 4))


def test_resnet50_state_dict_maps_completely(tmp_path):
    """torchvision's ResNet-50 keys (Bottleneck: conv3/bn3, a projection in every stage's first
    block) into models/resnet50_torchvision.yaml: every tensor mapped, every blob filled, shapes
    equal (the mapping only; the forward pass is ResNet-18's, checked above)."""
    model = nn.Module()
    model.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(64)
    cin = 64
    for i, (width, n, s) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], 1):
        blocks = []
        for j in range(n):
            blocks.append(Bottleneck(cin, width, s if j == 0 else 1))
            cin = width * 4
        setattr(model, f"layer{i}", nn.Sequential(*blocks))
    model.fc = nn.Linear(2048, 1000)
    state = save_state(model, tmp_path / "r50.safetensors")
    spec = with_input("resnet50_torchvision.yaml", [1, 3, 64, 64], tmp_path)
    r = netc("import-weights", spec, state, "-o", tmp_path / "w")
    assert r.returncode == 0, r.stderr
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n_bn == 53
    assert f"weights: {len(model.state_dict()) - n_bn} tensor(s) imported" in r.stderr


# --- errors ---------------------------------------------------------------------------------------


def _small_spec(tmp_path):
    return with_input("resnet18_torchvision.yaml", [1, 3, 32, 32], tmp_path)


def test_pickles_are_refused_with_the_recipe(tmp_path):
    spec = _small_spec(tmp_path)
    pth = tmp_path / "m.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, pth)  # a zip of pickles
    raw = tmp_path / "m.safetensors"
    raw.write_bytes(b"\x80\x04\x95" + b"\0" * 20)  # pickle magic under a safetensors name
    for path in (pth, raw):
        r = netc("import-weights", spec, path)
        assert r.returncode == 1
        assert "Traceback" not in r.stderr
        assert "never unpickles" in r.stderr
        assert ("save_file(torch.load('m.pth', weights_only=True), 'm.safetensors')"
                in r.stderr), r.stderr
    assert not list(tmp_path.glob("*.json"))


def test_unmapped_missing_and_misshaped_are_listed(tmp_path):
    spec = _small_spec(tmp_path)
    torch.manual_seed(0)
    sd = {k: v.clone() for k, v in ResNet18().state_dict().items()}
    sd["head.extra.weight"] = torch.zeros(3, 4)  # no rule maps it
    del sd["layer2.0.bn1.running_var"]  # a blob left empty
    sd["fc.weight"] = torch.zeros(10, 512)  # mis-shaped
    sd["layer9.0.conv1.weight"] = torch.zeros(1)  # a rule maps it to a layer the net lacks
    state = tmp_path / "bad.safetensors"
    save_file(sd, str(state))
    r = netc("import-weights", spec, state, "-o", tmp_path / "w")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    err = r.stderr
    assert "unmapped: head.extra.weight (3×4): no rule of --map torchvision maps it" in err
    assert "layer9.0.conv1.weight (1): mapped to layer layer9_0_conv1, which the net does not have" \
        in err
    assert "missing: layer2_0_conv1_bn/variance (128): no tensor of the state dict fills it" in err
    assert "mismatch: fc.weight → fc/weight: shape 10×512 in the state dict, 1000×512 in the net" \
        in err
    assert "4 problem(s)" in err and "nothing written" in err
    assert not (tmp_path / "w.json").exists()


def test_custom_mapping_file(tmp_path):
    """A user's own source: exact keys, tensor regexes, module rules and a prefix to strip."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(dump_yaml({"name": "tiny", "layers": [
        {"name": "data", "type": "Input", "top": "data",
         "input_param": {"shape": {"dim": [2, 3, 8, 8]}}},
        {"name": "stem", "type": "Convolution", "bottom": "data", "top": "stem",
         "convolution_param": {"num_output": 4, "kernel_size": 3, "bias_term": False}},
        {"name": "stem_bn", "type": "BatchNorm", "bottom": "stem", "top": "stem"},
        {"name": "stem_scale", "type": "Scale", "bottom": "stem", "top": "stem",
         "scale_param": {"bias_term": True}},
        {"name": "head", "type": "InnerProduct", "bottom": "stem", "top": "head",
         "inner_product_param": {"num_output": 5, "transpose": True}}]}))
    model = nn.Sequential()
    model.add_module("body", nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)))
    model.add_module("out", nn.Linear(4 * 6 * 6, 5))
    model = randomised(model, 2)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    state = tmp_path / "s.st"
    save_file(sd, str(state))
    (tmp_path / "map.yaml").write_text(
        "format: netc.torch-map\nversion: 1\nstrip_prefix: ['module.']\n"
        "ignore: ['num_batches_tracked$']\n"
        "keys: {body.0.weight: stem/weight}\n"
        "tensors:\n  - {match: 'out\\.(weight|bias)', to: 'head/\\1'}\n"
        "modules:\n  - {match: 'body\\.1', batchnorm: stem_bn, scale: stem_scale}\n")
    r = netc("import-weights", spec, state, "--map", tmp_path / "map.yaml", "-o", tmp_path / "w")
    assert r.returncode == 0, r.stderr
    assert "weights: 7 tensor(s) imported" in r.stderr
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", data=x)
    r = netc("predict", spec, tmp_path / "in.npz", "--weights", tmp_path / "w.json",
             "-o", tmp_path / "out.npz")
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        want = model[1](torch.flatten(model[0](torch.from_numpy(x)), 1)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["head"], want, atol=1e-5)


def test_bad_mapping_file_and_missing_map(tmp_path):
    spec = _small_spec(tmp_path)
    state = tmp_path / "s.safetensors"
    save_file({"fc.bias": torch.zeros(1000)}, str(state))
    (tmp_path / "bad.yaml").write_text("modules:\n  - {match: 'x(', layer: y}\n")
    r = netc("import-weights", spec, state, "--map", tmp_path / "bad.yaml")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "bad regex 'x('" in r.stderr
    r = netc("import-weights", spec, state, "--map", "caffe-zoo")
    assert r.returncode == 1 and "not a built-in map (torchvision)" in r.stderr
