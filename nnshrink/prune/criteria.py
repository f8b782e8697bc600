"""Pruning criteria: each maps (weight, current mask) to a new mask that only shrinks.

- ``StdThreshold(q)``: the paper's rule, keep |w| > q * std(layer weight). The std is
  taken over the whole tensor with pruned entries at 0, which barely moves as small
  weights are removed, so a given q means about the same threshold in every round.
- ``TargetSparsity(s)``: per layer, zero the smallest |w| until a fraction s is zero.
- ``GlobalMagnitude(s)``: one magnitude threshold across all the layers it is given.

A criterion never revives a weight: the new mask is always a subset of the current one.
``select`` sees all the layers a criterion is responsible for at once (global needs that).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ..errors import ConfigError


def _keep_top(score: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Mask keeping exactly the ``keep`` highest-``score`` entries among ``mask``."""
    flat = torch.where(mask, score, torch.full_like(score, -1.0)).flatten()
    keep = min(keep, int(mask.sum()))
    out = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep > 0:
        # stable sort: ties broken by position, so the result is deterministic everywhere
        order = torch.sort(flat, descending=True, stable=True).indices[:keep]
        out[order] = True
    return out.view_as(mask) & mask


def _check_sparsity(s) -> float:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < 1 or math.isnan(s):
        raise ConfigError(f"sparsity must be in [0, 1); got {s}")
    return float(s)


class Criterion:
    """Base: subclasses define ``layer_mask`` (per layer) or ``select`` (across layers)."""

    def layer_mask(self, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def select(self, layers: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``{name: (weight, mask)}`` -> ``{name: new mask}``."""
        return {n: self.layer_mask(w, m) & m for n, (w, m) in layers.items()}

    def __call__(self, weight: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones_like(weight, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        return self.select({"": (weight, mask)})[""]

    def scaled(self, frac: float) -> "Criterion":
        """The same criterion ``frac`` of the way from nothing pruned (0) to itself (1)."""
        raise NotImplementedError


@dataclass(frozen=True)
class StdThreshold(Criterion):
    q: float

    def __post_init__(self):
        if isinstance(self.q, bool) or not isinstance(self.q, (int, float)) or not self.q >= 0 or math.isinf(self.q):
            raise ConfigError(f"quality parameter q must be a finite number >= 0; got {self.q}")

    def layer_mask(self, weight, mask):
        w = weight.detach() * mask
        thr = self.q * float(w.float().std()) if w.numel() > 1 else 0.0
        return mask & (w.abs() > thr)

    def scaled(self, frac):
        return StdThreshold(self.q * frac)

    def __str__(self):
        return f"q={self.q:g}"


@dataclass(frozen=True)
class TargetSparsity(Criterion):
    sparsity: float

    def __post_init__(self):
        _check_sparsity(self.sparsity)

    def layer_mask(self, weight, mask):
        keep = int(round((1 - self.sparsity) * weight.numel()))
        return _keep_top(weight.detach().abs().float(), mask, keep)

    def scaled(self, frac):
        # geometric in the kept fraction: rounds remove the same share of what is left
        return TargetSparsity(1 - (1 - self.sparsity) ** frac)

    def __str__(self):
        return f"sparsity={self.sparsity:g}"


@dataclass(frozen=True)
class GlobalMagnitude(Criterion):
    sparsity: float

    def __post_init__(self):
        _check_sparsity(self.sparsity)

    def select(self, layers):
        if not layers:
            return {}
        names = list(layers)
        scores = torch.cat([layers[n][0].detach().abs().float().flatten().cpu() for n in names])
        masks = torch.cat([layers[n][1].flatten().cpu() for n in names])
        keep = int(round((1 - self.sparsity) * scores.numel()))
        kept = _keep_top(scores, masks, keep)
        out, start = {}, 0
        for n in names:
            w, m = layers[n]
            out[n] = kept[start : start + w.numel()].view(w.shape).to(m.device) & m
            start += w.numel()
        return out

    def scaled(self, frac):
        return GlobalMagnitude(1 - (1 - self.sparsity) ** frac)

    def __str__(self):
        return f"global sparsity={self.sparsity:g}"


_SPEC = re.compile(r"^\s*(q|std|sparsity|s|global)\s*[=:]\s*([^\s]+)\s*$", re.IGNORECASE)


def make_criterion(spec) -> Criterion:
    """A criterion from config: a Criterion, a float (target sparsity), or a string
    ``"q=2.5"`` / ``"sparsity=0.9"`` / ``"global=0.92"``."""
    if isinstance(spec, Criterion):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return TargetSparsity(float(spec))
    if isinstance(spec, str):
        m = _SPEC.match(spec)
        if m:
            try:
                value = float(m.group(2))
            except ValueError:
                raise ConfigError(f"pruning criterion {spec!r}: {m.group(2)!r} is not a number") from None
            kind = m.group(1).lower()
            if kind in ("q", "std"):
                return StdThreshold(value)
            return GlobalMagnitude(value) if kind == "global" else TargetSparsity(value)
    raise ConfigError(f"cannot read pruning criterion {spec!r}; use a sparsity in [0, 1), "
                      "'q=<float>', 'sparsity=<float>' or 'global=<float>'")
