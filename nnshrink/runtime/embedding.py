"""Inference-only ``nn.Embedding`` drop-in that keeps a shared table as uint8 codes plus a
codebook (1 byte per entry instead of 4) and decodes only the rows it looks up."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..compressed import SharedTensor
from ..errors import ConfigError


def embedding_unsupported(emb: nn.Embedding, tensor) -> str | None:
    """Why this Embedding has no codebook lookup (None when it has one)."""
    if type(emb) is not nn.Embedding:
        return f"{type(emb).__name__} is not a plain Embedding"
    if emb.max_norm is not None:
        return "max_norm renormalises the table in place"
    if not isinstance(tensor, SharedTensor):
        return f"its weight is {type(tensor).__name__}, not codebook-shared"
    if tensor.mask is not None and len(tensor.codebook) >= 256:
        return "a pruned table with 256 centroids has no code left for zero"
    return None


def codebook_lookup_ref(codes: np.ndarray, codebook: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Plain numpy reference: decode the looked-up rows."""
    return np.asarray(codebook, np.float32)[np.asarray(codes)[np.asarray(ids, np.int64)].astype(np.int64)]


class CodebookEmbedding(nn.Module):
    """``codebook[codes[ids]]``: codes (num, dim) uint8; a pruned table gets an extra 0 centroid."""

    def __init__(self, tensor: SharedTensor, emb: nn.Embedding):
        super().__init__()
        why = embedding_unsupported(emb, tensor)
        if why:
            raise ConfigError(f"no codebook lookup for this Embedding: {why}")
        shape = tuple(tensor.shape)
        if shape != tuple(emb.weight.shape):
            raise ConfigError(f"compressed embedding shape {shape} does not match the layer's {tuple(emb.weight.shape)}")
        k = len(tensor.codebook)
        idx = np.asarray(tensor.indices)
        if idx.size and (idx.min() < 0 or idx.max() >= k):
            raise ConfigError(f"codebook index out of range [0, {k}) in an embedding of shape {shape}")
        cb = np.asarray(tensor.codebook, np.float32)
        if tensor.mask is None:
            codes = idx.astype(np.uint8).reshape(shape)
        else:
            cb = np.append(cb, np.float32(0))
            codes = np.full(shape, k, np.uint8)
            codes[np.asarray(tensor.mask, bool).reshape(shape)] = idx
        self.num_embeddings, self.embedding_dim = shape
        self.padding_idx = emb.padding_idx
        self.codes = torch.from_numpy(codes)
        self.codebook = torch.from_numpy(cb)

    def weight_nbytes(self) -> int:
        return self.codes.numel() + self.codebook.numel() * 4

    def dense_weight(self) -> torch.Tensor:
        return self.codebook[self.codes.long()]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # torch's own checks (dtype, range) and its error messages, on the code table
        rows = F.embedding(ids, self.codes)
        return self.codebook[rows.long()]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, k={self.codebook.numel()}"
