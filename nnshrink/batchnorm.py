"""BatchNorm statistics after the weights changed.

Pruning or sharing changes what every layer outputs, so the running mean and variance a
BatchNorm layer learned in training no longer describe its input, and a BN network can
fall to chance without a single wrong weight. ``recalibrate_bn`` re-estimates those
statistics with forward passes only (no gradient, no optimizer), the cheap repair that
works with calibration data and no training loop.

A BatchNorm that the fold stage folded into its conv / linear (``is_folded``) is a plain
per-channel shift and is left alone here: re-estimating its statistics would undo the fold.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn

from .errors import ConfigError

Batches = Iterable[Any] | Callable[[], Iterable[Any]]

# Calibration data of the zoo and --data-factory paths: 100 batches of 128 training images
# (12,800). A channel's mean / variance estimate has a standard error near 1/sqrt(n) of its
# spread, so this many images hold it within about 1 % while costing about a fifth of one
# epoch's forward passes (Fashion-MNIST) per recalibration; more buys nothing visible.
CALIBRATION_BATCHES = 100
CALIBRATION_BATCH_SIZE = 128


def is_folded(bn: nn.Module) -> bool:
    """True for a BatchNorm the fold stage emptied: running mean 0 and running variance
    1 - eps (so it divides by exactly 1), left a per-channel affine map (weight 1 and the
    shift, until fine-tuning moves them). Read from the state itself, so it holds after a
    resume or ``nnshrink.load``; a BN trained on real data never has that variance."""
    if not (isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.track_running_stats
            and bn.running_mean is not None):
        return False
    one_minus_eps = torch.tensor(1.0 - bn.eps, dtype=bn.running_var.dtype)
    return bool((bn.running_mean == 0).all() and (bn.running_var == one_minus_eps).all())


def batchnorm_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer that tracks running statistics (and is not folded), by name."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and not is_folded(m)}


def check_batches(batches: Any, name: str = "calibrate") -> Batches:
    """``batches`` if it can be read more than once (a list, a DataLoader, or a callable
    returning a fresh iterable): recalibration runs after every step that changes weights,
    so a one-shot iterator (a generator) would be empty from the second time on."""
    if callable(batches):
        return batches
    try:
        it = iter(batches)
    except TypeError:
        raise ConfigError(f"{name} must be an iterable of batches or a function returning one; "
                          f"got {type(batches).__name__}") from None
    if it is batches:
        raise ConfigError(f"{name} is a one-shot iterator ({type(batches).__name__}); pass a list, a DataLoader "
                          "or a function returning a fresh iterable (it is read after every step)")
    return batches


def calibration_batches(x: torch.Tensor, *, batches: int = CALIBRATION_BATCHES,
                        batch_size: int = CALIBRATION_BATCH_SIZE, seed: int = 0) -> Callable[[], Iterator]:
    """The first ``batches`` batches of a seeded shuffle of ``x`` (training inputs), as a
    callable giving the same batches every time (``CALIBRATION_BATCHES`` says why so few)."""
    n = min(len(x), batches * batch_size)
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]

    def source() -> Iterator[torch.Tensor]:
        for start in range(0, n, batch_size):
            yield x[pick[start:start + batch_size]]

    return source


def _stay_eval(module: nn.Module, args) -> None:
    module.training = False


@contextlib.contextmanager
def folded_frozen(model: nn.Module) -> Iterator[None]:
    """While training, folded BatchNorms stay the plain shift they are at inference: in
    train mode they would normalise by batch statistics (undoing the fold) and update
    their running ones. A forward pre-hook puts each back in eval mode, whatever
    ``model.train()`` the training loop calls."""
    folded = [m for m in model.modules() if is_folded(m)]
    handles = [m.register_forward_pre_hook(_stay_eval) for m in folded]
    modes = [m.training for m in folded]
    try:
        yield
    finally:
        for h, m, mode in zip(handles, folded, modes):
            h.remove()
            m.training = mode


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
