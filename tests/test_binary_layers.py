"""Binary layers against PyTorch float layers as the oracle."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nnshrink.encodings import export_encodings
from nnshrink.errors import ConfigError
from nnshrink.quantize.binary import (BinaryConv2d, BinaryLinear, binarize_layers, clip_binary_weights,
                                      export_binary, sign_ste, to_binary, weight_scale)
from nnshrink.compressed import BinaryTensor, DenseTensor


def _pm(t):
    return torch.where(t >= 0, 1.0, -1.0)


def test_sign_ste_forward_and_clipped_gradient():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    y = sign_ste(x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    y.backward(torch.full_like(x, 3.0))
    assert x.grad.tolist() == [0, 3, 3, 3, 3, 3, 0]


def test_bwn_linear_equals_float_linear_with_scaled_sign_weights():
    torch.manual_seed(0)
    lin = BinaryLinear(10, 4, mode="bwn")
    x = torch.randn(5, 10)
    alpha = lin.weight.abs().mean(1, keepdim=True)
    ref = F.linear(x, _pm(lin.weight) * alpha, lin.bias)
    torch.testing.assert_close(lin(x), ref)
    assert weight_scale(lin.weight).shape == (4, 1)


@pytest.mark.parametrize("scale_input", [True, False])
def test_xnor_linear_binarises_inputs_and_scales_by_k(scale_input):
    torch.manual_seed(1)
    lin = BinaryLinear(12, 3, mode="xnor", scale_input=scale_input)
    x = torch.randn(6, 12)
    alpha = lin.weight.abs().mean(1, keepdim=True)
    ref = F.linear(_pm(x), _pm(lin.weight) * alpha)
    if scale_input:
        ref = ref * x.abs().mean(1, keepdim=True)
    torch.testing.assert_close(lin(x), ref + lin.bias)


@pytest.mark.parametrize("padding,stride", [(0, 1), (1, 1), (1, 2)])
def test_xnor_conv_matches_oracle(padding, stride):
    torch.manual_seed(2)
    conv = BinaryConv2d(3, 5, 3, stride=stride, padding=padding, mode="xnor")
    x = torch.randn(2, 3, 8, 8)
    alpha = conv.weight.abs().mean((1, 2, 3), keepdim=True).view(1, 5, 1, 1)
    xb = F.pad(_pm(x), (padding,) * 4, value=-1.0)
    ref = F.conv2d(xb, _pm(conv.weight), stride=stride) * alpha
    k = F.avg_pool2d(x.abs().mean(1, keepdim=True), 3, stride, padding, count_include_pad=True)
    torch.testing.assert_close(conv(x), ref * k + conv.bias.view(1, -1, 1, 1))


def test_bwn_conv_matches_oracle():
    torch.manual_seed(3)
    conv = BinaryConv2d(2, 4, 3, padding=1, mode="bwn")
    x = torch.randn(1, 2, 5, 5)
    w = _pm(conv.weight) * conv.weight.abs().mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(conv(x), F.conv2d(x, w, conv.bias, padding=1))


def test_gradients_flow_and_weights_clip():
    torch.manual_seed(4)
    conv = BinaryConv2d(2, 3, 3, mode="xnor")
    with torch.no_grad():
        conv.weight.mul_(5)
    conv.eval()
    conv(torch.randn(2, 2, 6, 6)).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert conv.weight.abs().max() > 1
    clip_binary_weights(nn.Sequential(conv))
    assert conv.weight.abs().max() <= 1


def test_training_forward_clips_without_the_hook():
    lin = BinaryLinear(4, 2)
    with torch.no_grad():
        lin.weight.fill_(3.0)
    lin.train()
    lin(torch.randn(1, 4))
    assert lin.weight.max() <= 1.0


def test_to_binary_and_unsupported_layers():
    torch.manual_seed(5)
    fc = nn.Linear(6, 3)
    b = to_binary(fc, "xnor", scale_input=False)
    assert isinstance(b, BinaryLinear) and b.mode == "xnor" and not b.scale_input
    torch.testing.assert_close(b.weight, fc.weight)
    with pytest.raises(ConfigError, match="BatchNorm2d"):
        to_binary(nn.BatchNorm2d(3))
    with pytest.raises(ConfigError, match="LSTM"):
        to_binary(nn.LSTM(3, 3))
    with pytest.raises(ConfigError, match="mode"):
        to_binary(fc, "ternary")
    with pytest.raises(ConfigError, match="groups"):
        BinaryConv2d(4, 4, 3, groups=2, mode="xnor")
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    binarize_layers(net, ["0", "3"], mode="bwn")
    assert isinstance(net[0], BinaryConv2d) and isinstance(net[3], BinaryLinear)
    assert set(net.state_dict()) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    with pytest.raises(ConfigError, match="ReLU"):
        binarize_layers(net, ["1"])
    with pytest.raises(ConfigError, match="no layer"):
        binarize_layers(net, ["nope"])


def test_export_binary_roundtrips_through_to_dense():
    torch.manual_seed(6)
    net = nn.Sequential(BinaryConv2d(2, 3, 3, mode="xnor"), nn.Flatten(), BinaryLinear(12, 2, mode="bwn"))
    net.eval()
    x = torch.randn(4, 2, 4, 4)
    before = net(x)
    tensors = export_binary(net)
    assert set(tensors) == {"0.weight", "2.weight"}
    t = tensors["0.weight"]
    assert isinstance(t, BinaryTensor) and t.signs.dtype == bool and t.signs.shape == (3, 2, 3, 3)
    np.testing.assert_allclose(t.scales, net[0].weight.detach().abs().mean((1, 2, 3)).numpy(), rtol=1e-6)
    with torch.no_grad():
        for name, bt in tensors.items():
            net.get_parameter(name).copy_(torch.from_numpy(bt.to_dense()))
    torch.testing.assert_close(net(x), before)
    full = export_encodings(net)
    assert isinstance(full["0.bias"], DenseTensor) and isinstance(full["2.weight"], BinaryTensor)
