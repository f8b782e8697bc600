"""Binarised layers: BWN (binary weights) and XNOR-Net (binary weights and inputs).

Rastegari et al. 2016, "XNOR-Net" (ECCV):
- weights  W ~ alpha * sign(W), alpha = mean |W| per output channel;
- XNOR inputs I ~ K * sign(I), K = mean over channels of |I| box-filtered to the
  kernel's footprint (one scalar per sample for a Linear layer); ``scale_input=False``
  drops K (the ablation);
- sign's gradient is the straight-through estimator g * 1{|r| <= 1}; the real-valued
  weights are clipped to [-1, 1] after every step (``clip_binary_weights``, a fit hook).

sign(0) = +1 everywhere (training, packing, kernels). An XNOR conv pads its *binarised*
input with -1, not 0, so a 1-bit kernel reproduces it exactly (there is no 0 in 1 bit).

The real-valued weights stay in ``weight`` (state_dict keys are unchanged: ``conv2.weight``),
``export_binary`` turns them into ``BinaryTensor`` (packed signs + per-channel scales);
``nnshrink.encodings.export_encodings`` adds the rest of the model for the archive.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..compressed import BinaryTensor
from ..errors import ConfigError

MODES = ("bwn", "xnor")


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1; gradient passes where |x| <= 1 (straight-through estimator)."""
    return _SignSTE.apply(x)


def weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """alpha: mean |W| per output channel, shaped to broadcast against ``weight``."""
    return weight.abs().mean(dim=tuple(range(1, weight.dim())), keepdim=True)


def binarize_weight(weight: torch.Tensor) -> torch.Tensor:
    """alpha * sign(W), differentiable through the STE and through alpha."""
    return sign_ste(weight) * weight_scale(weight)


class BinActiv(nn.Module):
    """sign with STE as a module (the usual-order block's activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x)


def _clip_in_training(layer: nn.Module) -> None:
    """Clip before each training forward too, so a plain ``fit`` without the hook still clips."""
    if layer.training and torch.is_grad_enabled():
        with torch.no_grad():
            layer.weight.clamp_(-1.0, 1.0)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown binary mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


class BinaryLinear(nn.Linear):
    """nn.Linear with binary weights (bwn) or binary weights and inputs (xnor)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 mode: str = "bwn", scale_input: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.mode = _check_mode(mode)
        self.scale_input = bool(scale_input)

    def input_scale(self, x: torch.Tensor) -> torch.Tensor:
        """K for a Linear layer: mean |x| per sample, (B, 1)."""
        return x.abs().mean(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _clip_in_training(self)
        w = binarize_weight(self.weight)
        if self.mode == "bwn":
            return F.linear(x, w, self.bias)
        out = F.linear(sign_ste(x), w)
        if self.scale_input:
            out = out * self.input_scale(x)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}, scale_input={self.scale_input}"


class BinaryConv2d(nn.Conv2d):
    """nn.Conv2d with binary weights (bwn) or binary weights and inputs (xnor)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, *, mode: str = "bwn", scale_input: bool = True, **kw):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias, **kw)
        self.mode = _check_mode(mode)
        self.scale_input = bool(scale_input)
        if self.mode == "xnor":
            if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" \
                    or isinstance(self.padding, str):
                raise ConfigError(f"xnor conv supports groups=1, dilation=1, integer zero padding only; "
                                  f"got groups={self.groups}, dilation={self.dilation}, "
                                  f"padding={self.padding!r}, padding_mode={self.padding_mode!r}")

    def input_scale(self, x: torch.Tensor) -> torch.Tensor:
        """K: channel-mean of |x| box-filtered over the kernel footprint, (B, 1, OH, OW)."""
        a = x.abs().mean(dim=1, keepdim=True)
        return F.avg_pool2d(a, self.kernel_size, self.stride, self.padding, count_include_pad=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _clip_in_training(self)
        w = binarize_weight(self.weight)
        if self.mode == "bwn":
            return self._conv_forward(x, w, self.bias)
        xb = sign_ste(x)
        ph, pw = self.padding
        if ph or pw:
            xb = F.pad(xb, (pw, pw, ph, ph), value=-1.0)
        out = F.conv2d(xb, w, None, self.stride)
        if self.scale_input:
            out = out * self.input_scale(x)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}, scale_input={self.scale_input}"


BINARY_LAYERS = (BinaryLinear, BinaryConv2d)


def to_binary(module: nn.Module, mode: str = "bwn", scale_input: bool = True) -> nn.Module:
    """A binary copy of a Linear or Conv2d (weights copied); anything else is a ConfigError."""
    _check_mode(mode)
    if isinstance(module, BINARY_LAYERS):
        raise ConfigError(f"{type(module).__name__} is already binary")
    if type(module) is nn.Linear:
        new = BinaryLinear(module.in_features, module.out_features, module.bias is not None,
                           mode=mode, scale_input=scale_input)
    elif type(module) is nn.Conv2d:
        new = BinaryConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                           module.padding, module.bias is not None, mode=mode, scale_input=scale_input,
                           dilation=module.dilation, groups=module.groups, padding_mode=module.padding_mode)
    else:
        raise ConfigError(f"cannot binarise a {type(module).__name__}; supported: Linear, Conv2d")
    new.load_state_dict(module.state_dict())
    return new.to(module.weight.device)


def binarize_layers(model: nn.Module, names, mode: str = "bwn", scale_input: bool = True) -> nn.Module:
    """Replace the named Linear / Conv2d submodules of ``model`` by binary ones, in place."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules or name == "":
            raise ConfigError(f"model has no layer {name!r}; layers: "
                              f"{', '.join(n for n in modules if n)}")
        parent_name, _, attr = name.rpartition(".")
        setattr(modules[parent_name], attr, to_binary(modules[name], mode, scale_input))
    return model


def binary_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BINARY_LAYERS)}


@torch.no_grad()
def clip_binary_weights(model: nn.Module) -> None:
    """fit ``after_step`` hook: clip the real-valued weights of binary layers to [-1, 1]."""
    for m in binary_layers(model).values():
        m.weight.clamp_(-1.0, 1.0)


@torch.no_grad()
def export_binary(model: nn.Module) -> dict[str, BinaryTensor]:
    """``{"<layer>.weight": BinaryTensor}`` for every binary layer (signs + alpha per channel).

    ``BinaryTensor.to_dense()`` loaded back into the same model reproduces its outputs
    exactly (re-binarising alpha * sign(W) gives the same signs and the same alpha).
    """
    out = {}
    for name, m in binary_layers(model).items():
        w = m.weight.detach().float().cpu()
        alpha = weight_scale(w).reshape(-1).numpy().astype(np.float32)
        out[f"{name}.weight"] = BinaryTensor(tuple(w.shape), (w >= 0).numpy(), alpha)
    return out
