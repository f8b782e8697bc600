"""Constants of format/SPEC.md shared by the writer and the reader."""

import numpy as np

MAGIC = b"NSK\n"
VERSION = 2  # what the writer writes
VERSIONS = (1, 2)  # what the reader reads
PREAMBLE = 16
MAX_HEADER = 16 * 1024 * 1024
MAX_RECORDS = 100_000
MAX_NAME = 1024
MAX_NDIM = 8
MAX_DIM = 2**31
MAX_NUMEL = 2**34
ALIGN = 8
GAP_BITS_RANGE = (3, 8)
# Density cap: all records together declare at most DENSITY elements per file byte, plus
# DENSITY_SLACK (honest archives stay far below it, see SPEC.md), so the work a file asks
# for is bounded by its size.
DENSITY = 256
DENSITY_SLACK = 1 << 20
DEFAULT_MAX_ELEMENTS = 1 << 32  # the reader's default budget of decoded elements (all records)

# numpy has no bfloat16: its 16 bits travel in a one-field record type, so no code takes them
# for uint16 (torch views them back as bfloat16).
BFLOAT16 = np.dtype([("bfloat16", "<u2")])

DTYPES = {
    "float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"), "int32": np.dtype("<i4"), "int16": np.dtype("<i2"),
    "int8": np.dtype("i1"), "uint8": np.dtype("u1"), "bool": np.dtype("u1"), "bfloat16": BFLOAT16,
}

ENCODINGS = ("raw", "binary", "shared", "sparse_f32")
COMMON_KEYS = {"name", "shape", "encoding", "offset", "length", "crc32", "parts"}
GAP_KEYS = {"gap_bits", "gap_count", "gap_coding"}
EXTRA_KEYS = {
    "raw": {"dtype", "half"},
    "binary": {"scale_dtype"},  # optional; absent = float32
    "shared": {"bits", "k", "nonzero", "sparse", "index_coding"},  # + GAP_KEYS when sparse
    "sparse_f32": {"nonzero"} | GAP_KEYS,
}
# optional in `shared` records: dense-and-sparse outliers (float16 values + their own gap stream)
OUTLIER_KEYS = {"outliers", "outlier_gap_bits", "outlier_gap_count", "outlier_gap_coding"}
CODINGS = ("packed", "huffman", "huffman_pairs")
ADAPTIVE = "adaptive"  # version 2: context-adaptive range coding (encode/adaptive.py)
MASK_KEYS = {"mask_coding"}  # version 2: a sparse record's positions as an adaptive mask, instead of GAP_KEYS
# The writer tries the adaptive coder only on streams of at most this many binary decisions
# (mask positions, or indices x bits): it costs tens of ns per decision, so huge layers keep
# gap / Huffman coding, which is within 1% of the order-0 bound on their i.i.d.-like masks.
ADAPTIVE_MAX_DECISIONS = 1 << 24
# ... and keeps it only when it saves at least one byte per this many decisions over the best
# other coding: decoding it costs ~20 ns per decision against ~3 ns per symbol for Huffman, so
# a 0.1% gain on a multi-million-position layer is not worth its decode time (on the VGG-size
# benchmark 1 byte per 4096 still picked it for 7 layers: 0.05% smaller, decode 2.2x slower).
ADAPTIVE_DECISIONS_PER_BYTE = 1024
MAX_JSON = MAX_HEADER  # version 2: the inflated JSON header is at most 16 MiB too
# Version 2 headers are zlib streams with this preset dictionary (SPEC.md): the keys and
# values every header repeats, so a small archive's header deflates to a few hundred bytes.
HEADER_DICT = (
    b'{"format":"nsk","version":2,"data_length":,"metadata":{"model":"lenet","config":{},'
    b'"nnshrink_version":"0.1.0","report":{},"info":{"dataset":"fashion-mnist","recipe":"deep-compression"}},'
    b'"records":[{"name":"","shape":[],"encoding":"raw","dtype":"float32","half":false,"offset":,"length":,'
    b'"crc32":,"parts":[["data",]]},{"name":".bias","shape":[],"encoding":"raw","dtype":"float16","half":true,'
    b'"offset":,"length":,"crc32":,"parts":[["data",]]},{"name":".weight","shape":[],"encoding":"shared",'
    b'"bits":,"k":,"nonzero":,"sparse":true,"index_coding":"huffman","mask_coding":"adaptive","offset":,'
    b'"length":,"crc32":,"parts":[["codebook",],["index_lengths",],["index",],["mask",]]}]}')
MAX_PAIR_ALPHABET = 64  # huffman_pairs: alphabets of at most 64 symbols (4096 pair symbols)


def default_gap_bits(shape) -> int:
    """Deep Compression's defaults: 5 bits for fc (ndim <= 2), 8 bits for conv."""
    return 8 if len(shape) >= 3 else 5


def max_declared_elements(file_bytes: int) -> int:
    """The most elements an archive of ``file_bytes`` bytes may declare (SPEC: density cap)."""
    return DENSITY * file_bytes + DENSITY_SLACK
