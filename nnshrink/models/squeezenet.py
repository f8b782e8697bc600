"""SqueezeNet (Iandola et al. 2016): AlexNet accuracy with 50x fewer parameters.

``squeezenet1_0`` / ``squeezenet1_1`` follow the reference Caffe / torchvision layouts at
ImageNet size (1,248,424 and 1,235,496 parameters); ``squeezenet-small`` keeps the
design rules (Fire modules, no fc layer, late downsampling) at 28x28x1.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import register_model
from .blocks import Fire, check_head_args


class SqueezeNet(nn.Module):
    """Features (conv, pools, Fire modules) then a 1x1 conv classifier and global pooling."""

    def __init__(self, features: nn.Sequential, last_ch: int, num_classes: int, dropout: float,
                 final_relu: bool = True):
        super().__init__()
        self.final_relu = final_relu
        self.features = features
        self.dropout = nn.Dropout(dropout)
        self.conv10 = nn.Conv2d(last_ch, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is self.conv10:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv10(self.dropout(self.features(x)))
        return (torch.relu(x) if self.final_relu else x).mean((2, 3))


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, 2, ceil_mode=True)


def _fires(specs, bypass: bool, batchnorm: bool = False) -> list[nn.Module]:
    # The paper's simple bypass goes around every Fire whose input and output widths match.
    return [Fire(i, s, e1, e3, bypass=bypass and i == e1 + e3, batchnorm=batchnorm) for i, s, e1, e3 in specs]


@register_model("squeezenet1_0", input_shape=(3, 224, 224), description="SqueezeNet 1.0, ImageNet (1.25M params)",
                num_classes=1000, in_channels=3, dropout=0.5, bypass=False)
def squeezenet1_0(num_classes: int, in_channels: int, dropout: float, bypass: bool) -> nn.Module:
    check_head_args(num_classes, in_channels, dropout)
    f = _fires([(96, 16, 64, 64), (128, 16, 64, 64), (128, 32, 128, 128), (256, 32, 128, 128),
                (256, 48, 192, 192), (384, 48, 192, 192), (384, 64, 256, 256), (512, 64, 256, 256)], bypass)
    features = nn.Sequential(nn.Conv2d(in_channels, 96, 7, 2), nn.ReLU(inplace=True), _pool(),
                             f[0], f[1], f[2], _pool(), f[3], f[4], f[5], f[6], _pool(), f[7])
    return SqueezeNet(features, 512, num_classes, dropout)


@register_model("squeezenet1_1", input_shape=(3, 224, 224), description="SqueezeNet 1.1, ImageNet (2.4x fewer MACs)",
                num_classes=1000, in_channels=3, dropout=0.5, bypass=False)
def squeezenet1_1(num_classes: int, in_channels: int, dropout: float, bypass: bool) -> nn.Module:
    check_head_args(num_classes, in_channels, dropout)
    f = _fires([(64, 16, 64, 64), (128, 16, 64, 64), (128, 32, 128, 128), (256, 32, 128, 128),
                (256, 48, 192, 192), (384, 48, 192, 192), (384, 64, 256, 256), (512, 64, 256, 256)], bypass)
    features = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 2), nn.ReLU(inplace=True), _pool(),
                             f[0], f[1], _pool(), f[2], f[3], _pool(), *f[4:])
    return SqueezeNet(features, 512, num_classes, dropout)


@register_model("squeezenet-small", description="SqueezeNet for 28x28x1 (Fire modules, ~62K params)",
                num_classes=10, in_channels=1, dropout=0.0, bypass=True, batchnorm=True)
def squeezenet_small(num_classes: int, in_channels: int, dropout: float, bypass: bool,
                     batchnorm: bool) -> nn.Module:
    """conv 3x3 -> pool -> 2 Fire (14x14) -> pool -> 2 Fire (7x7) -> conv10 1x1 -> global avg.
    Not in the paper, to learn in the few epochs a CPU allows: ``batchnorm`` after each
    expand, and no ReLU on conv10 (logits clamped at >= 0 learned slower: training loss
    1.51 vs 1.22 after 80 Adam steps on Fashion-MNIST)."""
    check_head_args(num_classes, in_channels, dropout)
    f = _fires([(32, 16, 32, 32), (64, 16, 32, 32), (64, 32, 64, 64), (128, 32, 64, 64)], bypass, batchnorm)
    stem = [nn.Conv2d(in_channels, 32, 3, 1, 1)] + ([nn.BatchNorm2d(32)] if batchnorm else [])
    features = nn.Sequential(*stem, nn.ReLU(inplace=True), nn.MaxPool2d(2),
                             f[0], f[1], nn.MaxPool2d(2), f[2], f[3])
    return SqueezeNet(features, 128, num_classes, dropout, final_relu=False)
