"""Canonical Huffman coding of uint8 symbol streams (weight indices, sparse gaps).

Why by hand: no well-kept Python library does canonical, length-limited Huffman with
stored code lengths at 100M+ symbols/s. Code lengths come from package-merge (optimal
under the 16-bit limit), codes are canonical so only the lengths are stored, and the
decoder is table-driven: one lookup over the next L bits per symbol. The numba kernels
are tested against the plain references at the bottom of this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .bitpack import write_codes

MAX_CODE_LEN = 16
PRIMARY_BITS = 11  # primary lookup table: 2K entries stay in L1; longer codes are rare


class CodecError(ValueError):
    """A stream or code table is malformed (the reader turns this into a FormatError)."""


# ---------------------------------------------------------------- code lengths
def code_lengths(freqs: np.ndarray, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Optimal length-limited code lengths (package-merge) for symbol counts ``freqs``.

    Unused symbols get length 0; a single used symbol gets length 1.
    """
    freqs = np.asarray(freqs, np.int64)
    lengths = np.zeros(freqs.size, np.uint8)
    used = np.flatnonzero(freqs > 0)
    n = used.size
    if n == 0:
        return lengths
    if n == 1:
        lengths[used[0]] = 1
        return lengths
    if n > (1 << max_len):
        raise ValueError(f"{n} symbols cannot have codes of at most {max_len} bits")
    order = used[np.argsort(freqs[used], kind="stable")]
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
    """Code lengths and canonical codes over a uint8 alphabet (padded to 256 entries)."""

    lengths: np.ndarray  # uint8[256]
    codes: np.ndarray  # uint32[256]

    @classmethod
    def from_lengths(cls, lengths: np.ndarray) -> "HuffmanCode":
        problem = check_lengths(lengths)
        if problem:
            raise CodecError(problem)
        full = np.zeros(256, np.uint8)
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
        return int(np.dot(hist[: 256].astype(np.int64), self.lengths[: hist.size].astype(np.int64)))

    def decode_table(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """Primary table over the next P = min(L, PRIMARY_BITS) bits (entry = length << 8 | symbol,
        0 = longer code or none) plus canonical tables for the rare longer codes:
        per length l, first_code[l], the index of its first symbol in ``by_len`` and count[l]."""
        L = int(self.lengths.max())
        P = min(L, PRIMARY_BITS)
        table = np.zeros(1 << P, np.uint16)
        canon = np.zeros((3, MAX_CODE_LEN + 1), np.int64)  # first_code, start index, count
        by_len = np.array(sorted(np.flatnonzero(self.lengths).tolist(), key=lambda s: (self.lengths[s], s)), np.uint8)
        for i, s in enumerate(by_len.tolist()):
            l = int(self.lengths[s])
            if canon[2, l] == 0:
                canon[0, l], canon[1, l] = int(self.codes[s]), i
            canon[2, l] += 1
            if l <= P:
                lo = int(self.codes[s]) << (P - l)
                table[lo: lo + (1 << (P - l))] = (l << 8) | s
        return P, table, canon, by_len


# ---------------------------------------------------------------- kernels
@numba.njit(cache=True, nogil=True)
def _histogram(symbols, out):
    for i in range(symbols.shape[0]):
        out[symbols[i]] += 1


def histogram(symbols: np.ndarray, alphabet: int = 256) -> np.ndarray:
    out = np.zeros(256, np.int64)
    _histogram(np.ascontiguousarray(symbols, np.uint8).reshape(-1), out)
    if alphabet < 256 and out[alphabet:].any():
        raise ValueError(f"symbol >= alphabet size {alphabet}")
    return out[:alphabet]


@numba.njit(cache=True, nogil=True)
def _decode_kernel(data, count, P, table, canon, by_len, out):
    """Decode ``count`` symbols. Returns bits consumed, or -(i + 1) for a bad code at symbol i."""
    nbytes = data.shape[0]
    acc = 0
    nacc = 0
    p = 0
    pmask = (1 << P) - 1
    for i in range(count):
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
        l = e >> 8
        if l != 0:
            if l > nacc:
                return -(i + 1)
            out[i] = e & 0xFF
            nacc -= l
            continue
        # a code longer than P bits: canonical decoding, length by length
        found = False
        for l in range(P + 1, 17):
            if l > nacc or canon[2, l] == 0:
                if l > nacc:
                    break
                continue
            code = (acc >> (nacc - l)) & ((1 << l) - 1)
            d = code - canon[0, l]
            if d >= 0 and d < canon[2, l]:
                out[i] = by_len[canon[1, l] + d]
                nacc -= l
                found = True
                break
        if not found:
            return -(i + 1)
    return p * 8 - nacc


def huffman_encode(symbols: np.ndarray, code: HuffmanCode, hist: np.ndarray | None = None) -> bytes:
    """Encode uint8 ``symbols``; every symbol must have a code."""
    symbols = np.ascontiguousarray(symbols, np.uint8).reshape(-1)
    if hist is None:
        hist = histogram(symbols)
    if np.any((hist > 0) & (code.lengths[: hist.size] == 0)):
        raise ValueError("a symbol in the stream has no code")
    nbits = code.encoded_bits(hist)
    out = np.empty((nbits + 7) // 8 + 8, np.uint8)
    n = write_codes(symbols, code.codes.astype(np.int64), code.lengths, out)
    if n != (nbits + 7) // 8:
        raise RuntimeError(f"Huffman encoder wrote {n} bytes, expected {(nbits + 7) // 8}")  # a bug
    return out[:n].tobytes()


def huffman_decode(data, count: int, code: HuffmanCode) -> np.ndarray:
    """Exactly ``count`` symbols; the stream must end in its last byte with zero padding."""
    buf = np.frombuffer(data, np.uint8)
    if count < 1 or count > 8 * buf.size:
        raise CodecError(f"{count} symbols cannot come from {buf.size} bytes")
    P, table, canon, by_len = code.decode_table()
    out = np.empty(count, np.uint8)
    used = _decode_kernel(buf, count, P, table, canon, by_len, out)
    if used < 0:
        raise CodecError(f"invalid Huffman code at symbol {-used - 1}")
    if (used + 7) // 8 != buf.size:
        raise CodecError(f"stream has {buf.size} bytes but its {count} codes use {used} bits")
    if used % 8 and buf[-1] & ((1 << (8 - used % 8)) - 1):
        raise CodecError("non-zero padding bits after the last code")
    return out


# ---------------------------------------------------------------- references
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
