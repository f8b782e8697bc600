"""Re-pack an archive of any readable version into the current format.

Why: archives written before a format change keep their old, larger codings; decoding
the records to the hand-off types and serialising them again gives the bytes today's
writer would produce for the same tensors (bit-exact values, same metadata), so sizes
measured on old archives can be re-measured without retraining.
"""

from __future__ import annotations

import os

from .layout import DEFAULT_MAX_ELEMENTS, default_gap_bits
from .reader import read_archive
from .writer import write_archive


def repack(path_in: str | os.PathLike, path_out: str | os.PathLike, *,
           max_elements: int = DEFAULT_MAX_ELEMENTS) -> int:
    """Read ``path_in`` (validated), write its tensors and metadata to ``path_out`` in the
    current format (atomically; gap widths of gap-coded records kept); return the new size."""
    arch = read_archive(path_in, max_elements=max_elements)
    old = {r["name"]: r["index_bits"]["before"] for r in arch.records
           if r["encoding"] in ("shared", "sparse_f32") and r["index_bits"]["before"]}
    gap_bits = {name: old.get(name, default_gap_bits(t.shape)) for name, t in arch.tensors.items()}
    return write_archive(path_out, arch.tensors, arch.metadata, index_bits=gap_bits)
