"""Read a .nsk archive without trusting it (format/SPEC.md).

Order of work: preamble, header checksum, JSON schema of every record (shapes against
counts, part lengths against counts, ranges in bounds and disjoint) -- all before a
single tensor is allocated; then the caller's element budget (``max_elements``); then per
record: CRC-32, decode, exact counts. The density cap (SPEC.md) bounds the elements a
file may declare by its size, every loop runs over validated counts. ``open_archive``
stops after the header and decodes one record per ``get``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..compressed import BinaryTensor, DenseTensor, SharedTensor, SparseTensor
from ..encode import adaptive
from ..encode.bitpack import packed_nbytes, unpack_bits
from ..encode.huffman import CodecError, HuffmanCode, check_lengths, huffman_decode
from ..encode.sparse import BAD_PAST_END, mask_from_gaps, scatter_dense
from ..errors import CheckpointError, ConfigError
from ..io_utils import check_input_file
from .errors import (BadMagicError, ChecksumError, FormatError, HeaderError, HuffmanTableError, LimitError, RecordError,
                     StreamError, show)
from .header import header_text
from .layout import (ADAPTIVE, BFLOAT16, CODINGS, COMMON_KEYS, DEFAULT_MAX_ELEMENTS, DTYPES, ENCODINGS, EXTRA_KEYS, OUTLIER_KEYS,
                     GAP_BITS_RANGE, GAP_KEYS, MAGIC, MASK_KEYS, MAX_DIM, MAX_HEADER, MAX_NAME, MAX_NDIM, MAX_NUMEL,
                     MAX_PAIR_ALPHABET, MAX_RECORDS, PREAMBLE, VERSIONS, default_gap_bits,
                     max_declared_elements)


@dataclass
class _Spec:
    """A record whose description passed every check."""

    index: int
    name: str
    shape: tuple[int, ...]
    numel: int
    encoding: str
    fields: dict[str, Any]
    offset: int
    length: int
    crc32: int
    parts: dict[str, tuple[int, int]]  # part -> (start, end) inside the record


@dataclass
class Archive:
    """A decoded archive: metadata, tensors (CompressedTensor values) and per-record stats."""

    metadata: dict[str, Any]
    tensors: dict[str, Any]
    records: list[dict[str, Any]]
    file_bytes: int
    source: str = ""
    _unused: dict = field(default_factory=dict, repr=False)

    def layer_rows(self) -> list[dict[str, Any]]:
        """Per-record stats (JSON-ready dicts): name, shape, params, nonzero, weight_bits, index_bits, bytes..."""
        return [dict(r) for r in self.records]

    def dense_arrays(self) -> dict[str, np.ndarray]:
        """name -> numpy array, equal to ``to_dense()`` (raw records keep their dtype)."""
        out = {}
        for name, t in self.tensors.items():
            if isinstance(t, DenseTensor) and not t.half:
                arr = t.array if t.array.flags.writeable else t.array.copy()
                out[name] = np.ascontiguousarray(arr).reshape(arr.shape)  # keeps 0-d tensors 0-d
            elif isinstance(t, SharedTensor) and t.mask is not None and t.outlier_mask is None:
                out[name] = scatter_dense(t.mask, t.codebook[t.indices.astype(np.intp)])
            elif isinstance(t, SparseTensor):
                out[name] = scatter_dense(t.mask, t.values)
            else:
                out[name] = t.to_dense()
        return out

    def dense_state(self) -> dict:
        """name -> torch tensor (raw records keep their dtype; everything else float32)."""
        import torch

        def tensor(arr):
            if arr.dtype == BFLOAT16:
                return torch.from_numpy(arr.view("<u2")).view(torch.bfloat16)
            return torch.from_numpy(arr)

        return {name: tensor(arr) for name, arr in self.dense_arrays().items()}


def read_archive(path: str | os.PathLike, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Archive:
    """Read and fully validate the archive at ``path``, decoding at most ``max_elements`` elements."""
    path = _archive_path(path)
    size = path.stat().st_size
    buf = bytearray(size)
    with open(path, "rb") as f:
        n = f.readinto(buf)
    if n != size:
        raise HeaderError(f"{path}: file changed while reading ({n} of {size} bytes)")
    return parse_archive(buf, str(path), max_elements=max_elements)


def _archive_path(path) -> Path:
    return check_input_file(path, CheckpointError)


# ---------------------------------------------------------------- header checks
def _int(obj: dict, key: str, lo: int, hi: int, where: str) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise RecordError(f"{where}: {key!r} must be an integer; got {v!r:.60}")
    if not lo <= v <= hi:
        raise RecordError(f"{where}: {key!r} = {v} is outside [{lo}, {hi}]")
    return v


def _choice(obj: dict, key: str, options, where: str):
    v = obj.get(key)
    if not isinstance(v, (str, bool)) or v not in options or (isinstance(v, bool) != isinstance(options[0], bool)):
        raise RecordError(f"{where}: {key!r} must be one of {list(options)}; got {v!r:.60}")
    return v


def _expected_parts(enc: str, f: dict, numel: int, shape: tuple) -> list[tuple[str, int | None]]:
    """The ordered (part, exact length or None if only bounded) list an encoding requires."""
    def gap_parts(prefix=""):
        if not prefix and "mask_coding" in f:
            return [("mask", None)]
        w, cnt, coding = f[prefix + "gap_bits"], f[prefix + "gap_count"], f[prefix + "gap_coding"]
        if coding == "packed":
            return [(prefix + "gap", packed_nbytes(cnt, w))]
        return [(prefix + "gap_lengths", None), (prefix + "gap", None)]

    if enc == "raw":
        return [("data", numel * DTYPES[f["dtype"]].itemsize)]
    if enc == "binary":
        return [("scales", DTYPES[f["scale_dtype"]].itemsize * shape[0]), ("signs", (numel + 7) // 8)]
    if enc == "sparse_f32":
        return [("values", 4 * f["nonzero"])] + gap_parts()
    parts = [("codebook", 4 * f["k"])]
    if f["index_coding"] == "packed":
        parts.append(("index", packed_nbytes(f["nonzero"], f["bits"])))
    elif f["index_coding"] == ADAPTIVE:
        parts.append(("index", None))
    else:
        parts += [("index_lengths", None), ("index", None)]
    parts += gap_parts() if f["sparse"] else []
    if f.get("outliers"):
        parts += [("outlier_values", 2 * f["outliers"])] + gap_parts("outlier_")
    return parts


def _gap_fields(rec: dict, f: dict, prefix: str, nonzero: int, numel: int, where) -> None:
    """Check and copy one gap stream's keys (SPEC: the gap stream), e.g. ``outlier_gap_bits``."""
    f[prefix + "gap_bits"] = _int(rec, prefix + "gap_bits", *GAP_BITS_RANGE, where)
    f[prefix + "gap_count"] = _int(rec, prefix + "gap_count", nonzero, MAX_NUMEL, where)
    f[prefix + "gap_coding"] = _choice(rec, prefix + "gap_coding", CODINGS, where)
    _check_pairs(f[prefix + "gap_coding"], 1 << f[prefix + "gap_bits"], prefix + "gap", where)
    if numel > (f[prefix + "gap_count"] + 1) * ((1 << f[prefix + "gap_bits"]) - 1):
        raise RecordError(f"{where}: {f[prefix + 'gap_count']} {prefix}gap symbols cannot cover {numel} positions")


def _check_pairs(coding: str, alphabet: int, stream: str, where: str) -> None:
    if coding == "huffman_pairs" and alphabet > MAX_PAIR_ALPHABET:
        raise RecordError(f"{where}: {stream} stream is pair-coded but its alphabet has {alphabet} symbols "
                          f"(at most {MAX_PAIR_ALPHABET})")


class _Where:
    """'record #i NAME' for messages, escaped and cut only when a message is built: most
    records never need it, and a header may hold 100,000 of them."""

    def __init__(self, i: int, name: str):
        self.i, self.name = i, name

    def __str__(self) -> str:
        return f"record #{self.i} {show(self.name)}"


def _check_record(i: int, rec: Any, data_length: int, names: set, version: int) -> _Spec:
    where = f"record #{i}"
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: must be a JSON object")
    name = rec.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
        raise RecordError(f"{where}: 'name' must be a string of 1..{MAX_NAME} characters")
    where = _Where(i, name)
    if name in names:
        raise RecordError(f"{where}: duplicate name")
    names.add(name)
    enc = rec.get("encoding")
    if enc not in ENCODINGS:
        raise RecordError(f"{where}: unknown encoding {enc!r:.60}")
    shape = rec.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise RecordError(f"{where}: 'shape' must be a list of at most {MAX_NDIM} integers")
    for d in shape:
        if type(d) is not int or not 0 <= d <= MAX_DIM:
            raise RecordError(f"{where}: shape dimensions must be integers in [0, {MAX_DIM}]; got {d!r:.40}")
    dims = tuple(shape)
    numel, extent = 1, 1  # extent: product of the non-zero dims, so no shape overflows numpy
    for d in dims:
        numel *= d
        extent *= max(d, 1)
    if extent > MAX_NUMEL:
        raise RecordError(f"{where}: shape {list(dims)} spans {extent} positions, over the limit {MAX_NUMEL}")
    f: dict[str, Any] = {}
    allowed = COMMON_KEYS | EXTRA_KEYS[enc]
    codings = CODINGS + ((ADAPTIVE,) if version >= 2 else ())
    if enc == "raw":
        f["dtype"] = _choice(rec, "dtype", tuple(DTYPES), where)
        f["half"] = _choice(rec, "half", (False, True), where)
        if f["half"] and f["dtype"] != "float16":
            raise RecordError(f"{where}: 'half' records must have dtype float16")
    elif enc == "binary":
        if len(dims) < 1:
            raise RecordError(f"{where}: a binary tensor needs at least one dimension")
        f["scale_dtype"] = _choice(rec, "scale_dtype", ("float32", "float16"), where) if "scale_dtype" in rec \
            else "float32"
    else:
        sparse = True
        if enc == "shared":
            f["bits"] = _int(rec, "bits", 1, 8, where)
            f["k"] = _int(rec, "k", 1, 1 << f["bits"], where)
            f["index_coding"] = _choice(rec, "index_coding", codings, where)
            _check_pairs(f["index_coding"], f["k"], "index", where)
            sparse = f["sparse"] = _choice(rec, "sparse", (False, True), where)
            if sparse:
                allowed = allowed | GAP_KEYS | MASK_KEYS
        f["nonzero"] = _int(rec, "nonzero", 0, numel, where)
        if enc == "shared" and not sparse and f["nonzero"] != numel:
            raise RecordError(f"{where}: a dense shared tensor needs nonzero == numel ({numel}); got {f['nonzero']}")
        if sparse and version >= 2 and "mask_coding" in rec:
            f["mask_coding"] = _choice(rec, "mask_coding", (ADAPTIVE,), where)
            allowed = (allowed - GAP_KEYS) | MASK_KEYS
        elif sparse:
            allowed = allowed - MASK_KEYS
            _gap_fields(rec, f, "", f["nonzero"], numel, where)
        if enc == "shared" and "outliers" in rec:
            allowed = allowed | OUTLIER_KEYS
            f["outliers"] = _int(rec, "outliers", 1, numel, where)
            _gap_fields(rec, f, "outlier_", f["outliers"], numel, where)
    extra = set(rec) - allowed
    if extra:
        raise RecordError(f"{where}: unknown keys {show(', '.join(sorted(map(str, extra))))}")
    offset = _int(rec, "offset", 0, data_length, where)
    length = _int(rec, "length", 0, data_length - offset, where)
    crc = _int(rec, "crc32", 0, 2**32 - 1, where)
    parts_in = rec.get("parts")
    expected = _expected_parts(enc, f, numel, dims)
    if not isinstance(parts_in, list) or len(parts_in) != len(expected):
        raise RecordError(f"{where}: 'parts' must list {[p for p, _ in expected]}")
    parts, pos = {}, 0
    for (pname, plen), item in zip(expected, parts_in):
        if not isinstance(item, list) or len(item) != 2 or item[0] != pname:
            raise RecordError(f"{where}: part {item!r:.60} should be [{pname!r}, length]")
        n = item[1]
        if type(n) is not int or not 0 <= n <= length:
            raise RecordError(f"{where}: part {pname!r} length must be an integer in [0, {length}]; got {n!r:.40}")
        if plen is not None and n != plen:
            raise RecordError(f"{where}: part {pname!r} must be {plen} bytes for its counts; says {n}")
        parts[pname] = (pos, pos + n)
        pos += n
    if pos != length:
        raise RecordError(f"{where}: parts sum to {pos} bytes but the record is {length}")
    for stream in ("index", "mask"):  # an adaptive stream holds at least the coder's flush bytes
        if stream in parts and f.get("index_coding" if stream == "index" else "mask_coding") == ADAPTIVE:
            s0, s1 = parts[stream]
            if s1 - s0 < adaptive.FLUSH_BYTES:
                raise RecordError(f"{where}: adaptive {stream} stream of {s1 - s0} bytes; needs at least "
                                  f"{adaptive.FLUSH_BYTES}")
    # bounds for the Huffman-coded parts, before anything is allocated
    for stream, alphabet, count in (("index", f.get("k"), f.get("nonzero")), ("gap", 1 << f.get("gap_bits", 0), f.get("gap_count")),
                                    ("outlier_gap", 1 << f.get("outlier_gap_bits", 0), f.get("outlier_gap_count"))):
        if stream + "_lengths" in parts:
            codes = count
            if f[stream + "_coding"] == "huffman_pairs":
                alphabet, codes = alphabet * alphabet, (count + 1) // 2
            t0, t1 = parts[stream + "_lengths"]
            if not 1 <= t1 - t0 <= alphabet:
                raise HuffmanTableError(f"{where}: {stream} code table has {t1 - t0} entries; needs 1..{alphabet}")
            s0, s1 = parts[stream]
            if not 1 <= codes <= 8 * (s1 - s0):
                raise RecordError(f"{where}: {count} {stream} symbols cannot come from {s1 - s0} Huffman bytes")
    return _Spec(i, name, dims, numel, enc, f, offset, length, crc, parts)


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic GC while building the acyclic objects of up to 100,000 records:
    its passes over them made a maximal header several times slower to read."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _header_length(pre, file_size: int, source: str) -> int:
    """Check the 16-byte preamble; return the header length it declares."""
    if file_size < PREAMBLE or len(pre) < PREAMBLE:
        raise HeaderError(f"{source}: {file_size} bytes is too short for an .nsk file")
    if bytes(pre[:4]) != MAGIC:
        raise BadMagicError(f"{source}: not an .nsk archive (magic {bytes(pre[:4])!r})")
    version, reserved, hlen = struct.unpack_from("<HHI", pre, 4)
    if version not in VERSIONS:
        raise HeaderError(f"{source}: format version {version} is not supported (this reader knows "
                          f"{', '.join(map(str, VERSIONS))})")
    if reserved != 0:
        raise HeaderError(f"{source}: reserved preamble field is {reserved}, must be 0")
    if not 2 <= hlen <= MAX_HEADER:
        raise HeaderError(f"{source}: header length {hlen} is outside [2, {MAX_HEADER}]")
    if PREAMBLE + hlen > file_size:
        raise HeaderError(f"{source}: header of {hlen} bytes runs past the end of the {file_size}-byte file")
    return hlen


def _parse_header(head, file_size: int, source: str) -> tuple[dict, list[_Spec]]:
    """Validate the preamble and header (``head`` holds at least both) of a ``file_size``-byte file;
    return the header (JSON object) and the record specs."""
    hlen = _header_length(head, file_size, source)
    version, hcrc = struct.unpack_from("<H", head, 4)[0], struct.unpack_from("<I", head, 12)[0]
    hbytes = bytes(head[PREAMBLE: PREAMBLE + hlen])
    if zlib.crc32(hbytes) != hcrc:
        raise ChecksumError(f"{source}: header checksum mismatch")
    text = header_text(hbytes, version, source)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise HeaderError(f"{source}: header is not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(header, dict) or set(header) != {"format", "version", "data_length", "metadata", "records"}:
        raise HeaderError(f"{source}: header must be an object with format, version, data_length, metadata, records")
    if header["format"] != "nsk" or header["version"] != version or isinstance(header["version"], bool):
        raise HeaderError(f"{source}: header format/version is {header['format']!r:.20}/{header['version']!r:.20}")
    data_length = header["data_length"]
    if isinstance(data_length, bool) or not isinstance(data_length, int) or data_length != file_size - PREAMBLE - hlen:
        raise HeaderError(f"{source}: data_length {data_length!r:.30} does not match the file "
                          f"({file_size - PREAMBLE - hlen} bytes after the header)")
    meta = header["metadata"]
    if not isinstance(meta, dict) or not (meta.get("model") is None or isinstance(meta.get("model"), str)) \
            or not isinstance(meta.get("config", {}), dict):
        raise HeaderError(f"{source}: metadata must be an object with 'model' (name or null) and 'config' (object)")
    recs = header["records"]
    if not isinstance(recs, list) or len(recs) > MAX_RECORDS:
        raise HeaderError(f"{source}: records must be a list of at most {MAX_RECORDS}")
    names: set = set()
    try:
        specs = [_check_record(i, r, data_length, names, version) for i, r in enumerate(recs)]
    except FormatError as exc:
        raise type(exc)(f"{source}: {exc}") from None
    end, last = 0, None
    for s in sorted((s for s in specs if s.length), key=lambda s: s.offset):
        if s.offset < end:
            raise RecordError(f"{source}: record {show(s.name)} overlaps record {show(last)}")
        end, last = s.offset + s.length, s.name
    declared = sum(s.numel for s in specs)
    if declared > max_declared_elements(file_size):
        raise LimitError(f"{source}: the records declare {declared} elements, more than a {file_size}-byte archive "
                         f"may hold ({max_declared_elements(file_size)}; see the density cap in SPEC.md)")
    return header, specs


def _check_budget(specs: list[_Spec], max_elements: int, source: str) -> None:
    """Refuse, before decoding, an archive that declares more than ``max_elements`` elements."""
    if isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1:
        raise ConfigError(f"max_elements must be a positive integer; got {max_elements!r:.40}")
    declared = sum(s.numel for s in specs)
    if declared > max_elements:
        raise LimitError(f"{source}: decoding needs {declared} elements, over the limit of {max_elements} "
                         "(raise it with max_elements= or --max-elements)")


# ---------------------------------------------------------------- decoding
def _stream(rec: bytes, s: _Spec, stream: str, count: int, bits: int, alphabet: int, coding: str, where: str):
    a, b = s.parts[stream]
    data = rec[a:b]
    if coding == ADAPTIVE:
        out = adaptive.decode_symbols(data, count, bits)
        if out is None:
            raise StreamError(f"{where}: adaptive {stream} stream ends early or has bytes after its last symbol")
        return out
    if coding == "packed":
        out = unpack_bits(data, count, bits)
        if out is None:
            raise StreamError(f"{where}: non-zero padding after the packed {stream} stream")
        return out
    t0, t1 = s.parts[stream + "_lengths"]
    lengths = np.frombuffer(rec, np.uint8, t1 - t0, t0)
    problem = check_lengths(lengths)
    if problem:
        raise HuffmanTableError(f"{where}: {stream} table: {problem}")
    try:
        return huffman_decode(data, count, HuffmanCode.from_lengths(lengths),
                              pair_base=alphabet if coding == "huffman_pairs" else 0)
    except CodecError as exc:
        raise StreamError(f"{where}: {stream} stream: {exc}") from None


def _mask(rec: bytes, s: _Spec, where: str, prefix: str = "", count_key: str = "nonzero") -> np.ndarray:
    f = s.fields
    if not prefix and "mask_coding" in f:
        a, b = s.parts["mask"]
        mask, count = adaptive.decode_mask(rec[a:b], s.shape)
        if mask is None:
            why = "ends early" if count == adaptive.ERR_PAST_END else "has bytes after the last position"
            raise StreamError(f"{where}: adaptive mask stream {why}")
        if count != f["nonzero"]:
            raise StreamError(f"{where}: mask stream has {count} entries; record says nonzero = {f['nonzero']}")
        return mask
    bits = f[prefix + "gap_bits"]
    gaps = _stream(rec, s, prefix + "gap", f[prefix + "gap_count"], bits, 1 << bits, f[prefix + "gap_coding"], where)
    mask, count = mask_from_gaps(gaps, bits, s.numel)
    if mask is None:
        why = "runs past the end of the tensor" if count == BAD_PAST_END else "does not end with canonical fillers"
        raise StreamError(f"{where}: {prefix}gap stream {why}")
    if count != f[count_key]:
        raise StreamError(f"{where}: {prefix}gap stream has {count} entries; record says {count_key} = {f[count_key]}")
    return mask.reshape(s.shape)


def _decode(rec, s: _Spec, source: str):
    """Check the CRC of one record's bytes ``rec`` and decode them."""
    where = f"{source}: record {show(s.name)}"
    if zlib.crc32(rec) != s.crc32:
        raise ChecksumError(f"{where}: checksum mismatch")
    f = s.fields

    def part(p, dtype, count):
        a, _ = s.parts[p]
        return np.frombuffer(rec, dtype, count, a)

    if s.encoding == "raw":
        arr = part("data", DTYPES[f["dtype"]], s.numel)
        if f["dtype"] == "bool":
            if arr.size and int(arr.max()) > 1:
                raise StreamError(f"{where}: bool bytes must be 0 or 1")
            arr = arr.view(np.bool_)
        arr = arr.astype(arr.dtype.newbyteorder("="), copy=False).reshape(s.shape)
        if f["half"]:
            return DenseTensor(arr.astype(np.float32), half=True)
        return DenseTensor(arr)
    if s.encoding == "binary":
        half = f["scale_dtype"] == "float16"
        scales = part("scales", "<f2" if half else "<f4", s.shape[0]).astype(np.float32)
        packed = part("signs", np.uint8, (s.numel + 7) // 8)
        if s.numel % 8 and packed[-1] & ((1 << (8 - s.numel % 8)) - 1):
            raise StreamError(f"{where}: non-zero padding after the sign bits")
        signs = np.unpackbits(packed, count=s.numel).astype(bool).reshape(s.shape)
        return BinaryTensor(s.shape, signs, scales, half_scales=half)
    if s.encoding == "sparse_f32":
        values = part("values", "<f4", f["nonzero"]).astype(np.float32)
        return SparseTensor(s.shape, _mask(rec, s, where), values)
    codebook = part("codebook", "<f4", f["k"]).astype(np.float32)
    idx = _stream(rec, s, "index", f["nonzero"], f["bits"], f["k"], f["index_coding"], where)
    if idx.size and int(idx.max()) >= f["k"]:
        raise StreamError(f"{where}: index {int(idx.max())} >= codebook size {f['k']}")
    mask = _mask(rec, s, where) if f["sparse"] else None
    if not f.get("outliers"):
        return SharedTensor(s.shape, codebook, idx, f["bits"], mask)
    values = part("outlier_values", "<f2", f["outliers"]).astype(np.float16)
    return SharedTensor(s.shape, codebook, idx, f["bits"], mask, _mask(rec, s, where, "outlier_", "outliers"), values)


def _stats(s: _Spec, raw_nonzero: int | None) -> dict[str, Any]:
    """The paper's per-layer numbers for one record (bits are per stored weight)."""
    f = s.fields
    plen = {p: b - a for p, (a, b) in s.parts.items()}
    nnz = f.get("nonzero")
    if s.encoding == "raw":
        nnz = raw_nonzero
        wb = 16 if f["half"] else DTYPES[f["dtype"]].itemsize * 8
        wbits, ibits = {"before": wb, "after": wb}, {"before": 0, "after": 0.0}
    elif s.encoding == "binary":
        nnz = s.numel
        wbits, ibits = {"before": 1, "after": 1}, {"before": 0, "after": 0.0}
    else:
        before = f["bits"] if s.encoding == "shared" else 32
        after = 8 * (plen["index"] + plen.get("index_lengths", 0)) / nnz if s.encoding == "shared" and nnz else float(before)
        wbits = {"before": before, "after": round(after, 3)}
        sparse = s.encoding == "sparse_f32" or f["sparse"]
        # "before": the relative-index width; an adaptive mask has none, so the default one for its shape
        gb = f.get("gap_bits", default_gap_bits(s.shape)) if sparse else 0
        pos_bytes = plen.get("gap", 0) + plen.get("gap_lengths", 0) + plen.get("mask", 0)
        gafter = 8 * pos_bytes / nnz if sparse and nnz else 0.0
        ibits = {"before": gb, "after": round(gafter, 3)}
    dtype = ("float32" if f["half"] else f["dtype"]) if s.encoding == "raw" else "float32"  # what it decodes to
    return {"name": s.name, "shape": list(s.shape), "encoding": s.encoding, "dtype": dtype, "params": s.numel,
            "nonzero": int(nnz), "weight_bits": wbits, "index_bits": ibits, "bytes": s.length,
            "index_coding": f.get("index_coding"), "gap_coding": f.get("gap_coding", f.get("mask_coding"))}


def parse_archive(buf: bytes | bytearray, source: str = "<archive>", *,
                  max_elements: int = DEFAULT_MAX_ELEMENTS) -> Archive:
    """Validate and decode an archive held in memory (``read_archive`` reads the file)."""
    with _gc_paused():
        header, specs = _parse_header(buf, len(buf), source)
        meta = header["metadata"]
        _check_budget(specs, max_elements, source)
        base = PREAMBLE + struct.unpack_from("<I", buf, 8)[0]
        view = memoryview(buf)
        tensors, records = {}, []
        for s in specs:
            t = _decode(view[base + s.offset: base + s.offset + s.length], s, source)
            tensors[s.name] = t
            records.append(_stats(s, int(np.count_nonzero(t.array)) if s.encoding == "raw" else None))
    return Archive(meta, tensors, records, len(buf), source)


class ArchiveFile:
    """An archive opened lazily (``open_archive``): the header is validated on open, a
    record is read, CRC-checked and decoded only on ``get``; memory is O(header) plus
    the records asked for, whatever the records claim."""

    def __init__(self, path: str | os.PathLike, *, max_elements: int = DEFAULT_MAX_ELEMENTS):
        path = _archive_path(path)
        self.source, self.max_elements = str(path), max_elements
        self._f = open(path, "rb")
        try:
            self.file_bytes = os.fstat(self._f.fileno()).st_size
            pre = self._f.read(PREAMBLE)
            head = pre + self._f.read(_header_length(pre, self.file_bytes, self.source))
            with _gc_paused():
                self.header, specs = _parse_header(head, self.file_bytes, self.source)
        except BaseException:
            self._f.close()
            raise
        self._base = len(head)
        self.metadata = self.header["metadata"]
        self.version = self.header["version"]  # the format version (1 or 2)
        self.header_bytes = len(head)  # preamble + header as stored
        self._specs = {s.name: s for s in specs}
        self._rows: list[dict[str, Any]] | None = None

    def __enter__(self) -> "ArchiveFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def keys(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, name) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """name -> shape, from the header alone."""
        return {name: s.shape for name, s in self._specs.items()}

    def _read(self, s: _Spec, start: int, size: int) -> bytes:
        data = os.pread(self._f.fileno(), size, self._base + s.offset + start)
        if len(data) != size:
            raise HeaderError(f"{self.source}: file changed while reading record {show(s.name)}")
        return data

    @property
    def records(self) -> list[dict[str, Any]]:
        """Per-record rows (name, shape, encoding, params, nonzero, bits, bytes, codings), as
        ``Archive.records``; raw records are counted in 1 MiB chunks, nothing is decoded."""
        if self._rows is None:
            self._rows = [_stats(s, self._raw_nonzero(s) if s.encoding == "raw" else None)
                          for s in self._specs.values()]
        return self._rows

    def _raw_nonzero(self, s: _Spec) -> int:
        dtype = DTYPES[s.fields["dtype"]]
        step = max(1, (1 << 20) // dtype.itemsize) * dtype.itemsize
        count = 0
        for start in range(0, s.length, step):
            count += int(np.count_nonzero(np.frombuffer(self._read(s, start, min(step, s.length - start)), dtype)))
        return count

    def get(self, name: str):
        """Decode one record (a nnshrink.compressed tensor) after checking its CRC and the limit."""
        s = self._specs.get(name)
        if s is None:
            raise KeyError(name)
        _check_budget([s], self.max_elements, self.source)
        return _decode(self._read(s, 0, s.length), s, self.source)


def open_archive(path: str | os.PathLike, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> ArchiveFile:
    """Open ``path`` lazily (a context manager): reads and validates only the header."""
    return ArchiveFile(path, max_elements=max_elements)
