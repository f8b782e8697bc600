"""The real size of tensors: each element counts its own dtype's bytes.

Every compression ratio divides by these numbers, so an int64 tensor counts 8 bytes per
element and a float16 one 2: counting everything as float32 would flatter or wrong the
ratio of any input that is not all float32.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element of a torch dtype, a numpy dtype or an archive dtype name."""
    if isinstance(dtype, str):
        from .format.layout import DTYPES

        return DTYPES[dtype].itemsize
    itemsize = getattr(dtype, "itemsize", None)  # torch.dtype and numpy dtypes both have it
    if itemsize is None:
        itemsize = np.dtype(dtype).itemsize
    return int(itemsize)


def tensor_bytes(t: Any) -> int:
    """Bytes of a torch tensor or numpy array in its own dtype (numel x element size)."""
    return int(t.numel()) * dtype_bytes(t.dtype) if hasattr(t, "numel") else int(np.asarray(t).nbytes)


def state_bytes(state: Mapping[str, Any] | Iterable[Any]) -> int:
    """Bytes of every tensor of a state dict (or any iterable of tensors)."""
    values = state.values() if isinstance(state, Mapping) else state
    return sum(tensor_bytes(t) for t in values)


def is_float_dtype(name: str) -> bool:
    """Whether an archive dtype name is a floating-point type (its size compares to float32)."""
    return name.startswith(("float", "bfloat"))
