"""Masks that live in the model: apply, re-apply, remove, report, export.

A pruned layer keeps ``weight`` as a plain Parameter whose pruned entries are exactly
0.0, plus a NON-persistent bool buffer ``weight_mask`` (True = kept), so ``state_dict``
keys stay the user's own and checkpoints never see the mask. Two guards keep a pruned
weight dead while training: a gradient hook zeroes its gradient, and ``reapply_masks``
(pass it to ``fit(after_step=[...])``) re-zeroes it after every optimizer step, so
momentum, weight decay or Adam state cannot revive it. ``remove_masks`` bakes the zeros
in and leaves a plain model.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from ..compressed import SparseTensor
from ..errors import ConfigError

MASK = "weight_mask"
_HOOK_ATTR = "_nnshrink_mask_hook"


@dataclass(frozen=True)
class LayerStats:
    """One row of a sparsity report: a parameter tensor and how much of it survives."""

    name: str
    shape: tuple[int, ...]
    params: int
    nonzero: int

    @property
    def kept(self) -> float:
        """Fraction of entries kept (nonzero)."""
        return self.nonzero / self.params if self.params else 1.0

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "params": self.params,
                "nonzero": self.nonzero, "kept_pct": round(100 * self.kept, 3)}


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules owning a ``weight`` Parameter with >= 2 dims (Linear, ConvNd, ...), by name."""
    out = {}
    for name, mod in model.named_modules():
        w = mod._parameters.get("weight") if hasattr(mod, "_parameters") else None
        if isinstance(w, nn.Parameter) and w.dim() >= 2:
            out[name] = mod
    return out


def match_layers(names: Iterable[str], patterns: Iterable[str] | str, what: str = "layer pattern") -> list[str]:
    """Names matched by any of ``patterns`` (fnmatch on ``name`` or ``name.weight``).

    A pattern that matches nothing is a ConfigError naming it and the known layers.
    """
    names = list(names)
    if isinstance(patterns, str):
        patterns = [patterns]
    hit: list[str] = []
    for pat in patterns:
        if not isinstance(pat, str) or not pat:
            raise ConfigError(f"{what} must be a non-empty string; got {pat!r}")
        found = [n for n in names if fnmatch.fnmatchcase(n, pat) or fnmatch.fnmatchcase(f"{n}.weight", pat)]
        if not found:
            raise ConfigError(f"{what} {pat!r} matches no prunable layer; layers are: {', '.join(names)}")
        hit += [n for n in found if n not in hit]
    return hit


def select_layers(model: nn.Module, layers=None, exclude=None) -> dict[str, nn.Module]:
    """Prunable layers filtered by ``layers`` / ``exclude`` patterns (each must match)."""
    found = prunable_layers(model)
    if not found:
        raise ConfigError(f"model {type(model).__name__} has no prunable weights "
                          "(no module with a weight of 2 or more dimensions)")
    names = list(found)
    if layers is not None:
        names = match_layers(found, layers)
    if exclude is not None:
        dropped = set(match_layers(found, exclude, "exclude pattern"))
        names = [n for n in names if n not in dropped]
    if not names:
        raise ConfigError("layers / exclude leave no layer to prune")
    return {n: found[n] for n in names}


def get_mask(module: nn.Module) -> torch.Tensor | None:
    return getattr(module, MASK, None) if MASK in module._buffers else None


def _grad_hook(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def hook(grad: torch.Tensor) -> torch.Tensor:
        mask = module._buffers.get(MASK)
        return grad if mask is None else grad * mask.to(grad.dtype)

    return hook


@torch.no_grad()
def set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Install (or replace) ``module.weight_mask`` and zero the pruned weights."""
    w = module.weight
    mask = torch.as_tensor(mask, device=w.device).to(torch.bool)
    if mask.shape != w.shape:
        raise ConfigError(f"mask shape {tuple(mask.shape)} does not fit weight {tuple(w.shape)}")
    if MASK in module._buffers:
        module._buffers[MASK] = mask
    else:
        if hasattr(module, MASK):
            raise ConfigError(f"{type(module).__name__} already has an attribute {MASK!r}")
        module.register_buffer(MASK, mask, persistent=False)
    if getattr(module, _HOOK_ATTR, None) is None:
        setattr(module, _HOOK_ATTR, w.register_hook(_grad_hook(module)))
    w.mul_(mask)


def masked_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if MASK in m._buffers}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Install masks by layer name (as ``named_modules`` spells it, or ``name.weight``)."""
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        key = name[: -len(".weight")] if name.endswith(".weight") and name not in mods else name
        if key not in mods or not isinstance(mods[key]._parameters.get("weight"), nn.Parameter):
            raise ConfigError(f"no layer {name!r} with a weight in the model")
        set_mask(mods[key], mask)


@torch.no_grad()
def reapply_masks(model: nn.Module) -> None:
    """Zero every pruned weight again; an ``after_step`` hook for ``nnshrink.train.fit``."""
    for mod in masked_modules(model).values():
        mask = mod._buffers[MASK]
        mod.weight.mul_(mask.to(mod.weight.device))


def mask_hook(model: nn.Module) -> Callable[[nn.Module], None]:
    """The after-step hook to hand to ``fit``; refuses a model that has no masks."""
    if not masked_modules(model):
        raise ConfigError("model has no pruning masks; call prune_model first")
    return reapply_masks


@torch.no_grad()
def remove_masks(model: nn.Module) -> nn.Module:
    """Bake the zeros into ``weight`` and drop masks and hooks: a plain model again."""
    for mod in masked_modules(model).values():
        mod.weight.mul_(mod._buffers[MASK])
        del mod._buffers[MASK]
        handle = getattr(mod, _HOOK_ATTR, None)
        if handle is not None:
            handle.remove()
            delattr(mod, _HOOK_ATTR)
    return model


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{layer name: bool mask}`` for every masked layer (copies)."""
    return {n: m._buffers[MASK].clone() for n, m in masked_modules(model).items()}


def sparsity_report(model: nn.Module, *, include_dense: bool = True) -> list[LayerStats]:
    """One row per parameter tensor (weights and biases): shape, params, nonzero, kept."""
    rows = []
    for name, p in model.named_parameters():
        if not include_dense and p.dim() < 2:
            continue
        rows.append(LayerStats(name, tuple(p.shape), p.numel(), int(torch.count_nonzero(p.detach()))))
    return rows


def total_kept(rows: Iterable[LayerStats]) -> tuple[int, int, float]:
    """(params, nonzero, kept fraction) summed over ``rows``."""
    rows = list(rows)
    params = sum(r.params for r in rows)
    nonzero = sum(r.nonzero for r in rows)
    return params, nonzero, (nonzero / params if params else 1.0)


def export_sparse(model: nn.Module) -> dict[str, SparseTensor]:
    """``{"<layer>.weight": SparseTensor}`` for every masked layer; the rest stays dense."""
    out = {}
    for name, mod in masked_modules(model).items():
        w = mod.weight.detach().to("cpu", torch.float32).numpy()
        mask = mod._buffers[MASK].to("cpu").numpy().astype(bool)
        key = f"{name}.weight" if name else "weight"
        out[key] = SparseTensor(tuple(w.shape), np.ascontiguousarray(mask), np.ascontiguousarray(w[mask]))
    return out


def dropout_for(d_original: float, c_original: float, c_retained: float) -> float:
    """The paper's retraining dropout: D_r = D_o * sqrt(C_r / C_o)."""
    if not 0 <= d_original < 1:
        raise ConfigError(f"dropout must be in [0, 1); got {d_original}")
    if c_original <= 0 or c_retained < 0 or c_retained > c_original:
        raise ConfigError(f"connection counts must satisfy 0 <= retained <= original, original > 0; "
                          f"got original={c_original}, retained={c_retained}")
    return d_original * math.sqrt(c_retained / c_original)


def scale_dropout(model: nn.Module, d_original: float | None = None) -> float | None:
    """Set ``model.dropout`` (a float, as in the LeNets) from the masked layers' kept fraction.

    Returns the new rate, or None if the model has no float ``dropout`` attribute.
    """
    d = getattr(model, "dropout", None)
    if not isinstance(d, float) or isinstance(d, bool):
        return None
    d_o = d if d_original is None else d_original
    mods = masked_modules(model)
    if not mods:
        return d
    c_o = sum(m.weight.numel() for m in mods.values())
    c_r = sum(int(m._buffers[MASK].sum()) for m in mods.values())
    model.dropout = dropout_for(d_o, c_o, c_r)
    return model.dropout
