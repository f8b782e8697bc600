"""Context-adaptive binary range coding of sparse masks and index streams (SPEC: `adaptive`).

Why: gap Huffman codes each kept weight's distance on its own (~5 bits per kept weight at
5-10% density) and pays a code table per stream. Coding the mask bits themselves, with an
adaptive probability per small context (kept so far in the position's column and row,
the bit to the left, the bit above; the tensor seen as axis 0 x the rest), follows what
pruning leaves (dead input columns, dead neurons, denser rows) with no table at all.
Indices go through the same coder as a binary tree of b adaptive bits (no table, no
whole-bit rounding).

Why by hand: no well-kept Python library offers a context-adaptive binary coder. The
coder is LZMA's range coder (32-bit range, carry through a cached byte) with 15-bit
probabilities that adapt by 1/2, 1/4, ... 1/64 as a context is seen; integers only, so
encoder and decoder agree bit for bit everywhere. numba kernels; ``*_ref`` are the
plain-Python references they are tested against.
"""

from __future__ import annotations

import numba
import numpy as np

PROB_BITS = 15
PROB_ONE = 1 << PROB_BITS
PROB_INIT = PROB_ONE // 2  # every context starts at p(0) = 1/2
# Adaptation shift after a context was seen n times: floor(log2(n + 2)), at most 6.
RATE = np.array([min(6, int(np.log2(n + 2))) for n in range(63)], np.int64)
TOP = 1 << 24
MASK_CONTEXTS = 64
FLUSH_BYTES = 4  # bytes the encoder adds at the end (the decoder reads 4 to start)

ERR_OVERFLOW = -1  # encoder: output would exceed the caller's cap
ERR_PAST_END = -2  # decoder: the stream ended early
ERR_TRAILING = -3  # decoder: bytes left over after the last symbol


def mask_view(shape) -> tuple[int, int]:
    """(rows, cols) of the 2-D view a mask is coded in: axis 0 by everything else."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0:
        return 1, 1
    rows = shape[0]
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if len(shape) == 1:
        rows, cols = 1, shape[0]
    return rows, cols


# ---------------------------------------------------------------- numba kernels
@numba.njit(cache=True, nogil=True, inline="always")
def _ctx(colcnt, rowcnt, left, up):
    """Mask context: kept so far in this column (0..3), in this row (0..3), left bit, bit above."""
    return colcnt | (rowcnt << 2) | (left << 4) | (up << 5)


@numba.njit(cache=True, nogil=True, inline="always")
def _adapt(probs, counts, ctx, bit):
    """Move the context's probability of a 0 towards ``bit``: by 1/2, 1/4 ... 1/64 as it is
    seen more often (a count-based start, then a window of ~64 bits)."""
    n = counts[ctx]
    shift = RATE[n]
    if n < RATE.shape[0] - 1:
        counts[ctx] = n + 1
    p = probs[ctx]
    if bit:
        probs[ctx] = p - (p >> shift)
    else:
        probs[ctx] = p + ((PROB_ONE - p) >> shift)


@numba.njit(cache=True, nogil=True)
def _shift_low(low, cache, pending, first, out, o, cap):
    """LZMA's ShiftLow: emit the cached byte (+ carry) and pending 0xFF bytes when the top
    byte of ``low`` is settled. Returns (low, cache, pending, first, o); o < 0 on overflow."""
    if low < 0xFF000000 or low >= (1 << 32):
        carry = low >> 32
        temp = cache
        while True:
            if first:
                first = False  # the leading byte is always 0: not stored
            else:
                if o >= cap:
                    return low, cache, pending, first, ERR_OVERFLOW
                out[o] = (temp + carry) & 0xFF
                o += 1
            temp = 0xFF
            pending -= 1
            if pending == 0:
                break
        cache = (low >> 24) & 0xFF
    pending += 1
    low = (low & 0x00FFFFFF) << 8
    return low, cache, pending, first, o


@numba.njit(cache=True, nogil=True)
def _encode_bits(bits, ctxs, nctx, out, cap):
    """Range-code ``bits`` (uint8 0/1), each under context ``ctxs[i]``; bytes written or < 0."""
    probs = np.full(nctx, PROB_INIT, np.int64)
    counts = np.zeros(nctx, np.int64)
    low, rng, cache, pending, first, o = 0, 0xFFFFFFFF, 0, 1, True, 0
    for i in range(bits.shape[0]):
        ctx = np.int64(ctxs[i])
        bound = (rng >> PROB_BITS) * probs[ctx]
        bit = bits[i]
        if bit:
            low += bound
            rng -= bound
        else:
            rng = bound
        _adapt(probs, counts, ctx, bit)
        while rng < TOP:
            rng <<= 8
            low, cache, pending, first, o = _shift_low(low, cache, pending, first, out, o, cap)
            if o < 0:
                return o
    for _ in range(FLUSH_BYTES + 1):
        low, cache, pending, first, o = _shift_low(low, cache, pending, first, out, o, cap)
        if o < 0:
            return o
    return o


@numba.njit(cache=True, nogil=True)
def _mask_contexts(m, cols, out):
    """The context of every mask position (row-major, ``cols`` per row), in one pass."""
    colcnt = np.zeros(cols, np.int64)
    for base in range(0, m.shape[0], cols):
        rowcnt = 0
        left = 0
        for c in range(cols):
            i = base + c
            up = np.int64(m[i - cols]) if base else 0
            out[i] = _ctx(colcnt[c], rowcnt, left, up)
            left = np.int64(m[i])
            if left:
                rowcnt = min(rowcnt + 1, 3)
                colcnt[c] = min(colcnt[c] + 1, 3)


@numba.njit(cache=True, nogil=True)
def _decode_mask(data, cols, out):
    """Fill uint8 ``out`` (numel long) with mask bits; return the number of ones or an error."""
    nd = data.shape[0]
    if nd < FLUSH_BYTES:
        return ERR_PAST_END
    code = 0
    for j in range(FLUSH_BYTES):
        code = (code << 8) | np.int64(data[j])
    pos = FLUSH_BYTES
    probs = np.full(MASK_CONTEXTS, PROB_INIT, np.int64)
    counts = np.zeros(MASK_CONTEXTS, np.int64)
    colcnt = np.zeros(cols, np.int64)
    rng = 0xFFFFFFFF
    ones = 0
    for base in range(0, out.shape[0], cols):
        rowcnt = 0
        left = 0
        for c in range(cols):
            i = base + c
            up = np.int64(out[i - cols]) if base else 0
            ctx = _ctx(colcnt[c], rowcnt, left, up)
            bound = (rng >> PROB_BITS) * probs[ctx]
            if code < bound:
                rng = bound
                left = 0
            else:
                code -= bound
                rng -= bound
                left = 1
                out[i] = 1
                ones += 1
                rowcnt = min(rowcnt + 1, 3)
                colcnt[c] = min(colcnt[c] + 1, 3)
            _adapt(probs, counts, ctx, left)
            while rng < TOP:
                if pos >= nd:
                    return ERR_PAST_END
                rng <<= 8
                code = ((code << 8) | np.int64(data[pos])) & 0xFFFFFFFFFF
                pos += 1
    if pos != nd:
        return ERR_TRAILING
    return ones


@numba.njit(cache=True, nogil=True)
def _tree_bits(symbols, bits, out_bits, out_ctx):
    """A b-bit symbol as b binary decisions, MSB first; each one's context is its tree node."""
    o = 0
    for i in range(symbols.shape[0]):
        s = np.int64(symbols[i])
        node = 1
        for j in range(bits - 1, -1, -1):
            bit = (s >> j) & 1
            out_bits[o] = bit
            out_ctx[o] = node
            node = 2 * node + bit
            o += 1


@numba.njit(cache=True, nogil=True)
def _decode_tree(data, bits, out):
    nd = data.shape[0]
    if nd < FLUSH_BYTES:
        return ERR_PAST_END
    code = 0
    for j in range(FLUSH_BYTES):
        code = (code << 8) | np.int64(data[j])
    pos = FLUSH_BYTES
    probs = np.full(1 << bits, PROB_INIT, np.int64)
    counts = np.zeros(1 << bits, np.int64)
    rng = 0xFFFFFFFF
    for i in range(out.shape[0]):
        node = 1
        for _ in range(bits):
            bound = (rng >> PROB_BITS) * probs[node]
            if code < bound:
                rng = bound
                bit = 0
            else:
                code -= bound
                rng -= bound
                bit = 1
            _adapt(probs, counts, node, bit)
            node = 2 * node + bit
            while rng < TOP:
                if pos >= nd:
                    return ERR_PAST_END
                rng <<= 8
                code = ((code << 8) | np.int64(data[pos])) & 0xFFFFFFFFFF
                pos += 1
        out[i] = node - (1 << bits)
    if pos != nd:
        return ERR_TRAILING
    return 0


# ---------------------------------------------------------------- public API
def _cap(cap: int | None, n_bits: int) -> int:
    # an adaptive bit costs at most log2(2^15 / 63) < 9.1 bits: 2 bytes per bit always suffice
    bound = 2 * n_bits + 16
    return bound if cap is None else max(0, min(int(cap), bound))


def encode_mask(mask: np.ndarray, cap: int | None = None) -> bytes | None:
    """The `adaptive` position stream of a bool mask (any shape), or None if it would take
    more than ``cap`` bytes (the writer passes the best alternative's size)."""
    mask = np.asarray(mask)
    _, cols = mask_view(mask.shape)
    flat = np.ascontiguousarray(mask, np.bool_).reshape(-1).view(np.uint8)
    ctxs = np.empty(flat.size, np.uint8)
    if flat.size:
        _mask_contexts(flat, cols, ctxs)
    limit = _cap(cap, flat.size)
    out = np.empty(limit, np.uint8)
    n = _encode_bits(flat, ctxs, MASK_CONTEXTS, out, limit)
    return None if n < 0 else out[:n].tobytes()


def decode_mask(data, shape) -> tuple[np.ndarray | None, int]:
    """(bool mask of ``shape``, number of kept positions) or (None, ERR_*) for a bad stream.
    The caller bounds numel beforehand (the density cap)."""
    _, cols = mask_view(shape)
    out = np.zeros(int(np.prod(shape)), np.uint8)
    res = _decode_mask(np.frombuffer(data, np.uint8), max(cols, 1), out)
    if res < 0:
        return None, int(res)
    return out.view(np.bool_).reshape(shape), int(res)


def encode_symbols(symbols: np.ndarray, bits: int, cap: int | None = None) -> bytes | None:
    """The `adaptive` stream of b-bit ``symbols`` (a binary tree of adaptive bits), or None over ``cap``."""
    symbols = np.ascontiguousarray(symbols, np.uint8).reshape(-1)
    bits = int(bits)
    flat = np.empty(symbols.size * bits, np.uint8)
    ctxs = np.empty(symbols.size * bits, np.uint8)
    _tree_bits(symbols, bits, flat, ctxs)
    limit = _cap(cap, flat.size)
    out = np.empty(limit, np.uint8)
    n = _encode_bits(flat, ctxs, 1 << bits, out, limit)
    return None if n < 0 else out[:n].tobytes()


def decode_symbols(data, count: int, bits: int) -> np.ndarray | None:
    """``count`` b-bit symbols (uint8) from an `adaptive` stream, or None for a bad stream."""
    out = np.zeros(int(count), np.uint8)
    return out if _decode_tree(np.frombuffer(data, np.uint8), int(bits), out) == 0 else None


# ---------------------------------------------------------------- plain references
class _Model:
    """Adaptive probabilities of ``n`` contexts (same rule as ``_adapt``)."""

    def __init__(self, n: int):
        self.p, self.n = [PROB_INIT] * n, [0] * n

    def update(self, ctx: int, bit: int) -> None:
        shift = min(6, (self.n[ctx] + 2).bit_length() - 1)
        self.n[ctx] += 1
        p = self.p[ctx]
        self.p[ctx] = p - (p >> shift) if bit else p + ((PROB_ONE - p) >> shift)


class _RefEncoder:
    def __init__(self):
        self.low, self.rng, self.cache, self.pending, self.out = 0, 0xFFFFFFFF, 0, 1, bytearray()

    def shift_low(self):
        if self.low < 0xFF000000 or self.low >= 1 << 32:
            carry, temp = self.low >> 32, self.cache
            for _ in range(self.pending):
                self.out.append((temp + carry) & 0xFF)
                temp = 0xFF
            self.pending = 0
            self.cache = (self.low >> 24) & 0xFF
        self.pending += 1
        self.low = (self.low & 0x00FFFFFF) << 8

    def bit(self, model: _Model, ctx: int, bit: int) -> None:
        bound = (self.rng >> PROB_BITS) * model.p[ctx]
        if bit:
            self.low, self.rng = self.low + bound, self.rng - bound
        else:
            self.rng = bound
        model.update(ctx, bit)
        while self.rng < TOP:
            self.rng <<= 8
            self.shift_low()

    def finish(self) -> bytes:
        for _ in range(FLUSH_BYTES + 1):
            self.shift_low()
        return bytes(self.out[1:])  # the leading byte is always 0


class _RefDecoder:
    def __init__(self, data: bytes):
        self.data, self.pos, self.rng = bytes(data), FLUSH_BYTES, 0xFFFFFFFF
        if len(self.data) < FLUSH_BYTES:
            raise ValueError("stream too short")
        self.code = int.from_bytes(self.data[:FLUSH_BYTES], "big")

    def bit(self, model: _Model, ctx: int) -> int:
        bound = (self.rng >> PROB_BITS) * model.p[ctx]
        if self.code < bound:
            self.rng, bit = bound, 0
        else:
            self.code, self.rng, bit = self.code - bound, self.rng - bound, 1
        model.update(ctx, bit)
        while self.rng < TOP:
            if self.pos >= len(self.data):
                raise ValueError("stream ended early")
            self.rng <<= 8
            self.code = ((self.code << 8) | self.data[self.pos]) & 0xFFFFFFFFFF
            self.pos += 1
        return bit

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ValueError("bytes left after the last symbol")


def _mask_ref(m2: np.ndarray, code_bit) -> None:
    """Visit a 2-D mask row-major with each position's context; ``code_bit(r, c, ctx)`` codes it."""
    rows, cols = m2.shape
    colcnt = [0] * cols
    for r in range(rows):
        rowcnt = 0
        for c in range(cols):
            left = int(m2[r, c - 1]) if c else 0
            up = int(m2[r - 1, c]) if r else 0
            code_bit(r, c, colcnt[c] | rowcnt << 2 | left << 4 | up << 5)
            if m2[r, c]:
                rowcnt, colcnt[c] = min(rowcnt + 1, 3), min(colcnt[c] + 1, 3)


def encode_mask_ref(mask: np.ndarray) -> bytes:
    m2 = np.asarray(mask, bool).reshape(mask_view(np.shape(mask)))
    enc, model = _RefEncoder(), _Model(MASK_CONTEXTS)
    _mask_ref(m2, lambda r, c, ctx: enc.bit(model, ctx, int(m2[r, c])))
    return enc.finish()


def decode_mask_ref(data: bytes, shape) -> np.ndarray:
    m2 = np.zeros(mask_view(shape), bool)
    dec, model = _RefDecoder(data), _Model(MASK_CONTEXTS)

    def code_bit(r, c, ctx):
        m2[r, c] = dec.bit(model, ctx)

    _mask_ref(m2, code_bit)
    dec.done()
    return m2.reshape(shape)


def encode_symbols_ref(symbols: np.ndarray, bits: int) -> bytes:
    enc, model = _RefEncoder(), _Model(1 << bits)
    for s in np.asarray(symbols).reshape(-1).tolist():
        node = 1
        for j in range(bits - 1, -1, -1):
            bit = (s >> j) & 1
            enc.bit(model, node, bit)
            node = 2 * node + bit
    return enc.finish()


def decode_symbols_ref(data: bytes, count: int, bits: int) -> np.ndarray:
    dec, model, out = _RefDecoder(data), _Model(1 << bits), []
    for _ in range(count):
        node = 1
        for _ in range(bits):
            node = 2 * node + dec.bit(model, node)
        out.append(node - (1 << bits))
    dec.done()
    return np.array(out, np.uint8)
