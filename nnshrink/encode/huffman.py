"""Canonical Huffman coding of symbol streams (weight indices, sparse gaps).

Why by hand: no well-kept Python library does canonical, length-limited Huffman with
stored code lengths at 100M+ symbols/s. Code lengths come from package-merge (optimal
under the 16-bit limit), codes are canonical so only the lengths are stored, and the
decoder is table-driven: one lookup over the next L bits per symbol.

Pair coding: a prefix code spends a whole number of bits per symbol, which costs up to
a few percent over the entropy when a few symbols are very frequent (two indices at
p = 0.34 each cost 2.3% more in the VGG-size benchmark). Coding consecutive pairs of
symbols of a small alphabet A (A <= 64, A^2 <= 4096 pair symbols) halves that loss.
The numba kernels are tested against the plain references at the bottom of this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .bitpack import write_codes

MAX_CODE_LEN = 16
PRIMARY_BITS = 11  # primary lookup table: 2K entries stay in L1; longer codes are rare
MAX_ALPHABET = 4096  # pair coding of alphabets up to 64 symbols
MAX_PAIR_BASE = 64


class CodecError(ValueError):
    """A stream or code table is malformed (the reader turns this into a FormatError)."""


# ---------------------------------------------------------------- code lengths
def _used_by_count(freqs: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(zero lengths, used symbols by ascending count, ties by symbol), or (final lengths,
    None) when at most one symbol is used (a single symbol gets length 1)."""
    lengths = np.zeros(freqs.size, np.uint8)
    used = np.flatnonzero(freqs > 0)
    if used.size <= 1:
        lengths[used] = 1
        return lengths, None
    if used.size > (1 << max_len):
        raise ValueError(f"{used.size} symbols cannot have codes of at most {max_len} bits")
    return lengths, used[np.argsort(freqs[used], kind="stable")]


def code_lengths(freqs: np.ndarray, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Optimal length-limited code lengths (package-merge) for symbol counts ``freqs``.

    Unused symbols get length 0; a single used symbol gets length 1. Level j's list is the
    sorted leaves merged with pairs of level j-1's items (leaves first on ties); the first
    2n - 2 items of the last level are selected, and every leaf inside a selected item
    gains one bit. Selected items of a level are a prefix of it, so only each level's
    leaf/package flags are kept: O(n * max_len) memory, plain numpy.
    """
    freqs = np.asarray(freqs, np.int64)
    lengths, order = _used_by_count(freqs, max_len)
    if order is None:
        return lengths
    n = order.size
    leaves = freqs[order]
    items, levels = leaves, [np.ones(n, bool)]
    for _ in range(max_len - 1):
        half = items.size // 2
        packages = items[0:2 * half:2] + items[1:2 * half:2]
        weights = np.concatenate([leaves, packages])
        is_leaf = np.concatenate([np.ones(n, bool), np.zeros(half, bool)])
        merge = np.lexsort((~is_leaf, weights))  # by weight, leaves first; stable otherwise
        items, flags = weights[merge], is_leaf[merge]
        levels.append(flags)
    depth = np.zeros(n, np.int64)
    take = 2 * n - 2
    for flags in reversed(levels):
        leaf_count = int(np.count_nonzero(flags[:take]))
        depth[:leaf_count] += 1  # the lightest leaf_count leaves are in this level's selection
        take = 2 * (take - leaf_count)
    lengths[order] = depth
    return lengths


def check_lengths(lengths: np.ndarray) -> str | None:
    """None if ``lengths`` is a usable code table (complete and prefix-free), else why not."""
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        return "empty code-length table"
    if int(lengths.max()) > MAX_CODE_LEN:
        return f"code length {int(lengths.max())} > {MAX_CODE_LEN}"
    nz = lengths[lengths > 0].astype(np.int64)
    if nz.size == 0:
        return "no symbol has a code"
    if nz.size == 1:
        return None if int(nz[0]) == 1 else f"a single symbol must have length 1, got {int(nz[0])}"
    kraft = int(np.sum(np.int64(1) << (MAX_CODE_LEN - nz)))
    if kraft != 1 << MAX_CODE_LEN:
        kind = "over-subscribed (not prefix-free)" if kraft > 1 << MAX_CODE_LEN else "incomplete"
        return f"code lengths are {kind}: Kraft sum {kraft / (1 << MAX_CODE_LEN):.6f} != 1"
    return None


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes: by (length, symbol), consecutive integers, shifted as lengths grow."""
    lengths = np.asarray(lengths, np.int64)
    codes = np.zeros(lengths.size, np.uint32)
    code, prev_len = 0, 0
    for sym in sorted(np.flatnonzero(lengths).tolist(), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[sym]) - prev_len
        prev_len = int(lengths[sym])
        codes[sym] = code
        code += 1
    return codes


@dataclass(frozen=True)
class HuffmanCode:
    """Code lengths and canonical codes over an alphabet of up to 4096 symbols (tables are
    padded to at least 256 entries so any uint8 symbol indexes them safely)."""

    lengths: np.ndarray  # uint8[max(256, alphabet)]
    codes: np.ndarray  # uint32[same]

    @classmethod
    def from_lengths(cls, lengths: np.ndarray) -> "HuffmanCode":
        problem = check_lengths(lengths)
        if problem:
            raise CodecError(problem)
        if len(lengths) > MAX_ALPHABET:
            raise CodecError(f"{len(lengths)} code lengths; at most {MAX_ALPHABET} symbols")
        full = np.zeros(max(256, len(lengths)), np.uint8)
        full[: len(lengths)] = lengths
        return cls(full, canonical_codes(full))

    @classmethod
    def from_symbols(cls, symbols: np.ndarray, alphabet: int = 256) -> "HuffmanCode":
        return cls.from_lengths(code_lengths(histogram(symbols, alphabet)))

    def table_size(self) -> int:
        """Bytes the stored length table needs: up to the last symbol with a code."""
        nz = np.flatnonzero(self.lengths)
        return int(nz[-1]) + 1 if nz.size else 0

    def encoded_bits(self, hist: np.ndarray) -> int:
        hist = np.asarray(hist)
        return int(np.dot(hist.astype(np.int64), self.lengths[: hist.size].astype(np.int64)))

    def decode_table(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """Primary table over the next P = min(L, PRIMARY_BITS) bits (entry = length << 16 | symbol,
        0 = longer code or none) plus canonical tables for the rare longer codes:
        per length l, first_code[l], the index of its first symbol in ``by_len`` and count[l]."""
        L = int(self.lengths.max())
        P = min(L, PRIMARY_BITS)
        table = np.zeros(1 << P, np.uint32)
        canon = np.zeros((3, MAX_CODE_LEN + 1), np.int64)  # first_code, start index, count
        syms = np.flatnonzero(self.lengths)
        by_len = syms[np.lexsort((syms, self.lengths[syms]))].astype(np.uint16)
        for i, s in enumerate(by_len.tolist()):
            l = int(self.lengths[s])
            if canon[2, l] == 0:
                canon[0, l], canon[1, l] = int(self.codes[s]), i
            canon[2, l] += 1
            if l <= P:
                lo = int(self.codes[s]) << (P - l)
                table[lo: lo + (1 << (P - l))] = (l << 16) | s
        return P, table, canon, by_len


# ---------------------------------------------------------------- kernels
@numba.njit(cache=True, nogil=True)
def _histogram(symbols, out):
    for i in range(symbols.shape[0]):
        out[symbols[i]] += 1


def histogram(symbols: np.ndarray, alphabet: int = 256) -> np.ndarray:
    """Counts of each symbol < alphabet (uint8 symbols, or uint16 pair symbols)."""
    symbols = np.asarray(symbols).reshape(-1)
    if symbols.dtype != np.uint16:
        symbols = np.ascontiguousarray(symbols, np.uint8)
    out = np.zeros(256 if symbols.dtype == np.uint8 else 65536, np.int64)  # any symbol value fits
    _histogram(np.ascontiguousarray(symbols), out)
    if alphabet < out.size and out[alphabet:].any():
        raise ValueError(f"symbol >= alphabet size {alphabet}")
    return out[:alphabet]


@numba.njit(cache=True, nogil=True)
def _pair_kernel(symbols, base, out):
    for j in range(out.shape[0]):
        second = symbols[2 * j + 1] if 2 * j + 1 < symbols.shape[0] else 0
        out[j] = np.uint16(symbols[2 * j]) * base + second


def pair_symbols(symbols: np.ndarray, base: int) -> np.ndarray:
    """uint8 symbols < base -> uint16 pair symbols s[2j] * base + s[2j+1] (a last odd symbol
    is paired with 0)."""
    symbols = np.ascontiguousarray(symbols, np.uint8).reshape(-1)
    if not 1 <= base <= MAX_PAIR_BASE:
        raise ValueError(f"pair coding needs an alphabet of 1..{MAX_PAIR_BASE} symbols; got {base}")
    out = np.empty((symbols.size + 1) // 2, np.uint16)
    _pair_kernel(symbols, np.uint16(base), out)
    return out


@numba.njit(cache=True, nogil=True)
def _decode_kernel(data, ncodes, P, table, canon, by_len, pair_base, out):
    """Decode ``ncodes`` codes into ``out`` (two symbols per code when pair_base > 0).
    Returns bits consumed, or -(i + 1) for a bad code at code i."""
    nbytes = data.shape[0]
    acc = 0
    nacc = 0
    p = 0
    pmask = (1 << P) - 1
    for i in range(ncodes):
        if nacc < 16:
            if p + 4 <= nbytes:  # refill 32 bits at once (acc keeps < 48 valid bits)
                acc = (acc << 32) | (np.int64(data[p]) << 24) | (np.int64(data[p + 1]) << 16) \
                    | (np.int64(data[p + 2]) << 8) | np.int64(data[p + 3])
                p += 4
                nacc += 32
            else:
                while nacc <= 40 and p < nbytes:
                    acc = (acc << 8) | data[p]
                    p += 1
                    nacc += 8
            acc &= (1 << nacc) - 1
        if nacc >= P:
            peek = (acc >> (nacc - P)) & pmask
        else:
            peek = (acc << (P - nacc)) & pmask
        e = table[peek]
        l = e >> 16
        sym = e & 0xFFFF
        if l != 0:
            if l > nacc:
                return -(i + 1)
            nacc -= l
        else:  # a code longer than P bits: canonical decoding, length by length
            found = False
            for l in range(P + 1, 17):
                if l > nacc:
                    break
                if canon[2, l] == 0:
                    continue
                code = (acc >> (nacc - l)) & ((1 << l) - 1)
                d = code - canon[0, l]
                if d >= 0 and d < canon[2, l]:
                    sym = by_len[canon[1, l] + d]
                    nacc -= l
                    found = True
                    break
            if not found:
                return -(i + 1)
        if pair_base:
            out[2 * i] = sym // pair_base
            out[2 * i + 1] = sym % pair_base
        else:
            out[i] = sym
    return p * 8 - nacc


def huffman_encode(symbols: np.ndarray, code: HuffmanCode, hist: np.ndarray | None = None) -> bytes:
    """Encode uint8 (or uint16 pair) ``symbols``; every symbol must have a code."""
    symbols = np.asarray(symbols).reshape(-1)
    if symbols.dtype != np.uint16:
        symbols = np.ascontiguousarray(symbols, np.uint8)
    if hist is None:
        hist = histogram(symbols, code.lengths.size)
    if hist.size > code.lengths.size or np.any((hist > 0) & (code.lengths[: hist.size] == 0)):
        raise ValueError("a symbol in the stream has no code")
    nbits = code.encoded_bits(hist)
    out = np.empty((nbits + 7) // 8 + 8, np.uint8)
    n = write_codes(np.ascontiguousarray(symbols), code.codes.astype(np.int64), code.lengths, out)
    if n != (nbits + 7) // 8:
        raise RuntimeError(f"Huffman encoder wrote {n} bytes, expected {(nbits + 7) // 8}")  # a bug
    return out[:n].tobytes()


def huffman_decode(data, count: int, code: HuffmanCode, pair_base: int = 0) -> np.ndarray:
    """Exactly ``count`` uint8 symbols; the stream must end in its last byte with zero padding.

    With ``pair_base`` A > 0 each code is a pair symbol a * A + b (count odd: the last
    pair's b must be 0), and every pair symbol must be < A^2.
    """
    buf = np.frombuffer(data, np.uint8)
    ncodes = (count + 1) // 2 if pair_base else count
    if count < 1 or ncodes > 8 * buf.size:
        raise CodecError(f"{count} symbols cannot come from {buf.size} bytes")
    if pair_base:
        if not 1 <= pair_base <= MAX_PAIR_BASE:
            raise CodecError(f"pair coding needs an alphabet of 1..{MAX_PAIR_BASE} symbols; got {pair_base}")
        if code.table_size() > pair_base * pair_base:
            raise CodecError(f"pair code table has {code.table_size()} symbols; at most {pair_base ** 2}")
    elif code.table_size() > 256:
        raise CodecError(f"code table has {code.table_size()} symbols; at most 256")
    P, table, canon, by_len = code.decode_table()
    out = np.empty(2 * ncodes if pair_base else count, np.uint8)
    used = _decode_kernel(buf, ncodes, P, table, canon, by_len, pair_base, out)
    if used < 0:
        raise CodecError(f"invalid Huffman code at code {-used - 1}")
    if (used + 7) // 8 != buf.size:
        raise CodecError(f"stream has {buf.size} bytes but its {ncodes} codes use {used} bits")
    if used % 8 and buf[-1] & ((1 << (8 - used % 8)) - 1):
        raise CodecError("non-zero padding bits after the last code")
    if out.size > count:
        if out[count]:
            raise CodecError("the last pair of an odd count must end with symbol 0")
        out = out[:count]
    return out


# ---------------------------------------------------------------- references
def code_lengths_ref(freqs: np.ndarray, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Plain package-merge that carries a count vector per item (O(n^2 L): small n only)."""
    freqs = np.asarray(freqs, np.int64)
    lengths, order = _used_by_count(freqs, max_len)
    if order is None:
        return lengths
    n = order.size
    w = freqs[order]
    eye = np.eye(n, dtype=np.int32)
    leaves = [(int(w[i]), eye[i]) for i in range(n)]
    items = leaves
    for _ in range(max_len - 1):
        packages = [(items[i][0] + items[i + 1][0], items[i][1] + items[i + 1][1])
                    for i in range(0, len(items) - 1, 2)]
        merged, a, b = [], 0, 0  # merge two sorted lists, leaves first on ties
        while a < n or b < len(packages):
            if b >= len(packages) or (a < n and leaves[a][0] <= packages[b][0]):
                merged.append(leaves[a]); a += 1
            else:
                merged.append(packages[b]); b += 1
        items = merged
    total = np.sum([v for _, v in items[: 2 * n - 2]], axis=0)
    lengths[order] = total.astype(np.uint8)
    return lengths


def huffman_encode_ref(symbols: np.ndarray, code: HuffmanCode) -> bytes:
    bits = "".join(format(int(code.codes[s]), f"0{int(code.lengths[s])}b") for s in np.asarray(symbols).tolist())
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i: i + 8], 2) for i in range(0, len(bits), 8))


def huffman_decode_ref(data: bytes, count: int, code: HuffmanCode) -> np.ndarray:
    table = {format(int(code.codes[s]), f"0{int(code.lengths[s])}b"): s for s in np.flatnonzero(code.lengths)}
    bits = "".join(format(b, "08b") for b in data)
    out, cur = [], ""
    for bit in bits:
        if len(out) == count:
            break
        cur += bit
        if cur in table:
            out.append(table[cur])
            cur = ""
    return np.array(out, np.uint8)


def entropy_bits(hist: np.ndarray) -> float:
    """Empirical entropy of a histogram, in total bits (the Huffman lower bound)."""
    h = np.asarray(hist, np.float64)
    h = h[h > 0]
    n = h.sum()
    return float(-(h * np.log2(h / n)).sum()) if n else 0.0
