"""BatchNorm statistics after the weights changed.

Pruning or sharing changes what every layer outputs, so the running mean and variance a
BatchNorm layer learned in training no longer describe its input, and a BN network can
fall to chance without a single wrong weight. ``recalibrate_bn`` re-estimates those
statistics with forward passes only (no gradient, no optimizer), the cheap repair that
works with calibration data and no training loop.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from .errors import ConfigError

Batches = Iterable[Any] | Callable[[], Iterable[Any]]


def batchnorm_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer that tracks running statistics, by name."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


def _inputs(batch: Any) -> Any:
    """The model input of one batch: a tensor, or the first item of (x, y, ...)."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ConfigError("calibration batch is an empty tuple; expected a tensor or (inputs, targets)")
        return batch[0]
    return batch


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Batches, *, max_batches: int | None = None,
                   device: str | torch.device | None = None) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance from ``batches``.

    ``batches``: an iterable (or a callable returning one) of input tensors or of
    ``(inputs, targets, ...)`` tuples, e.g. a DataLoader. The statistics are the exact
    average over the batches seen (momentum None while recalibrating); every other
    module stays in eval mode, so dropout does not disturb them. Returns the number of
    batches used (0 when the model has no BatchNorm, which is then left untouched).
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ConfigError(f"max_batches must be a positive integer; got {max_batches!r}")
    source = batches() if callable(batches) else batches
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers.values()}
    saved = {m: {k: v.clone() for k, v in m._buffers.items() if v is not None} for m in layers.values()}
    model.eval()
    for m in layers.values():
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    used, done = 0, False
    try:
        for batch in source:
            x = _inputs(batch)
            model(x.to(device) if isinstance(x, torch.Tensor) else x)
            used += 1
            if max_batches is not None and used >= max_batches:
                break
        done = used > 0
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
            if not done:  # a failed or empty pass leaves the old statistics, not reset ones
                for k, v in saved[m].items():
                    m._buffers[k].copy_(v)
        for m, training in modes.items():
            m.train(training)
    if not done:
        raise ConfigError("recalibrate_bn got no batches; pass a non-empty iterable of inputs")
    return used
