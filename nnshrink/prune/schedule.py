"""Iterative pruning: several prune -> retrain rounds with rising sparsity.

Retraining goes through ``nnshrink.train.fit`` (so DDP under torchrun works unchanged)
at 1/10 of the original learning rate by default; the masks keep pruned weights at zero
through any optimizer (see masks.py); surviving weights keep their values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch.nn as nn

from ..data import Dataset
from ..errors import ConfigError
from ..train import TrainConfig, evaluate, fit
from .apply import prune_model
from .criteria import Criterion, make_criterion
from .masks import LayerStats, scale_dropout, sparsity_report, total_kept


@dataclass
class RoundReport:
    round: int
    criterion: str
    kept: float  # fraction of prunable weights kept after this round's pruning
    top1_pruned: float | None  # right after pruning, before retraining
    top1_retrained: float | None
    seconds: float


@dataclass
class PruneReport:
    top1_before: float | None
    top1_after: float | None
    rounds: list[RoundReport] = field(default_factory=list)
    layers: list[LayerStats] = field(default_factory=list)  # every parameter tensor

    @property
    def kept(self) -> float:
        """Kept fraction over all parameters (biases count as kept)."""
        return total_kept(self.layers)[2]

    def as_dict(self) -> dict:
        params, nonzero, kept = total_kept(self.layers)
        return {"top1_before": self.top1_before, "top1_after": self.top1_after,
                "params": params, "nonzero": nonzero, "kept_pct": round(100 * kept, 3),
                "ratio": params / max(nonzero, 1),
                "rounds": [r.__dict__ for r in self.rounds], "layers": [r.as_dict() for r in self.layers]}


def _scaled(spec, frac: float):
    """``spec`` (criterion, float or {pattern: spec}) a fraction ``frac`` of the way."""
    if isinstance(spec, Mapping):
        return {k: (None if v is None else _scaled(v, frac)) for k, v in spec.items()}
    return make_criterion(spec).scaled(frac)


def ramp(final, rounds: int) -> list:
    """Per-round targets rising to ``final`` (criterion, float, or {pattern: spec}).

    Sparsities rise geometrically in the kept fraction (each round removes the same share
    of what is left); q rises linearly.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1; got {rounds}")
    return [_scaled(final, (r + 1) / rounds) for r in range(rounds)]


def _describe(spec) -> str:
    if isinstance(spec, Mapping):
        return ", ".join(f"{k}: {'dense' if v is None else make_criterion(v)}" for k, v in spec.items())
    return str(make_criterion(spec))


def iterative_prune(
    model: nn.Module,
    data: Dataset,
    schedule: Sequence | Criterion | float | Mapping,
    *,
    rounds: int | None = None,
    train_cfg: TrainConfig = TrainConfig(),
    lr_scale: float = 0.1,
    epochs_per_round: float | None = None,
    final_epochs: float | None = None,
    include=None,
    exclude=None,
    device="cpu",
    progress: bool = True,
    evaluate_rounds: bool = True,
    dropout_scaling: bool = True,
) -> PruneReport:
    """Prune ``model`` in place in rounds, retraining after each; masks stay installed.

    ``schedule``: a list with one target per round, or one final target plus ``rounds``
    (see ``ramp``). A target is a Criterion, a float (uniform per-layer sparsity), a
    string (``make_criterion``), or a dict {tensor pattern: target or None} giving every
    tensor its own (patterns not listed stay as they are that round).
    Retraining: ``train_cfg`` with lr * ``lr_scale``, ``epochs_per_round`` epochs
    (default ``train_cfg.epochs``), the last round ``final_epochs`` (default same).
    """
    if rounds is not None:
        if isinstance(schedule, (list, tuple)):
            raise ConfigError("give either a per-round schedule list or one target with rounds, not both")
        targets = ramp(schedule, rounds)
    elif isinstance(schedule, (list, tuple)):
        targets = list(schedule)
    else:
        targets = [schedule]
    if not targets:
        raise ConfigError("pruning schedule is empty")
    if not lr_scale > 0:
        raise ConfigError(f"retraining lr scale must be > 0; got {lr_scale}")
    for t in targets:  # validate everything before spending time training
        _describe(t)
    retrain = train_cfg.replace(lr=train_cfg.lr * lr_scale)
    d_original = getattr(model, "dropout", None)
    report = PruneReport(evaluate(model, data, device=device) if evaluate_rounds else None, None)
    for i, target in enumerate(targets):
        t0 = time.perf_counter()
        if isinstance(target, Mapping):
            stats = prune_model(model, None, include=include, exclude=exclude, overrides=target)
        else:
            stats = prune_model(model, target, include=include, exclude=exclude)
        if dropout_scaling and isinstance(d_original, float):
            scale_dropout(model, d_original)
        pruned_top1 = evaluate(model, data, device=device) if evaluate_rounds else None
        epochs = final_epochs if (i == len(targets) - 1 and final_epochs is not None) else epochs_per_round
        cfg = retrain if epochs is None else retrain.replace(epochs=epochs)
        fit(model, data, cfg.replace(seed=train_cfg.seed + i), device=device,
            eval_each_epoch=False, progress=progress, desc=f"prune round {i + 1}/{len(targets)}")
        top1 = evaluate(model, data, device=device) if evaluate_rounds else None
        report.rounds.append(RoundReport(i + 1, _describe(target), total_kept(stats)[2], pruned_top1, top1,
                                         time.perf_counter() - t0))
    report.top1_after = report.rounds[-1].top1_retrained
    report.layers = sparsity_report(model)
    return report
