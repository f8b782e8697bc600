"""Binarised networks: BWN and XNOR-Net versions of LeNet-5 and of a small VGG for 28x28.

First and last layers stay full precision (the paper's practice). XNOR blocks use the
paper's order BatchNorm -> BinActiv -> BinConv -> Pool (the BinActiv lives inside the
XNOR layer); ``order="usual"`` builds BinConv -> BatchNorm -> BinActiv -> Pool for the
ablation. ``scale_input`` switches XNOR's input scale K on or off. Layer names follow the
float twins (conv1, conv2, ip1, ip2 for LeNet-5) so checkpoints line up.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..quantize.binary import BinActiv, BinaryConv2d, BinaryLinear
from . import register_model

ORDERS = ("xnor", "usual")


def _check(mode: str, order: str) -> None:
    if order not in ORDERS:
        raise ConfigError(f"unknown block order {order!r}; choose one of {', '.join(ORDERS)}")
    if mode not in ("bwn", "xnor"):
        raise ConfigError(f"unknown binary mode {mode!r}; choose bwn or xnor")


class BinaryLeNet5(nn.Module):
    """LeNet-5 (20@5x5, 50@5x5, fc 500, fc 10) with conv2 and ip1 binarised.

    bwn:        conv1 relu pool | conv2b bn2 relu pool | ip1b bn3 relu | ip2
    xnor order: conv1 relu pool | bn2 sign conv2b pool | bn3 sign ip1b | bn4 relu ip2
    usual:      conv1 bn1 sign pool | conv2b bn2 sign pool | ip1b bn3 relu | ip2
    """

    def __init__(self, mode: str = "bwn", num_classes: int = 10, scale_input: bool = True,
                 order: str = "xnor"):
        super().__init__()
        _check(mode, order)
        self.mode, self.order = mode, order
        kw = dict(mode=mode, scale_input=scale_input)
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = BinaryConv2d(20, 50, 5, **kw)
        self.ip1 = BinaryLinear(800, 500, **kw)
        self.ip2 = nn.Linear(500, num_classes)
        if mode == "bwn":
            self.bn2, self.bn3 = nn.BatchNorm2d(50), nn.BatchNorm1d(500)
        elif order == "xnor":
            self.bn2, self.bn3, self.bn4 = nn.BatchNorm2d(20), nn.BatchNorm1d(800), nn.BatchNorm1d(500)
        else:
            self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(20), nn.BatchNorm2d(50), nn.BatchNorm1d(500)
            self.act = BinActiv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "bwn":
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
            return self.ip2(F.relu(self.bn3(self.ip1(x.flatten(1)))))
        if self.order == "xnor":
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(self.conv2(self.bn2(x)), 2)
            x = self.ip1(self.bn3(x.flatten(1)))
            return self.ip2(F.relu(self.bn4(x)))
        x = F.max_pool2d(self.act(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(self.act(self.bn2(self.conv2(x))), 2)
        return self.ip2(F.relu(self.bn3(self.ip1(x.flatten(1)))))


class _Block(nn.Module):
    """One binary 3x3 conv block of the small VGG, in the chosen order."""

    def __init__(self, cin: int, cout: int, pool: bool, mode: str, scale_input: bool, order: str):
        super().__init__()
        self.conv = BinaryConv2d(cin, cout, 3, padding=1, bias=False, mode=mode, scale_input=scale_input)
        self.pre = mode == "xnor" and order == "xnor"
        self.bn = nn.BatchNorm2d(cin if self.pre else cout)
        self.act = BinActiv() if (mode == "xnor" and not self.pre) else nn.ReLU()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre:  # BN -> BinActiv (inside conv) -> BinConv -> Pool
            x = self.conv(self.bn(x))
        else:  # Conv -> BN -> activation -> Pool
            x = self.act(self.bn(self.conv(x)))
        return F.max_pool2d(x, 2) if self.pool else x


class BinaryVGGSmall(nn.Module):
    """28x28 VGG-style: conv1 (fp) | 4 binary 3x3 blocks (w, 2w pooled...) | fc1 binary | fc2 (fp)."""

    def __init__(self, mode: str = "bwn", num_classes: int = 10, width: int = 32, scale_input: bool = True,
                 order: str = "xnor", in_channels: int = 1):
        super().__init__()
        _check(mode, order)
        if width < 1:
            raise ConfigError(f"width must be >= 1; got {width}")
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(w)
        self.act1 = BinActiv() if (mode == "xnor" and order == "usual") else nn.ReLU()
        cfg = [(w, w, True), (w, 2 * w, False), (2 * w, 2 * w, True), (2 * w, 4 * w, True)]  # 28->14->7->3
        self.blocks = nn.Sequential(*[_Block(a, b, p, mode, scale_input, order) for a, b, p in cfg])
        self.pre_fc = mode == "xnor" and order == "xnor"
        feat = 4 * w * 3 * 3
        self.bn_fc = nn.BatchNorm1d(feat if self.pre_fc else 256)
        self.fc1 = BinaryLinear(feat, 256, mode=mode, scale_input=scale_input)
        self.bn_out = nn.BatchNorm1d(256) if self.pre_fc else nn.Identity()
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act1(self.bn1(self.conv1(x))))
        x = x.flatten(1)
        if self.pre_fc:
            x = F.relu(self.bn_out(self.fc1(self.bn_fc(x))))
        else:
            x = F.relu(self.bn_fc(self.fc1(x)))
        return self.fc2(x)


@register_model("lenet5-bwn", description="LeNet-5, binary weights (BWN) in conv2 and ip1",
                num_classes=10)
def lenet5_bwn(num_classes: int) -> nn.Module:
    return BinaryLeNet5("bwn", num_classes)


@register_model("lenet5-xnor", description="LeNet-5, XNOR-Net conv2 and ip1 (binary weights and inputs)",
                num_classes=10, scale_input=True, order="xnor")
def lenet5_xnor(num_classes: int, scale_input: bool, order: str) -> nn.Module:
    return BinaryLeNet5("xnor", num_classes, scale_input, order)


@register_model("vgg-small-bwn", description="small 28x28 VGG, binary weights (BWN) except first/last",
                num_classes=10, width=32)
def vgg_small_bwn(num_classes: int, width: int) -> nn.Module:
    return BinaryVGGSmall("bwn", num_classes, width)


@register_model("vgg-small-xnor", description="small 28x28 VGG, XNOR-Net except first/last",
                num_classes=10, width=32, scale_input=True, order="xnor")
def vgg_small_xnor(num_classes: int, width: int, scale_input: bool, order: str) -> nn.Module:
    return BinaryVGGSmall("xnor", num_classes, width, scale_input, order)
