"""Per-layer sparsities for a target compression ratio (``prune.target_ratio``).

Each prunable tensor gets candidate sparsities, each with two measurements: its cost, the
metric lost with that tensor alone pruned (the sensitivity sweep, no retraining), and its
bytes, the real encoded size of that tensor at that sparsity under the rest of the recipe
(k-means at the share stage's bits, the searched gap width, Huffman). ``nnshrink.allocate``
picks the cheapest set whose archive fits original / target_ratio bytes; the prune stage
then prunes to those sparsities with its usual rounds and retraining. Costs come from the
dense model without retraining, so they rank layers rather than predict the final drop.

Retraining changes the kept values (they spread: their shared indices code at more bits
after Huffman), so sizes measured on the dense net come out 5-6% small, and most of that
drift happens in the final retraining. So the prune stage looks again twice
(``Context.reallocate``, ``second_look``), each time measuring every candidate's bytes on
the weights as they are then and allocating the same costs against the same budget: before
its last round (with two rounds or more; candidates at or above each tensor's current
sparsity, a pruned weight cannot come back), and after its final retraining, where the
candidates are fine steps (``FINE_STEP``) above each pruned tensor's sparsity, their costs
interpolated along the sweep; if those say to prune more, the stage prunes that much and
retrains for ``retrain_epochs``, up to ``FINAL_LOOKS`` times.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..allocate import Allocation, Option, allocate
from ..compressed import DenseTensor, SharedTensor, SparseTensor
from ..errors import ConfigError

# Candidate sparsities: dense, then ever finer toward the high end where the bytes are.
STEPS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
# After the final retraining: extra sparsity in steps of FINE_STEP, at most FINE_SPAN above
# where each pruned tensor is (a few percent of the file, which is what retraining drifts).
FINE_STEP, FINE_SPAN = 0.0025, 0.03
FINAL_LOOKS = 2


def encoded(shape: tuple[int, ...], weight: np.ndarray, kept: int, order: np.ndarray, bits: int | None):
    """The encoding ``weight`` would have with its ``kept`` largest magnitudes (``order``:
    positions by falling magnitude, ties by position, as ``TargetSparsity`` ranks them)
    and shared at ``bits`` (None: not shared), as the pipeline's export builds it."""
    mask = None
    if kept < weight.size:
        mask = np.zeros(weight.size, bool)
        mask[order[:kept]] = True
        mask = mask.reshape(shape)
    values = weight[mask] if mask is not None else weight.reshape(-1)
    if bits is None:
        return SparseTensor(shape, mask, values.copy()) if mask is not None else DenseTensor(weight.copy())
    from ..quantize.kmeans import kmeans_1d

    if values.size == 0:
        return SparseTensor(shape, mask, values.copy())
    cents, labels = kmeans_1d(values.astype(np.float32), min(2 ** bits, values.size), init="linear")
    return SharedTensor(shape, np.asarray(cents, np.float32), np.asarray(labels, np.uint8).reshape(-1), bits, mask)


def magnitude_order(weight: np.ndarray) -> np.ndarray:
    """Positions by falling |w|, ties by position (one sort serves every candidate)."""
    return np.argsort(-np.abs(weight.reshape(-1)), kind="stable")


def kept_count(numel: int, sparsity: float) -> int:
    return int(round((1 - sparsity) * numel))  # TargetSparsity's count


def record_bytes(name: str, t, metadata: dict, huffman: bool, empty: int) -> int:
    """Bytes ``t`` adds to an archive (its record and header entry), at its best gap width."""
    from ..pipeline import search_index_bits, serialize_archive

    bits = search_index_bits({name: t}, {}, metadata, huffman)
    return len(serialize_archive({name: t}, metadata, bits, huffman)) - empty


def fine_candidates(now: float, costs: dict[float, float]) -> dict[float, float]:
    """``now`` and the ``FINE_STEP`` steps above it (below 1), each with its cost
    interpolated linearly along the measured ``costs``."""
    grid = [now + k * FINE_STEP for k in range(int(round(FINE_SPAN / FINE_STEP)) + 1)]
    xs = sorted(costs)
    return {s: float(np.interp(s, xs, [costs[x] for x in xs])) for s in grid if s < 1.0}


def sparsity_options(model: nn.Module, recipe, ctx, metadata: dict,
                     steps: tuple[float, ...] = STEPS) -> tuple[dict[str, list[Option]], int, dict]:
    """Candidates per prunable tensor (dense and each of ``steps``), the bytes of everything
    else, and the sweep's record."""
    from ..select import compressible, match
    from .sensitivity import sensitivity_sweep

    cfg = recipe.prune
    targets = compressible(model)
    excluded = set(match(list(cfg.exclude), targets, what="prune.exclude")) if cfg.exclude else set()
    prunable = [n for n in targets if n not in excluded]
    if not prunable:
        raise ConfigError("prune.exclude leaves no tensor to prune")
    sweep = sensitivity_sweep(model, None, steps=steps, layers=prunable, metric=ctx.metric,
                              calibration=ctx.calibration, device=ctx.device, progress=ctx.progress)
    costs: dict[str, dict[float, float]] = {}
    for name, t in targets.items():
        key = t.module_name if t.param_name == "weight" and t.module_name else t.name
        costs[name] = {0.0: 0.0}
        if name not in excluded:  # a gain without retraining is noise: it counts as no loss
            costs[name].update({s: max(0.0, float(sweep.baseline - acc)) for s, acc in zip(sweep.steps,
                                                                                          sweep.curves[key])})
    options, fixed = measured_options(model, recipe, metadata, costs)
    return options, fixed, sweep.as_dict()


def measured_options(model: nn.Module, recipe, metadata: dict, costs: dict[str, dict[float, float]], *,
                     fine: bool = False) -> tuple[dict[str, list[Option]], int]:
    """Per tensor, an Option for each candidate sparsity in ``costs`` (with that cost) that
    the model's current weights can still reach (at or above the tensor's sparsity now),
    its bytes encoded from those weights; and the bytes of everything else. ``fine``:
    instead, a pruned tensor's candidates are where it is and ``FINE_STEP`` steps above
    (costs interpolated along ``costs``), and a dense tensor stays dense."""
    from ..pipeline import halve_dense, serialize_archive
    from ..select import compressible
    from ..stages import export_all
    from ..stages.share import bits_plan
    from .masks import current_masks

    huffman = recipe.encode.huffman
    targets = compressible(model)
    bits = bits_plan(model, recipe.share) if "share" in recipe.stages else {}
    empty = len(serialize_archive({}, metadata, {}, huffman))
    state = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in model.state_dict().items() if k in targets}
    masks = current_masks(model)
    options: dict[str, list[Option]] = {}
    for name, t in targets.items():
        w = np.ascontiguousarray(state[name])
        order = magnitude_order(w)
        now = 1.0 - float(masks[name].float().mean()) if name in masks else 0.0  # the sparsity pruned so far
        if fine:
            reachable = fine_candidates(now, costs[name]) if name in masks else {0.0: costs[name].get(0.0, 0.0)}
        else:
            reachable = {s: c for s, c in costs[name].items() if s >= now - 1e-9}
        if not reachable:  # pruned past every candidate: only where it is
            reachable = {max(costs[name]): max(costs[name].values())}
        options[name] = [Option(s, c, record_bytes(name, encoded(t.shape, w, kept_count(w.size, s), order,
                                                                 bits.get(name)), metadata, huffman, empty))
                         for s, c in reachable.items()]
    rest = {n: t for n, t in export_all(model).items() if n not in targets}
    if recipe.encode.half_dense:
        rest = halve_dense(rest)
    return options, len(serialize_archive(rest, metadata, {}, huffman))


def allocate_sparsity(model: nn.Module, recipe, ctx, metadata: dict[str, Any]):
    """``recipe`` with ``prune.layers`` set to the allocated sparsities (tensors left dense
    join ``prune.exclude``) and the allocation's record for the report."""
    from ..sizes import state_bytes

    cfg = recipe.prune
    if ctx.metric is None:
        raise ConfigError(f"prune.target_ratio = {cfg.target_ratio:g} measures each layer's sensitivity, which "
                          "needs a metric: give --dataset NAME (or evaluate= in the API)")
    original = state_bytes(model.state_dict())
    budget = int(original / cfg.target_ratio)
    options, fixed, sweep = sparsity_options(model, recipe, ctx, metadata, STEPS)
    try:
        alloc = allocate(options, budget, fixed)
    except ConfigError as exc:
        raise ConfigError(f"prune.target_ratio = {cfg.target_ratio:g} ({original:,} -> {budget:,} bytes) is out "
                          f"of reach even at {max(STEPS):g} sparsity everywhere: {exc}") from None
    chosen = alloc.settings()
    layers = {name: s for name, s in chosen.items() if s > 0}
    dense = tuple(name for name, s in chosen.items() if s == 0)
    if not layers:
        raise ConfigError(f"prune.target_ratio = {cfg.target_ratio:g}: the model fits {budget:,} bytes without "
                          "pruning; drop the prune stage or raise the target")
    new = replace(cfg, method="sparsity", target_ratio=None, layers=layers,
                  exclude=tuple(dict.fromkeys((*cfg.exclude, *dense))))
    record = {"target_ratio": cfg.target_ratio, "original_bytes": original, "fixed_bytes": fixed,
              "estimated_ratio": original / alloc.bytes, **alloc.as_dict(), "sweep": sweep}
    costs = {name: {o.setting: o.cost for o in opts} for name, opts in options.items()}
    ctx.reallocate = partial(second_look, recipe=recipe.with_configs(prune=new), metadata=metadata, costs=costs,
                             budget=budget, original=original)
    return recipe.with_configs(prune=new), record


def second_look(model: nn.Module, *, recipe, metadata: dict, costs: dict[str, dict[float, float]], budget: int,
                original: int, final: bool = False) -> tuple[dict[str, float | None], dict]:
    """The per-tensor sparsities (None: dense) re-allocated on ``model``'s retrained
    weights (module docstring; ``final``: after the final retraining, fine steps), and the
    record for the prune stage's report. Where the budget is out of reach now, every tensor
    takes its smallest candidate."""
    options, fixed = measured_options(model, recipe, metadata, costs, fine=final)
    try:
        alloc = allocate(options, budget, fixed)
        reached = True
    except ConfigError:
        smallest = {name: min(opts, key=lambda o: o.bytes) for name, opts in options.items()}
        alloc = Allocation(smallest, fixed + sum(o.bytes for o in smallest.values()),
                           float(sum(o.cost for o in smallest.values())), budget)
        reached = False
    chosen = {name: (s if s > 0 else None) for name, s in alloc.settings().items()}
    return chosen, {"fixed_bytes": fixed, "estimated_ratio": original / alloc.bytes, "budget_met": reached,
                    **alloc.as_dict()}
