"""Load a runnable model from any file nnshrink writes: a checkpoint or an .nsk archive."""

from __future__ import annotations

import os
from typing import Any

import torch.nn as nn

from .errors import CheckpointError
from .io_utils import check_input_file

NSK_MAGIC = b"NSK"


def is_archive(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(3) == NSK_MAGIC
    except OSError:
        return False


def load_model(path: str | os.PathLike, *, max_elements: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(model, metadata) from a checkpoint or an archive, by the file's first bytes
    (``max_elements``: the archive decoding budget, default the format's)."""
    path = check_input_file(path, CheckpointError)
    if is_archive(path):
        from .runtime.decode import load_archive_model

        return load_archive_model(path, **({} if max_elements is None else {"max_elements": max_elements}))
    from .checkpoint import load_checkpoint

    return load_checkpoint(path)
