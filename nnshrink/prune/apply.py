"""``prune_model``: choose tensors by pattern, run each one's criterion, install masks."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from ..distributed import broadcast_
from ..errors import ConfigError
from ..select import compressible, get_param, owner, resolve
from .criteria import Criterion, make_criterion
from .masks import LayerStats, module_masks, set_mask, track


def resolve_criteria(model: nn.Module, criterion, *, include=None, exclude=None,
                     overrides: Mapping | None = None) -> dict[str, Criterion | None]:
    """``{tensor name: criterion}`` for every compressible tensor (None = leave dense).

    ``criterion`` applies to the tensors ``include`` / ``exclude`` select; ``overrides``
    maps name patterns (see ``nnshrink.select``) to a criterion, a float (target
    sparsity) or None, the first matching pattern wins, and may name any tensor.
    """
    chosen = compressible(model, include, exclude)
    try:
        universe = {**compressible(model), **chosen}
    except ConfigError:  # only explicitly included parameters
        universe = dict(chosen)
    default = make_criterion(criterion) if criterion is not None else None
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides must map tensor patterns to criteria; got {type(overrides).__name__}")
    table = {pat: None if spec is None else make_criterion(spec) for pat, spec in (overrides or {}).items()}
    return resolve(table, universe, lambda t: default if t.name in chosen else None, what="prune override")


@torch.no_grad()
def prune_model(model: nn.Module, criterion=None, *, include=None, exclude=None,
                overrides: Mapping | None = None) -> list[LayerStats]:
    """Prune ``model`` in place; returns one LayerStats per pruned tensor.

    ``criterion``: a Criterion, a float (per-tensor target sparsity) or a string (see
    ``make_criterion``). Masks already present only shrink. Biases and norms stay dense.
    """
    plan = {n: c for n, c in resolve_criteria(model, criterion, include=include, exclude=exclude,
                                              overrides=overrides).items() if c is not None}
    if not plan:
        raise ConfigError("nothing to prune: every selected tensor is overridden to stay dense")
    targets = compressible(model, include=list(plan))  # names are exact patterns
    groups: dict[Criterion, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for t in targets.values():
        crit = plan[t.name]
        w = get_param(model, t).detach()
        m = module_masks(owner(model, t)).get(t.param_name)
        groups.setdefault(crit, {})[t.name] = (w, torch.ones_like(w, dtype=torch.bool) if m is None else m)
    for crit, group in groups.items():
        for name, mask in crit.select(group).items():
            mask = broadcast_(mask.clone())  # under torchrun every rank takes rank 0's mask: replicas never diverge
            t = targets[name]
            set_mask(owner(model, t), mask, t.param_name)
    track(model)
    rows = []
    for t in targets.values():
        w = get_param(model, t)
        rows.append(LayerStats(t.name, tuple(w.shape), w.numel(), int(torch.count_nonzero(w))))
    return rows
