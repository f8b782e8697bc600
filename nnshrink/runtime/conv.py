"""Inference-only ``nn.Conv2d`` drop-in that runs straight from a pruned (or pruned and
shared) weight: CSR over ``weight.reshape(out, -1)``, float values or uint8 codes into a
codebook, run by the direct sparse kernel in ``kernels.sparse_conv``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..compressed import SharedTensor, SparseTensor
from ..errors import ConfigError, DeviceError
from .kernels.codebook import CodebookCSR, codebook_csr
from .kernels.sparse import CSR, csr_from_mask
from .kernels.sparse_conv import sparse_conv2d
from .layers import _bias_array, raise_torch_shape_error


def conv_unsupported(conv: nn.Conv2d) -> str | None:
    """Why ``conv`` has no kernel (None when it has one): the kernel takes zero padding
    given as numbers, and one stride and one dilation for both axes."""
    if type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__} is not a plain Conv2d"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} (the kernel takes numbers)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}"
    if conv.stride[0] != conv.stride[1] or conv.dilation[0] != conv.dilation[1]:
        return f"stride {conv.stride} / dilation {conv.dilation} differ between the axes"
    return None


class KernelConv2d(nn.Module):
    """conv2d(x, W) + b with W as CSR (``SparseTensor``) or codebook CSR (``SharedTensor``)."""

    def __init__(self, weight: CSR | CodebookCSR, weight_shape, bias, conv: nn.Conv2d):
        super().__init__()
        why = conv_unsupported(conv)
        if why:
            raise ConfigError(f"no compressed kernel for this Conv2d: {why}")
        self.weight_shape = tuple(int(v) for v in weight_shape)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.stride, self.padding = int(conv.stride[0]), tuple(int(p) for p in conv.padding)
        self.dilation, self.groups = int(conv.dilation[0]), int(conv.groups)
        self.w = weight
        self._bias = _bias_array(bias, self.out_channels)

    @classmethod
    def from_compressed(cls, tensor: SparseTensor | SharedTensor, conv: nn.Conv2d, bias=None) -> "KernelConv2d":
        shape = tuple(tensor.shape)
        if shape != tuple(conv.weight.shape):
            raise ConfigError(f"compressed conv weight shape {shape} does not match the layer's "
                              f"{tuple(conv.weight.shape)}")
        rows, cols = shape[0], int(np.prod(shape[1:]))
        if isinstance(tensor, SparseTensor):
            w = csr_from_mask(np.asarray(tensor.mask, bool).reshape(rows, cols), tensor.values)
        elif isinstance(tensor, SharedTensor):
            k = len(tensor.codebook)
            idx = np.asarray(tensor.indices)
            if k > 256 or (idx.size and (idx.min() < 0 or idx.max() >= k)):
                raise ConfigError(f"codebook of {k} entries with indices out of range or over 256 entries")
            mask = None if tensor.mask is None else np.asarray(tensor.mask, bool).reshape(rows, cols)
            w = codebook_csr(mask, idx, tensor.codebook, (rows, cols))
        else:
            raise ConfigError(f"KernelConv2d needs a SparseTensor or SharedTensor; got {type(tensor).__name__}")
        return cls(w, shape, conv.bias if bias is None else bias, conv)

    @property
    def density(self) -> float:
        return self.w.nnz / max(1, int(np.prod(self.weight_shape)))

    def weight_nbytes(self) -> int:
        return self.w.nbytes + (0 if self._bias is None else self._bias.nbytes)

    def dense_weight(self) -> torch.Tensor:
        return torch.from_numpy(self.w.to_dense().reshape(self.weight_shape))

    def _fits(self, x: torch.Tensor) -> bool:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            return False
        kh, kw = self.weight_shape[2:]
        return all(x.shape[2 + i] + 2 * self.padding[i] >= self.dilation * (k - 1) + 1 for i, k in enumerate((kh, kw)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise DeviceError(f"KernelConv2d runs on CPU only; got input on {x.device}")
        unbatched = x.dim() == 3
        xb = x.unsqueeze(0) if unbatched else x
        if not self._fits(xb):
            raise_torch_shape_error(lambda w: F.conv2d(x, w, None, self.stride, self.padding, self.dilation,
                                                       self.groups), self.weight_shape)
        xn = xb.detach().to(torch.float32).contiguous().numpy()
        w = self.w
        if isinstance(w, CodebookCSR):
            y = sparse_conv2d(w.indptr, w.indices, None, xn, self.weight_shape, self._bias, stride=self.stride,
                              padding=self.padding, dilation=self.dilation, groups=self.groups,
                              codes=w.codes, codebook=w.codebook)
        else:
            y = sparse_conv2d(w.indptr, w.indices, w.data, xn, self.weight_shape, self._bias, stride=self.stride,
                              padding=self.padding, dilation=self.dilation, groups=self.groups)
        out = torch.from_numpy(y)
        out = out[0] if unbatched else out
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    def extra_repr(self) -> str:
        kind = "codebook" if isinstance(self.w, CodebookCSR) else "sparse"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.weight_shape[2:]}, stride={self.stride}, "
                f"padding={self.padding}, {kind}, density={self.density:.4f}")
