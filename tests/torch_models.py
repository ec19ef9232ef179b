"""PyTorch modules with torchvision's structure and names, shared by the import-weights tests
(tests/test_import_weights.py, tests/test_import_torchvision.py); built here, no download."""

from __future__ import annotations

import torch
from torch import nn

VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")  # configuration A
VGG16_CFG = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)  # configuration D


class VGG(nn.Module):
    """torchvision.models.vgg without batch norm: `cfg` lists the 3×3 convolutions' widths, "M"
    a 2×2 max pool."""

    def __init__(self, cfg, num_classes=1000):
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg11(num_classes=1000) -> VGG:
    return VGG(VGG11_CFG, num_classes)


def vgg16(num_classes=1000) -> VGG:
    return VGG(VGG16_CFG, num_classes)
