"""One setting per layer: the lowest total measured cost whose bytes fit a budget.

Whatever the knob (a pruning sparsity under ``prune.target_ratio``, a weight bit width for
post-training mixed precision), each layer offers a few candidate settings, each with a
measured ``cost`` (accuracy drop or reconstruction error: lower is better, summed over
layers) and its measured encoded ``bytes``. ``allocate`` picks one per layer so that the
bytes fit and the summed cost is low.

Exact: the Pareto front of (bytes, cost) over the layers taken one at a time, pruned of
dominated partial choices and of any that cannot fit with the rest at their smallest. Where
that front would grow past ``max_front`` points (many layers with many options), a greedy
on each layer's lower convex hull of (bytes, cost) takes over: from every layer's
lowest-cost option, keep taking the step that saves bytes at the lowest cost per byte
saved until the total fits, then spend the bytes the last step saved beyond the need on
the single swap that lowers the cost most, while one fits. On convex curves (the usual
shape of sensitivity curves: cost rises ever faster as a layer shrinks) the greedy is
optimal at every hull point it passes.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import ConfigError


@dataclass(frozen=True)
class Option:
    """A candidate setting of one layer with what it was measured to cost and weigh."""

    setting: Any
    cost: float
    bytes: int


@dataclass(frozen=True)
class Allocation:
    """The chosen option per layer, the total bytes (``fixed_bytes`` included) and cost."""

    choice: dict[str, Option]
    bytes: int
    cost: float
    budget: int

    def settings(self) -> dict[str, Any]:
        return {name: opt.setting for name, opt in self.choice.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"budget_bytes": self.budget, "bytes": self.bytes, "cost": self.cost,
                "layers": {n: {"setting": o.setting, "cost": o.cost, "bytes": o.bytes} for n, o in self.choice.items()}}


def _check(name: str, options: Sequence[Option]) -> None:
    if not options:
        raise ConfigError(f"layer {name!r} has no candidate options to allocate from")
    for o in options:
        if not isinstance(o, Option):
            raise ConfigError(f"layer {name!r}: candidates must be allocate.Option; got {o!r}")
        if isinstance(o.bytes, bool) or not isinstance(o.bytes, int) or o.bytes < 0:
            raise ConfigError(f"layer {name!r}, setting {o.setting!r}: bytes must be an integer >= 0; got {o.bytes!r}")
        if not isinstance(o.cost, (int, float)) or not math.isfinite(o.cost):
            raise ConfigError(f"layer {name!r}, setting {o.setting!r}: cost must be a finite number; got {o.cost!r}")


def hull(options: Sequence[Option]) -> list[Option]:
    """The options worth taking, from the lowest cost (most bytes) to the fewest bytes,
    along the lower convex hull of (bytes, cost): each step saves bytes at a higher cost
    per byte than the step before."""
    start = min(options, key=lambda o: (o.cost, -o.bytes))
    best: dict[int, Option] = {}  # per size, the cheapest option; nothing larger than the start
    for o in options:
        if o.bytes <= start.bytes and (o.bytes not in best or o.cost < best[o.bytes].cost):
            best[o.bytes] = o
    lower: list[Option] = []
    for o in (best[b] for b in sorted(best)):  # monotone chain, lower hull, bytes ascending
        while len(lower) >= 2:
            a, b = lower[-2], lower[-1]
            if (b.bytes - a.bytes) * (o.cost - a.cost) - (b.cost - a.cost) * (o.bytes - a.bytes) <= 0:
                lower.pop()  # b lies on or above the chord from a to o
            else:
                break
        lower.append(o)
    return lower[::-1]  # the start (lowest cost, most bytes) first


MAX_FRONT = 200_000


def allocate(options: Mapping[str, Sequence[Option]], budget: int, fixed_bytes: int = 0, *,
             max_front: int = MAX_FRONT) -> Allocation:
    """The cheapest choice (one option per layer) whose bytes plus ``fixed_bytes`` are at
    most ``budget``, and among equally cheap ones the largest (an option that saves bytes
    at no measured cost still risks what the measurement does not see); a ConfigError
    naming the smallest reachable size if none fits."""
    if not options:
        raise ConfigError("nothing to allocate: no layers with candidate options")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ConfigError(f"byte budget must be an integer >= 0; got {budget!r}")
    for name, opts in options.items():
        _check(name, opts)
    smallest = fixed_bytes + sum(min(o.bytes for o in opts) for opts in options.values())
    if smallest > budget:
        raise ConfigError(f"a budget of {budget:,} bytes cannot be met: the smallest candidates of every layer "
                          f"take {smallest:,} bytes (fixed {fixed_bytes:,})")
    choice = _pareto(options, budget, fixed_bytes, max_front)
    if choice is None:
        choice = _greedy(options, budget, fixed_bytes)
    total = fixed_bytes + sum(o.bytes for o in choice.values())
    return Allocation(choice, total, float(sum(o.cost for o in choice.values())), budget)


def _pareto(options: Mapping[str, Sequence[Option]], budget: int, fixed_bytes: int,
            max_front: int) -> dict[str, Option] | None:
    """The exact optimum, or None when the front outgrows ``max_front``."""
    names = list(options)
    rest = [0] * (len(names) + 1)  # smallest bytes of the layers after i
    for i in range(len(names) - 1, -1, -1):
        rest[i] = rest[i + 1] + min(o.bytes for o in options[names[i]])
    front: list[tuple[int, float, Any]] = [(fixed_bytes, 0.0, None)]  # (bytes, cost, (link, option))
    for i, name in enumerate(names):
        room = budget - rest[i + 1]
        cand = sorted(((b + o.bytes, c + o.cost, (link, o)) for b, c, link in front for o in options[name]
                       if b + o.bytes <= room), key=lambda t: (t[0], t[1]))
        front = []
        for t in cand:  # bytes ascending: drop a point only if a smaller one is cheaper (ties stay:
            if not front or t[1] <= front[-1][1]:  # among equal costs the larger total wins)
                front.append(t)
        if len(front) > max_front:
            return None
    link = min(front, key=lambda t: (t[1], -t[0]))[2]
    picked = []
    while link is not None:
        link, o = link
        picked.append(o)
    return dict(zip(names, reversed(picked)))


def _greedy(options: Mapping[str, Sequence[Option]], budget: int, fixed_bytes: int) -> dict[str, Option]:
    """Steps along each layer's hull, cheapest cost per byte saved first (module docstring)."""
    chains = {name: hull(opts) for name, opts in options.items()}
    at = {name: 0 for name in chains}
    total = fixed_bytes + sum(c[0].bytes for c in chains.values())
    heap: list[tuple[float, int, str]] = []
    order = {name: i for i, name in enumerate(chains)}

    def push(name: str) -> None:
        c, k = chains[name], at[name]
        if k + 1 < len(c):
            saved = c[k].bytes - c[k + 1].bytes
            heapq.heappush(heap, ((c[k + 1].cost - c[k].cost) / saved, order[name], name))

    for name in chains:
        push(name)
    while total > budget:
        _, _, name = heapq.heappop(heap)  # never empty here: the smallest options fit
        c, k = chains[name], at[name]
        total -= c[k].bytes - c[k + 1].bytes
        at[name] = k + 1
        push(name)
    choice = {name: chains[name][at[name]] for name in chains}
    _spend_leftover(options, choice, total, budget)
    return choice


def _spend_leftover(options: Mapping[str, Sequence[Option]], choice: dict[str, Option], total: int,
                    budget: int) -> int:
    """Where the last greedy step saved more bytes than needed (or a curve is not convex),
    swap in any option, on the hull or not, that lowers the cost and still fits; the
    largest cost reduction first, until none does. Updates ``choice``; the new total."""
    while True:
        best = None
        for name, opts in options.items():
            cur = choice[name]
            for o in opts:
                if o.cost < cur.cost and total - cur.bytes + o.bytes <= budget:
                    gain = cur.cost - o.cost
                    if best is None or gain > best[0]:
                        best = (gain, name, o)
        if best is None:
            return total
        _, name, o = best
        total += o.bytes - choice[name].bytes
        choice[name] = o
