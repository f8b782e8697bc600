"""Mixed precision under a byte budget or an error bound: ``nnshrink.allocate`` with bits
as the setting.

Each layer offers candidates (bytes, estimated error) measured by compressing it at each
setting; the one allocator that also chooses pruning sparsities for ``prune.target_ratio``
picks one per layer (exact on the Pareto front of (bytes, error), a hull greedy where that
front grows too large). This module only speaks the post-training words: a ``Candidate``
has an ``error``, and the errors name the budget the way ``ptq.compress`` reports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..allocate import MAX_FRONT, BudgetError, Option, allocate as allocate_bytes, allocate_within_cost
from ..errors import ConfigError

__all__ = ["BudgetError", "Candidate", "allocate", "allocate_for_error"]

# Post-training models may have hundreds of layers: a smaller exact front, then the greedy.
PTQ_MAX_FRONT = min(MAX_FRONT, 20_000)


@dataclass(frozen=True)
class Candidate:
    setting: object
    bytes: int
    error: float


def _as_options(options: dict[str, list[Candidate]]) -> dict[str, list[Option]]:
    """Each candidate as an Option whose setting is its index in the layer's list."""
    if not options or any(not c for c in options.values()):
        raise ConfigError("allocation needs at least one candidate for every layer")
    return {name: [Option(i, c.error, c.bytes) for i, c in enumerate(cands)] for name, cands in options.items()}


def _picked(options: dict[str, list[Candidate]], alloc) -> dict[str, Candidate]:
    return {name: options[name][o.setting] for name, o in alloc.choice.items()}


def allocate(options: dict[str, list[Candidate]], budget: int) -> dict[str, Candidate]:
    """The per-layer choice of least total error whose bytes fit ``budget``."""
    opts = _as_options(options)
    smallest = sum(min(c.bytes for c in cands) for cands in options.values())
    if smallest > budget:
        raise BudgetError(f"the budget of {budget} bytes cannot be met: the smallest setting of every layer "
                          f"needs {smallest} bytes", smallest)
    return _picked(options, allocate_bytes(opts, int(budget), max_front=PTQ_MAX_FRONT))


def allocate_for_error(options: dict[str, list[Candidate]], max_error: float) -> dict[str, Candidate]:
    """The per-layer choice of fewest bytes whose summed error stays <= ``max_error``."""
    opts = _as_options(options)
    try:
        alloc = allocate_within_cost(opts, max_error, max_front=PTQ_MAX_FRONT)
    except BudgetError:
        least = sum(min(c.error for c in cands) for cands in options.values())
        raise BudgetError(f"the error bound {max_error:.4g} cannot be met: the best setting of every layer gives "
                          f"{least:.4g}", 0) from None
    return _picked(options, alloc)
