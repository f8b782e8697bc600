"""Knowledge distillation from the dense net during retraining (recipe ``distill``).

A pruned or weight-shared net recovers more from the dense net's whole output
distribution (Hinton's soft targets) than from the hard labels alone: the soft targets say
which wrong classes are nearly right, which is what the lost weights knew. The loss mixes
``weight`` parts of the soft-target loss into ``1 - weight`` parts of cross-entropy.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError


def check_distill(where: str, weight: float, temperature: float) -> None:
    """A ConfigError naming the bad value unless weight is in [0, 1] and temperature > 0."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise ConfigError(f"{where}.distill must be in [0, 1] (0: labels only); got {weight!r}")
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature) or temperature <= 0):
        raise ConfigError(f"{where}.distill_temperature must be a finite number > 0; got {temperature!r}")


def soft_target_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at ``temperature``, times T^2 so that its gradients keep the
    size of the cross-entropy's whatever T is."""
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * (t * t)


def frozen_teacher(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that never trains (eval mode, no gradients): the dense net the
    compressed one learns from, unchanged by the stages that work on ``model`` in place."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class DistillLoss:
    """``fit``'s ``loss`` hook: (1 - weight) * cross-entropy + weight * soft-target loss."""

    def __init__(self, teacher: nn.Module, weight: float, temperature: float = 4.0):
        check_distill("distill", weight, temperature)
        self.teacher, self.weight, self.temperature = teacher, float(weight), float(temperature)

    def __call__(self, logits: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hard = F.cross_entropy(logits, labels)
        if self.weight == 0:
            return hard
        self.teacher.to(logits.device).eval()
        with torch.no_grad():
            soft = self.teacher(inputs)
        return (1 - self.weight) * hard + self.weight * soft_target_loss(logits, soft, self.temperature)
