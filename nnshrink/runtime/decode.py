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
from ..format import DEFAULT_MAX_ELEMENTS, open_archive, read_archive


def load_archive_tensors(path: str | os.PathLike, *,
                         max_elements: int = DEFAULT_MAX_ELEMENTS) -> dict[str, torch.Tensor]:
    """Every tensor of the archive, decoded dense (works for any archive)."""
    return read_archive(path, max_elements=max_elements).dense_state()


def load_archive_model(path: str | os.PathLike, *,
                       max_elements: int = DEFAULT_MAX_ELEMENTS) -> tuple[nn.Module, dict[str, Any]]:
    """(model, {"model", "config", "info"}) for an archive whose metadata names a known model.

    The model and config the header names are checked against the header's shapes before
    anything is decoded or built."""
    from ..checkpoint import check_fits, model_from_state

    with open_archive(path, max_elements=max_elements) as lazy:
        meta, shapes = lazy.metadata, lazy.shapes()
    name = meta.get("model")
    if name is None:
        raise CheckpointError(f"{path}: this archive holds a model nnshrink does not know (metadata model is null); "
                              "use `nnshrink decompress` or nnshrink.runtime.decode.load_archive_tensors")
    config = meta.get("config") or {}
    check_fits(name, config, shapes, source=str(path))
    info = meta.get("info") or {}
    model = model_from_state(name, config, load_archive_tensors(path, max_elements=max_elements), source=str(path))
    return model, {"model": name, "config": config, "info": info if isinstance(info, dict) else {},
                   "version": meta.get("nnshrink_version")}
