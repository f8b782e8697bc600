"""Which tensors of a model are compressible, and per-tensor values from name patterns.

Every stage (pruning, sharing, the encoder) asks this module, so they agree on what a
"layer" is: the weight of Linear, ConvNd / ConvTransposeNd and Embedding, the input
projection of ``nn.MultiheadAttention`` (a parameter, not a module's ``weight``), and any
other >= 2-D floating parameter that an ``include`` pattern names. Norm layers and
biases are never compressible; binary layers have their own stage.

Patterns (fnmatch) match a tensor's full state_dict name, its module's name, or a kind
("fc", "conv", "embedding", "attention", "param"); in a table the first match wins.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

import torch.nn as nn

from .errors import ConfigError

KINDS = ("fc", "conv", "embedding", "attention", "param")
DEFAULT_BITS = {"fc": 5, "conv": 8, "embedding": 5, "attention": 5, "param": 5}
DEFAULT_INDEX_BITS = {"fc": 5, "conv": 8, "embedding": 5, "attention": 5, "param": 5}

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
          *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
_ATTENTION_PARAMS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")

V = TypeVar("V")


@dataclass(frozen=True)
class Target:
    """One compressible tensor of a model."""

    name: str  # its state_dict key
    module_name: str  # owning module path ("" for the root)
    param_name: str  # attribute on that module
    kind: str  # one of KINDS
    shape: tuple[int, ...]


def _binary_layers() -> tuple[type, ...]:
    from .quantize.binary import BINARY_LAYERS  # late: binary is a stage of its own

    return BINARY_LAYERS


def _builtin_kind(module: nn.Module, param_name: str) -> str | None:
    if isinstance(module, _binary_layers()):
        return None
    if param_name == "weight":
        if isinstance(module, nn.Linear):
            return "fc"
        if isinstance(module, nn.modules.conv._ConvNd):
            return "conv"
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            return "embedding"
    if isinstance(module, nn.MultiheadAttention) and param_name in _ATTENTION_PARAMS:
        return "attention"
    return None


def _patterns(patterns, what: str) -> list[str]:
    if isinstance(patterns, str):
        patterns = [patterns]
    out = list(patterns)
    for pat in out:
        if not isinstance(pat, str) or not pat:
            raise ConfigError(f"{what} pattern must be a non-empty string; got {pat!r}")
    return out


def _hits(pat: str, t: Target) -> bool:
    return (pat == t.kind or fnmatch.fnmatchcase(t.name, pat)
            or (t.module_name != "" and fnmatch.fnmatchcase(t.module_name, pat)))


def _no_match(pat: str, targets: Mapping[str, Target], what: str) -> ConfigError:
    return ConfigError(f"{what} pattern {pat!r} matches no compressible tensor; "
                       f"tensors are: {', '.join(targets) or '(none)'}")


def compressible(model: nn.Module, include=None, exclude=None) -> dict[str, Target]:
    """The compressible tensors of ``model`` by state_dict key, in model order.

    ``include`` patterns narrow the built-in set and may add any other >= 2-D floating
    parameter by its full name (kind "param"); ``exclude`` patterns drop tensors. Each
    pattern must match something.
    """
    found: dict[str, Target] = {}
    extra: dict[str, Target] = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, _NORMS):
            continue
        for p_name, p in mod._parameters.items():
            if p is None:
                continue
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            kind = _builtin_kind(mod, p_name)
            if kind is not None:
                found[name] = Target(name, mod_name, p_name, kind, tuple(p.shape))
            elif (p.dim() >= 2 and p.is_floating_point() and "bias" not in p_name
                  and not isinstance(mod, _binary_layers())):
                extra[name] = Target(name, mod_name, p_name, "param", tuple(p.shape))
    if include is not None:
        chosen: set[str] = set()
        for pat in _patterns(include, "include"):
            hit = [n for n, t in found.items() if _hits(pat, t)]
            hit += [n for n in extra if fnmatch.fnmatchcase(n, pat)]  # extras only by full name
            if not hit:
                raise _no_match(pat, {**found, **extra}, "include")
            chosen.update(hit)
        order = [n for n, _ in model.named_parameters() if n in chosen]
        found = {n: found.get(n) or extra[n] for n in order}
    if exclude is not None:
        dropped = set(match(exclude, found, what="exclude"))
        found = {n: t for n, t in found.items() if n not in dropped}
    if not found:
        raise ConfigError(f"model {type(model).__name__} has no compressible tensor (Linear, Conv, "
                          "Embedding or MultiheadAttention weight) left to compress")
    return found


def match(patterns, targets: Mapping[str, Target], *, what: str) -> list[str]:
    """Names of ``targets`` hit by any of ``patterns`` (in target order); each must hit."""
    hit: set[str] = set()
    for pat in _patterns(patterns, what):
        names = [n for n, t in targets.items() if _hits(pat, t)]
        if not names:
            raise _no_match(pat, targets, what)
        hit.update(names)
    return [n for n in targets if n in hit]


def resolve(patterns: Mapping[str, V] | None, targets: Mapping[str, Target],
            default: V | Callable[[Target], V], *, what: str) -> dict[str, V]:
    """A value per target: the first pattern that matches it, else ``default`` (called
    with the Target when callable). A pattern that matches no target is a ConfigError."""
    if patterns is not None and not isinstance(patterns, Mapping):
        raise ConfigError(f"{what} must map name patterns to values; got {type(patterns).__name__}")
    table = dict(patterns or {})
    for pat in _patterns(list(table), what):
        if not any(_hits(pat, t) for t in targets.values()):
            raise _no_match(pat, targets, what)
    out = {}
    for name, t in targets.items():
        pat = next((p for p in table if _hits(p, t)), None)
        if pat is not None:
            out[name] = table[pat]
        else:
            out[name] = default(t) if callable(default) else default
    return out


def owner(model: nn.Module, target: Target) -> nn.Module:
    """The module that holds ``target`` as a parameter."""
    return model.get_submodule(target.module_name) if target.module_name else model


def get_param(model: nn.Module, target: Target) -> nn.Parameter:
    """``target``'s Parameter itself (also when a shared layer's attribute is computed)."""
    return owner(model, target)._parameters[target.param_name]

