"""Blocks: shapes, the literature's weight counts, and bad input."""

from fractions import Fraction

import pytest
import torch
import torch.nn as nn

from nnshrink.errors import ConfigError
from nnshrink.models.blocks import (AsymmetricConv, Bottleneck, DepthwiseSeparable, Fire, StackedConv,
                                    scale_channels)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_bottleneck_shape_and_weights():
    block = Bottleneck(192, 128, 3, mid=96, bias=False)
    assert block(torch.zeros(1, 192, 28, 28)).shape == (1, 128, 28, 28)
    assert n_params(block) == 129_024
    assert n_params(Bottleneck(192, 128, 3, mid=48, bias=False)) == 192 * 48 + 9 * 48 * 128


@pytest.mark.parametrize("k, n_convs", [(5, 2), (7, 3)])
def test_stacked_conv_keeps_receptive_field(k, n_convs):
    block = StackedConv(8, 8, k, bias=False, relu=False)
    assert sum(isinstance(m, nn.Conv2d) for m in block.modules()) == n_convs
    # Linear stack of 3x3s == one kxk conv: an impulse spreads to exactly a kxk square.
    x = torch.zeros(1, 8, 15, 15)
    x[0, :, 7, 7] = 1
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0)
        y = block(x)[0, 0]
    nz = (y != 0).nonzero()
    assert nz[:, 0].min() == 7 - k // 2 and nz[:, 0].max() == 7 + k // 2
    assert nz[:, 1].min() == 7 - k // 2 and nz[:, 1].max() == 7 + k // 2


def test_asymmetric_conv_shape():
    block = AsymmetricConv(4, 6, 7)
    assert block(torch.zeros(2, 4, 9, 11)).shape == (2, 6, 9, 11)
    assert block.conv1xk.kernel_size == (1, 7) and block.convkx1.kernel_size == (7, 1)


def test_fire_against_manual_forward():
    torch.manual_seed(0)
    fire = Fire(10, 3, 4, 4)
    x = torch.randn(2, 10, 6, 6)
    s = torch.relu(nn.functional.conv2d(x, fire.squeeze.weight, fire.squeeze.bias))
    e1 = nn.functional.conv2d(s, fire.expand1x1.weight, fire.expand1x1.bias)
    e3 = nn.functional.conv2d(s, fire.expand3x3.weight, fire.expand3x3.bias, padding=1)
    torch.testing.assert_close(fire(x), torch.relu(torch.cat([e1, e3], 1)))


def test_fire_bypass_adds_input():
    torch.manual_seed(0)
    plain, byp = Fire(8, 2, 4, 4), Fire(8, 2, 4, 4, bypass=True)
    byp.load_state_dict(plain.state_dict())
    x = torch.randn(1, 8, 5, 5)
    s = torch.relu(byp.squeeze(x))
    pre = torch.cat([byp.expand1x1(s), byp.expand3x3(s)], 1)
    torch.testing.assert_close(byp(x), torch.relu(pre + x))
    assert not torch.equal(plain(x), byp(x))


def test_depthwise_separable_is_grouped():
    block = DepthwiseSeparable(16, 32, stride=2)
    assert block.dw.groups == 16 and block.pw.kernel_size == (1, 1)
    assert block(torch.zeros(1, 16, 14, 14)).shape == (1, 32, 7, 7)
    # Weights: 3*3*16 depthwise + 16*32 pointwise vs 3*3*16*32 for a full conv.
    assert block.dw.weight.numel() + block.pw.weight.numel() == 9 * 16 + 16 * 32


@pytest.mark.parametrize("make, word", [
    (lambda: Fire(8, 8, 4, 4), "s1x1 < e1x1 + e3x3"),
    (lambda: Fire(6, 2, 4, 4, bypass=True), "bypass"),
    (lambda: Fire(0, 2, 4, 4), "in_ch"),
    (lambda: StackedConv(4, 4, 4), "odd"),
    (lambda: AsymmetricConv(4, 4, 1), "odd"),
    (lambda: Bottleneck(4, 4, 3, mid=0), "0"),
    (lambda: scale_channels(32, 0.0), "alpha must be > 0"),
    (lambda: scale_channels(32, -1), "-1"),
    (lambda: scale_channels(32, 0.01), "rounds"),
])
def test_bad_input_raises_config_error(make, word):
    with pytest.raises(ConfigError, match=word.replace("+", r"\+")):
        make()


def test_fire_ratio_matches_brief_symbolically():
    # (3M + 120) / (63M) == (M + 40) / (21M) for the brief's Fire(s=3, e1=4, e3=4) vs 3x3 -> 7.
    for m in (1, 16, 64, 512):
        fire = Fire(m, 3, 4, 4, bias=False)
        assert n_params(fire) == 3 * m + 120
        assert Fraction(n_params(fire), m * 3 * 3 * 7) == Fraction(m + 40, 21 * m)
