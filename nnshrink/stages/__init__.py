"""Compression stages: a registry of (config, apply, export), one file per stage.

A stage maps (model, its config, the run's Context) to a JSON-able record and leaves its
compression INSIDE the model (masks, codebooks, binary layers), so a later stage and the
user's own ``fine_tune`` see it and cannot undo it; ``export`` gives the encodings the
stage earned, which is what the ladder measures and the archive stores. Recipes are
validated against this registry, so adding a stage is one file here that calls
``register`` (plus its recipe docs).

Retraining goes through ``Context.retrain``: the same call runs the user's
``fine_tune(model, epochs)`` or nnshrink's own ``fit`` (``fit_trainer``), which also
honours the stage's hints (learning-rate factor, L2, which parameters train, and
``distill``: soft targets from ``Context.teacher``, the dense net kept before the first
stage).

BatchNorm statistics go stale whenever a stage changes weights; ``Context.recalibrate``
re-estimates them from the run's calibration batches (``Context.calibration``: the
user's ``calibrate=``, or training inputs on the zoo and --data-factory paths), the same
way for every stage, and says in the stage's record when it did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

from ..compressed import CompressedTensor
from ..errors import ConfigError, NNShrinkError, StageError

# (model, epochs, hints) -> None; hints: stage, round, lr_factor, l2, weight_decay, param_filter, desc,
# average / shift / label_smoothing (``RetrainOptions``),
# distill / temperature / teacher (a trainer with ``distills = True`` honours them)
Trainer = Callable[[nn.Module, float, dict], None]
Metric = Callable[[nn.Module], float]


def check_widths(section: str, fixed: dict[str, int | None], layers: dict[str, Any], lo: int, hi: int) -> None:
    """Bit widths of a config: each ``fixed`` one (None = the per-kind default) and every
    ``layers`` pattern's value must be an integer in [lo, hi]."""
    for name, b in [*fixed.items(), *((f"layers[{p!r}]", v) for p, v in layers.items())]:
        if b is None and name in fixed:
            continue
        if isinstance(b, bool) or not isinstance(b, int) or not lo <= b <= hi:
            raise ConfigError(f"{section}.{name} must be an integer in {lo}..{hi}; got {b}")


def check_retrain_options(section: str, average: float, shift: int, label_smoothing: float,
                          schedule: str = "") -> None:
    """The options against overfitting in a stage's retraining (``train.TrainConfig``'s
    ``average`` / ``shift`` / ``label_smoothing``, and ``schedule``: "" keeps the training's,
    "constant" with ``average`` is stochastic weight averaging): a ConfigError naming the
    section's bad value."""
    from ..averaging import check_average
    from ..train import SCHEDULES, check_label_smoothing, check_shift

    check_average(section, average)
    if schedule != "" and schedule not in SCHEDULES:
        raise ConfigError(f"{section}.schedule must be one of {', '.join(SCHEDULES)} (or \"\" for the "
                          f"training's own); got {schedule!r}")
    check_shift(section, shift)
    check_label_smoothing(section, label_smoothing)


def retrain_options(cfg: Any) -> dict:
    """A stage config's ``average`` / ``shift`` / ``label_smoothing`` / ``schedule`` as retraining hints."""
    return {"average": cfg.average, "shift": cfg.shift, "label_smoothing": cfg.label_smoothing,
            "schedule": cfg.schedule}


def export_all(model: nn.Module, cfg: Any = None) -> dict[str, CompressedTensor]:
    """Every state_dict tensor as the encoding the model's current compression earned."""
    from ..encodings import export_encodings

    return export_encodings(model)


@dataclass(frozen=True)
class Stage:
    """One registered stage. ``order``: recipes list stages in rising order; an
    ``exclusive`` stage runs alone (binary layers are 1-bit already)."""

    name: str
    config: type
    apply: Callable[[nn.Module, Any, "Context"], dict]
    rung: Callable[[dict[str, CompressedTensor]], str]
    export: Callable[[nn.Module, Any], dict[str, CompressedTensor]] = export_all
    retrains: Callable[[Any], bool] = lambda cfg: False
    check: Callable[[nn.Module, Any], Any] | None = None  # resolves the config's patterns (fails early)
    order: int = 0
    exclusive: bool = False


REGISTRY: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    REGISTRY[stage.name] = stage
    return stage


def get_stage(name: str) -> Stage:
    if name not in REGISTRY:
        raise ConfigError(f"unknown stage {name!r}; stages are {', '.join(REGISTRY)}")
    return REGISTRY[name]


def user_trainer(fine_tune: Callable[[nn.Module, int], None]) -> Trainer:
    """The user's ``fine_tune(model, epochs: int)`` as a Trainer (the stage's hints are
    for nnshrink's own loop; a user's loop keeps its own optimizer settings)."""

    def train(model: nn.Module, epochs: float, hints: dict) -> None:
        fine_tune(model, max(1, int(math.ceil(epochs - 1e-9))))

    return train


def fit_trainer(data, train_cfg, *, device: str = "cpu", progress: bool = True) -> Trainer:
    """nnshrink's own ``fit`` on ``data`` as a Trainer: lr scaled by the stage's
    ``lr_factor``, its ``l2`` / ``weight_decay`` / ``param_filter``, seed + round.
    Under torchrun a batch size the ranks cannot share is refused here, before any work."""
    from ..distributed import split_batch
    from ..train import fit

    split_batch(train_cfg.batch_size)

    def train(model: nn.Module, epochs: float, hints: dict) -> None:
        changes = {k: hints[k] for k in ("l2", "weight_decay", "average", "shift", "label_smoothing") if k in hints}
        if hints.get("schedule"):  # "" / absent: the training's own schedule
            changes["schedule"] = hints["schedule"]
        cfg = train_cfg.replace(epochs=epochs, lr=train_cfg.lr * hints.get("lr_factor", 1.0),
                                seed=train_cfg.seed + hints.get("round", 0), **changes)
        loss = None
        if hints.get("distill", 0) > 0:
            from ..distill import DistillLoss

            loss = DistillLoss(hints["teacher"], hints["distill"], hints.get("temperature", 4.0))
        fit(model, data, cfg, device=device, param_filter=hints.get("param_filter"), loss=loss,
            eval_each_epoch=False, progress=progress, desc=hints.get("desc", hints.get("stage", "retrain")))

    train.distills = True
    return train


def top1_metric(data, *, device: str = "cpu") -> Metric:
    """Top-1 on ``data``'s test split: the metric of the zoo and --data-factory paths."""
    from ..train import evaluate

    return lambda model: evaluate(model, data, device=device)


@dataclass
class Context:
    """What every stage may use: how to retrain and measure, the device, the run's notes."""

    trainer: Trainer | None = None  # None: stages that retrain skip it, with a note
    metric: Metric | None = None
    device: str = "cpu"
    progress: bool = True
    seed: int = 0
    calibration: Any = None  # batches for BatchNorm recalibration (batchnorm.Batches); None: none
    teacher: nn.Module | None = None  # the dense net, frozen, for retraining with ``distill``
    # prune.target_ratio's looks before the last prune round and after the final retraining:
    # (model, final=bool) -> ({tensor: sparsity or None}, record), the sizes re-measured on
    # the retrained weights (nnshrink.prune.target_ratio)
    reallocate: Callable[..., tuple[dict, dict]] | None = None
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def keep_teacher(self, model: nn.Module) -> None:
        """Keep a frozen copy of ``model`` (the dense net, before any stage) as the teacher
        of every retraining that distills."""
        from ..distill import frozen_teacher

        if self.teacher is None:
            self.teacher = frozen_teacher(model)

    def retrain(self, model: nn.Module, epochs: float, stage: str, **hints) -> bool:
        """Run the trainer for ``epochs``; False (and a note) when there is none."""
        if epochs <= 0:
            return False
        if self.trainer is None:
            self.note(f"{stage}: retraining skipped (no fine_tune / training data given)")
            return False
        from ..batchnorm import folded_frozen

        if hints.get("distill", 0) > 0:
            if not getattr(self.trainer, "distills", False):
                self.note(f"{stage}: distill ignored: a user's fine_tune trains with its own loss")
            elif self.teacher is None:
                raise StageError(f"stage {stage!r}: distill = {hints['distill']:g} needs the dense net as teacher "
                                 "(Context.keep_teacher before the first stage)")
            hints["teacher"] = self.teacher

        try:
            with folded_frozen(model):
                self.trainer(model, epochs, {"stage": stage, **hints})
        except Exception as exc:
            raise StageError(f"stage {stage!r}: fine_tune raised {type(exc).__name__}: {exc}") from exc
        return True

    def recalibrate(self, model: nn.Module, stage: str, where: str, *, by_training: bool = False) -> dict | None:
        """Re-estimate ``model``'s BatchNorm statistics after its weights changed (from at
        most ``batchnorm.CALIBRATION_BATCHES`` calibration batches); the record
        (``{"after": where, "batches": n}``) for the stage's report, or None when the model
        has no BatchNorm or the run has no calibration data (then a note, unless
        ``by_training``: the stage retrains right before or after, which refreshes them too)."""
        from ..batchnorm import CALIBRATION_BATCHES, batchnorm_layers, recalibrate_bn

        if not batchnorm_layers(model):
            return None
        if self.calibration is None:
            if not by_training:
                self.note(f"{stage}: BatchNorm statistics not recalibrated after the weights changed "
                          "(no calibration data; pass calibrate= or a dataset)")
            return None
        try:
            n = recalibrate_bn(model, self.calibration, max_batches=CALIBRATION_BATCHES, device=self.device)
        except NNShrinkError:
            raise
        except Exception as exc:
            raise StageError(f"stage {stage!r}: BatchNorm recalibration {where} failed: "
                             f"{type(exc).__name__}: {exc}") from exc
        return {"after": where, "batches": n}

    def evaluate(self, model: nn.Module, where: str) -> float | None:
        """The metric of ``model`` (None without one); a failing metric names ``where``."""
        if self.metric is None:
            return None
        try:
            return float(self.metric(model))
        except Exception as exc:
            raise StageError(f"{where}: evaluate raised {type(exc).__name__}: {exc}") from exc


from . import binary, fold, prune, share  # noqa: E402,F401  (each registers itself)
from .binary import BinaryConfig  # noqa: E402
from .fold import FoldConfig  # noqa: E402
from .prune import PruneConfig  # noqa: E402
from .share import ShareConfig  # noqa: E402
