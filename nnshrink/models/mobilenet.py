"""MobileNet v1 (Howard et al. 2017): depthwise-separable convs, width multiplier alpha
and resolution multiplier rho.

``mobilenet_v1`` is the ImageNet network (1.0-224: 4.2M parameters, 569M mult-adds);
``resolution`` is the input side it is built for (a multiple of 32, as the net halves
the side five times; rho = resolution / 224). ``mobilenet-small`` is the same design for 28x28x1 input.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from . import register_model
from .blocks import DepthwiseSeparable, check_head_args, conv_bn_relu, scale_channels

# (output channels, stride) of the 13 depthwise-separable blocks of MobileNet-224.
V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
# 28x28 variant: first conv at stride 2 (14x14), then 7x7, 4x4, 2x2.
SMALL_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]


class MobileNetV1(nn.Module):
    def __init__(self, blocks, width: float, num_classes: int, in_channels: int, first_ch: int = 32,
                 first_stride: int = 2, dropout: float = 0.0):
        super().__init__()
        check_head_args(num_classes, in_channels, dropout)
        ch = scale_channels(first_ch, width)
        layers = [conv_bn_relu(in_channels, ch, 3, first_stride)]
        for out, stride in blocks:
            out = scale_channels(out, width)
            layers.append(DepthwiseSeparable(ch, out, stride))
            ch = out
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(ch, num_classes)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x).mean((2, 3))))


def _check_resolution(resolution, minimum: int, multiple: int = 1) -> int:
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < minimum \
            or resolution % multiple:
        rule = f"a multiple of {multiple}" if multiple > 1 else "an integer"
        raise ConfigError(f"resolution must be {rule} >= {minimum} pixels for this net; got {resolution!r}")
    return resolution


@register_model("mobilenet_v1", input_shape=(3, 224, 224),
                description="MobileNet v1, ImageNet (alpha 1.0 at 224: 4.2M params, 569M mult-adds)",
                width=1.0, resolution=224, num_classes=1000, in_channels=3, dropout=0.0)
def mobilenet_v1(width: float, resolution: int, num_classes: int, in_channels: int, dropout: float) -> nn.Module:
    _check_resolution(resolution, 32, 32)
    model = MobileNetV1(V1_BLOCKS, width, num_classes, in_channels, dropout=dropout)
    model.resolution = resolution
    return model


@register_model("mobilenet-small", description="MobileNet v1 for 28x28x1 (alpha 1.0: ~0.27M params)",
                width=1.0, resolution=28, num_classes=10, in_channels=1, dropout=0.0)
def mobilenet_small(width: float, resolution: int, num_classes: int, in_channels: int, dropout: float) -> nn.Module:
    _check_resolution(resolution, 16)
    model = MobileNetV1(SMALL_BLOCKS, width, num_classes, in_channels, dropout=dropout)
    model.resolution = resolution
    return model
