"""Load a runnable model from any file nnshrink writes, into nnshrink's zoo model or the
user's own module: a checkpoint or an .nsk archive. Only tensors and JSON are read, so
an archive of the user's model loads anywhere its class exists, and loading never runs
code from the file."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
import torch.nn as nn

from .errors import CheckpointError, ConfigError
from .format.errors import show
from .io_utils import check_input_file

NSK_MAGIC = b"NSK"
RUNTIMES = ("dense", "compressed", "auto")  # runtime.swap.RUNTIMES, without importing numba here


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


def check_shapes(model: nn.Module, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Refuse tensors that do not fit ``model``: the first key (in the model's order)
    whose shape differs, with both shapes; else the first few missing / unexpected keys."""
    expected = model.state_dict()
    cls = type(model).__name__
    for key, want in expected.items():  # the model's order: the first misfit a reader meets
        if key in shapes and tuple(shapes[key]) != tuple(want.shape):
            raise CheckpointError(f"{source}: tensor {show(key)} has shape {tuple(shapes[key])} there but "
                                  f"{tuple(want.shape)} in {cls}; is it the same model?")
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {', '.join(map(show, missing[:5]))}"] if missing else []) + \
                ([f"unexpected {', '.join(map(show, unexpected[:5]))}"] if unexpected else [])
        raise CheckpointError(f"{source}: tensors do not fit {cls}: " + "; ".join(parts))


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Fill ``model`` from ``state`` strictly (``check_shapes`` first)."""
    check_shapes(model, {k: tuple(t.shape) for k, t in state.items()}, source)
    model.load_state_dict(dict(state), strict=True)
    return model


def load(path: str | os.PathLike, model: nn.Module | None = None, *, runtime: str = "dense",
         max_elements: int | None = None) -> nn.Module:
    """The model an archive (or checkpoint) holds. With ``model`` (the user's freshly
    built module) it is filled from the file and returned; without, nnshrink builds the
    zoo model the file names, and refuses any other. Shapes are checked from the header
    before anything is decoded. ``runtime``: "dense" decodes every layer to torch;
    "compressed" runs every pruned / shared / binary layer from its encoding (an error
    names a layer that has no kernel); "auto" does so where the measured rule says the
    kernel pays (``runtime.swap``). The choice per layer is in ``model.nnshrink_runtime``."""
    from .format import DEFAULT_MAX_ELEMENTS, open_archive, read_archive

    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    budget = DEFAULT_MAX_ELEMENTS if max_elements is None else max_elements
    path = check_input_file(path, CheckpointError)
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module (a freshly built instance); got {type(model).__name__}")
    if not is_archive(path):
        if model is None:
            return load_model(path)[0]
        from .checkpoint import load_tensors

        return load_into(model, load_tensors(path), str(path))
    if model is None:
        from .runtime.decode import load_archive_model

        model = load_archive_model(path, max_elements=budget)[0]
        if runtime == "dense":
            return model
        archive = read_archive(path, max_elements=budget)
    else:
        with open_archive(path, max_elements=budget) as lazy:
            check_shapes(model, lazy.shapes(), str(path))
        archive = read_archive(path, max_elements=budget)
        load_into(model, archive.dense_state(), str(path))
    if runtime != "dense":
        from .runtime.swap import accelerate

        model = accelerate(model, archive.tensors, runtime=runtime, inplace=True)
    return model
