"""The two LeNets of the Deep Compression paper, with the paper's layer names.

LeNet-300-100: 784-300-100-10 fully connected (266,610 parameters).
LeNet-5 (Caffe): conv 20@5x5, pool, conv 50@5x5, pool, fc 500, ReLU, fc 10 (431,080).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register_model


class LeNet300(nn.Module):
    def __init__(self, num_classes: int = 10, in_features: int = 784, dropout: float = 0.0):
        super().__init__()
        self.ip1 = nn.Linear(in_features, 300)
        self.ip2 = nn.Linear(300, 100)
        self.ip3 = nn.Linear(100, num_classes)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = F.dropout(F.relu(self.ip1(x)), self.dropout, self.training)
        x = F.dropout(F.relu(self.ip2(x)), self.dropout, self.training)
        return self.ip3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet. ``conv_relu`` adds a ReLU after each conv (same parameter count)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, conv_relu: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.ip1 = nn.Linear(50 * 4 * 4, 500)
        self.ip2 = nn.Linear(500, num_classes)
        self.conv_relu = conv_relu
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu if self.conv_relu else (lambda t: t)
        x = F.max_pool2d(act(self.conv1(x)), 2)
        x = F.max_pool2d(act(self.conv2(x)), 2)
        x = F.dropout(F.relu(self.ip1(x.flatten(1))), self.dropout, self.training)
        return self.ip2(x)


@register_model("lenet300", description="LeNet-300-100, fully connected", num_classes=10, dropout=0.0)
def lenet300(num_classes: int, dropout: float) -> nn.Module:
    return LeNet300(num_classes=num_classes, dropout=dropout)


@register_model("lenet5", description="Caffe LeNet-5", num_classes=10, conv_relu=True, dropout=0.0)
def lenet5(num_classes: int, conv_relu: bool, dropout: float) -> nn.Module:
    return LeNet5(num_classes=num_classes, conv_relu=conv_relu, dropout=dropout)
