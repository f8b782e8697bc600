"""Mixed precision under a byte budget: one setting per layer, the least total error.

Each layer offers candidates (bytes, estimated error) measured by compressing it at each
setting. Minimising sum(error) subject to sum(bytes) <= budget is a multiple-choice
knapsack; the Lagrangian relaxation (every layer picks argmin error + lam * bytes, lam
bisected until the bytes fit) solves it exactly at the points of the lower convex hull,
which is what a per-layer rate-distortion trade needs, in O(layers * candidates) a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Candidate:
    setting: object
    bytes: int
    error: float


class BudgetError(ConfigError):
    """The budget cannot be met; ``closest`` is the smallest reachable size in bytes."""

    def __init__(self, message: str, closest: int):
        super().__init__(message)
        self.closest = closest


def _pick(options: dict[str, list[Candidate]], lam: float) -> dict[str, Candidate]:
    return {name: min(cands, key=lambda c: (c.error + lam * c.bytes, c.bytes)) for name, cands in options.items()}


def allocate(options: dict[str, list[Candidate]], budget: int) -> dict[str, Candidate]:
    """The per-layer choice of least total error whose bytes fit ``budget`` (hull points)."""
    if not options or any(not c for c in options.values()):
        raise ConfigError("allocation needs at least one candidate for every layer")
    smallest = sum(min(c.bytes for c in cands) for cands in options.values())
    if smallest > budget:
        raise BudgetError(f"the budget of {budget} bytes cannot be met: the smallest setting of every layer "
                          f"needs {smallest} bytes", smallest)
    best = _pick(options, 0.0)
    if sum(c.bytes for c in best.values()) <= budget:
        return best
    lo, hi = 0.0, 1.0
    while sum(c.bytes for c in _pick(options, hi).values()) > budget:
        hi *= 4.0
        if math.isinf(hi):
            return _pick(options, math.inf)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if sum(c.bytes for c in _pick(options, mid).values()) > budget:
            lo = mid
        else:
            hi = mid
    return _pick(options, hi)


def allocate_for_error(options: dict[str, list[Candidate]], max_error: float) -> dict[str, Candidate]:
    """The per-layer choice of fewest bytes whose summed error stays <= ``max_error`` (hull points)."""
    if not options or any(not c for c in options.values()):
        raise ConfigError("allocation needs at least one candidate for every layer")
    least = sum(min(c.error for c in cands) for cands in options.values())
    if least > max_error:
        raise BudgetError(f"the error bound {max_error:.4g} cannot be met: the best setting of every layer gives "
                          f"{least:.4g}", 0)
    lo, hi = 0.0, 1.0
    while sum(c.error for c in _pick(options, hi).values()) <= max_error:
        hi *= 4.0
        if hi > 1e300:
            return _pick(options, hi)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if sum(c.error for c in _pick(options, mid).values()) <= max_error:
            lo = mid
        else:
            hi = mid
    return _pick(options, lo)
