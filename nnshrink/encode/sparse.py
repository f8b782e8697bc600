"""Sparse positions as relative gaps with fillers (Deep Compression's relative-index CSR).

A kept entry stores the gap g = pos - prev - 1 (< M = 2**w - 1). The symbol M is a
filler: it advances ``prev`` by M and stores no weight, so a long run of zeros costs one
gap symbol per M positions and no index bits. Trailing fillers cover the tensor's end so
that the encoding of a mask is unique and the tensor size is bounded by the stream
length (see format/SPEC.md). numba kernels; ``*_ref`` are plain Python references.
"""

from __future__ import annotations

import numba
import numpy as np

BAD_PAST_END = -1
BAD_TRAILING = -2


@numba.njit(cache=True, nogil=True)
def _count_gaps(mask, M):
    n = mask.shape[0]
    prev = -1
    count = 0
    for i in range(n):
        if mask[i]:
            gap = i - prev - 1
            count += gap // M + 1
            prev = i
    count += (n - 1 - prev) // M
    return count


@numba.njit(cache=True, nogil=True)
def _fill_gaps(mask, M, out):
    n = mask.shape[0]
    prev = -1
    o = 0
    for i in range(n):
        if mask[i]:
            gap = i - prev - 1
            while gap >= M:
                out[o] = M
                o += 1
                gap -= M
            out[o] = gap
            o += 1
            prev = i
    rest = n - 1 - prev
    while rest >= M:
        out[o] = M
        o += 1
        rest -= M
    return o


@numba.njit(cache=True, nogil=True)
def _mask_from_gaps(gaps, M, out):
    """Fill bool ``out`` (zeros, numel long); return the entry count or a negative error."""
    n = out.shape[0]
    prev = -1
    count = 0
    for i in range(gaps.shape[0]):
        g = np.int64(gaps[i])
        if g >= M:
            prev += M
            if prev > n - 1:
                return BAD_PAST_END
        else:
            prev += g + 1
            if prev > n - 1:
                return BAD_PAST_END
            out[prev] = True
            count += 1
    if n - 1 - prev >= M:
        return BAD_TRAILING
    return count


def gaps_from_mask(mask: np.ndarray, gap_bits: int) -> np.ndarray:
    """Gap symbols (uint8, entries and fillers) for a bool mask of any shape (row-major)."""
    flat = np.ascontiguousarray(mask, dtype=np.bool_).reshape(-1)
    M = (1 << gap_bits) - 1
    out = np.empty(_count_gaps(flat, M), np.uint8)
    n = _fill_gaps(flat, M, out)
    if n != out.size:
        raise RuntimeError(f"gap encoder wrote {n} symbols, counted {out.size}")  # a bug, not bad input
    return out


def mask_from_gaps(gaps: np.ndarray, gap_bits: int, numel: int) -> tuple[np.ndarray | None, int]:
    """(flat bool mask, entry count) from gap symbols; (None, error code) if they leave the tensor
    or the trailing fillers are not canonical. The caller bounds ``numel`` beforehand."""
    M = (1 << gap_bits) - 1
    out = np.zeros(numel, np.bool_)
    res = _mask_from_gaps(np.ascontiguousarray(gaps, np.uint8), M, out)
    if res < 0:
        return None, int(res)
    return out, int(res)


def gaps_from_mask_ref(mask: np.ndarray, gap_bits: int) -> np.ndarray:
    M = (1 << gap_bits) - 1
    flat = np.asarray(mask, bool).reshape(-1)
    out, prev = [], -1
    for pos in np.flatnonzero(flat):
        gap = int(pos) - prev - 1
        while gap >= M:
            out.append(M)
            gap -= M
        out.append(gap)
        prev = int(pos)
    rest = flat.size - 1 - prev
    while rest >= M:
        out.append(M)
        rest -= M
    return np.array(out, np.uint8)


def mask_from_gaps_ref(gaps: np.ndarray, gap_bits: int, numel: int) -> np.ndarray:
    M = (1 << gap_bits) - 1
    out, prev = np.zeros(numel, bool), -1
    for g in np.asarray(gaps).tolist():
        if g >= M:
            prev += M
        else:
            prev += g + 1
            out[prev] = True
    return out


@numba.njit(cache=True, nogil=True)
def _scatter(mask, values, out):
    j = 0
    for i in range(mask.shape[0]):
        if mask[i]:
            out[i] = values[j]
            j += 1
    return j


def scatter_dense(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """float32 array of mask's shape: ``values`` at the True positions (row-major), 0 elsewhere.

    Same result as ``out[mask] = values``, one sequential pass instead of numpy's boolean
    indexing (several times faster on 100M-element layers)."""
    flat = np.ascontiguousarray(mask, np.bool_).reshape(-1)
    vals = np.ascontiguousarray(values, np.float32).reshape(-1)
    out = np.zeros(flat.size, np.float32)
    if _scatter(flat, vals, out) != vals.size:
        raise ValueError(f"{vals.size} values for {int(flat.sum())} kept positions")
    return out.reshape(np.shape(mask))
