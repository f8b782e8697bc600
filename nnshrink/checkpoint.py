"""Checkpoints as safetensors, with the model's name and config in the metadata.

A file written here rebuilds its own model (``load_checkpoint``); any other safetensors
file still loads as a plain dict of tensors (``load_tensors``). safetensors holds only
tensors and a string map, so loading a file never runs code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from . import __version__
from .errors import CheckpointError
from .io_utils import atomic_path, check_input_file
from .format.errors import show
from .models import build_model, get_spec, state_shapes

META_MODEL = "nnshrink.model"
META_CONFIG = "nnshrink.config"
META_VERSION = "nnshrink.version"
META_INFO = "nnshrink.info"


def save_checkpoint(model: nn.Module, path: str | os.PathLike, model_name: str, config: dict[str, Any],
                    info: dict[str, Any] | None = None, *, allow_nonfinite: bool = False) -> Path:
    """Write ``model.state_dict()`` atomically with (name, config, info) in the metadata.

    A tensor holding NaN or inf (a diverged run) is refused unless ``allow_nonfinite``:
    such a file looks like a model and silently predicts garbage."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if not allow_nonfinite:
        bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
        if bad is not None:
            raise CheckpointError(f"{path}: not written: tensor {bad!r} holds NaN or inf values (training "
                                  "diverged? try a lower learning rate); allow_nonfinite=True saves it anyway")
    meta = {META_MODEL: model_name, META_CONFIG: json.dumps(config, sort_keys=True),
            META_VERSION: __version__, META_INFO: json.dumps(info or {}, sort_keys=True)}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    path = check_input_file(path, CheckpointError)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    read_metadata(path)  # validates the file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read tensors ({exc})") from None


class LazyTensors(Mapping):
    """The tensors of a safetensors file, each read from disk when it is looked up and not
    kept: a pass over a large file (VGG-16: 553 MB) holds one tensor at a time."""

    def __init__(self, path: str | os.PathLike):
        read_metadata(path)  # validates the file
        self.path = str(path)
        with safe_open(self.path, framework="pt") as f:
            self._keys = list(f.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        try:
            with safe_open(self.path, framework="pt") as f:
                return f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{self.path}: cannot read tensor {show(key)} ({exc})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def is_nnshrink_checkpoint(path: str | os.PathLike) -> bool:
    return META_MODEL in read_metadata(path)


def model_from_state(model_name: str, config: dict[str, Any], state: dict[str, torch.Tensor],
                     source: str = "checkpoint") -> nn.Module:
    """Build ``model_name`` with ``config`` and load ``state`` strictly, with clear errors."""
    check_fits(model_name, config, {k: tuple(v.shape) for k, v in state.items()}, source)
    model = build_model(model_name, **config)  # the file's own tensors bound its size
    model.load_state_dict(state, strict=True)
    return model


def check_fits(model_name: str, config: dict[str, Any], shapes: dict[str, tuple[int, ...]],
               source: str = "checkpoint") -> None:
    """Refuse a (model, config) read from a file unless it builds exactly the file's tensors
    (``shapes``), checked on the meta device: a tiny file cannot make nnshrink build a huge model."""
    try:
        get_spec(model_name)
    except Exception as exc:
        raise CheckpointError(f"{source}: names model {show(model_name)}, which nnshrink does not know "
                              f"({str(exc)[:200]})") from None
    try:
        expected = state_shapes(model_name, config)
    except Exception as exc:
        raise CheckpointError(f"{source}: cannot build model {show(model_name)} with config "
                              f"{show(json.dumps(config, default=str))}: {str(exc)[:200]}") from None
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    bad_shapes = [f"{show(k)}: file {shapes[k]} vs model {expected[k]}"
                  for k in expected if k in shapes and tuple(shapes[k]) != expected[k]]
    if missing or unexpected or bad_shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(map(show, missing[:5]))}")
        if unexpected:
            parts.append(f"unexpected {', '.join(map(show, unexpected[:5]))}")
        if bad_shapes:
            parts.append("shape mismatch " + "; ".join(bad_shapes[:5]))
        raise CheckpointError(f"{source}: tensors do not fit model {show(model_name)}: " + "; ".join(parts))


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint names. Returns (model, metadata with parsed config)."""
    meta = read_metadata(path)
    if META_MODEL not in meta:
        raise CheckpointError(f"{path}: no nnshrink model metadata; this is a plain tensor file "
                              "(compress it with --no-retrain, or load it with load_tensors)")
    try:
        config = json.loads(meta.get(META_CONFIG, "{}"))
        info = json.loads(meta.get(META_INFO, "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: model config must be a JSON object, got {type(config).__name__}")
    model = model_from_state(meta[META_MODEL], config, load_tensors(path), source=str(path))
    return model, {"model": meta[META_MODEL], "config": config, "info": info,
                   "version": meta.get(META_VERSION)}
