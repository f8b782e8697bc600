"""A residual CNN with BatchNorm, trained by its own loop and compressed by nnshrink.

    python -m examples.resnet_bn [--epochs 8] [--subset N] [--out runs/resnet_bn]
"""

from __future__ import annotations

import torch.nn as nn

from examples.common import Example


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (1x1 conv + BN where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(out)) + self.shortcut(x)).relu()


class ResNetBN(nn.Module):
    """28x28x1 -> 16 ch stem -> blocks at 14x14 (32), 7x7 (64), 4x4 (128) -> 10 classes."""

    def __init__(self, widths=(16, 32, 64, 128), classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.blocks = nn.Sequential(*(Block(a, b, 2) for a, b in zip(widths, widths[1:])))
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def build() -> nn.Module:
    return ResNetBN()


RECIPE = """
stages = ["prune", "share", "encode"]
"""

EXAMPLE = Example("resnet_bn", build, epochs=8, lr=2e-3, weight_decay=0.01, finetune_lr=5e-4, recipe=RECIPE)
