"""Write compressed tensors into a .nsk archive (format/SPEC.md), atomically.

Per tensor the writer picks the smallest form: each symbol stream packed, Huffman or
adaptive range-coded (tables included), the positions as gaps or as an adaptive mask,
and plain float32 when compression would not gain at all.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any

import numpy as np

from .. import __version__
from ..compressed import BinaryTensor, DenseTensor, SharedTensor, SparseTensor
from ..encode import adaptive
from ..encode.bitpack import pack_bits, packed_nbytes
from ..encode.huffman import MAX_PAIR_BASE, HuffmanCode, code_lengths, histogram, huffman_encode, pair_symbols
from ..encode.sparse import gaps_from_mask
from ..errors import ConfigError
from ..io_utils import atomic_write_bytes
from .errors import show
from .header import pack_header
from .layout import (ADAPTIVE, ADAPTIVE_DECISIONS_PER_BYTE, ADAPTIVE_MAX_DECISIONS, ALIGN, BFLOAT16, DTYPES,
                     GAP_BITS_RANGE, MAGIC, MAX_NAME, VERSION, VERSIONS, default_gap_bits, max_declared_elements)

_NP_TO_NAME = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16", np.dtype(np.float64): "float64",
               np.dtype(np.int64): "int64", np.dtype(np.int32): "int32", np.dtype(np.int16): "int16",
               np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8", np.dtype(np.bool_): "bool",
               BFLOAT16: "bfloat16"}


def _bytes_view(arr: np.ndarray, dtype: np.dtype) -> memoryview:
    a = np.ascontiguousarray(arr, dtype=dtype)
    return memoryview(a.reshape(-1).view(np.uint8))


def encode_stream(symbols: np.ndarray, bits: int, alphabet: int, huffman: bool,
                  adaptive_ok: bool = False) -> tuple[str, bytes | None, bytes]:
    """(coding, lengths table or None, stream bytes) for uint8 ``symbols``: packed, Huffman,
    pair Huffman (alphabets up to 64) or (``adaptive_ok``) adaptive, whichever is smallest
    with its table; ties keep the earlier in that order."""
    best = ("packed", None, packed_nbytes(symbols.size, bits), None)
    if huffman and symbols.size:
        candidates = [("huffman", symbols, alphabet)]
        if alphabet <= MAX_PAIR_BASE and symbols.size >= 2:
            candidates.append(("huffman_pairs", pair_symbols(symbols, alphabet), alphabet * alphabet))
        for coding, stream, size in candidates:
            hist = histogram(stream, size)
            code = HuffmanCode.from_lengths(code_lengths(hist))
            nbytes = (code.encoded_bits(hist) + 7) // 8 + code.table_size()
            if nbytes < best[2]:
                best = (coding, (stream, code, hist), nbytes, code)
    if huffman and adaptive_ok and symbols.size and symbols.size * bits <= ADAPTIVE_MAX_DECISIONS:
        must_save = 1 + symbols.size * bits // ADAPTIVE_DECISIONS_PER_BYTE
        data = adaptive.encode_symbols(symbols, bits, cap=best[2] - must_save)
        if data is not None:
            return ADAPTIVE, None, data
    coding, chosen = best[0], best[1]
    if chosen is None:
        return "packed", None, pack_bits(symbols, bits)
    stream, code, hist = chosen
    return coding, code.lengths[: code.table_size()].tobytes(), huffman_encode(stream, code, hist)


def _gap_parts(rec: dict, mask: np.ndarray, gap_bits: int, huffman: bool, adaptive_ok: bool,
               prefix: str = "") -> list:
    """The positions: a gap stream, or (when smaller, main positions only) the adaptive mask stream."""
    gaps = gaps_from_mask(mask, gap_bits)
    coding, table, data = encode_stream(gaps, gap_bits, 1 << gap_bits, huffman)
    size = len(data) + (len(table) if table is not None else 0)
    if huffman and adaptive_ok and not prefix and 0 < mask.size <= ADAPTIVE_MAX_DECISIONS:
        stream = adaptive.encode_mask(mask, cap=size - 1 - mask.size // ADAPTIVE_DECISIONS_PER_BYTE)  # see layout.py
        if stream is not None:
            rec.update(mask_coding=ADAPTIVE)
            return [("mask", stream)]
    rec.update({prefix + "gap_bits": gap_bits, prefix + "gap_count": int(gaps.size), prefix + "gap_coding": coding})
    return ([(prefix + "gap_lengths", table)] if table is not None else []) + [(prefix + "gap", data)]


def _outlier_parts(name: str, t: SharedTensor, rec: dict, shape, huffman: bool) -> list:
    """Dense-and-sparse: the outliers' float16 values, then their positions as a gap stream
    (8-bit gaps: outliers are rare)."""
    mask = _check_mask(name, t.outlier_mask, shape)
    values = np.asarray(t.outlier_values).reshape(-1)
    n = int(np.count_nonzero(mask))
    if values.size != n or n == 0:
        raise ConfigError(f"tensor {name!r}: {values.size} outlier values for {n} outlier positions (need >= 1)")
    rec["outliers"] = n
    return [("outlier_values", _bytes_view(values, DTYPES["float16"]))] + _gap_parts(rec, mask, 8, huffman, False, "outlier_")


def _check_mask(name: str, mask, shape) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or tuple(mask.shape) != tuple(shape):
        raise ConfigError(f"tensor {name!r}: mask must be bool of shape {tuple(shape)}; got {mask.dtype} {mask.shape}")
    return mask


def _raw(name: str, arr: np.ndarray, half: bool = False) -> tuple[dict, list]:
    arr = np.asarray(arr)
    if half:
        return ({"encoding": "raw", "dtype": "float16", "half": True},
                [("data", _bytes_view(arr.astype(np.float16), DTYPES["float16"]))])
    dname = _NP_TO_NAME.get(arr.dtype)
    if dname is None:
        raise ConfigError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored (use one of {sorted(DTYPES)})")
    return {"encoding": "raw", "dtype": dname, "half": False}, [("data", _bytes_view(arr, DTYPES[dname]))]


def encode_tensor(name: str, t, gap_bits: int, huffman: bool = True, adaptive_ok: bool = True) -> tuple[dict, list]:
    """Record fields (without name/shape/placement) and its ordered parts for one tensor
    (``adaptive_ok`` False: only the codings of format version 1)."""
    if isinstance(t, DenseTensor):
        return _raw(name, t.array, t.half)
    if isinstance(t, BinaryTensor):
        shape = tuple(int(d) for d in t.shape)
        signs = np.asarray(t.signs)
        scales = np.asarray(t.scales, np.float32).reshape(-1)
        if len(shape) < 1 or signs.shape != shape or scales.size != shape[0]:
            raise ConfigError(f"tensor {name!r}: binary signs {signs.shape} / scales {scales.shape} do not fit {shape}")
        rec = {"encoding": "binary"}
        if t.half_scales:
            rec["scale_dtype"] = "float16"
        parts = [("scales", _bytes_view(scales, DTYPES["float16" if t.half_scales else "float32"])),
                 ("signs", np.packbits(signs.astype(bool).reshape(-1)).tobytes())]
    elif isinstance(t, SparseTensor):
        shape = tuple(int(d) for d in t.shape)
        mask = _check_mask(name, t.mask, shape)
        values = np.asarray(t.values, np.float32).reshape(-1)
        nnz = int(np.count_nonzero(mask))
        if values.size != nnz:
            raise ConfigError(f"tensor {name!r}: {values.size} values for {nnz} kept positions")
        rec = {"encoding": "sparse_f32", "nonzero": nnz}
        parts = [("values", _bytes_view(values, DTYPES["float32"]))]
        parts += _gap_parts(rec, mask, gap_bits, huffman, adaptive_ok)
    elif isinstance(t, SharedTensor):
        shape = tuple(int(d) for d in t.shape)
        bits = int(t.bits)
        codebook = np.asarray(t.codebook, np.float32).reshape(-1)
        k = codebook.size
        if not 1 <= bits <= 8 or not 1 <= k <= 1 << bits:
            raise ConfigError(f"tensor {name!r}: need 1 <= bits <= 8 and 1 <= k <= 2**bits; got bits={bits}, k={k}")
        idx = np.asarray(t.indices).reshape(-1)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= k):
            raise ConfigError(f"tensor {name!r}: indices must be in [0, {k}); got [{int(idx.min())}, {int(idx.max())}]")
        idx = idx.astype(np.uint8)
        sparse = t.mask is not None
        expected = int(np.count_nonzero(_check_mask(name, t.mask, shape))) if sparse else int(np.prod(shape))
        if idx.size != expected:
            raise ConfigError(f"tensor {name!r}: {idx.size} indices for {expected} positions")
        coding, table, data = encode_stream(idx, bits, k, huffman, adaptive_ok)
        rec = {"encoding": "shared", "bits": bits, "k": k, "nonzero": int(idx.size), "sparse": sparse,
               "index_coding": coding}
        parts = [("codebook", _bytes_view(codebook, DTYPES["float32"]))]
        parts += ([("index_lengths", table)] if table is not None else []) + [("index", data)]
        if sparse:
            parts += _gap_parts(rec, t.mask, gap_bits, huffman, adaptive_ok)
        if t.outlier_mask is not None:
            parts += _outlier_parts(name, t, rec, shape, huffman)
    else:
        raise ConfigError(f"tensor {name!r}: cannot store a {type(t).__name__} (expected a nnshrink.compressed type)")
    size = sum(len(p) for _, p in parts)
    if size > 4 * int(np.prod(shape)):  # too small to gain: plain float32 decodes identically
        return _raw(name, t.to_dense().astype(np.float32))
    return rec, parts


def _gap_bits_for(name: str, shape, index_bits) -> int:
    if index_bits is None:
        w = default_gap_bits(shape)
    elif isinstance(index_bits, dict):
        w = index_bits.get(name, default_gap_bits(shape))
    else:
        w = index_bits
    if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or not GAP_BITS_RANGE[0] <= w <= GAP_BITS_RANGE[1]:
        raise ConfigError(f"index bits for {name!r} must be an integer in [3, 8]; got {w!r}")
    return int(w)


def _metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        raise ConfigError(f"archive metadata must be a dict; got {type(metadata).__name__}")
    meta = {"model": None, "config": {}, "nnshrink_version": __version__, "report": {}}
    meta.update(metadata)
    if meta["model"] is not None and not isinstance(meta["model"], str):
        raise ConfigError(f"metadata 'model' must be a name or None; got {meta['model']!r}")
    if not isinstance(meta["config"], dict) or not isinstance(meta["report"], dict):
        raise ConfigError("metadata 'config' and 'report' must be dicts")
    return meta


def serialize(tensors: dict, metadata: dict[str, Any], *, index_bits: dict[str, int] | int | None = None,
              huffman: bool = True, version: int = VERSION) -> bytes:
    """The archive's bytes for ``tensors`` (name -> CompressedTensor) and ``metadata``, without a file.

    ``version=1`` writes the previous format (plain JSON header, no adaptive codings), for
    readers that predate version 2 and for size comparisons."""
    if version not in VERSIONS:
        raise ConfigError(f"format version must be one of {list(VERSIONS)}; got {version!r}")
    entries, numel = [], 0
    for name, t in tensors.items():
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            raise ConfigError(f"tensor names must be non-empty strings of <= {MAX_NAME} characters; got {show(name)}")
        if not isinstance(t, (DenseTensor, SparseTensor, SharedTensor, BinaryTensor)):
            raise ConfigError(f"tensor {show(name)}: cannot store a {type(t).__name__} "
                              "(expected a nnshrink.compressed type)")
        shape = [int(d) for d in t.shape]
        rec, parts = encode_tensor(name, t, _gap_bits_for(name, shape, index_bits), huffman, version >= 2)
        entries.append(({"name": name, "shape": shape, **rec}, parts))
        numel += int(np.prod(shape))
    data = assemble(entries, _metadata(metadata), version)
    if numel > max_declared_elements(len(data)):
        raise ConfigError(f"the archive would declare {numel} elements in {len(data)} bytes, over the format's "
                          f"density cap ({max_declared_elements(len(data))}; SPEC.md): store nearly empty "
                          "tensors dense")
    return data


def assemble(entries: list[tuple[dict, list]], metadata: dict[str, Any], version: int = VERSION) -> bytes:
    """Lay out records (fields without placement, ordered parts) after the preamble and
    header: offsets, lengths, CRCs and 8-byte alignment. No checks: callers validate
    (``version`` 1 only for tests of the old format: its header is plain JSON)."""
    records, offset = [], 0
    for rec, parts in entries:
        length = sum(len(p) for _, p in parts)
        crc = 0
        for _, p in parts:
            crc = zlib.crc32(p, crc)
        records.append({**rec, "offset": offset, "length": length, "crc32": crc,
                        "parts": [[pn, len(p)] for pn, p in parts]})
        offset += length + (-length % ALIGN)
    header = {"format": "nsk", "version": version, "data_length": offset, "metadata": metadata, "records": records}
    hbytes = pack_header(header, version)
    out = bytearray(MAGIC + struct.pack("<HHII", version, 0, len(hbytes), zlib.crc32(hbytes)) + hbytes)
    for _, parts in entries:
        start = len(out)
        for _, p in parts:
            out += p
        out += bytes(-(len(out) - start) % ALIGN)
    return bytes(out)


def write_archive(path: str | os.PathLike, tensors: dict, metadata: dict[str, Any], **encode_opts) -> int:
    """``serialize`` then an atomic write to ``path``; return the file size."""
    data = serialize(tensors, metadata, **encode_opts)
    atomic_write_bytes(path, data)
    return len(data)
