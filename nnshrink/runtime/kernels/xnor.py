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

Speed (single thread): sign-and-pack is one <64 x float> compare per word (mask register
-> uint64); the long-K GEMM computes 4x4 output blocks per pass over K (each loaded word
feeds 4 popcounts), the short-K GEMM 4 outputs per activation column with K unrolled
(one kernel per word count); kernels ask LLVM for 512-bit vectors (its default tuning on
recent Xeons stops at 256-bit), and for M < 4 the weight rows are read one at a time and
prefetched, since the GEMV is a pure stream of the packed weights from memory.
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


@intrinsic
def _sign_word64(typingctx, arr, m, base):
    """Bits j = (arr[m, base + j] >= 0) for j < 64 as one uint64: a <64 x float> load, an
    ordered ``>=`` compare and a bitcast of the <64 x i1> mask (vcmpps into mask registers).
    ``arr`` must be a C-contiguous 2-D float32 array with base + 64 <= arr.shape[1]."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.dtype == types.float32
            and arr.layout == "C"):
        return None

    def codegen(context, builder, sig, args):
        aty = sig.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [args[1], args[2]], wraparound=False)
        vty = ir.VectorType(ir.FloatType(), WORD)
        v = builder.load(builder.bitcast(ptr, vty.as_pointer()), align=4)
        mask = builder.fcmp_ordered(">=", v, ir.Constant(vty, None))
        return builder.bitcast(mask, ir.IntType(64))

    return types.uint64(arr, types.intp, types.intp), codegen


@intrinsic
def _prefer_zmm(typingctx):
    """Mark the calling jitted function ``"prefer-vector-width"="512"``: LLVM's default tuning
    for recent Xeons vectorises with 256-bit ymm only; zmm doubles vpopcntq throughput here.
    (Harmless where the CPU lacks AVX-512: the attribute only caps the preferred width.)"""
    def codegen(context, builder, sig, args):
        attrs = builder.function.attributes
        set.add(attrs, '"prefer-vector-width"="512"')  # string attributes: not in llvmlite's list
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _prefetch(typingctx, arr, i, j):
    """Software prefetch of &arr[i, j] into all cache levels (never faults, even past the end)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2):
        return None

    def codegen(context, builder, sig, args):
        aty = sig.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [args[1], args[2]], wraparound=False)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(arr, types.intp, types.intp), codegen


def n_words(k: int) -> int:
    return (int(k) + WORD - 1) // WORD


# ----------------------------------------------------------------------------- packing

@njit(cache=True, fastmath=True, inline="always")
def _pack_word(x, m, base, k):
    """Word of signs of x[m, base:base+64] (bits past k are 0)."""
    end = min(WORD, k - base)
    if end == WORD:
        return _sign_word64(x, m, base)
    v = np.uint64(0)
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


def pack_sign_words(bits: np.ndarray) -> np.ndarray:
    """Offline packing of a bool (N, K) sign matrix (True = +1) -> uint64 (N, W), zero-padded."""
    bits = np.asarray(bits, bool)
    n, k = bits.shape
    full = np.zeros((n, n_words(k) * WORD), np.uint8)
    full[:, :k] = bits
    return np.packbits(full, axis=1, bitorder="little").view("<u8").astype(np.uint64)


def pack_rows_ref(x: np.ndarray) -> np.ndarray:
    """Plain numpy reference of ``pack_rows`` (packbits, zero padding, little-endian words)."""
    return pack_sign_words(np.asarray(x) >= 0)


def unpack_rows_ref(packed: np.ndarray, k: int) -> np.ndarray:
    """uint64 (M, W) -> float32 +-1 (M, k)."""
    bits = np.unpackbits(packed.astype("<u8").view(np.uint8), axis=1, bitorder="little")[:, :k]
    return np.where(bits.astype(bool), np.float32(1), np.float32(-1))


# ----------------------------------------------------------------------------- GEMM

_FAST = dict(fastmath=True, boundscheck=False, error_model="numpy")


@njit(cache=True, **_FAST)
def _gemm_wide(a, b, k, alpha, out):
    """out[m, n] = (k - 2 popc(a[m] ^ b[n])) * alpha[n].

    Register blocking: 4 rows of A x 4 rows of B per pass over K (16 independent
    popcount sums, each loaded word used 4 times; the K loop vectorises to vpopcntq);
    tiles of B stay in L2 while all rows of A stream past them.
    """
    _prefer_zmm()
    m_rows, w_len = a.shape
    n_rows = b.shape[0]
    nb = max(4, (262144 // (w_len * 8)) // 4 * 4)
    for n0 in range(0, n_rows, nb):
        n1 = min(n_rows, n0 + nb)
        m = 0
        while m + 3 < m_rows:
            a0, a1, a2, a3 = a[m], a[m + 1], a[m + 2], a[m + 3]
            o0, o1, o2, o3 = out[m], out[m + 1], out[m + 2], out[m + 3]
            n = n0
            while n + 3 < n1:
                b0, b1, b2, b3 = b[n], b[n + 1], b[n + 2], b[n + 3]
                s00 = s01 = s02 = s03 = np.uint64(0)
                s10 = s11 = s12 = s13 = np.uint64(0)
                s20 = s21 = s22 = s23 = np.uint64(0)
                s30 = s31 = s32 = s33 = np.uint64(0)
                for w in range(w_len):
                    x0, x1, x2, x3 = a0[w], a1[w], a2[w], a3[w]
                    y0, y1, y2, y3 = b0[w], b1[w], b2[w], b3[w]
                    s00 += popcount64(x0 ^ y0)
                    s01 += popcount64(x0 ^ y1)
                    s02 += popcount64(x0 ^ y2)
                    s03 += popcount64(x0 ^ y3)
                    s10 += popcount64(x1 ^ y0)
                    s11 += popcount64(x1 ^ y1)
                    s12 += popcount64(x1 ^ y2)
                    s13 += popcount64(x1 ^ y3)
                    s20 += popcount64(x2 ^ y0)
                    s21 += popcount64(x2 ^ y1)
                    s22 += popcount64(x2 ^ y2)
                    s23 += popcount64(x2 ^ y3)
                    s30 += popcount64(x3 ^ y0)
                    s31 += popcount64(x3 ^ y1)
                    s32 += popcount64(x3 ^ y2)
                    s33 += popcount64(x3 ^ y3)
                l0, l1, l2, l3 = alpha[n], alpha[n + 1], alpha[n + 2], alpha[n + 3]
                o0[n] = (k - 2 * np.int64(s00)) * l0
                o0[n + 1] = (k - 2 * np.int64(s01)) * l1
                o0[n + 2] = (k - 2 * np.int64(s02)) * l2
                o0[n + 3] = (k - 2 * np.int64(s03)) * l3
                o1[n] = (k - 2 * np.int64(s10)) * l0
                o1[n + 1] = (k - 2 * np.int64(s11)) * l1
                o1[n + 2] = (k - 2 * np.int64(s12)) * l2
                o1[n + 3] = (k - 2 * np.int64(s13)) * l3
                o2[n] = (k - 2 * np.int64(s20)) * l0
                o2[n + 1] = (k - 2 * np.int64(s21)) * l1
                o2[n + 2] = (k - 2 * np.int64(s22)) * l2
                o2[n + 3] = (k - 2 * np.int64(s23)) * l3
                o3[n] = (k - 2 * np.int64(s30)) * l0
                o3[n + 1] = (k - 2 * np.int64(s31)) * l1
                o3[n + 2] = (k - 2 * np.int64(s32)) * l2
                o3[n + 3] = (k - 2 * np.int64(s33)) * l3
                n += 4
            while n < n1:
                bn = b[n]
                s0 = s1 = s2 = s3 = np.uint64(0)
                for w in range(w_len):
                    y = bn[w]
                    s0 += popcount64(a0[w] ^ y)
                    s1 += popcount64(a1[w] ^ y)
                    s2 += popcount64(a2[w] ^ y)
                    s3 += popcount64(a3[w] ^ y)
                al = alpha[n]
                o0[n] = (k - 2 * np.int64(s0)) * al
                o1[n] = (k - 2 * np.int64(s1)) * al
                o2[n] = (k - 2 * np.int64(s2)) * al
                o3[n] = (k - 2 * np.int64(s3)) * al
                n += 1
            m += 4
        while m < m_rows:  # 1-3 leftover rows (and M = 1)
            a0 = a[m]
            o0 = out[m]
            if m_rows < 4:
                # a GEMV streams B from DRAM: one row of B at a time (one stream), each
                # prefetched 8 rows ahead (2-17% faster than 4 rows per pass in same-run A/B)
                for n in range(n0, n1):
                    for w in range(0, w_len, 8):
                        _prefetch(b, n + 8, w)
                    bn = b[n]
                    s0 = np.uint64(0)
                    for w in range(w_len):
                        s0 += popcount64(a0[w] ^ bn[w])
                    o0[n] = (k - 2 * np.int64(s0)) * alpha[n]
                m += 1
                continue
            n = n0  # 4 rows of B per pass
            while n + 3 < n1:
                b0, b1, b2, b3 = b[n], b[n + 1], b[n + 2], b[n + 3]
                s0 = s1 = s2 = s3 = np.uint64(0)
                for w in range(w_len):
                    x = a0[w]
                    s0 += popcount64(x ^ b0[w])
                    s1 += popcount64(x ^ b1[w])
                    s2 += popcount64(x ^ b2[w])
                    s3 += popcount64(x ^ b3[w])
                o0[n] = (k - 2 * np.int64(s0)) * alpha[n]
                o0[n + 1] = (k - 2 * np.int64(s1)) * alpha[n + 1]
                o0[n + 2] = (k - 2 * np.int64(s2)) * alpha[n + 2]
                o0[n + 3] = (k - 2 * np.int64(s3)) * alpha[n + 3]
                n += 4
            while n < n1:
                bn = b[n]
                s0 = np.uint64(0)
                for w in range(w_len):
                    s0 += popcount64(a0[w] ^ bn[w])
                o0[n] = (k - 2 * np.int64(s0)) * alpha[n]
                n += 1
            m += 1


@njit(cache=True, **_FAST)
def _pack_gemm_wide(x, b, k, alpha, out):
    """Sign-and-pack x then the wide GEMM, in one call (no Python round trip between them)."""
    a = np.empty((x.shape[0], b.shape[1]), np.uint64)
    _pack_rows(x, a)
    _gemm_wide(a, b, k, alpha, out)


_NARROW_MB = 512  # columns per block: (words x 512) uint64 stays in L1/L2


_narrow_kernels: dict = {}


def _narrow_kernel(w_len: int):
    """Short-K GEMM specialised on the word count (a compile-time constant, so the K loop
    unrolls fully and the M loop vectorises with all partial sums in registers)."""
    fn = _narrow_kernels.get(w_len)
    if fn is not None:
        return fn
    n_w = int(w_len)

    @njit(cache=True, **_FAST)
    def gemm_t(at, cols, b, k, alpha, out_t, c0):
        """out_t[n, c0 + m] = (k - 2 popc(at[:, m] ^ b[n])) * alpha[n] for columns m < cols of at.

        4 rows of B per pass over the columns: each loaded activation word serves 4 outputs.
        """
        _prefer_zmm()
        n_rows = b.shape[0]
        # sums go to 4 separate scratch rows (contiguous vector stores), converted after the
        # pass; interleaved sums (acc[4 m + j]) cost shuffles on the popcount port, and
        # direct stores to 4 output rows keep the loop scalar (possible aliasing)
        a0, a1, a2, a3 = (np.empty(cols, np.int64), np.empty(cols, np.int64), np.empty(cols, np.int64),
                          np.empty(cols, np.int64))
        n = 0
        while n + 3 < n_rows:
            b0, b1, b2, b3 = b[n], b[n + 1], b[n + 2], b[n + 3]
            for m in range(cols):  # from 0: indices provably >= 0, contiguous vector loads
                s0 = s1 = s2 = s3 = np.uint64(0)
                for w in range(n_w):
                    x = at[w, m]
                    s0 += popcount64(x ^ b0[w])
                    s1 += popcount64(x ^ b1[w])
                    s2 += popcount64(x ^ b2[w])
                    s3 += popcount64(x ^ b3[w])
                a0[m] = np.int64(s0)
                a1[m] = np.int64(s1)
                a2[m] = np.int64(s2)
                a3[m] = np.int64(s3)
            for j, acc in enumerate((a0, a1, a2, a3)):
                al = alpha[n + j]
                o = out_t[n + j, c0:c0 + cols]
                for m in range(cols):
                    o[m] = (k - 2 * acc[m]) * al
            n += 4
        while n < n_rows:
            bn = b[n]
            al = alpha[n]
            o = out_t[n, c0:c0 + cols]
            for m in range(cols):
                s = np.uint64(0)
                for w in range(n_w):
                    s += popcount64(at[w, m] ^ bn[w])
                o[m] = (k - 2 * np.int64(s)) * al
            n += 1

    @njit(cache=True, **_FAST)
    def pack_gemm(x, b, k, alpha, out_t):
        """Fused sign-and-pack + GEMM over blocks of rows of x that stay in cache."""
        _prefer_zmm()
        m_rows = x.shape[0]
        at = np.empty((n_w, _NARROW_MB), np.uint64)
        for m0 in range(0, m_rows, _NARROW_MB):
            cnt = min(_NARROW_MB, m_rows - m0)
            for m in range(cnt):
                for w in range(n_w):
                    at[w, m] = _pack_word(x, m0 + m, w * WORD, k)
            gemm_t(at, cnt, b, k, alpha, out_t, m0)

    @njit(cache=True, **_FAST)
    def conv_gemm(x, kh, kw, stride, pad, oh, ow, b, k, alpha, out_t):
        """Binary conv of sign(x) (B, C, H, W), C a multiple of 64, in one call: sign-pack
        each pixel's channels into C/64 words inside a zero border (0 bits read as -1, the
        padding convention), then per block of output rows copy each tap's words (taps
        are whole words: no bit shifting) into a cache-sized buffer that the GEMM reads
        straight away."""
        _prefer_zmm()
        nb, c_in, h, w_in = x.shape
        wc = c_in // WORD
        # word planes (B, C/64, H + 2 pad, W + 2 pad), flat: plane rows are contiguous, so
        # packing and the tap copies vectorise; unsigned flat indices spare numba's
        # negative-index checks
        hp, wp = h + 2 * pad, w_in + 2 * pad
        pf = np.zeros(nb * wc * hp * wp, np.uint64)
        for bi in range(nb):
            for ch in range(c_in):
                plane = (bi * wc + (ch >> 6)) * hp
                sh = np.uint64(ch & 63)
                for y in range(h):
                    d0 = (plane + y + pad) * wp + pad
                    src = x[bi, ch, y]
                    for xx in range(w_in):
                        pf[np.uint64(d0 + xx)] |= np.uint64(src[xx] >= 0) << sh
        rows = max(1, _NARROW_MB // ow)
        at = np.empty((n_w, rows * ow), np.uint64)
        af = at.reshape(-1)
        cols_all = rows * ow
        for bi in range(nb):
            for oy0 in range(0, oh, rows):
                nr = min(rows, oh - oy0)
                for r in range(nr):
                    y = (oy0 + r) * stride
                    t = 0
                    for dy in range(kh):
                        for dx in range(kw):
                            for i in range(wc):
                                d0 = (t + i) * cols_all + r * ow
                                s0 = ((bi * wc + i) * hp + y + dy) * wp + dx
                                for ox in range(ow):
                                    af[np.uint64(d0 + ox)] = pf[np.uint64(s0 + ox * stride)]
                            t += wc
                gemm_t(at, nr * ow, b, k, alpha, out_t, (bi * oh + oy0) * ow)

    fn = _narrow_kernels[w_len] = (gemm_t, pack_gemm, conv_gemm)
    return fn


def _gemm_narrow_t(at, b, k, alpha, out_t):
    """Short K: out_t[n, m] from transposed activations at (W, M), vectorised over m."""
    _narrow_kernel(at.shape[0])[0](at, at.shape[1], b, k, alpha, out_t, 0)


def _pack_gemm_narrow(x, b, k, alpha, out_t):
    _narrow_kernel(b.shape[1])[1](x, b, k, alpha, out_t)


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
        _pack_gemm_narrow(x, np.ascontiguousarray(w_packed), int(k), alpha, out_t)
        return out_t if channels_first else out_t.T
    out = np.empty((m, n), np.float32)
    _pack_gemm_wide(x, np.ascontiguousarray(w_packed), int(k), alpha, out)
    return out.T if channels_first else out


def xnor_matmul_ref(x: np.ndarray, w_pm1: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """Float reference: sign(x) @ w_pm1.T * alpha (w_pm1 is the +-1 (N, K) matrix)."""
    xs = np.where(np.asarray(x) >= 0, np.float32(1), np.float32(-1))
    out = xs @ np.asarray(w_pm1, np.float32).T
    return out if alpha is None else out * np.asarray(alpha, np.float32)[None, :]


# ----------------------------------------------------------------------------- conv

@njit(cache=True, fastmath=True)
def _pack_channels(x, out):
    """Sign-pack x (B, C, H, W) along channels: out (B, H, W, ceil(C/64)), bit c%64 of word c//64.
    (Plain loop indices only: an offset index costs numba's negative-index check and the
    vectorisation, 8x slower.)"""
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
    return pack_sign_words(bits.transpose(0, 2, 3, 1).reshape(w.shape[0], -1))


def xnor_conv2d(x: np.ndarray, w_packed: np.ndarray, kernel: tuple[int, int], alpha: np.ndarray | None = None,
                stride: int = 1, padding: int = 0) -> np.ndarray:
    """Binary conv of sign(x) (B, C, H, W) with packed +-1 kernels (N, W) -> float32 (B, N, OH, OW).

    Weights are packed with ``pack_conv_weight``; zero padding of the input is read as -1
    (the convention the XNOR training layer uses, so results match exactly). With C a
    multiple of 64 the float map is signed and packed once per pixel (C/64 words) and the
    patches are gathered as words; other C go through the bit-field im2col.
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
    if oh < 1 or ow < 1:
        raise ValueError(f"input {h}x{w} too small for kernel {kh}x{kw} with padding {padding}")
    alpha = np.ones(n, np.float32) if alpha is None else np.ascontiguousarray(alpha, np.float32)
    w_packed = np.ascontiguousarray(w_packed)
    out_t = np.empty((n, b * oh * ow), np.float32)
    if c % WORD == 0:  # whole words per tap: pack the map once, im2col by word copies
        _narrow_kernel(w_len)[2](x, kh, kw, int(stride), int(padding), oh, ow, w_packed, k, alpha, out_t)
    else:
        cols = im2col_sign_pack(x, kernel, stride, padding)
        _gemm_narrow_t(cols, w_packed, k, alpha, out_t)
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
