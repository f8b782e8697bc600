"""Building blocks of compact networks (methods.md section 1).

Each block is made of plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` leaves, so the profiler,
pruning and weight sharing see ordinary layers. ``bias=False`` variants exist so the
literature's weight-count arithmetic can be checked exactly.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from ..errors import ConfigError


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive whole number of channels; got {value!r}")
    return value


def _odd_kernel(k: int, smallest: int = 3) -> int:
    if not isinstance(k, int) or k < smallest or k % 2 == 0:
        raise ConfigError(f"kernel size must be an odd integer >= {smallest}; got {k!r}")
    return k


def check_head_args(num_classes: int, in_channels: int, dropout: float) -> None:
    """The arguments every classifier here takes, checked with errors that name the value."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer; got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer; got {in_channels!r}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1); got {dropout}")


def scale_channels(channels: int, alpha: float, what: str = "channels") -> int:
    """``int(channels * alpha)`` (TF-slim's rule); a count that rounds to zero is an error."""
    if not alpha > 0:
        raise ConfigError(f"width multiplier alpha must be > 0; got {alpha}")
    scaled = int(channels * alpha)
    if scaled < 1:
        raise ConfigError(f"width multiplier {alpha} rounds {what} {channels} to {scaled}; use a larger alpha")
    return scaled


class Bottleneck(nn.Sequential):
    """1x1 reduction to ``mid`` channels, then the kxk conv: 192->96->128 at 3x3 costs
    129,024 weights instead of 221,184."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, mid: int | None = None, *,
                 stride: int = 1, bias: bool = True, relu: bool = True):
        mid = _positive("bottleneck channels", mid if mid is not None else max(1, in_ch // 2))
        k = _odd_kernel(kernel_size, 1)
        layers = [("reduce", nn.Conv2d(_positive("in_ch", in_ch), mid, 1, bias=bias))]
        if relu:
            layers.append(("reduce_relu", nn.ReLU(inplace=True)))
        layers.append(("conv", nn.Conv2d(mid, _positive("out_ch", out_ch), k, stride, k // 2, bias=bias)))
        super().__init__(OrderedDict(layers))


class StackedConv(nn.Sequential):
    """(k-1)/2 stacked 3x3 convs with the receptive field of one kxk conv (VGG):
    2*9/25 = 0.72 of the weights for 5x5, 3*9/49 = 0.55 for 7x7."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 5, *, bias: bool = True, relu: bool = True):
        k = _odd_kernel(kernel_size)
        n = (k - 1) // 2
        layers, ch = [], _positive("in_ch", in_ch)
        for i in range(n):
            layers.append((f"conv{i + 1}", nn.Conv2d(ch, _positive("out_ch", out_ch), 3, 1, 1, bias=bias)))
            ch = out_ch
            if relu and i < n - 1:
                layers.append((f"relu{i + 1}", nn.ReLU(inplace=True)))
        super().__init__(OrderedDict(layers))


class AsymmetricConv(nn.Sequential):
    """1xk then kx1 (Inception v3): 2*7/49 = 0.29 of a 7x7 conv's weights."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 7, mid: int | None = None, *,
                 bias: bool = True, relu: bool = False):
        k = _odd_kernel(kernel_size)
        mid = _positive("intermediate channels", mid if mid is not None else out_ch)
        layers = [("conv1xk", nn.Conv2d(_positive("in_ch", in_ch), mid, (1, k), 1, (0, k // 2), bias=bias))]
        if relu:
            layers.append(("relu", nn.ReLU(inplace=True)))
        layers.append(("convkx1", nn.Conv2d(mid, _positive("out_ch", out_ch), (k, 1), 1, (k // 2, 0), bias=bias)))
        super().__init__(OrderedDict(layers))


class Fire(nn.Module):
    """SqueezeNet's Fire module: squeeze (s1x1 filters of 1x1), then expand (e1x1 of 1x1
    and e3x3 of 3x3, concatenated). ``bypass`` adds the input (needs in == e1x1 + e3x3)."""

    def __init__(self, in_ch: int, s1x1: int, e1x1: int, e3x3: int, *, bypass: bool = False,
                 bias: bool = True, batchnorm: bool = False):
        super().__init__()
        for name, v in (("in_ch", in_ch), ("s1x1", s1x1), ("e1x1", e1x1), ("e3x3", e3x3)):
            _positive(name, v)
        if not s1x1 < e1x1 + e3x3:
            raise ConfigError(f"Fire needs s1x1 < e1x1 + e3x3; got s1x1={s1x1}, e1x1+e3x3={e1x1 + e3x3}")
        if bypass and in_ch != e1x1 + e3x3:
            raise ConfigError(f"Fire bypass needs in_ch == e1x1 + e3x3; got {in_ch} vs {e1x1 + e3x3}")
        self.squeeze = nn.Conv2d(in_ch, s1x1, 1, bias=bias)
        self.expand1x1 = nn.Conv2d(s1x1, e1x1, 1, bias=bias)
        self.expand3x3 = nn.Conv2d(s1x1, e3x3, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(e1x1 + e3x3) if batchnorm else None
        self.bypass = bypass
        self.out_channels = e1x1 + e3x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.squeeze(x))
        out = torch.cat([self.expand1x1(s), self.expand3x3(s)], 1)
        if self.bn is not None:
            out = self.bn(out)
        if self.bypass:
            out = out + x
        return torch.relu(out)


class DepthwiseSeparable(nn.Sequential):
    """MobileNet's block: depthwise 3x3 (one filter per channel) + BN + ReLU, then
    pointwise 1x1 + BN + ReLU; costs 1/out + 1/9 of a full 3x3 conv."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, batchnorm: bool = True):
        in_ch, out_ch = _positive("in_ch", in_ch), _positive("out_ch", out_ch)
        bias = not batchnorm
        layers = [("dw", nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=bias))]
        if batchnorm:
            layers.append(("dw_bn", nn.BatchNorm2d(in_ch)))
        layers += [("dw_relu", nn.ReLU(inplace=True)), ("pw", nn.Conv2d(in_ch, out_ch, 1, bias=bias))]
        if batchnorm:
            layers.append(("pw_bn", nn.BatchNorm2d(out_ch)))
        layers.append(("pw_relu", nn.ReLU(inplace=True)))
        super().__init__(OrderedDict(layers))


def conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """A full conv + BN + ReLU (MobileNet's first layer)."""
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, bias=False),
                              bn=nn.BatchNorm2d(out_ch), relu=nn.ReLU(inplace=True)))
