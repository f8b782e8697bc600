"""A uniform grid for entropy-coded scalar quantisation (ECSQ).

When the indices are entropy coded (the archive's Huffman / adaptive index streams), the
rate is the entropy of the indices, not log2(k). At that rate a uniform grid with a fine
step is within ~0.25 bit of the rate-distortion bound for smooth sources, while a k-means
codebook (optimal for fixed-length codes) spends its levels on the dense middle and pays
for it in entropy. Measured on all-MiniLM-L6-v2's Linear weights with GPTQ assignment
(benchmarks/sections/25-post-training.md): the grid reaches the k-means codebook's output
error with ~0.2-0.3 fewer bits per weight.

The grid is ``step * j`` for integers ``|j| <= m``, symmetric so that zero (pruned weights)
is on it, with at most ``max_levels`` entries; values beyond the last level are returned
as ``beyond`` for the caller to keep exactly (dense-and-sparse outliers) instead of
stretching the grid. ``compact`` drops the levels no weight uses, so the stored codebook
and the index width are as small as the assignment allows.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError


def uniform_grid(values: np.ndarray, step: float, max_levels: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """(grid: sorted float64 levels ``step * j``, beyond: bool mask of values past its ends)."""
    if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
        raise ConfigError(f"grid step must be a finite number > 0; got {step!r}")
    if isinstance(max_levels, bool) or not isinstance(max_levels, int) or not 1 <= max_levels <= 256:
        raise ConfigError(f"grid levels must be an integer in 1..256; got {max_levels!r}")
    x = np.asarray(values, np.float64)
    top = float(np.abs(x).max()) if x.size else 0.0
    m = min((max_levels - 1) // 2, math.ceil(top / step))
    grid = step * np.arange(-m, m + 1, dtype=np.float64)
    beyond = np.abs(x) > (m + 0.5) * step
    return grid, beyond


def compact(indices: np.ndarray, grid: np.ndarray, ignore: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray, int]:
    """(codebook of the used levels as float32, indices into it, index bits); positions in
    ``ignore`` (outliers, pruned weights) do not keep a level alive and get index 0."""
    idx = np.asarray(indices, np.int64)
    live = idx if ignore is None else idx[~ignore]
    used = np.unique(live) if live.size else np.zeros(1, np.int64)
    remap = np.searchsorted(used, idx).clip(0, len(used) - 1)
    if ignore is not None:
        remap = np.where(ignore, 0, remap)
    bits = max(1, math.ceil(math.log2(len(used))))
    return np.asarray(grid, np.float64)[used].astype(np.float32), remap.astype(np.uint8), bits
