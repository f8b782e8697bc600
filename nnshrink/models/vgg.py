"""VGG-16 (Simonyan & Zisserman 2014): the 138M-parameter baseline that MobileNet is
about 1/30 of. Stacked 3x3 convs throughout (two 3x3 see a 5x5 field at 0.72 the cost).

Building it allocates 553 MB of float32; to count only, build it on the meta device
(``nnshrink.arch.profile.profile_named`` does).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from . import register_model

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
VGG_SMALL = [32, 32, "M", 64, 64, "M"]


class VGG(nn.Module):
    def __init__(self, cfg, in_channels: int, hidden: int, num_classes: int, side: int, dropout: float):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be a positive integer; got {num_classes!r}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1); got {dropout}")
        layers, ch = [], in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(ch, v, 3, padding=1), nn.ReLU(inplace=True)]
                ch = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(ch * side * side, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("vgg16", input_shape=(3, 224, 224), description="VGG-16, ImageNet (138M params)",
                num_classes=1000, in_channels=3, dropout=0.5)
def vgg16(num_classes: int, in_channels: int, dropout: float) -> nn.Module:
    return VGG(VGG16, in_channels, 4096, num_classes, 7, dropout)


@register_model("vgg-small", description="VGG-style stacked 3x3 net for 28x28x1",
                num_classes=10, in_channels=1, dropout=0.0)
def vgg_small(num_classes: int, in_channels: int, dropout: float) -> nn.Module:
    return VGG(VGG_SMALL, in_channels, 256, num_classes, 7, dropout)
