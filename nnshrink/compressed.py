"""The hand-off between compression stages and the archive: one value type per encoding.

Pruning, weight sharing and binarisation produce these; ``nnshrink.format`` writes and
reads them; ``to_dense`` is the single definition of what each one means, so the writer,
the reader and the runtime all agree by construction.

Conventions (all arrays are numpy, C-order, logical ``shape`` row-major):
- ``mask`` is a bool array of ``shape`` (True = kept) or None for "all kept".
- per-position arrays (``values``, ``indices``) list the KEPT positions in row-major order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DenseTensor:
    """Stored as is: float32, or float16 when ``half`` (lossy, opt-in)."""

    array: np.ndarray
    half: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def to_dense(self) -> np.ndarray:
        arr = self.array.astype(np.float16) if self.half else self.array
        return arr.astype(np.float32)


@dataclass(frozen=True)
class SparseTensor:
    """Pruned, not shared: float32 values at the kept positions."""

    shape: tuple[int, ...]
    mask: np.ndarray
    values: np.ndarray

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, np.float32)
        out[self.mask] = self.values
        return out


@dataclass(frozen=True)
class SharedTensor:
    """Weight sharing: ``codebook[indices]`` at the kept positions, zero elsewhere.

    ``bits`` is the index width b (1..8); ``len(codebook) <= 2**bits``; every index is
    < len(codebook). ``mask`` None means dense (every position has an index).
    """

    shape: tuple[int, ...]
    codebook: np.ndarray
    indices: np.ndarray
    bits: int
    mask: np.ndarray | None = None
    # dense-and-sparse: bool array of ``shape`` marking outliers whose exact value (float16,
    # in row-major order) replaces the shared one; None = no outliers
    outlier_mask: np.ndarray | None = None
    outlier_values: np.ndarray | None = None

    def to_dense(self) -> np.ndarray:
        vals = self.codebook.astype(np.float32)[self.indices.astype(np.int64)]
        if self.mask is None:
            out = vals.reshape(self.shape).copy()
        else:
            out = np.zeros(self.shape, np.float32)
            out[self.mask] = vals
        if self.outlier_mask is not None:
            out[self.outlier_mask] = np.asarray(self.outlier_values, np.float16).astype(np.float32)
        return out


@dataclass(frozen=True)
class BinaryTensor:
    """1-bit weights: ``scales[c] * (+1 if signs else -1)`` along output channel ``c`` (axis 0)."""

    shape: tuple[int, ...]
    signs: np.ndarray  # bool, ``shape``; True = +1
    scales: np.ndarray  # float32, (shape[0],)
    half_scales: bool = False  # store the scales as float16 (lossy, 2 bytes per channel)

    def to_dense(self) -> np.ndarray:
        pm = np.where(self.signs, np.float32(1), np.float32(-1))
        scales = self.scales.astype(np.float16) if self.half_scales else self.scales
        return pm * scales.astype(np.float32).reshape((-1,) + (1,) * (len(self.shape) - 1))


CompressedTensor = DenseTensor | SparseTensor | SharedTensor | BinaryTensor
