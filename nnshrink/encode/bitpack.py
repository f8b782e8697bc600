"""Fixed-width b-bit values packed MSB-first (the archive's ``packed`` stream coding).

numpy has ``packbits`` for 1 bit only; b-bit packing is a few lines of numba, kept
beside a numpy reference (``pack_bits_ref`` / ``unpack_bits_ref``).
"""

from __future__ import annotations

import numba
import numpy as np


def packed_nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


@numba.njit(cache=True, nogil=True)
def write_codes(symbols, codes, lengths, out):
    """MSB-first bit writer: append ``codes[s]`` in ``lengths[s]`` bits for each symbol.

    Serves both fixed-width packing (every length = b) and Huffman coding. Returns the
    number of bytes written; the last byte is zero-padded.
    """
    acc = 0
    nacc = 0
    o = 0
    for i in range(symbols.shape[0]):
        s = symbols[i]
        l = lengths[s]
        acc = (acc << l) | codes[s]
        nacc += l
        if nacc >= 32:
            nacc -= 32
            v = acc >> nacc
            out[o] = (v >> 24) & 0xFF
            out[o + 1] = (v >> 16) & 0xFF
            out[o + 2] = (v >> 8) & 0xFF
            out[o + 3] = v & 0xFF
            o += 4
            acc &= (1 << nacc) - 1
    while nacc >= 8:
        nacc -= 8
        out[o] = (acc >> nacc) & 0xFF
        o += 1
    if nacc > 0:
        out[o] = (acc << (8 - nacc)) & 0xFF
        o += 1
    return o


@numba.njit(cache=True, nogil=True)
def _unpack_kernel(data, count, bits, out):
    """Returns 0, or -1 when the padding bits after the last value are not zero."""
    acc = 0
    nacc = 0
    p = 0
    mask = (1 << bits) - 1
    for i in range(count):
        while nacc < bits:
            acc = ((acc << 8) | data[p]) & 0xFFFFFFFFFFFF
            p += 1
            nacc += 8
        nacc -= bits
        out[i] = (acc >> nacc) & mask
    if nacc > 0 and (acc & ((1 << nacc) - 1)) != 0:
        return -1
    return 0


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack ``values`` (each < 2**bits, 1 <= bits <= 8) MSB-first."""
    values = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
    out = np.zeros(packed_nbytes(values.size, bits), np.uint8)
    codes = np.arange(256, dtype=np.int64) & ((1 << bits) - 1)
    n = write_codes(values, codes, np.full(256, bits, np.int64), out)
    if n != out.size:
        raise RuntimeError(f"bit packing wrote {n} bytes, expected {out.size}")  # a bug, not bad input
    return out.tobytes()


def unpack_bits(data, count: int, bits: int) -> np.ndarray | None:
    """``count`` b-bit values from ``data`` (exactly packed_nbytes long); None on non-zero padding.

    The caller has checked the length; this never reads past it.
    """
    buf = np.frombuffer(data, np.uint8)
    if buf.size != packed_nbytes(count, bits):
        raise ValueError(f"packed stream of {count} x {bits} bits needs {packed_nbytes(count, bits)} bytes, got {buf.size}")
    out = np.empty(count, np.uint8)
    if _unpack_kernel(buf, count, bits, out) != 0:
        return None
    return out


def pack_bits_ref(values: np.ndarray, bits: int) -> bytes:
    """Plain numpy reference: expand to a bit matrix, then np.packbits."""
    v = np.asarray(values, np.uint8).reshape(-1, 1)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint8)
    return np.packbits(((v >> shifts) & 1).astype(np.uint8).reshape(-1)).tobytes()


def unpack_bits_ref(data, count: int, bits: int) -> np.ndarray:
    b = np.unpackbits(np.frombuffer(data, np.uint8))[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    return (b.astype(np.int64) @ weights).astype(np.uint8)
