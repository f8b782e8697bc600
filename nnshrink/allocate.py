"""One setting per layer: the lowest total measured cost whose bytes fit a budget, or the
fewest bytes whose total cost stays within a bound.

Whatever the knob (a pruning sparsity under ``prune.target_ratio``, a weight bit width for
post-training mixed precision, ``nnshrink.ptq.allocate``), each layer offers a few
candidate settings, each with a measured ``cost`` (accuracy drop or reconstruction error:
lower is better, summed over layers) and its measured encoded ``bytes``. ``allocate``
picks one per layer so that the bytes fit and the summed cost is low;
``allocate_within_cost`` so that the cost stays within a bound and the bytes are few.

Exact: the Pareto front of (bytes, cost) over the layers taken one at a time, pruned of
dominated partial choices and of any that cannot fit with the rest at their smallest (their
cheapest, for a cost bound). Where
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


class BudgetError(ConfigError):
    """No choice meets the budget (or the cost bound); ``closest`` is the smallest reachable
    size in bytes (0 for a cost bound)."""

    def __init__(self, message: str, closest: int):
        super().__init__(message)
        self.closest = closest


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


def _validate(options: Mapping[str, Sequence[Option]]) -> None:
    if not options:
        raise ConfigError("nothing to allocate: no layers with candidate options")
    for name, opts in options.items():
        _check(name, opts)


def allocate(options: Mapping[str, Sequence[Option]], budget: int, fixed_bytes: int = 0, *,
             max_front: int = MAX_FRONT) -> Allocation:
    """The cheapest choice (one option per layer) whose bytes plus ``fixed_bytes`` are at
    most ``budget``, and among equally cheap ones the largest (an option that saves bytes
    at no measured cost still risks what the measurement does not see); a BudgetError
    naming the smallest reachable size if none fits."""
    _validate(options)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ConfigError(f"byte budget must be an integer >= 0; got {budget!r}")
    smallest = fixed_bytes + sum(min(o.bytes for o in opts) for opts in options.values())
    if smallest > budget:
        raise BudgetError(f"a budget of {budget:,} bytes cannot be met: the smallest candidates of every layer "
                          f"take {smallest:,} bytes (fixed {fixed_bytes:,})", smallest)
    front = _front(options, fixed_bytes, max_front, byte_room=budget)
    if front is not None:
        choice = _unwind(options, min(front, key=lambda t: (t[1], -t[0]))[2])
    else:
        choice = _greedy(options, budget, fixed_bytes)
    return _allocation(choice, fixed_bytes, budget)


def allocate_within_cost(options: Mapping[str, Sequence[Option]], max_cost: float, fixed_bytes: int = 0, *,
                         max_front: int = MAX_FRONT) -> Allocation:
    """The smallest choice (one option per layer) whose summed cost is at most
    ``max_cost``, and among equally small ones the cheapest; a BudgetError naming the
    least reachable cost if none stays within it."""
    _validate(options)
    if isinstance(max_cost, bool) or not isinstance(max_cost, (int, float)) or math.isnan(max_cost):
        raise ConfigError(f"cost bound must be a number; got {max_cost!r}")
    least = sum(min(o.cost for o in opts) for opts in options.values())
    if least > max_cost:
        raise BudgetError(f"a cost bound of {max_cost:.4g} cannot be met: the cheapest candidates of every layer "
                          f"cost {least:.4g}", 0)
    front = _front(options, fixed_bytes, max_front, cost_room=max_cost)
    if front is not None:
        choice = _unwind(options, min((t for t in front if t[1] <= max_cost), key=lambda t: (t[0], t[1]))[2])
    else:
        choice = _greedy_within_cost(options, max_cost)
    total = fixed_bytes + sum(o.bytes for o in choice.values())
    return _allocation(choice, fixed_bytes, total)


def _allocation(choice: dict[str, Option], fixed_bytes: int, budget: int) -> Allocation:
    total = fixed_bytes + sum(o.bytes for o in choice.values())
    return Allocation(choice, total, float(sum(o.cost for o in choice.values())), budget)


def _front(options: Mapping[str, Sequence[Option]], fixed_bytes: int, max_front: int, *,
           byte_room: int | None = None, cost_room: float | None = None) -> list[tuple] | None:
    """The Pareto front of (bytes, cost, link) over all layers, keeping only partial choices
    that can still meet ``byte_room`` (with the later layers at their smallest) or
    ``cost_room`` (at their cheapest); None when it outgrows ``max_front``."""
    names = list(options)
    rest_bytes, rest_cost = [0] * (len(names) + 1), [0.0] * (len(names) + 1)
    for i in range(len(names) - 1, -1, -1):
        rest_bytes[i] = rest_bytes[i + 1] + min(o.bytes for o in options[names[i]])
        rest_cost[i] = rest_cost[i + 1] + min(o.cost for o in options[names[i]])
    front: list[tuple[int, float, Any]] = [(fixed_bytes, 0.0, None)]  # (bytes, cost, (link, option))
    for i, name in enumerate(names):
        if len(front) * len(options[name]) > 4 * max_front:
            return None
        b_room = math.inf if byte_room is None else byte_room - rest_bytes[i + 1]
        c_room = math.inf if cost_room is None else cost_room - rest_cost[i + 1] + 1e-12
        cand = sorted(((b + o.bytes, c + o.cost, (link, o)) for b, c, link in front for o in options[name]
                       if b + o.bytes <= b_room and c + o.cost <= c_room), key=lambda t: (t[0], t[1]))
        front = []
        for t in cand:  # bytes ascending: drop a point only if a smaller one is cheaper (ties stay:
            if not front or t[1] <= front[-1][1]:  # among equal costs the larger total wins)
                front.append(t)
        if len(front) > max_front:
            return None
    return front


def _unwind(options: Mapping[str, Sequence[Option]], link: Any) -> dict[str, Option]:
    picked = []
    while link is not None:
        link, o = link
        picked.append(o)
    return dict(zip(options, reversed(picked)))


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


def _greedy_within_cost(options: Mapping[str, Sequence[Option]], max_cost: float) -> dict[str, Option]:
    """Steps along each layer's hull, cheapest cost per byte saved first, each taken while
    the summed cost stays within ``max_cost`` (a layer whose next step would break it stops)."""
    chains = {name: hull(opts) for name, opts in options.items()}
    at = {name: 0 for name in chains}
    cost = sum(c[0].cost for c in chains.values())
    heap: list[tuple[float, int, str]] = []
    order = {name: i for i, name in enumerate(chains)}

    def push(name: str) -> None:
        c, k = chains[name], at[name]
        if k + 1 < len(c):
            heapq.heappush(heap, ((c[k + 1].cost - c[k].cost) / (c[k].bytes - c[k + 1].bytes), order[name], name))

    for name in chains:
        push(name)
    while heap:
        _, _, name = heapq.heappop(heap)
        c, k = chains[name], at[name]
        if cost + c[k + 1].cost - c[k].cost <= max_cost:
            cost += c[k + 1].cost - c[k].cost
            at[name] = k + 1
            push(name)
    return {name: chains[name][at[name]] for name in chains}


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
