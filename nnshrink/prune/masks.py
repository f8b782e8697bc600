"""Masks that live in the model: install, keep, remove, report, export.

A pruned tensor (any compressible Target: ``weight``, ``in_proj_weight``, ...) stays a
plain Parameter whose pruned entries are exactly 0.0, beside a NON-persistent bool buffer
``<param>_mask`` on the owning module (True = kept), so ``state_dict`` keys stay the
user's own and checkpoints never see the mask.

Pruned weights stay dead through ANY optimizer loop with nothing to call: a global
optimizer step post-hook re-zeroes the masked parameters of that optimizer after every
``step()`` (momentum whose buffers predate pruning, Adam moments, weight decay, GradScaler
all move a pruned weight, the hook puts it back at 0.0), and a gradient hook zeroes the
pruned gradients (so clipping norms and Adam moments ignore them). Nothing stored in the
module is a closure: module-level forward pre-hooks (on each masked module and on the
pruned model) re-register the masked modules in the live set and re-install the gradient
hooks after ``copy.deepcopy`` or ``torch.load`` of the whole module. ``remove_masks`` bakes the zeros in and leaves a plain model.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

from ..compressed import SparseTensor
from ..errors import ConfigError

SUFFIX = "_mask"
MASK = "weight" + SUFFIX  # the mask of a module's ``weight``

_LIVE: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # modules with masks, seen in this process
_SEEN: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # pruned models already scanned for masks
_GRAD_HOOKS = WeakIdKeyDictionary()  # masked Parameter -> handle of its gradient hook


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


def mask_name(param_name: str) -> str:
    """The buffer that holds the mask of ``param_name`` on its module."""
    return param_name + SUFFIX


def module_masks(module: nn.Module) -> dict[str, torch.Tensor]:
    """``{param name: mask}`` for the masked parameters of ``module`` itself."""
    out = {}
    for key, buf in module._buffers.items():
        p_name = key[: -len(SUFFIX)]
        if (key.endswith(SUFFIX) and buf is not None and buf.dtype == torch.bool
                and module._parameters.get(p_name) is not None and key in module._non_persistent_buffers_set):
            out[p_name] = buf
    return out


def masked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules holding at least one mask, by name."""
    return {n: m for n, m in model.named_modules() if module_masks(m)}


def _zero_masked_grad(ref: weakref.ref, p_name: str, grad: torch.Tensor) -> torch.Tensor:
    mod = ref()
    mask = None if mod is None else mod._buffers.get(mask_name(p_name))
    return grad if mask is None else grad * mask.to(grad.device, grad.dtype)


def _track(module: nn.Module, args=None) -> None:
    """Forward pre-hook of a masked module (also run when a mask is set): keep it in the
    live set and its masked parameters' gradient hooks installed, also in copies of it."""
    _LIVE.add(module)
    for p_name in module_masks(module):
        p = module._parameters[p_name]
        if p.requires_grad and p not in _GRAD_HOOKS:
            hook = functools.partial(_zero_masked_grad, weakref.ref(module), p_name)
            hook.__torch_unserializable__ = True  # re-installed by this pre-hook after loading
            _GRAD_HOOKS[p] = p.register_hook(hook)


def _track_tree(root: nn.Module, args=None) -> None:
    """Forward pre-hook of a pruned model: once per model object (a copy is a new one),
    track every masked submodule, also those whose forward never runs (the out_proj of
    nn.MultiheadAttention is read as a tensor, never called)."""
    if root in _SEEN:
        return
    _SEEN.add(root)
    for mod in root.modules():
        if module_masks(mod):
            _track(mod)


_track = torch.compiler.disable(_track)  # bookkeeping only: never traced into a graph
_track_tree = torch.compiler.disable(_track_tree)
_HOOKS = (_track, _track_tree)


def track(model: nn.Module) -> None:
    """Keep every mask in ``model`` live through copies and reloads (``prune_model`` and
    ``apply_masks`` call this; ``set_mask`` covers only the module it is given)."""
    if _track_tree not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(_track_tree)
    _SEEN.discard(model)
    _track_tree(model)


@torch.no_grad()
def _rezero_after_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Global optimizer step post-hook: the step's masked parameters back to 0.0."""
    if not _LIVE:
        return
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for mod in list(_LIVE):
        for p_name, mask in module_masks(mod).items():
            p = mod._parameters[p_name]
            if id(p) in stepped:
                p.mul_(mask)


_STEP_HOOK = register_optimizer_step_post_hook(_rezero_after_step)


def _drop_grad_hook(p: torch.Tensor) -> None:
    handle = _GRAD_HOOKS.pop(p, None)
    if handle is not None:
        handle.remove()


@torch.no_grad()
def set_mask(module: nn.Module, mask: torch.Tensor, param_name: str = "weight") -> None:
    """Install (or replace) the mask of ``module.<param_name>`` and zero its pruned entries."""
    p = module._parameters.get(param_name)
    if not isinstance(p, nn.Parameter):
        raise ConfigError(f"{type(module).__name__} has no parameter {param_name!r} to mask")
    if param_name + "_codebook" in module._parameters:
        raise ConfigError(f"{type(module).__name__}.{param_name} is already shared; prune before sharing")
    mask = torch.as_tensor(mask, device=p.device).to(torch.bool)
    if mask.shape != p.shape:
        raise ConfigError(f"mask shape {tuple(mask.shape)} does not fit {param_name} {tuple(p.shape)}")
    key = mask_name(param_name)
    if key in module._buffers:
        module._buffers[key] = mask
    else:
        if hasattr(module, key):
            raise ConfigError(f"{type(module).__name__} already has an attribute {key!r}")
        module.register_buffer(key, mask, persistent=False)
    if _track not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_track)
    _track(module)
    p.mul_(mask)


def _masked_tensors(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """``{state_dict name: (owning module, param name)}`` for every masked tensor."""
    out = {}
    for name, mod in model.named_modules():
        for p_name in module_masks(mod):
            out[f"{name}.{p_name}" if name else p_name] = (mod, p_name)
    return out


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Install masks by tensor name (``layer.weight``, ``attn.in_proj_weight``; a bare
    module name means its ``weight``)."""
    params = dict(model.named_parameters())
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        key = name if name in params else f"{name}.weight"
        if key not in params:
            raise ConfigError(f"no parameter {name!r} in the model")
        mod_name, _, p_name = key.rpartition(".")
        set_mask(mods[mod_name], mask, p_name)
    track(model)


@torch.no_grad()
def reapply_masks(model: nn.Module) -> None:
    """Zero every pruned weight again (the step hook does this after every optimizer step;
    call it only after changing weights outside an optimizer)."""
    for mod, p_name in _masked_tensors(model).values():
        mod._parameters[p_name].mul_(module_masks(mod)[p_name])


@torch.no_grad()
def remove_masks(model: nn.Module) -> nn.Module:
    """Bake the zeros into the parameters and drop masks and hooks: a plain model again."""
    for mod in model.modules():
        for p_name, mask in module_masks(mod).items():
            p = mod._parameters[p_name]
            p.mul_(mask)
            del mod._buffers[mask_name(p_name)]
            _drop_grad_hook(p)
        for key, hook in list(mod._forward_pre_hooks.items()):
            if hook in _HOOKS:
                del mod._forward_pre_hooks[key]
        _LIVE.discard(mod)
    return model


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{tensor name: bool mask}`` for every masked tensor (copies)."""
    return {n: module_masks(m)[p].clone() for n, (m, p) in _masked_tensors(model).items()}


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


@torch.no_grad()
def export_sparse(model: nn.Module) -> dict[str, SparseTensor]:
    """``{tensor name: SparseTensor}`` for every masked tensor; the rest stays dense."""
    out = {}
    for name, (mod, p_name) in _masked_tensors(model).items():
        w = mod._parameters[p_name].detach().to("cpu", torch.float32).numpy()
        mask = module_masks(mod)[p_name].to("cpu").numpy().astype(bool)
        out[name] = SparseTensor(tuple(w.shape), np.ascontiguousarray(mask), np.ascontiguousarray(w[mask]))
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
    masks = current_masks(model)
    if not masks:
        return d
    c_o = sum(m.numel() for m in masks.values())
    c_r = sum(int(m.sum()) for m in masks.values())
    model.dropout = dropout_for(d_o, c_o, c_r)
    return model.dropout
