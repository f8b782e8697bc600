"""``prune_model``: choose layers by pattern, run each layer's criterion, install masks."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import ConfigError
from .criteria import Criterion, make_criterion
from .masks import LayerStats, get_mask, match_layers, select_layers, set_mask


def resolve_criteria(model: nn.Module, criterion, *, layers=None, exclude=None,
                     overrides: Mapping | None = None) -> dict[str, Criterion | None]:
    """``{layer name: criterion}`` for every selected layer (None = leave dense).

    ``overrides`` maps name patterns to a criterion, a float (target sparsity) or None;
    the first matching pattern wins, and an override may name a layer outside ``layers``.
    """
    chosen = select_layers(model, layers, exclude)
    default = make_criterion(criterion) if criterion is not None else None
    plan: dict[str, Criterion | None] = {n: default for n in chosen}
    if overrides:
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"overrides must map layer patterns to criteria; got {type(overrides).__name__}")
        all_layers = list(select_layers(model))
        done: set[str] = set()
        for pat, spec in overrides.items():
            crit = None if spec is None else make_criterion(spec)
            for n in match_layers(all_layers, pat, "override pattern"):
                if n not in done:
                    plan[n] = crit
                    done.add(n)
    return plan


@torch.no_grad()
def prune_model(model: nn.Module, criterion=None, *, layers=None, exclude=None,
                overrides: Mapping | None = None) -> list[LayerStats]:
    """Prune ``model`` in place; returns one LayerStats per pruned layer's weight.

    ``criterion``: a Criterion, a float (per-layer target sparsity) or a string (see
    ``make_criterion``). Masks already present only shrink. Biases stay dense.
    """
    plan = resolve_criteria(model, criterion, layers=layers, exclude=exclude, overrides=overrides)
    mods = dict(model.named_modules())
    groups: dict[Criterion, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for name, crit in plan.items():
        if crit is None:
            continue
        w = mods[name].weight
        m = get_mask(mods[name])
        if m is None:
            m = torch.ones_like(w, dtype=torch.bool)
        groups.setdefault(crit, {})[name] = (w.detach(), m)
    if not groups:
        raise ConfigError("nothing to prune: every selected layer is overridden to stay dense")
    rows = []
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    for crit, layer_group in groups.items():
        for name, mask in crit.select(layer_group).items():
            if distributed:  # every rank takes rank 0's mask, so DDP replicas never diverge
                flat = mask.to(torch.uint8).contiguous()
                dist.broadcast(flat, src=0)
                mask = flat.to(torch.bool)
            set_mask(mods[name], mask)
    for name, crit in plan.items():
        if crit is None:
            continue
        w = mods[name].weight
        label = f"{name}.weight" if name else "weight"
        rows.append(LayerStats(label, tuple(w.shape), w.numel(), int(torch.count_nonzero(w))))
    return rows
