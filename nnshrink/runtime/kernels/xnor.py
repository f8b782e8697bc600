"""Bit-packed XNOR + popcount kernels (numba), each beside a plain numpy reference.

A +-1 vector of length K is stored as ceil(K/64) uint64 words, bit j of word w = 1 when
element 64*w + j is +1 (``x >= 0``), little-endian bit order. Padding bits are 0 on both
operands, so they XOR to 0 and never count: for +-1 vectors a, b,
``dot(a, b) = K - 2 * popcount(a XOR b)`` with the *true* K, whatever the padding.

Why hand-written: no maintained library does 1-bit GEMM on CPU. numba has no popcount
builtin, so ``llvm.ctpop.i64`` is called through an intrinsic; LLVM vectorises it to
``vpopcntq`` where the CPU has it, and to SWAR code elsewhere.

Layouts: weights are packed offline as ``(N, W)`` rows; activations are packed inside
the timed region (fused sign-and-pack), either as ``(M, W)`` rows for a long K or
transposed ``(W, M)`` for a short K, where the GEMM vectorises over M instead of K.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

WORD = 64
_NARROW_WORDS = 16  # K <= 1024: vectorise over rows instead of over K


@intrinsic
def popcount64(typingctx, x):
    """LLVM's ``ctpop`` on a uint64 (one instruction where the CPU has POPCNT)."""
    if x != types.uint64:
        return None

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.ctpop.i64")
        return builder.call(fn, [args[0]])

    return types.uint64(types.uint64), codegen


def n_words(k: int) -> int:
    return (int(k) + WORD - 1) // WORD


# ----------------------------------------------------------------------------- packing

@njit(cache=True, fastmath=True, inline="always")
def _pack_word(x, m, base, k):
    """Word of signs of x[m, base:base+64] (bits past k are 0)."""
    end = min(WORD, k - base)
    v = np.uint64(0)
    if end == WORD:  # constant trip count: LLVM vectorises the shift-or reduction
        for j in range(WORD):
            v |= np.uint64(x[m, base + j] >= 0) << np.uint64(j)
        return v
    for j in range(end):
        v |= np.uint64(x[m, base + j] >= 0) << np.uint64(j)
    return v


@njit(cache=True, fastmath=True)
def _pack_rows(x, out):
    m_rows, k = x.shape
    for m in range(m_rows):
        for w in range(out.shape[1]):
            out[m, w] = _pack_word(x, m, w * WORD, k)


@njit(cache=True, fastmath=True)
def _pack_rows_t(x, out):
    m_rows, k = x.shape
    for m in range(m_rows):
        for w in range(out.shape[0]):
            out[w, m] = _pack_word(x, m, w * WORD, k)


def pack_rows(x: np.ndarray, transpose: bool = False) -> np.ndarray:
    """Fused sign-and-pack of a float (M, K) matrix -> uint64 (M, W), or (W, M) if ``transpose``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"pack_rows expects a 2-D array; got shape {x.shape}")
    w = n_words(x.shape[1])
    out = np.empty((w, x.shape[0]) if transpose else (x.shape[0], w), np.uint64)
    (_pack_rows_t if transpose else _pack_rows)(x, out)
    return out


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Offline packing of a bool (N, K) sign matrix (True = +1) -> uint64 (N, W), zero-padded."""
    bits = np.asarray(bits, bool)
    n, k = bits.shape
    full = np.zeros((n, n_words(k) * WORD), np.uint8)
    full[:, :k] = bits
    return np.packbits(full, axis=1, bitorder="little").view("<u8").astype(np.uint64)


def pack_rows_ref(x: np.ndarray) -> np.ndarray:
    """Plain numpy reference of ``pack_rows`` (packbits, zero padding, little-endian words)."""
    return pack_bits(np.asarray(x) >= 0)


def unpack_rows_ref(packed: np.ndarray, k: int) -> np.ndarray:
    """uint64 (M, W) -> float32 +-1 (M, k)."""
    bits = np.unpackbits(packed.astype("<u8").view(np.uint8), axis=1, bitorder="little")[:, :k]
    return np.where(bits.astype(bool), np.float32(1), np.float32(-1))


# ----------------------------------------------------------------------------- GEMM

@njit(cache=True, fastmath=True)
def _gemm_wide(a, b, k, alpha, out):
    """out[m, n] = (k - 2 popc(a[m] ^ b[n])) * alpha[n]; tiles of B stay in L2, 4 rows of A share each B load."""
    m_rows, w_len = a.shape
    n_rows = b.shape[0]
    nb = max(1, 262144 // (w_len * 8))
    for n0 in range(0, n_rows, nb):
        n1 = min(n_rows, n0 + nb)
        m = 0
        while m + 3 < m_rows:
            for n in range(n0, n1):
                s0 = np.uint64(0)
                s1 = np.uint64(0)
                s2 = np.uint64(0)
                s3 = np.uint64(0)
                for w in range(w_len):
                    bw = b[n, w]
                    s0 += popcount64(a[m, w] ^ bw)
                    s1 += popcount64(a[m + 1, w] ^ bw)
                    s2 += popcount64(a[m + 2, w] ^ bw)
                    s3 += popcount64(a[m + 3, w] ^ bw)
                al = alpha[n]
                out[m, n] = (k - 2 * np.int64(s0)) * al
                out[m + 1, n] = (k - 2 * np.int64(s1)) * al
                out[m + 2, n] = (k - 2 * np.int64(s2)) * al
                out[m + 3, n] = (k - 2 * np.int64(s3)) * al
            m += 4
        while m < m_rows:
            for n in range(n0, n1):
                s0 = np.uint64(0)
                for w in range(w_len):
                    s0 += popcount64(a[m, w] ^ b[n, w])
                out[m, n] = (k - 2 * np.int64(s0)) * alpha[n]
            m += 1


@njit(cache=True, fastmath=True, inline="always")
def _narrow_acc(at, cnt, b, n, acc):
    """acc[m] = popcount(at[:, m] ^ b[n]) for m < cnt; 4 words per pass over m (less acc traffic)."""
    w_len = at.shape[0]
    acc[:cnt] = 0
    w = 0
    while w + 4 <= w_len:
        b0, b1, b2, b3 = b[n, w], b[n, w + 1], b[n, w + 2], b[n, w + 3]
        a0, a1, a2, a3 = at[w], at[w + 1], at[w + 2], at[w + 3]
        for m in range(cnt):
            acc[m] += ((popcount64(a0[m] ^ b0) + popcount64(a1[m] ^ b1))
                       + (popcount64(a2[m] ^ b2) + popcount64(a3[m] ^ b3)))
        w += 4
    while w < w_len:
        bw = b[n, w]
        a = at[w]
        for m in range(cnt):
            acc[m] += popcount64(a[m] ^ bw)
        w += 1


@njit(cache=True, fastmath=True)
def _gemm_narrow_t(at, b, k, alpha, out_t):
    """Short K: out_t[n, m] from transposed activations at (W, M), vectorised over m."""
    m_rows = at.shape[1]
    acc = np.empty(m_rows, np.uint64)
    for n in range(b.shape[0]):
        _narrow_acc(at, m_rows, b, n, acc)
        al = alpha[n]
        o = out_t[n]
        for m in range(m_rows):
            o[m] = (k - 2 * np.int64(acc[m])) * al


@njit(cache=True, fastmath=True)
def _pack_gemm_narrow(x, b, k, alpha, out_t):
    """Fused sign-and-pack + narrow GEMM over blocks of rows that stay in L1/L2."""
    m_rows = x.shape[0]
    w_len = b.shape[1]
    mb = 1024
    at = np.empty((w_len, mb), np.uint64)
    acc = np.empty(mb, np.uint64)
    for m0 in range(0, m_rows, mb):
        cnt = min(mb, m_rows - m0)
        for m in range(cnt):
            for w in range(w_len):
                at[w, m] = _pack_word(x, m0 + m, w * WORD, k)
        for n in range(b.shape[0]):
            _narrow_acc(at, cnt, b, n, acc)
            al = alpha[n]
            o = out_t[n, m0:m0 + cnt]
            for m in range(cnt):
                o[m] = (k - 2 * np.int64(acc[m])) * al


def xnor_gemm(a_packed: np.ndarray, b_packed: np.ndarray, k: int, alpha: np.ndarray | None = None) -> np.ndarray:
    """(M, W) x (N, W) packed -> float32 (M, N) of +-1 dot products times ``alpha[n]``."""
    n = b_packed.shape[0]
    alpha = np.ones(n, np.float32) if alpha is None else np.ascontiguousarray(alpha, np.float32)
    out = np.empty((a_packed.shape[0], n), np.float32)
    _gemm_wide(np.ascontiguousarray(a_packed), np.ascontiguousarray(b_packed), int(k), alpha, out)
    return out


def xnor_gemm_ref(a_packed: np.ndarray, b_packed: np.ndarray, k: int, alpha: np.ndarray | None = None) -> np.ndarray:
    """Plain numpy reference: ``k - 2 * bitwise_count(a ^ b)`` summed over words."""
    pc = np.bitwise_count(a_packed[:, None, :] ^ b_packed[None, :, :]).sum(-1, dtype=np.int64)
    out = (int(k) - 2 * pc).astype(np.float32)
    return out if alpha is None else out * np.asarray(alpha, np.float32)[None, :]


def xnor_matmul(x: np.ndarray, w_packed: np.ndarray, k: int, alpha: np.ndarray | None = None,
                channels_first: bool = False) -> np.ndarray:
    """sign(x) (M, K float) times packed +-1 weights (N, W) -> float32 (M, N), packing included.

    ``channels_first`` returns (N, M) instead, the natural layout of a conv output.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    m, kk = x.shape
    if kk != k:
        raise ValueError(f"activation width {kk} != weight K {k}")
    n, w_len = w_packed.shape
    if w_len != n_words(k):
        raise ValueError(f"packed weights have {w_len} words per row; K={k} needs {n_words(k)}")
    alpha = np.ones(n, np.float32) if alpha is None else np.ascontiguousarray(alpha, np.float32)
    if w_len <= _NARROW_WORDS:
        out_t = np.empty((n, m), np.float32)
        _pack_gemm_narrow(x, w_packed, int(k), alpha, out_t)
        return out_t if channels_first else out_t.T
    a = np.empty((m, w_len), np.uint64)
    _pack_rows(x, a)
    out = np.empty((m, n), np.float32)
    _gemm_wide(a, w_packed, int(k), alpha, out)
    return out.T if channels_first else out


def xnor_matmul_ref(x: np.ndarray, w_pm1: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """Float reference: sign(x) @ w_pm1.T * alpha (w_pm1 is the +-1 (N, K) matrix)."""
    xs = np.where(np.asarray(x) >= 0, np.float32(1), np.float32(-1))
    out = xs @ np.asarray(w_pm1, np.float32).T
    return out if alpha is None else out * np.asarray(alpha, np.float32)[None, :]


# ----------------------------------------------------------------------------- conv

@njit(cache=True, fastmath=True)
def _pack_channels(x, out):
    """Sign-pack x (B, C, H, W) along channels: out (B, H, W, ceil(C/64)), bit c%64 of word c//64."""
    nb, c_in, h, w_in = x.shape
    out[:] = 0
    for b in range(nb):
        for c in range(c_in):
            wi = c >> 6
            sh = np.uint64(c & 63)
            for y in range(h):
                for xx in range(w_in):
                    out[b, y, xx, wi] |= np.uint64(x[b, c, y, xx] >= 0) << sh


@njit(cache=True, fastmath=True)
def _im2col_fields_t(pix, c_in, kh, kw, stride, pad, oh, ow, out):
    """Patches of channel-packed pixels -> out (words, B*oh*ow), K order (dy, dx, c).

    Tap t's C-bit field lands at bits [t*C, (t+1)*C): C/64 times fewer operations than
    a bit-by-bit im2col. Taps in the zero padding stay 0 bits (read as -1).
    """
    nb, h, w_in, wc = pix.shape
    w_len = out.shape[0]
    for b in range(nb):
        for oy in range(oh):
            for ox in range(ow):
                col = (b * oh + oy) * ow + ox
                for i in range(w_len):
                    out[i, col] = 0
                t = 0
                for dy in range(kh):
                    y = oy * stride - pad + dy
                    for dx in range(kw):
                        xx = ox * stride - pad + dx
                        if 0 <= y < h and 0 <= xx < w_in:
                            for i in range(wc):
                                v = pix[b, y, xx, i]
                                nbits = min(WORD, c_in - WORD * i)
                                g = t * c_in + WORD * i
                                wi = g >> 6
                                sh = g & 63
                                out[wi, col] |= v << np.uint64(sh)
                                if sh + nbits > WORD:
                                    out[wi + 1, col] |= v >> np.uint64(WORD - sh)
                        t += 1


def im2col_sign_pack(x: np.ndarray, kernel: tuple[int, int], stride: int = 1, padding: int = 0) -> np.ndarray:
    """Packed sign patches of x (B, C, H, W): uint64 (words, B*OH*OW) in (dy, dx, c) order.

    Pack weights to match with ``pack_conv_weight``.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    b, c, h, w = x.shape
    kh, kw = kernel
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"input {h}x{w} too small for kernel {kh}x{kw} with padding {padding}")
    pix = np.empty((b, h, w, n_words(c)), np.uint64)
    _pack_channels(x, pix)
    cols = np.empty((n_words(c * kh * kw), b * oh * ow), np.uint64)
    _im2col_fields_t(pix, c, kh, kw, int(stride), int(padding), oh, ow, cols)
    return cols


def pack_conv_weight(weight: np.ndarray) -> np.ndarray:
    """Offline packing of conv kernels (N, C, kh, kw), floats or bool signs, in (dy, dx, c) order."""
    w = np.asarray(weight)
    bits = w if w.dtype == bool else w >= 0
    return pack_bits(bits.transpose(0, 2, 3, 1).reshape(w.shape[0], -1))


def xnor_conv2d(x: np.ndarray, w_packed: np.ndarray, kernel: tuple[int, int], alpha: np.ndarray | None = None,
                stride: int = 1, padding: int = 0) -> np.ndarray:
    """Binary conv of sign(x) (B, C, H, W) with packed +-1 kernels (N, W) -> float32 (B, N, OH, OW).

    Weights are packed with ``pack_conv_weight``; zero padding of the input is read as -1 (the convention the XNOR training layer uses, so results match exactly).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    b, c, h, w = x.shape
    kh, kw = kernel
    k = c * kh * kw
    n, w_len = w_packed.shape
    if w_len != n_words(k):
        raise ValueError(f"packed weights have {w_len} words per row; C*kh*kw={k} needs {n_words(k)}")
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    alpha = np.ones(n, np.float32) if alpha is None else np.ascontiguousarray(alpha, np.float32)
    cols = im2col_sign_pack(x, kernel, stride, padding)
    out_t = np.empty((n, cols.shape[1]), np.float32)
    _gemm_narrow_t(cols, np.ascontiguousarray(w_packed), k, alpha, out_t)
    return out_t.reshape(n, b, oh, ow).transpose(1, 0, 2, 3)


def xnor_conv2d_ref(x: np.ndarray, w_pm1: np.ndarray, alpha: np.ndarray | None = None,
                    stride: int = 1, padding: int = 0) -> np.ndarray:
    """Float reference via torch: conv of sign(x) padded with -1 and the +-1 kernels."""
    import torch
    import torch.nn.functional as F

    xs = torch.where(torch.as_tensor(x) >= 0, 1.0, -1.0)
    if padding:
        xs = F.pad(xs, (padding,) * 4, value=-1.0)
    out = F.conv2d(xs, torch.as_tensor(w_pm1, dtype=torch.float32), stride=stride).numpy()
    return out if alpha is None else out * np.asarray(alpha, np.float32)[None, :, None, None]
