"""Inference-only ``nn.Linear`` drop-ins that run straight from a compressed weight.

``SparseLinear`` (pruned: CSR float32) and ``CodebookLinear`` (weight-shared: uint8
codes into a codebook, CSR when pruned) call the numba kernels in ``runtime.kernels``
on CPU float32. They hold no trainable parameters and build no autograd graph: they
are for deployment and ``nnshrink bench``, not for retraining. ``runtime.swap.accelerate``
swaps them into a model for the layers whose compressed weight is sparse or shared. A batched
output is a transposed (non-contiguous) view; call ``.contiguous()`` if you need ``.view``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..compressed import SharedTensor, SparseTensor
from ..errors import ConfigError, DeviceError
from .kernels.codebook import CodebookCSR, CodebookDense, codebook_csr, codebook_dense, codebook_linear
from .kernels.sparse import CSR, csr_from_dense, csr_from_mask, csr_linear


def _bias_array(bias, out_features: int) -> np.ndarray | None:
    if bias is None:
        return None
    if isinstance(bias, torch.Tensor):
        bias = bias.detach().to("cpu", torch.float32).numpy()
    elif hasattr(bias, "to_dense"):
        bias = bias.to_dense()
    b = np.ascontiguousarray(bias, np.float32).reshape(-1)
    if b.size != out_features:
        raise ConfigError(f"bias has {b.size} entries; the layer has {out_features} outputs")
    return b


def raise_torch_shape_error(call, weight_shape) -> None:
    """Raise the error torch itself gives for this input: ``call`` runs the torch op on a
    weight of ``weight_shape`` that owns no memory (all strides 0), which torch rejects
    before computing anything. Kernels are never reached with a misfit input."""
    call(torch.empty(1).as_strided(tuple(weight_shape), (0,) * len(weight_shape)))
    raise ConfigError(f"input does not fit a layer with weight shape {tuple(weight_shape)}")


def _check_2d(shape, what: str) -> tuple[int, int]:
    if len(shape) != 2:
        raise ConfigError(f"{what} needs a 2-D (out, in) weight; got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


class _KernelLinear(nn.Module):
    """Shared plumbing: flatten leading dims, go to numpy, run the kernel, come back."""

    def __init__(self, in_features: int, out_features: int, bias: np.ndarray | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._bias = bias
        self._zero_bias = np.zeros(out_features, np.float32)

    def _run(self, x2d: np.ndarray, b: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self._bias is None else torch.from_numpy(self._bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise DeviceError(f"{type(self).__name__} runs on CPU only; got input on {x.device}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise_torch_shape_error(lambda w: torch.nn.functional.linear(x, w), (self.out_features, self.in_features))
        # the cheapest way to numpy: this call's fixed cost matters at batch 1
        if x.dtype == torch.float32 and not x.requires_grad:
            xn = x.numpy()
        else:
            xn = x.detach().to(torch.float32).numpy()
        lead = xn.shape[:-1]
        if xn.ndim != 2:
            xn = xn.reshape(-1, self.in_features)
        b = self._zero_bias if self._bias is None else self._bias
        y = self._run(xn, b) if xn.shape[0] else np.zeros((0, self.out_features), np.float32)
        # a batch comes back as the transpose of an (out, B) array: no copy, and the next
        # kernel layer's x.T is then contiguous for free (torch ops take any strides)
        out = y if isinstance(y, torch.Tensor) else torch.from_numpy(y)
        if len(lead) != 1:
            out = out.reshape(*lead, self.out_features)
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self._bias is not None}"

    def weight_nbytes(self) -> int:
        """Bytes the layer keeps resident for its weight and bias (its compressed form)."""
        return self._weight_arrays_nbytes() + (0 if self._bias is None else self._bias.nbytes)

    def _weight_arrays_nbytes(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


class SparseLinear(_KernelLinear):
    """y = x W^T + b with W kept as CSR (float32 values, 16-bit column indices when they fit)."""

    def __init__(self, csr: CSR, bias=None):
        super().__init__(csr.shape[1], csr.shape[0], _bias_array(bias, csr.shape[0]))
        self.csr = csr

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> "SparseLinear":
        """From an ``nn.Linear`` whose zero weights are the pruned ones."""
        w = linear.weight.detach().to("cpu", torch.float32).numpy()
        return cls(csr_from_dense(w), linear.bias)

    @classmethod
    def from_compressed(cls, tensor: SparseTensor | SharedTensor, bias=None) -> "SparseLinear":
        """From a pruned (or shared: its centroids are expanded to float) compressed weight."""
        shape = _check_2d(tensor.shape, "SparseLinear")
        if isinstance(tensor, SparseTensor):
            return cls(csr_from_mask(np.asarray(tensor.mask, bool).reshape(shape), tensor.values), bias)
        if isinstance(tensor, SharedTensor):
            vals = np.asarray(tensor.codebook, np.float32)[np.asarray(tensor.indices).astype(np.int64)]
            mask = np.ones(shape, bool) if tensor.mask is None else np.asarray(tensor.mask, bool).reshape(shape)
            return cls(csr_from_mask(mask, vals), bias)
        raise ConfigError(f"SparseLinear needs a SparseTensor or SharedTensor; got {type(tensor).__name__}")

    @property
    def density(self) -> float:
        return self.csr.nnz / max(1, self.in_features * self.out_features)

    def dense_weight(self) -> torch.Tensor:
        return torch.from_numpy(self.csr.to_dense())

    def _run(self, x2d, b):
        return csr_linear(self.csr, x2d, b)

    def _weight_arrays_nbytes(self) -> int:
        return self.csr.nbytes

    def extra_repr(self) -> str:
        return super().extra_repr() + f", density={self.density:.4f}"


class CodebookLinear(_KernelLinear):
    """y = x W^T + b with W = codebook[codes]: uint8 codes, CSR when pruned, a code matrix when not."""

    def __init__(self, weight: CodebookCSR | CodebookDense, bias=None):
        super().__init__(weight.shape[1], weight.shape[0], _bias_array(bias, weight.shape[0]))
        self.cw = weight

    @classmethod
    def from_compressed(cls, tensor: SharedTensor, bias=None, *, sparse: bool | None = None) -> "CodebookLinear":
        """From a SharedTensor. ``sparse`` None: CSR when it has a mask, a dense code matrix otherwise."""
        if not isinstance(tensor, SharedTensor):
            raise ConfigError(f"CodebookLinear needs a SharedTensor; got {type(tensor).__name__}")
        if tensor.outlier_mask is not None:
            raise ConfigError("CodebookLinear cannot run a SharedTensor with dense-and-sparse outliers; "
                              "use the dense runtime")
        shape = _check_2d(tensor.shape, "CodebookLinear")
        k = len(tensor.codebook)
        if k > 256:
            raise ConfigError(f"CodebookLinear takes at most 256 centroids (uint8 codes); got {k}")
        idx = np.asarray(tensor.indices)
        if idx.size and (idx.min() < 0 or idx.max() >= k):
            raise ConfigError(f"codebook index out of range [0, {k}) in a SharedTensor of shape {shape}")
        if sparse is None:
            sparse = tensor.mask is not None
        if sparse:
            return cls(codebook_csr(tensor.mask, idx, tensor.codebook, shape), bias)
        if tensor.mask is None:
            codes = idx.reshape(shape)
            cb = tensor.codebook
        else:  # pruned positions get an extra exact-zero centroid
            if k == 256:
                raise ConfigError("a pruned SharedTensor with 256 centroids has no code left for zero; use sparse=True")
            cb = np.append(np.asarray(tensor.codebook, np.float32), np.float32(0))
            codes = np.full(shape, k, np.uint8)
            codes[np.asarray(tensor.mask, bool).reshape(shape)] = idx
        return cls(codebook_dense(codes, cb, shape), bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear, codebook: np.ndarray, *, sparse: bool = True) -> "CodebookLinear":
        """From an ``nn.Linear`` whose weights all lie in ``codebook`` (zeros = pruned when ``sparse``)."""
        w = linear.weight.detach().to("cpu", torch.float32).numpy()
        cb = np.asarray(codebook, np.float32).reshape(-1)
        codes = np.abs(w[..., None] - cb).argmin(-1)
        if not np.allclose(cb[codes], w, rtol=0, atol=1e-6):
            raise ConfigError("the layer's weights are not all codebook values; share the weights first")
        mask = (w != 0) if sparse else None
        sel = codes[mask] if sparse else codes.reshape(-1)
        bits = max(1, int(np.ceil(np.log2(max(2, len(cb))))))
        t = SharedTensor(tuple(w.shape), cb, sel.astype(np.uint8), bits, mask)
        return cls.from_compressed(t, linear.bias, sparse=sparse)

    @property
    def sparse(self) -> bool:
        return isinstance(self.cw, CodebookCSR)

    def dense_weight(self) -> torch.Tensor:
        return torch.from_numpy(self.cw.to_dense())

    def _run(self, x2d, b):
        return codebook_linear(self.cw, x2d, b)

    def _weight_arrays_nbytes(self) -> int:
        return self.cw.nbytes

    def extra_repr(self) -> str:
        return super().extra_repr() + f", k={len(self.cw.codebook)}, sparse={self.sparse}"
