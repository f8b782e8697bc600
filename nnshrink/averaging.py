"""Weight averaging over a training run (recipe ``average``): an exponential moving
average of the trained parameters, copied into the model when the run ends.

Retraining a pruned or weight-shared net overfits its training split; the average of the
last few hundred steps sits in a flatter part of the loss than the last step does, which
usually generalises better at no training cost. It keeps the compression: a pruned entry
is exactly 0.0 in every step, so its average is 0.0 too (the masks are re-applied anyway),
and for a shared tensor the trained parameters are its centroids, so the average is again
a codebook. BatchNorm statistics are not averaged (stages recalibrate them after retraining).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .errors import ConfigError


def check_average(where: str, decay: float) -> None:
    """A ConfigError naming the bad value unless ``decay`` is 0 (off) or in (0, 1)."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not math.isfinite(decay) \
            or not 0 <= decay < 1:
        raise ConfigError(f"{where}.average must be in [0, 1) (an EMA decay per step; 0: off); got {decay!r}")


class WeightAverage:
    """EMA of ``params``: ``update()`` after each optimizer step, ``apply()`` at the end.

    The decay at step t is ``min(decay, (1 + t) / (10 + t))`` (the warm-up of TensorFlow's
    ExponentialMovingAverage), so the average never leans on the weights the run started
    from (right after pruning, the worst of the run). The warm-up binds until
    t = 9 / (1 - decay) - 1 steps (8,990 for 0.999): before that the average covers about
    the last tenth of the steps so far, whatever ``decay`` is. Retraining rounds of a few
    epochs (1,400 steps of LeNet-300-100 for 3 epochs) stay under it, so there ``decay``
    0.998, 0.999 and 0.9995 average alike (measured: identical archives)."""

    def __init__(self, params: list[nn.Parameter], decay: float):
        check_average("train", decay)
        self.params, self.decay, self.steps = list(params), float(decay), 0
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for avg, p in zip(self.shadow, self.params):
            avg.mul_(d).add_(p.detach(), alpha=1 - d)

    @torch.no_grad()
    def apply(self) -> None:
        """Copy the average into the parameters (nothing happens before the first update)."""
        if self.steps == 0:
            return
        for avg, p in zip(self.shadow, self.params):
            p.copy_(avg)
