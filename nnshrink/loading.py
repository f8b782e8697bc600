"""Load a runnable model from any file nnshrink writes, into nnshrink's zoo model or the
user's own module: a checkpoint or an .nsk archive. Only tensors and JSON are read, so
an archive of the user's model loads anywhere its class exists, without pickle."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from .errors import CheckpointError, ConfigError

NSK_MAGIC = b"NSK"
RUNTIMES = ("dense", "compressed")


def is_archive(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(3) == NSK_MAGIC
    except OSError:
        return False


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """(model, metadata) from a checkpoint or an archive, by the file's first bytes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if is_archive(path):
        from .runtime.decode import load_archive_model

        return load_archive_model(path)
    from .checkpoint import load_checkpoint

    return load_checkpoint(path)


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Fill ``model`` from ``state`` strictly; a tensor that does not fit names its key
    and both shapes, missing / unexpected keys name the first few."""
    expected = model.state_dict()
    cls = type(model).__name__
    for key, t in state.items():
        if key in expected and tuple(t.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{source}: tensor {key!r} has shape {tuple(t.shape)} there but "
                                  f"{tuple(expected[key].shape)} in {cls}; is it the same model?")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {', '.join(map(repr, missing[:5]))}"] if missing else []) + \
                ([f"unexpected {', '.join(map(repr, unexpected[:5]))}"] if unexpected else [])
        raise CheckpointError(f"{source}: tensors do not fit {cls}: " + "; ".join(parts))
    model.load_state_dict(dict(state), strict=True)
    return model


def load(path: str | os.PathLike, model: nn.Module | None = None, *, runtime: str = "dense") -> nn.Module:
    """The model an archive (or checkpoint) holds. With ``model`` (the user's freshly
    built module) it is filled from the file and returned; without, nnshrink builds the
    zoo model the file names, and refuses any other. ``runtime="compressed"`` swaps
    sparse / shared Linear layers for the kernels that run from the compressed form."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module (a freshly built instance); got {type(model).__name__}")
    if not is_archive(path):
        if model is None:
            return load_model(path)[0]
        from .checkpoint import load_tensors

        return load_into(model, load_tensors(path), str(path))
    from .format import read_archive

    archive = read_archive(path)
    if model is None:
        from .runtime.decode import model_from_archive

        model = model_from_archive(archive, str(path))[0]
    else:
        load_into(model, archive.dense_state(), str(path))
    if runtime == "compressed":
        from .runtime.layers import accelerate

        model = accelerate(model, archive.tensors, inplace=True)
    return model
