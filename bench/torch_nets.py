"""The PyTorch side of the benchmarks: CIFAR ResNet-18 and torchvision's MobileNet v2 defined here
(torchvision's wheel does not import beside this machine's torch), and one train step maker for
eager NCHW, eager channels_last and torch.compile."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(y)) + self.short(x))


def resnet18_cifar(classes: int = 10) -> nn.Module:
    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


def _cbr(cin, cout, k, stride=1, groups=1, act=True):
    mods = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]
    return mods + [nn.ReLU6()] if act else mods


class Inverted(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        mods = _cbr(cin, hidden, 1) if t != 1 else []
        mods += _cbr(hidden, hidden, 3, stride, hidden) + _cbr(hidden, cout, 1, act=False)
        self.body = nn.Sequential(*mods)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2(classes: int = 1000) -> nn.Module:
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]
    layers, cin = _cbr(3, 32, 3, 2), 32
    for t, c, n, s in cfg:
        for j in range(n):
            layers.append(Inverted(cin, c, s if j == 0 else 1, t))
            cin = c
    layers += _cbr(320, 1280, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, classes)]
    return nn.Sequential(*layers)


def train_step(model_fn, mode: str, bf16: bool = False):
    """A `run(x, y)` doing one SGD step (momentum 0.9, weight decay 5e-4) with the model from
    `model_fn()`; mode: "nchw", "channels_last" or "compile" (torch.compile, NCHW). `bf16`:
    the forward and loss under torch.autocast("cpu", torch.bfloat16) (PyTorch's mixed precision:
    float32 weights and optimizer, bfloat16 convolutions and matmuls), as netc's
    `precision: bfloat16`."""
    torch.manual_seed(0)
    model = model_fn()
    channels_last = mode == "channels_last"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    lossf = nn.CrossEntropyLoss()

    def step(xt, yt):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = lossf(model(xt), yt)
        loss.backward()
        opt.step()
        return loss

    if mode == "compile":
        step = torch.compile(step)

    def run(x, y):
        xt, yt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y)).long()
        if channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        return step(xt, yt)

    return run
