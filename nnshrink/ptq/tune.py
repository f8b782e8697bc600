"""Tuning the exactly-stored float parameters of a compressed model on the calibration batches.

After sharing, the tensors stored exactly (LayerNorm weights and biases, every bias, small
tables) cost the same bytes whatever their values, so they can absorb part of the shared
weights' error: with the shared weights held fixed, Adam moves only those parameters so
that the compressed model's outputs on the calibration batches come closer to the float
model's (loss: sum((out' - out)^2) / sum(out^2) per batch, the relative output error the
error estimates use). This is bias correction / BRECQ-style post-training tuning on
unlabelled calibration inputs, not retraining of the weights: the report says "norms and
biases tuned on the calibration batches, N steps; shared weights unchanged".

Measured on all-MiniLM-L6-v2 (benchmarks/sections/25-post-training.md): it helps a pruned
model (50% SparseGPT) by about a hundredth of cosine and a 10x quantised one by well under a
thousandth, because it fits the calibration texts more than it carries to other texts.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

DEFAULT_LR = 1e-3
LABEL = "norms and biases tuned on the calibration batches, {steps} steps; shared weights unchanged"


def check_steps(steps, name: str = "tune_steps") -> int:
    """``steps`` if it is an int >= 0, else a one-line ConfigError naming it."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ConfigError(f"{name} must be an integer >= 0 (0: no tuning); got {steps!r}")
    return int(steps)


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return ((out - ref) ** 2).sum() / (ref ** 2).sum().clamp(min=1e-30)


def tune_exact_parameters(model: nn.Module, decoded: dict[str, np.ndarray], tunable: Iterable[str], batches: list,
                          forward: Callable, *, steps: int, lr: float = DEFAULT_LR, progress: bool = False
                          ) -> tuple[dict[str, np.ndarray], dict]:
    """Tune the parameters named in ``tunable`` of a copy of ``model`` holding ``decoded``
    (state_dict name -> array) towards ``model``'s own outputs; ``model`` is not changed.

    Returns ({name: tuned array}, stats): stats has the parameter count and the mean
    relative output error on the calibration batches before and after."""
    steps = check_steps(steps)
    if not lr > 0:
        raise ConfigError(f"tuning learning rate must be > 0; got {lr!r}")
    if not batches:
        raise ConfigError("tuning needs calibration batches: give at least one")
    work = copy.deepcopy(model)
    state = work.state_dict()
    with torch.no_grad():
        for name, value in decoded.items():
            if name in state and tuple(state[name].shape) == tuple(np.shape(value)):
                state[name].copy_(torch.as_tensor(np.asarray(value), dtype=state[name].dtype))
    params = dict(work.named_parameters())
    names = [n for n in tunable if n in params and params[n].is_floating_point()]
    for n, p in params.items():
        p.requires_grad_(n in names)
    was_training = model.training
    model.eval()
    work.eval()
    try:
        with torch.no_grad():
            ref = [forward(model, b).detach() for b in batches]
    finally:
        model.train(was_training)

    def mean_error() -> float:
        with torch.no_grad():
            return float(np.mean([float(_relative_error(forward(work, b), r)) for b, r in zip(batches, ref)]))

    before = mean_error()
    if names and steps:
        from tqdm.auto import tqdm

        opt = torch.optim.Adam([params[n] for n in names], lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for step in tqdm(range(steps), desc="tuning norms and biases", unit="step", file=sys.stderr,
                         disable=not progress, leave=False):
            i = step % len(batches)  # a fixed order: the same result on every run
            loss = _relative_error(forward(work, batches[i]), ref[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    after = mean_error()
    tuned = {n: params[n].detach().cpu().numpy().copy() for n in names}
    stats = {"steps": steps, "lr": lr, "parameters": int(sum(params[n].numel() for n in names)),
             "tensors": len(names), "calibration_error_before": before, "calibration_error_after": after,
             "what": LABEL.format(steps=steps)}
    return tuned, stats
