"""Archive -> runnable zoo model or a dict of dense tensors (a user's own model loads
with ``nnshrink.load(path, model=...)``, see loading.py).

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
    """(model, {"model", "config", "info"}) for an archive whose metadata names a zoo model."""
    return model_from_archive(read_archive(path), str(path))


def model_from_archive(arch, source: str) -> tuple[nn.Module, dict[str, Any]]:
    """Build the zoo model ``arch``'s metadata names and fill it; any other model is
    refused with the way to load it (``nnshrink.load(path, model=...)``)."""
    from ..checkpoint import model_from_state

    meta = arch.metadata
    name = meta.get("model")
    info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
    if name is None:
        held = info.get("class")
        raise CheckpointError(f"{source}: holds {'a ' + str(held) if held else 'a model'} that nnshrink does not "
                              "build itself; pass model= (a freshly built instance) to nnshrink.load, or use "
                              "`nnshrink decompress` for the tensors")
    config = meta.get("config") or {}
    model = model_from_state(name, config, arch.dense_state(), source=source)
    return model, {"model": name, "config": config, "info": info, "version": meta.get("nnshrink_version")}
