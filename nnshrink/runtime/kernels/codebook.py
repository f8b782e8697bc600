"""Matmul straight from a codebook and uint8 indices (Deep Compression weight sharing).

The shared weight W[r, c] = codebook[codes[...]] is never materialised: the kernels
look the centroid up as they go (the codebook is 2**bits floats and stays in L1). Per
kept weight they read a 1-byte code plus, for the sparse form, a 16-bit column index:
3 bytes instead of 8 for float CSR and 4 for dense float32, which is what a
memory-bound batch-1 fc layer pays for.

Two layouts:
- ``CodebookCSR``: pruned + shared (the usual Deep Compression layer), CSR with codes.
- ``CodebookDense``: shared, not pruned: a (out, in) uint8 code matrix.

The "sum the activations per centroid, then multiply once per centroid" trick
(``y[r] = sum_c codebook[c] * sum_{k: code_k = c} x[col_k]``) trades the multiply for
a scatter into a k-entry accumulator; ``_cb_csr_matvec_bins`` implements it for the
benchmark, but the lookup form was as fast or faster here (see benchmarks/sections/
80-inference.md), so the layers use the lookup form. Plain numpy references (``*_ref``)
sit beside the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from .sparse import _U1, _U2, _U3, _U4, block_cols_for, index_dtype


@dataclass(frozen=True)
class CodebookCSR:
    shape: tuple[int, int]
    indptr: np.ndarray  # int64[rows + 1]
    indices: np.ndarray  # uint16 / int32 [nnz]
    codes: np.ndarray  # uint8 [nnz]
    codebook: np.ndarray  # float32 [k], k <= 256

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes + self.codes.nbytes + self.codebook.nbytes

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, np.float32)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        out[rows, self.indices.astype(np.int64)] = self.codebook[self.codes]
        return out


@dataclass(frozen=True)
class CodebookDense:
    codes: np.ndarray  # uint8 (out, in)
    codebook: np.ndarray  # float32 [k]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.codebook.nbytes

    def to_dense(self) -> np.ndarray:
        return self.codebook[self.codes]


def _codebook(cb) -> np.ndarray:
    cb = np.ascontiguousarray(cb, np.float32).reshape(-1)
    if not 1 <= cb.size <= 256:
        raise ValueError(f"codebook must have 1..256 entries for uint8 codes; got {cb.size}")
    return cb


def codebook_csr(mask: np.ndarray | None, codes: np.ndarray, codebook: np.ndarray,
                 shape: tuple[int, int]) -> CodebookCSR:
    """From SharedTensor's layout: codes of the kept positions (row-major), ``mask`` None = all kept."""
    rows, cols = shape
    mask = np.ones(shape, bool) if mask is None else np.asarray(mask, bool).reshape(shape)
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(mask.sum(axis=1), out=indptr[1:])
    indices = np.nonzero(mask)[1].astype(index_dtype(cols))
    codes = np.ascontiguousarray(codes).reshape(-1).astype(np.uint8)
    if codes.size != indices.size:  # the kernels trust nnz: never let them read past codes
        raise ValueError(f"{codes.size} codes for {indices.size} kept positions")
    cb = _codebook(codebook)
    if codes.size and int(codes.max()) >= cb.size:  # nor past the codebook
        raise ValueError(f"code {int(codes.max())} out of range for a codebook of {cb.size} entries")
    return CodebookCSR((rows, cols), indptr, indices, codes, cb)


def codebook_dense(codes: np.ndarray, codebook: np.ndarray, shape: tuple[int, int]) -> CodebookDense:
    codes, cb = np.ascontiguousarray(codes, np.uint8).reshape(shape), _codebook(codebook)
    if codes.size and int(codes.max()) >= cb.size:  # the kernels trust every code < k
        raise ValueError(f"code {int(codes.max())} out of range for a codebook of {cb.size} entries")
    return CodebookDense(codes, cb)


# --------------------------------------------------------------------------- kernels


@njit(cache=True, nogil=True)
def _cb_csr_matvec(indptr, indices, codes, cb, x, bias, out):
    """Batch 1; unsigned positions and four partial sums, as ``sparse._csr_matvec``."""
    for r in range(out.shape[0]):
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        k = np.uint64(indptr[r])
        e = np.uint64(indptr[r + 1])
        while k + _U4 <= e:
            a0 += cb[codes[k]] * x[indices[k]]
            a1 += cb[codes[k + _U1]] * x[indices[k + _U1]]
            a2 += cb[codes[k + _U2]] * x[indices[k + _U2]]
            a3 += cb[codes[k + _U3]] * x[indices[k + _U3]]
            k += _U4
        while k < e:
            a0 += cb[codes[k]] * x[indices[k]]
            k += _U1
        out[r] = ((a0 + a1) + (a2 + a3)) + bias[r]


@njit(cache=True, nogil=True)
def _cb_csr_matvec_bins(indptr, indices, codes, cb, x, bias, out):
    """The per-centroid trick: bin the activations by code, then one multiply per centroid."""
    k = cb.shape[0]
    bins = np.zeros(k, np.float32)
    for r in range(out.shape[0]):
        for c in range(k):
            bins[c] = 0.0
        for j in range(indptr[r], indptr[r + 1]):
            bins[codes[j]] += x[indices[j]]
        acc = np.float32(0.0)
        for c in range(k):
            acc += bins[c] * cb[c]
        out[r] = acc + bias[r]


@njit(cache=True, fastmath=True, nogil=True)
def _cb_csr_matmul_t(indptr, indices, codes, cb, xt, bias, out_t, block_cols):
    """Batched, column-blocked like ``sparse._csr_matmul_t``."""
    nb = xt.shape[1]
    rows = out_t.shape[0]
    cur = np.empty(rows, np.uint64)
    for r in range(rows):
        cur[r] = np.uint64(indptr[r])
        b0 = bias[r]
        for b in range(nb):
            out_t[r, b] = b0
    c1 = 0
    while c1 < xt.shape[0]:
        c1 += block_cols
        for r in range(rows):
            row = out_t[r]
            k = cur[r]
            e = np.uint64(indptr[r + 1])
            while k + _U4 <= e and indices[k + _U3] < c1:
                v0 = cb[codes[k]]
                v1 = cb[codes[k + _U1]]
                v2 = cb[codes[k + _U2]]
                v3 = cb[codes[k + _U3]]
                x0 = xt[indices[k]]
                x1 = xt[indices[k + _U1]]
                x2 = xt[indices[k + _U2]]
                x3 = xt[indices[k + _U3]]
                for b in range(nb):
                    row[b] += (v0 * x0[b] + v1 * x1[b]) + (v2 * x2[b] + v3 * x3[b])
                k += _U4
            while k < e and indices[k] < c1:
                v = cb[codes[k]]
                xr = xt[indices[k]]
                for b in range(nb):
                    row[b] += v * xr[b]
                k += _U1
            cur[r] = k


@njit(cache=True, nogil=True)
def _cb_dense_matvec(codes, cb, x, bias, out):
    n = codes.shape[1]
    for r in range(codes.shape[0]):
        crow = codes[r]
        acc = np.float32(0.0)
        for i in range(n):
            acc += cb[crow[i]] * x[i]
        out[r] = acc + bias[r]


@njit(cache=True, fastmath=True, nogil=True)
def _cb_dense_matmul_t(codes, cb, xt, bias, out_t):
    nb = xt.shape[1]
    n = codes.shape[1]
    for r in range(codes.shape[0]):
        row = out_t[r]
        crow = codes[r]
        b0 = bias[r]
        for b in range(nb):
            row[b] = b0
        i = 0
        while i + 4 <= n:
            v0 = cb[crow[i]]
            v1 = cb[crow[i + 1]]
            v2 = cb[crow[i + 2]]
            v3 = cb[crow[i + 3]]
            x0 = xt[i]
            x1 = xt[i + 1]
            x2 = xt[i + 2]
            x3 = xt[i + 3]
            for b in range(nb):
                row[b] += (v0 * x0[b] + v1 * x1[b]) + (v2 * x2[b] + v3 * x3[b])
            i += 4
        while i < n:
            v = cb[crow[i]]
            xr = xt[i]
            for b in range(nb):
                row[b] += v * xr[b]
            i += 1


def _bias(bias, rows) -> np.ndarray:
    return np.zeros(rows, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)


def codebook_linear(w: CodebookCSR | CodebookDense, x: np.ndarray, bias: np.ndarray | None = None,
                    *, bins: bool = False, block_cols: int | None = None) -> np.ndarray:
    """y = x @ W^T + bias with W given by codes + codebook; x is (in,) or (B, in) float32.

    ``bins`` picks the per-centroid-sum kernel for the sparse batch-1 case (benchmarking).
    """
    x = np.asarray(x, np.float32)
    rows = w.shape[0]
    b = _bias(bias, rows)
    sparse = isinstance(w, CodebookCSR)
    if x.ndim == 1 or x.shape[0] == 1:
        out = np.empty(rows, np.float32)
        xv = np.ascontiguousarray(x.reshape(-1))
        if sparse:
            kern = _cb_csr_matvec_bins if bins else _cb_csr_matvec
            kern(w.indptr, w.indices, w.codes, w.codebook, xv, b, out)
        else:
            _cb_dense_matvec(w.codes, w.codebook, xv, b, out)
        return out if x.ndim == 1 else out.reshape(1, rows)
    out_t = np.empty((rows, x.shape[0]), np.float32)
    xt = np.ascontiguousarray(x.T)
    if sparse:
        bc = block_cols_for(x.shape[0]) if block_cols is None else int(block_cols)
        _cb_csr_matmul_t(w.indptr, w.indices, w.codes, w.codebook, xt, b, out_t, max(1, bc))
    else:
        _cb_dense_matmul_t(w.codes, w.codebook, xt, b, out_t)
    return out_t.T


def codebook_linear_ref(w: CodebookCSR | CodebookDense, x: np.ndarray,
                        bias: np.ndarray | None = None) -> np.ndarray:
    """Plain numpy reference: decode the weight, then one float64 matmul."""
    out = np.asarray(x, np.float64) @ w.to_dense().astype(np.float64).T
    if bias is not None:
        out += np.asarray(bias, np.float64)
    return out.astype(np.float32)
