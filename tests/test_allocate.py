"""The per-layer allocator: cheapest choice within a byte budget (checked against brute force)."""

import itertools
import random

import pytest

from nnshrink.allocate import BudgetError, Option, allocate, allocate_within_cost, hull
from nnshrink.errors import ConfigError


def brute_force(options, budget, fixed=0):
    best = None
    names = list(options)
    for combo in itertools.product(*(options[n] for n in names)):
        size = fixed + sum(o.bytes for o in combo)
        cost = sum(o.cost for o in combo)
        if size <= budget and (best is None or cost < best - 1e-12):
            best = cost
    return best


def convex_layer(rng, n):
    """A sensitivity-like curve: bytes fall, cost rises ever faster."""
    size, cost, slope, out = rng.randint(500, 5000), rng.uniform(-0.01, 0.01), rng.uniform(0, 1e-5), []
    for i in range(n):
        out.append(Option(i, cost, size))
        step = rng.randint(20, 400)
        size -= step
        slope *= rng.uniform(1.2, 3.0)
        cost += slope * step
        if size <= 0:
            break
    return out


def random_layer(rng, n):
    """Any shape at all: sizes and costs drawn at random (not convex, with ties)."""
    return [Option(i, rng.choice([0.0, 0.1, rng.uniform(-0.05, 1)]), rng.randint(0, 3000)) for i in range(n)]


@pytest.mark.parametrize("make", [convex_layer, random_layer])
def test_exact_optimum_within_budget(make):
    rng = random.Random(0)
    for _ in range(150):
        options = {f"l{i}": make(rng, rng.randint(1, 6)) for i in range(rng.randint(1, 4))}
        fixed = rng.choice([0, 123])
        lo = fixed + sum(min(o.bytes for o in v) for v in options.values())
        hi = fixed + sum(max(o.bytes for o in v) for v in options.values())
        budget = rng.randint(lo, hi)
        got = allocate(options, budget, fixed)
        assert got.bytes <= budget
        assert got.bytes == fixed + sum(o.bytes for o in got.choice.values())
        assert got.cost == pytest.approx(brute_force(options, budget, fixed), abs=1e-12)


def test_greedy_fallback_fits_and_is_near_optimal_on_convex_curves():
    rng = random.Random(1)
    exact = 0
    for _ in range(200):
        options = {f"l{i}": convex_layer(rng, rng.randint(2, 6)) for i in range(3)}
        lo = sum(min(o.bytes for o in v) for v in options.values())
        hi = sum(max(o.bytes for o in v) for v in options.values())
        budget = rng.randint(lo, hi)
        got = allocate(options, budget, max_front=1)  # front too large at once: the greedy answers
        assert got.bytes <= budget
        best = brute_force(options, budget)
        assert got.cost >= best - 1e-12
        exact += abs(got.cost - best) < 1e-12
    assert exact >= 150  # optimal at hull points; off them within one step


def test_prunes_the_insensitive_layer():
    options = {
        "robust": [Option(0.0, 0.0, 1000), Option(0.9, 0.001, 100)],
        "fragile": [Option(0.0, 0.0, 1000), Option(0.9, 0.2, 100)],
    }
    got = allocate(options, 1200)
    assert got.settings() == {"robust": 0.9, "fragile": 0.0}
    assert got.bytes == 1100 and got.cost == pytest.approx(0.001)


def test_fits_already_keeps_the_lowest_cost():
    options = {"a": [Option("big", -0.01, 900), Option("small", 0.3, 10)]}
    assert allocate(options, 1000).settings() == {"a": "big"}


def test_fixed_bytes_count_and_infeasible_budget_is_named():
    options = {"a": [Option(0, 0.0, 500), Option(1, 0.1, 200)]}
    assert allocate(options, 600, fixed_bytes=400).settings() == {"a": 1}
    with pytest.raises(ConfigError, match="budget of 550 bytes cannot be met.*600"):
        allocate(options, 550, fixed_bytes=400)


def test_hull_drops_options_above_the_chord_and_larger_than_the_start():
    opts = [Option("a", 0.0, 1000), Option("bad", 0.5, 600), Option("b", 0.2, 500), Option("c", 1.0, 100),
            Option("huge", 0.1, 5000)]
    assert [o.setting for o in hull(opts)] == ["a", "b", "c"]


@pytest.mark.parametrize("options, budget, msg", [
    ({}, 10, "nothing to allocate"),
    ({"a": []}, 10, "'a' has no candidate"),
    ({"a": [Option(0, float("nan"), 1)]}, 10, "cost must be a finite number; got nan"),
    ({"a": [Option(0, 0.0, -1)]}, 10, "bytes must be an integer >= 0; got -1"),
    ({"a": [Option(0, 0.0, 1)]}, -5, "budget must be an integer >= 0; got -5"),
])
def test_bad_input(options, budget, msg):
    with pytest.raises(ConfigError, match=msg):
        allocate(options, budget)


def brute_force_within_cost(options, max_cost, fixed=0):
    """The fewest bytes whose summed cost is within ``max_cost``, and its cost (ties: cheapest)."""
    best = None
    for combo in itertools.product(*options.values()):
        cost = sum(o.cost for o in combo)
        if cost <= max_cost + 1e-12:
            key = (fixed + sum(o.bytes for o in combo), cost)
            best = key if best is None or key < best else best
    return best


@pytest.mark.parametrize("make", [convex_layer, random_layer])
def test_within_cost_is_the_exact_smallest(make):
    rng = random.Random(2)
    for _ in range(150):
        options = {f"l{i}": make(rng, rng.randint(1, 6)) for i in range(rng.randint(1, 4))}
        fixed = rng.choice([0, 77])
        least = sum(min(o.cost for o in v) for v in options.values())
        most = sum(max(o.cost for o in v) for v in options.values())
        bound = rng.uniform(least, most) if most > least else least
        got = allocate_within_cost(options, bound, fixed)
        assert got.cost <= bound + 1e-12
        assert got.bytes == fixed + sum(o.bytes for o in got.choice.values())
        want_bytes, want_cost = brute_force_within_cost(options, bound, fixed)
        assert got.bytes == want_bytes and got.cost == pytest.approx(want_cost, abs=1e-12)


def test_within_cost_greedy_fallback_keeps_the_bound():
    rng = random.Random(3)
    exact = 0
    for _ in range(200):
        options = {f"l{i}": convex_layer(rng, rng.randint(2, 6)) for i in range(3)}
        least = sum(min(o.cost for o in v) for v in options.values())
        most = sum(max(o.cost for o in v) for v in options.values())
        bound = rng.uniform(least, most)
        got = allocate_within_cost(options, bound, max_front=1)
        assert got.cost <= bound + 1e-12
        want_bytes, _ = brute_force_within_cost(options, bound)
        assert got.bytes >= want_bytes
        exact += got.bytes == want_bytes
    assert exact >= 100  # hull points only: close to the optimum, never past the bound


def test_unreachable_budget_and_bound_are_budget_errors_naming_the_closest():
    options = {"a": [Option(0, 0.0, 500), Option(1, 0.4, 200)], "b": [Option(0, 0.1, 50)]}
    with pytest.raises(BudgetError, match="take 350 bytes") as exc:
        allocate(options, 300, fixed_bytes=100)
    assert exc.value.closest == 350 and isinstance(exc.value, ConfigError)
    with pytest.raises(BudgetError, match="cost bound of 0.05 cannot be met.*0.1"):
        allocate_within_cost(options, 0.05)
    assert allocate_within_cost(options, 0.5).settings() == {"a": 1, "b": 0}
    assert allocate_within_cost(options, 0.3).settings() == {"a": 0, "b": 0}
    with pytest.raises(ConfigError, match="cost bound must be a number; got nan"):
        allocate_within_cost(options, float("nan"))
