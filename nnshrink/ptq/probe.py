"""Measured output error of one compressed tensor at a time, on the calibration batches.

The per-layer error estimates (layer.estimated_error) rank layers well but not exactly:
they assume the Fisher of a Linear factors into output-gradient power times input power,
which attention breaks (on all-MiniLM-L6-v2 the estimate of the value projections is
5-11x too high next to their measured effect, the FFN's within 2x; see
benchmarks/sections/25-post-training.md). A mixed-precision allocation is only as good as
that ranking, so each layer's estimate is rescaled by one measurement: the tensor is
swapped into the model alone, the calibration batches run forward, and
mean over batches of sum((out' - out)^2) is compared with the estimate (both are that
quantity; the estimate is its Fisher approximation). The measurement uses calibration
data only, never anything the result is evaluated on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def _spread(batches: list, limit: int | None) -> list:
    """At most ``limit`` batches, evenly spaced (batches are often sorted by length)."""
    if limit is None or len(batches) <= limit:
        return batches
    picks = np.linspace(0, len(batches) - 1, limit).round().astype(int)
    return [batches[i] for i in sorted(set(picks.tolist()))]


@torch.no_grad()
def output_errors(model: nn.Module, batches: list, forward: Callable, replacements: dict[str, np.ndarray],
                  *, limit: int | None = 8) -> dict[str, float]:
    """{name: mean over batches of sum((out' - out)^2)} with only ``name`` replaced; tensors
    the model does not hold (by state_dict name) are left out."""
    batches = _spread(list(batches), limit)
    tensors = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    was_training = model.training
    model.eval()
    try:
        ref = [forward(model, b).detach().to(torch.float64) for b in batches]
        errors = {}
        for name, value in replacements.items():
            t = tensors.get(name)
            if t is None or tuple(t.shape) != tuple(value.shape):
                continue
            saved = t.detach().clone()
            try:
                t.data.copy_(torch.as_tensor(np.asarray(value), dtype=t.dtype))
                errors[name] = float(np.mean([float(((forward(model, b).to(torch.float64) - r) ** 2).sum())
                                              for b, r in zip(batches, ref)]))
            finally:
                t.data.copy_(saved)
        return errors
    finally:
        model.train(was_training)
