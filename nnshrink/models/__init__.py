"""Model registry: every network nnshrink knows, by lower-case name.

A model is registered with a builder ``fn(**config) -> nn.Module`` and its default
config; checkpoints store (name, config) in their metadata so a file rebuilds its own
model. Other modules add models with ``@register_model(...)`` in their own files and list
the module in ``_MODEL_MODULES``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

from ..errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = (1, 28, 28)
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}
_MODEL_MODULES = ("lenet", "binary", "squeezenet", "mobilenet", "vgg", "factorized")
_loaded = False


def register_model(name: str, *, input_shape=(1, 28, 28), description: str = "", **defaults):
    """Decorator: register ``builder`` under ``name`` with default config ``defaults``."""

    def wrap(builder):
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, dict(defaults), tuple(input_shape), description)
        return builder

    return wrap


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _MODEL_MODULES:  # every family ships with nnshrink: a failed import is a bug, never skipped
        importlib.import_module(f"{__name__}.{mod}")


def model_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    return _REGISTRY[name]


def resolve_config(name: str, **overrides) -> dict[str, Any]:
    """The full config of ``name``: defaults updated by ``overrides``; unknown keys fail."""
    spec = get_spec(name)
    unknown = sorted(set(overrides) - set(spec.defaults))
    if unknown:
        raise ConfigError(f"model {name!r} has no option {', '.join(map(repr, unknown))}; "
                          f"options: {', '.join(sorted(spec.defaults)) or '(none)'}")
    return {**spec.defaults, **overrides}


def state_shapes(name: str, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes ``name`` built with ``config`` would have, found on the meta
    device (no memory spent): a config read from a file is checked against the file's own
    tensors before the model is built for real."""
    import torch

    with torch.device("meta"):
        model = build_model(name, **config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def build_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; ``overrides`` must be keys of its default config."""
    spec = get_spec(name)
    return spec.builder(**resolve_config(name, **overrides))
