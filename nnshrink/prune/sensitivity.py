"""Sensitivity analysis: prune one layer at a time (no retraining) and watch accuracy.

The curves show which layers tolerate pruning; ``sparsities_for_drop`` turns them into
per-layer target sparsities that seed ``prune_model(overrides=...)``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..data import Dataset
from ..errors import ConfigError
from ..train import evaluate
from .criteria import TargetSparsity, _check_sparsity
from ..select import compressible, get_param, owner
from .masks import module_masks

DEFAULT_STEPS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)


@dataclass
class SensitivityResult:
    baseline: float
    steps: list[float]
    curves: dict[str, list[float]] = field(default_factory=dict)  # layer -> top1 per step
    params: dict[str, int] = field(default_factory=dict)
    bn_recalibrated: bool = False  # BatchNorm statistics re-estimated at every point

    def as_dict(self) -> dict:
        return {"baseline_top1": self.baseline, "steps": self.steps, "bn_recalibrated": self.bn_recalibrated,
                "layers": [{"name": n, "params": self.params.get(n), "top1": c} for n, c in self.curves.items()]}


def check_steps(steps) -> list[float]:
    steps = [_check_sparsity(s) for s in steps]
    if not steps:
        raise ConfigError("sensitivity needs at least one sparsity step")
    return sorted(set(steps))


@torch.no_grad()
def sensitivity_sweep(model: nn.Module, data: Dataset | None, *, steps=DEFAULT_STEPS, layers=None, exclude=None,
                      device="cpu", progress: bool = False, metric=None, calibration=None) -> SensitivityResult:
    """Top-1 with each selected tensor alone pruned to each sparsity in ``steps``.

    ``metric(model) -> float`` (higher is better) replaces top-1 on ``data``'s test split,
    and ``calibration`` (``batchnorm.Batches``) the training batches, where the caller has
    its own (the compress pipeline's ``Context``); ``data`` may then be None.

    ``layers`` / ``exclude``: patterns as in ``nnshrink.select``. Curves are keyed by
    module name for a module's ``weight``, else by tensor name (both work as patterns).
    On a model with BatchNorm, its statistics are re-estimated from training batches at
    every point (``batchnorm.calibration_batches``), as the compress pipeline does after
    pruning: stale statistics alone would make the curves needlessly pessimistic. The
    model is restored after every point (it comes back unchanged). ``progress``: a bar
    on stderr.
    """
    from tqdm.auto import tqdm

    from ..batchnorm import batchnorm_layers, calibration_batches, recalibrate_bn

    steps = check_steps(steps)
    chosen = compressible(model, layers, exclude)
    model.to(device)
    if metric is None:
        if data is None:
            raise ConfigError("sensitivity needs a dataset or a metric")
        metric = lambda m: evaluate(m, data, device=device)  # noqa: E731
    bn = batchnorm_layers(model)
    if bn and calibration is None and data is not None:
        calibration = calibration_batches(data.train_x)
    if not bn:
        calibration = None
    bn_saved = {m: {k: v.clone() for k, v in m._buffers.items() if v is not None} for m in bn.values()}
    result = SensitivityResult(metric(model), steps, bn_recalibrated=calibration is not None)
    bar = tqdm(total=len(chosen) * len(steps), desc="sensitivity", unit="point", file=sys.stderr,
               disable=not progress, leave=False)
    try:
        for t in chosen.values():
            name = t.module_name if t.param_name == "weight" and t.module_name else t.name
            w = get_param(model, t)
            saved = w.detach().clone()
            base_mask = module_masks(owner(model, t)).get(t.param_name)
            base_mask = torch.ones_like(saved, dtype=torch.bool) if base_mask is None else base_mask
            curve = []
            bar.set_postfix_str(name, refresh=False)
            for s in steps:
                mask = TargetSparsity(s)(saved, base_mask)
                w.mul_(mask)
                if calibration is not None:
                    recalibrate_bn(model, calibration, device=device)
                curve.append(metric(model))
                w.copy_(saved)
                bar.update()
            result.curves[name] = curve
            result.params[name] = saved.numel()
    finally:
        bar.close()
        for m, buffers in bn_saved.items():  # the statistics the model came with
            for k, v in buffers.items():
                m._buffers[k].copy_(v)
    return result


def sparsities_for_drop(result: SensitivityResult, max_drop: float = 0.01) -> dict[str, float]:
    """Per layer, the highest swept sparsity whose top-1 stays within ``max_drop`` (a
    fraction, 0.01 = 1 point) of the baseline; 0.0 where none does."""
    if not 0 <= max_drop < 1:
        raise ConfigError(f"allowed accuracy drop must be in [0, 1) (a fraction); got {max_drop}")
    out = {}
    for name, curve in result.curves.items():
        ok = [s for s, acc in zip(result.steps, curve) if result.baseline - acc <= max_drop]
        # stop at the first step that fails: later lucky points are noise
        best = 0.0
        for s, acc in zip(result.steps, curve):
            if result.baseline - acc > max_drop:
                break
            best = s
        out[name] = best if ok else 0.0
    return out


def plot_sensitivity(result: SensitivityResult, path: str | os.PathLike, title: str = "") -> None:
    """A PNG with one accuracy-vs-sparsity curve per layer (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io_utils import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    xs = [100 * s for s in result.steps]
    for name, curve in result.curves.items():
        ax.plot(xs, [100 * a for a in curve], marker="o", ms=3, label=name)
    ax.axhline(100 * result.baseline, color="grey", ls="--", lw=0.8, label="dense")
    ax.set_xlabel("parameters pruned away (%)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "pruning sensitivity (no retraining)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
