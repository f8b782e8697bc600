"""Direct sparse convolution: a pruned (optionally weight-shared) Conv2d run from its CSR.

Why direct and not im2col + sparse GEMM: im2col of a 256-channel 3x3 layer on a 28x28
map is a 7 MB copy per image, several times the sparse work at 90 % sparsity. Here each
kept weight W[o, c, ky, kx] = v adds ``v * (shifted input plane c)`` to output plane o:
a long contiguous multiply-add that SIMD runs at full width, and nothing is copied but
the zero-padded input (which torch's own conv makes too).

Weight layout: the layer's (out, in/groups * kh * kw) matrix as CSR, the column index
being c * kh * kw + ky * kw + kx, exactly ``weight.reshape(out, -1)``. Stride 1 uses the
padded row width for the output too (the extra columns are dropped when copied out), so
one kept weight is one run of Ho * Wp multiply-adds; other strides loop row by row.
Values come from ``data`` (float CSR) or, when ``codes`` is non-empty, ``cb[codes]``.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _axpy4(acc, v0, v1, v2, v3, src, o0, o1, o2, o3, n):
    """acc[:n] += four shifted runs of src at once: one load and store of acc per four
    multiply-adds; unsigned positions so it vectorises (no negative-index fix-up)."""
    for i in range(np.uint64(n)):
        acc[i] += (v0 * src[o0 + i] + v1 * src[o1 + i]) + (v2 * src[o2 + i] + v3 * src[o3 + i])


@njit(cache=True, nogil=True, fastmath=True)
def _sparse_conv2d(indptr, indices, data, codes, cb, xp, plane_h, plane_w, kh, kw,
                   cin_g, cout_g, stride, dil, bias, out):
    """out[b, o] = bias[o] + sum over o's kept weights of v * shifted xp[b, c] (xp flat per image)."""
    nbatch, cout, ho, wo = out.shape
    plane = plane_h * plane_w
    khw = kh * kw
    use_codes = codes.shape[0] > 0
    run = ho * plane_w if stride == 1 else ho * wo
    acc = np.empty(run, np.float32)
    widest = 0
    for o in range(cout):
        widest = max(widest, indptr[o + 1] - indptr[o])
    offs = np.empty(widest + 4, np.uint64)
    vals = np.zeros(widest + 4, np.float32)
    for b in range(nbatch):
        xb = xp[b]
        for o in range(cout):
            b0 = bias[o]
            for i in range(run):
                acc[i] = b0
            cbase = (o // cout_g) * cin_g * plane
            n = 0
            for k in range(np.uint64(indptr[o]), np.uint64(indptr[o + 1])):
                col = np.int64(indices[k])
                c = col // khw
                rem = col - c * khw
                ky = rem // kw
                kx = rem - ky * kw
                vals[n] = cb[codes[k]] if use_codes else data[k]
                offs[n] = np.uint64(cbase + c * plane + ky * dil * plane_w + kx * dil)
                n += 1
            if stride == 1:
                j = 0
                while j + 4 <= n:
                    _axpy4(acc, vals[j], vals[j + 1], vals[j + 2], vals[j + 3], xb,
                           offs[j], offs[j + 1], offs[j + 2], offs[j + 3], run)
                    j += 4
                while j < n:  # the last 1-3: pad with zero weights on the first run
                    _axpy4(acc, vals[j], 0.0, 0.0, 0.0, xb, offs[j], offs[0], offs[0], offs[0], run)
                    j += 1
            else:
                for j in range(n):
                    v = vals[j]
                    for y in range(ho):
                        src = offs[j] + np.uint64(y * stride * plane_w)
                        dst = y * wo
                        for x in range(wo):
                            acc[dst + x] += v * xb[src + np.uint64(x * stride)]
            width = plane_w if stride == 1 else wo
            for y in range(ho):
                for x in range(wo):
                    out[b, o, y, x] = acc[y * width + x]


def sparse_conv2d(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray | None, x: np.ndarray,
                  weight_shape: tuple[int, int, int, int], bias: np.ndarray | None = None, *,
                  stride: int = 1, padding: tuple[int, int] = (0, 0), dilation: int = 1, groups: int = 1,
                  codes: np.ndarray | None = None, codebook: np.ndarray | None = None) -> np.ndarray:
    """conv2d(x, W, bias) for W given as CSR over ``weight.reshape(out, -1)``; x is (B, C, H, W)
    float32. ``values`` for a float CSR, or ``codes`` + ``codebook`` for a shared one. The
    caller checks shapes (the layer raises torch's own error first)."""
    cout, cin_g, kh, kw = weight_shape
    nb, cin, h, w = x.shape
    ph, pw = padding
    hp, wp = h + 2 * ph, w + 2 * pw
    ho = (hp - dilation * (kh - 1) - 1) // stride + 1
    wo = (wp - dilation * (kw - 1) - 1) // stride + 1
    # one flat padded image per row, plus slack: a stride-1 run may read (kw-1)*dil past
    # the last plane into columns it then drops
    slack = (kw - 1) * dilation
    xp = np.zeros((nb, cin * hp * wp + slack), np.float32)
    xp[:, : cin * hp * wp].reshape(nb, cin, hp, wp)[:, :, ph:ph + h, pw:pw + w] = x
    out = np.empty((nb, cout, max(ho, 0), max(wo, 0)), np.float32)
    if out.size == 0:
        return out
    b = np.zeros(cout, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
    if codes is None:
        data, codes_, cb = np.ascontiguousarray(values, np.float32), np.zeros(0, np.uint8), np.zeros(1, np.float32)
    else:
        data, codes_, cb = np.zeros(0, np.float32), codes, np.ascontiguousarray(codebook, np.float32)
    _sparse_conv2d(indptr, indices, data, codes_, cb, xp, hp, wp, kh, kw, cin_g, cout // groups,
                   int(stride), int(dilation), b, out)
    return out


def sparse_conv2d_ref(dense_weight: np.ndarray, x: np.ndarray, bias: np.ndarray | None = None, *,
                      stride: int = 1, padding: tuple[int, int] = (0, 0), dilation: int = 1,
                      groups: int = 1) -> np.ndarray:
    """Plain numpy reference: explicit im2col per group, one float64 matmul each."""
    cout, cin_g, kh, kw = dense_weight.shape
    nb, cin, h, w = x.shape
    ph, pw = padding
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * pw - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((nb, cout, ho, wo), np.float64)
    cout_g = cout // groups
    for g in range(groups):
        xs = xp[:, g * cin_g:(g + 1) * cin_g]
        cols = np.empty((nb, cin_g, kh, kw, ho, wo), np.float64)
        for ky in range(kh):
            for kx in range(kw):
                y0, x0 = ky * dilation, kx * dilation
                cols[:, :, ky, kx] = xs[:, :, y0:y0 + stride * ho:stride, x0:x0 + stride * wo:stride]
        wg = np.asarray(dense_weight[g * cout_g:(g + 1) * cout_g], np.float64).reshape(cout_g, -1)
        out[:, g * cout_g:(g + 1) * cout_g] = np.einsum("ok,bkp->bop", wg, cols.reshape(nb, -1, ho * wo)
                                                         ).reshape(nb, cout_g, ho, wo)
    if bias is not None:
        out += np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    return out.astype(np.float32)
