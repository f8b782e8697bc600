"""The prune stage: magnitude pruning in rounds of rising sparsity, retraining after each.

Masks stay installed in the model (the user's optimizer cannot revive a pruned weight),
so the share stage clusters only the survivors and the export stores them sparse.

Generic defaults (a model nnshrink does not know, ``sparsity`` unset): a target sparsity
per kind of tensor, ``GENERIC_SPARSITY``, near the paper's kept fractions (fully
connected layers prune hardest, convolutions least); per-layer patterns override it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from ..distill import check_distill
from ..errors import ConfigError
from . import Context, Stage, check_retrain_options, register, retrain_options

METHODS = ("std", "sparsity", "global")
GENERIC_SPARSITY = {"fc": 0.9, "conv": 0.7, "embedding": 0.8, "attention": 0.8, "param": 0.8}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class PruneConfig:
    """``sparsity`` None = ``GENERIC_SPARSITY`` by kind; ``layers`` = {pattern: sparsity
    (or q for method std)}, a pattern being a tensor name, module name or kind name.
    ``target_ratio`` R: the per-layer sparsities are chosen instead, by measured
    sensitivity and encoded size, so that the archive is about 1/R of the original
    (``prune.target_ratio``); it needs a metric (a dataset) and no ``layers``.
    ``distill`` w > 0: the retraining learns w parts from the dense net's soft targets at
    ``distill_temperature`` (``nnshrink.distill``), 1 - w from the labels.
    ``average`` d > 0 (an EMA decay per step), ``shift`` s pixels, ``label_smoothing``:
    options against overfitting in every retraining (``nnshrink.train.TrainConfig``)."""

    method: str = "sparsity"
    sparsity: float | None = 0.9
    q: float = 1.0
    layers: dict[str, float] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    rounds: int = 3
    retrain_epochs: float = 2.0
    final_epochs: float = -1.0  # retraining after the last round; -1 = retrain_epochs
    lr_factor: float = 0.1
    l2: float = 0.0
    target_ratio: float | None = None
    distill: float = 0.0
    distill_temperature: float = 4.0
    average: float = 0.0
    shift: int = 0
    label_smoothing: float = 0.0
    schedule: str = ""  # the retraining's lr schedule; "": the training's (cosine)

    def __post_init__(self):
        check_retrain_options("prune", self.average, self.shift, self.label_smoothing, self.schedule)
        _check(not (self.distill > 0 and self.label_smoothing > 0),
               "prune.label_smoothing smooths the labels' cross-entropy, which prune.distill replaces; "
               "use one of them")
        _check(self.method in METHODS, f"prune.method must be one of {', '.join(METHODS)}; got {self.method!r}")
        _check(self.sparsity is None or 0 <= self.sparsity < 1,
               f"prune.sparsity must be in [0, 1); got {self.sparsity}")
        _check(self.q >= 0, f"prune.q must be >= 0; got {self.q}")
        for pat, v in self.layers.items():
            if self.method == "std":
                _check(v >= 0, f"prune.layers[{pat!r}] (q) must be >= 0; got {v}")
            else:
                _check(0 <= v < 1, f"prune.layers[{pat!r}] (sparsity) must be in [0, 1); got {v}")
        _check(isinstance(self.rounds, int) and self.rounds >= 1,
               f"prune.rounds must be an integer >= 1; got {self.rounds}")
        _check(self.retrain_epochs >= 0, f"prune.retrain_epochs must be >= 0; got {self.retrain_epochs}")
        _check(self.final_epochs == -1 or self.final_epochs >= 0,
               f"prune.final_epochs must be >= 0 (or -1 for retrain_epochs); got {self.final_epochs}")
        _check(0 < self.lr_factor <= 1, f"prune.lr_factor must be in (0, 1]; got {self.lr_factor}")
        _check(self.l2 >= 0, f"prune.l2 must be >= 0; got {self.l2}")
        check_distill("prune", self.distill, self.distill_temperature)
        if self.target_ratio is not None:
            _check(not isinstance(self.target_ratio, bool) and isinstance(self.target_ratio, (int, float))
                   and math.isfinite(self.target_ratio) and self.target_ratio > 1,
                   f"prune.target_ratio must be a finite number > 1; got {self.target_ratio!r}")
            _check(self.method == "sparsity",
                   f"prune.target_ratio chooses per-layer sparsities, so prune.method must be 'sparsity'; "
                   f"got {self.method!r}")
            _check(not self.layers, f"prune.target_ratio chooses the per-layer sparsities itself; drop "
                                    f"prune.layers ({', '.join(self.layers)})")


def plan(model: nn.Module, cfg: PruneConfig) -> dict[str, Any]:
    """{tensor name: criterion spec, or None = stays dense} for every compressible tensor."""
    from ..prune import GlobalMagnitude, StdThreshold
    from ..select import compressible, match, resolve

    targets = compressible(model)
    if cfg.method == "std":
        layers = {p: StdThreshold(v) for p, v in cfg.layers.items()}
        fixed: Any = StdThreshold(cfg.q)
    elif cfg.method == "global":  # one criterion object: prune_model ranks all its tensors together
        layers, fixed = dict(cfg.layers), GlobalMagnitude(0.9 if cfg.sparsity is None else cfg.sparsity)
    else:
        layers, fixed = dict(cfg.layers), cfg.sparsity
    # always a function: a criterion is itself callable, which resolve would take for a default
    default = (lambda t: GENERIC_SPARSITY[t.kind]) if fixed is None else (lambda t: fixed)
    out = resolve(layers or None, targets, default, what="prune.layers")
    for name in match(list(cfg.exclude), targets, what="prune.exclude") if cfg.exclude else []:
        out[name] = None
    if all(v is None for v in out.values()):
        raise ConfigError("prune.exclude leaves no tensor to prune")
    return out


def apply(model: nn.Module, cfg: PruneConfig, ctx: Context) -> dict:
    from ..prune import prune_model, ramp, scale_dropout, sparsity_report

    final = plan(model, cfg)
    retrains = cfg.retrain_epochs > 0 and ctx.trainer is not None
    if cfg.retrain_epochs > 0 and ctx.trainer is None:
        ctx.note("prune: retraining skipped (no fine_tune / training data given); pruned in one step")
    steps = ramp(final, cfg.rounds) if retrains else [final]
    d_original = getattr(model, "dropout", None)
    rounds = []
    look, ctx.reallocate = ctx.reallocate, None  # prune.target_ratio's re-measuring (this run's)
    looks: list[dict] = []
    for i, target in enumerate(steps):
        t0 = time.perf_counter()
        last = i == len(steps) - 1
        if last and i > 0 and look is not None:  # sizes re-measured on the retrained weights
            target, record = look(model)
            looks.append({"before_round": i + 1, **record})
        prune_model(model, None, overrides=target)
        if isinstance(d_original, float):  # the paper's dropout scaling, for models with a float rate
            scale_dropout(model, d_original)
        epochs = cfg.final_epochs if last and cfg.final_epochs >= 0 else cfg.retrain_epochs
        # fresh BatchNorm statistics for the retraining to start from, or for the metric
        bn = [ctx.recalibrate(model, "prune", f"pruning round {i + 1}", by_training=retrains and epochs > 0)]
        if retrains and ctx.retrain(model, epochs, "prune", round=i, lr_factor=cfg.lr_factor, l2=cfg.l2,
                                    distill=cfg.distill, temperature=cfg.distill_temperature, **retrain_options(cfg),
                                    desc=f"prune round {i + 1}/{len(steps)}") and last:
            bn.append(ctx.recalibrate(model, "prune", f"retraining round {i + 1}", by_training=True))
        rounds.append({"round": i + 1, "epochs": epochs if retrains else 0, "seconds": time.perf_counter() - t0,
                       "bn_recalibrated": [r for r in bn if r is not None]})
    if look is not None and retrains:
        rounds += _prune_to_fit(model, cfg, ctx, look, looks, len(steps))
    out = {"rounds": rounds, "layers": [r.as_dict() for r in sparsity_report(model)]}
    if looks:
        out["reallocated"] = looks
    return out


def _prune_to_fit(model: nn.Module, cfg: PruneConfig, ctx: Context, look, looks: list, done: int) -> list[dict]:
    """After the final retraining, ``prune.target_ratio``'s last looks: while the bytes
    measured on the retrained weights exceed the budget, prune the few extra weights they
    choose and retrain ``retrain_epochs``; the extra rounds' records."""
    from ..prune import prune_model
    from ..prune.masks import current_masks
    from ..prune.target_ratio import FINAL_LOOKS

    rounds = []
    for k in range(FINAL_LOOKS):
        t0 = time.perf_counter()
        target, record = look(model, final=True)
        now = {n: 1 - float(m.float().mean()) for n, m in current_masks(model).items()}
        more = sorted(n for n, s in target.items() if s is not None and s > now.get(n, 0.0) + 1e-9)
        looks.append({"after_round": done + k, "pruned_more": more, **record})
        if not more:
            break
        prune_model(model, None, overrides=target)
        ctx.retrain(model, cfg.retrain_epochs, "prune", round=done + k, lr_factor=cfg.lr_factor, l2=cfg.l2,
                    distill=cfg.distill, temperature=cfg.distill_temperature, **retrain_options(cfg),
                    desc="prune to the target ratio")
        bn = ctx.recalibrate(model, "prune", "pruning to the target ratio", by_training=True)
        rounds.append({"round": done + k + 1, "epochs": cfg.retrain_epochs, "seconds": time.perf_counter() - t0,
                       "to_target_ratio": True, "bn_recalibrated": [bn] if bn is not None else []})
    return rounds


register(Stage("prune", PruneConfig, apply, rung=lambda tensors: "pruned",
               retrains=lambda cfg: cfg.retrain_epochs > 0, check=plan, order=10))
