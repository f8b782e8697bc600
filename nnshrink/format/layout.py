"""Constants of format/SPEC.md shared by the writer and the reader."""

import numpy as np

MAGIC = b"NSK\n"
VERSION = 1
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
MAX_PAIR_ALPHABET = 64  # huffman_pairs: alphabets of at most 64 symbols (4096 pair symbols)


def default_gap_bits(shape) -> int:
    """Deep Compression's defaults: 5 bits for fc (ndim <= 2), 8 bits for conv."""
    return 8 if len(shape) >= 3 else 5


def max_declared_elements(file_bytes: int) -> int:
    """The most elements an archive of ``file_bytes`` bytes may declare (SPEC: density cap)."""
    return DENSITY * file_bytes + DENSITY_SLACK
