"""Run a trained BWN / XNOR model with the bit-packed kernels.

``pack_model`` swaps every XNOR layer for one that holds packed uint64 sign rows and
per-channel alpha and calls the XNOR + popcount kernels; the rest of the network
(first / last float layers, BatchNorm, pooling) keeps running in torch, so the model's
own ``forward`` is reused unchanged. BWN layers become plain float layers with the
decoded alpha * sign(W) weights (their gain is storage, not speed, on a CPU).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn

from ..compressed import BinaryTensor
from ..errors import ConfigError
from ..quantize.binary import BinaryConv2d, BinaryLinear, binarize_weight, export_binary, weight_scale
from .kernels.xnor import pack_sign_words, pack_conv_weight, xnor_conv2d, xnor_matmul


def _packed_from(layer: nn.Module, tensor: BinaryTensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    if tensor is None:
        w = layer.weight.detach().float().cpu()
        tensor = BinaryTensor(tuple(w.shape), (w >= 0).numpy(), weight_scale(w).reshape(-1).numpy())
    signs, scales = np.asarray(tensor.signs, bool), np.asarray(tensor.scales, np.float32).copy()
    if signs.ndim == 4:  # conv kernels: (dy, dx, c) order, matching the fused im2col
        return pack_conv_weight(signs), scales
    return pack_sign_words(signs.reshape(signs.shape[0], -1)), scales


def _bias(layer: nn.Module):
    return None if layer.bias is None else layer.bias.detach().float().cpu().clone()


class PackedXnorLinear(nn.Module):
    """XNOR Linear on packed weights: sign-and-pack x, XNOR-popcount GEMM, times alpha (and K)."""

    def __init__(self, layer: BinaryLinear, tensor: BinaryTensor | None = None):
        super().__init__()
        self.k = layer.in_features
        self.packed, self.alpha = _packed_from(layer, tensor)
        self.bias = _bias(layer)
        self.scale_input = layer.scale_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous()
        out = torch.from_numpy(np.ascontiguousarray(xnor_matmul(x.numpy(), self.packed, self.k, self.alpha)))
        if self.scale_input:
            out = out * x.abs().mean(dim=1, keepdim=True)
        return out if self.bias is None else out + self.bias


class PackedXnorConv2d(nn.Module):
    """XNOR Conv2d on packed weights: fused sign + im2col + pack, popcount GEMM, times alpha (and K)."""

    def __init__(self, layer: BinaryConv2d, tensor: BinaryTensor | None = None):
        super().__init__()
        self.kernel_size, self.stride, self.padding = layer.kernel_size, layer.stride, layer.padding
        if self.stride[0] != self.stride[1] or self.padding[0] != self.padding[1]:
            raise ConfigError(f"packed xnor conv needs square stride/padding; got {self.stride}, {self.padding}")
        self.packed, self.alpha = _packed_from(layer, tensor)
        self.bias = _bias(layer)
        self.scale_input = layer.scale_input
        self._scale = layer.input_scale  # the float K map, same code as training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous()
        out = torch.from_numpy(np.ascontiguousarray(
            xnor_conv2d(x.numpy(), self.packed, self.kernel_size, self.alpha, self.stride[0], self.padding[0])))
        if self.scale_input:
            out = out * self._scale(x)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def _dense_twin(layer: nn.Module) -> nn.Module:
    """A plain float layer holding alpha * sign(W): how a BWN layer runs after decoding."""
    if isinstance(layer, BinaryLinear):
        new = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
    else:
        new = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode)
    with torch.no_grad():
        new.weight.copy_(binarize_weight(layer.weight.detach()))
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


@torch.no_grad()
def pack_model(model: nn.Module, tensors: dict[str, BinaryTensor] | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` whose binary layers run bit-packed (xnor) or decoded (bwn).

    ``tensors`` (``export_binary`` output, or an archive's BinaryTensors) gives the signs
    and scales; by default they are taken from the model's own weights.
    """
    tensors = export_binary(model) if tensors is None else tensors
    out = copy.deepcopy(model).cpu().eval()
    modules = dict(out.named_modules())
    for name, m in list(modules.items()):
        if not isinstance(m, (BinaryLinear, BinaryConv2d)):
            continue
        t = tensors.get(f"{name}.weight")
        if m.mode == "xnor":
            new = (PackedXnorLinear if isinstance(m, BinaryLinear) else PackedXnorConv2d)(m, t)
        else:
            new = _dense_twin(m)
        parent, _, attr = name.rpartition(".")
        setattr(modules[parent], attr, new)
    return out


@torch.no_grad()
def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward a packed model (``pack_model`` output) on a batch."""
    return model(x)
