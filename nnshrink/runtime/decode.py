"""Archive -> runnable model (for the models nnshrink knows) or a dict of dense tensors.

Binary records decode to scales * sign as float; nnshrink's binary layers re-binarise
these identically (sign of the value, mean magnitude per filter).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..format import read_archive


def load_archive_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of the archive, decoded dense (works for any archive)."""
    return read_archive(path).dense_state()


def load_archive_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """(model, {"model", "config", "info"}) for an archive whose metadata names a known model."""
    from ..checkpoint import model_from_state

    arch = read_archive(path)
    meta = arch.metadata
    name = meta.get("model")
    if name is None:
        raise CheckpointError(f"{path}: this archive holds a model nnshrink does not know (metadata model is null); "
                              "use `nnshrink decompress` or nnshrink.runtime.decode.load_archive_tensors")
    config = meta.get("config") or {}
    info = meta.get("info") or {}
    model = model_from_state(name, config, arch.dense_state(), source=str(path))
    return model, {"model": name, "config": config, "info": info if isinstance(info, dict) else {},
                   "version": meta.get("nnshrink_version")}
