"""`netc import-weights --map torchvision` for AlexNet, VGG-16 and DenseNet-121.

The networks are built here in PyTorch with torchvision's module structure and names (torchvision's
alexnet.py, vgg.py, densenet.py; no download). Every tensor of their state dicts must map into the
zoo specs (models/alexnet_torchvision.yaml, vgg16_torchvision.yaml, densenet121_torchvision.yaml)
with its shape: checked without weights (the modules are built on PyTorch's meta device, the
tensors are zero pages that are never written), so the check costs no init. The logits of the
imported nets against PyTorch's (random weights, 64×64, batch 1; tests/test_import_weights.py's
procedure) take minutes on a 2-core machine and were compared once by hand (README).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MODELS
from torch import nn
from torch_models import vgg16

from netc.runtime.context import load_context
from netc.runtime.torch_weights import load_map, map_state_dict


class AlexNet(nn.Module):  # torchvision.models.alexnet
    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class DenseLayer(nn.Module):  # torchvision's _DenseLayer (bn_size 4)
    def __init__(self, cin, growth):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        new = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return torch.cat([x, new], 1)


class DenseNet121(nn.Module):  # torchvision.models.densenet121
    def __init__(self, num_classes=1000, growth=32, blocks=(6, 12, 24, 16)):
        super().__init__()
        f = nn.Sequential()
        f.add_module("conv0", nn.Conv2d(3, 64, 7, 2, 3, bias=False))
        f.add_module("norm0", nn.BatchNorm2d(64))
        f.add_module("relu0", nn.ReLU(inplace=True))
        f.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        c = 64
        for b, n in enumerate(blocks, 1):
            block = nn.Sequential()
            for i in range(n):
                block.add_module(f"denselayer{i + 1}", DenseLayer(c + i * growth, growth))
            f.add_module(f"denseblock{b}", block)
            c += n * growth
            if b < len(blocks):
                t = nn.Sequential()
                t.add_module("norm", nn.BatchNorm2d(c))
                t.add_module("relu", nn.ReLU(inplace=True))
                t.add_module("conv", nn.Conv2d(c, c // 2, 1, bias=False))
                t.add_module("pool", nn.AvgPool2d(2, 2))
                f.add_module(f"transition{b}", t)
                c //= 2
        f.add_module("norm5", nn.BatchNorm2d(c))
        self.features = f
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.features(x)), (1, 1))
        return self.classifier(torch.flatten(x, 1))


NETS = {
    "alexnet": (AlexNet, "alexnet_torchvision.yaml", "classifier_6"),
    "vgg16": (vgg16, "vgg16_torchvision.yaml", "classifier_6"),
    "densenet121": (DenseNet121, "densenet121_torchvision.yaml", "classifier"),
}


@pytest.mark.parametrize("net", sorted(NETS))
def test_every_tensor_maps_with_its_shape(net):
    cls, spec_name, _ = NETS[net]
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in cls().state_dict().items()}
    tensors = {k: np.zeros(s, np.float32) for k, s in shapes.items()}  # zero pages, not written
    plans = load_context(str(MODELS / spec_name)).weight_plans()
    params, state, report = map_state_dict(tensors, load_map("torchvision"), plans)
    assert report.errors == [], report.errors
    n_bn = sum(k.endswith("num_batches_tracked") for k in shapes)
    assert len(report.loaded) == len(shapes) - n_bn > 0
    assert report.lines()[0] == f"weights: {len(shapes) - n_bn} tensor(s) imported"
