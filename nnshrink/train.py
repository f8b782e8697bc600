"""One training / evaluation loop for every stage (dense training, retraining after
pruning, centroid fine-tuning, binary nets).

Stages customise it through hooks rather than copies of the loop:
``param_filter`` picks what the optimizer trains, ``regularizer(model)`` adds a penalty
(L1 / L2 for pruning), ``loss(logits, inputs, labels)`` replaces the cross-entropy
(distillation from the dense net, ``nnshrink.distill``), and ``after_step(model)`` runs
after every optimizer step (re-apply masks, clip binary weights, refresh shared weights).
Against overfitting in retraining, three options (all off by default): ``average`` (an EMA
of the trained parameters, ``nnshrink.averaging``), ``shift`` (random pixel shifts of the
training images, ``data.random_shift``) and ``label_smoothing`` (of the cross-entropy).
Under ``torch.distributed`` the loop wraps the model in DistributedDataParallel itself and
splits each global batch of ``batch_size`` among the ranks (each rank a disjoint slice of
the same shuffled order), so N processes take the same optimizer steps as one process would.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .averaging import WeightAverage, check_average
from .data import Dataset, iterate_batches, random_shift
from .distributed import split_batch, world as world_
from .errors import ConfigError, DataError

SCHEDULES = ("cosine", "step", "constant")
OPTIMIZERS = ("sgd", "adam")


def check_shift(where: str, shift) -> None:
    """A ConfigError naming the bad value unless ``shift`` is a pixel count in 0..8 (0: off)."""
    if isinstance(shift, bool) or not isinstance(shift, int) or not 0 <= shift <= 8:
        raise ConfigError(f"{where}.shift must be an integer number of pixels in 0..8 (0: off); got {shift!r}")


def check_label_smoothing(where: str, value) -> None:
    """A ConfigError naming the bad value unless ``value`` is in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{where}.label_smoothing must be in [0, 1); got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"
    optimizer: str = "sgd"
    l1: float = 0.0
    l2: float = 0.0
    seed: int = 0
    max_steps: int | None = None
    average: float = 0.0  # EMA decay cap per step of the trained parameters (0: off); nnshrink.averaging
    shift: int = 0  # random shifts of the training images by up to this many pixels (0: off)
    label_smoothing: float = 0.0  # of the default cross-entropy loss

    def __post_init__(self):
        check_average("train", self.average)
        check_shift("train", self.shift)
        check_label_smoothing("train", self.label_smoothing)
        for name in ("epochs", "lr", "momentum", "weight_decay", "l1", "l2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number; got {value!r}")
        if not self.epochs > 0:
            raise ConfigError(f"epochs must be > 0; got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be > 0; got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1); got {self.momentum}")
        for name in ("weight_decay", "l1", "l2"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1; got {self.batch_size}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig(**{**asdict(self), **changes})


@dataclass
class TrainResult:
    epochs: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def resolve_device(name: str | torch.device = "cpu") -> torch.device:
    """A torch.device; asking for CUDA where there is none is a clear error."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; use cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA device is available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} asked for, but there are only {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use cpu or cuda[:N]")
    return device


@torch.no_grad()
def check_fits(model: nn.Module, data: Dataset, *, device: str | torch.device = "cpu",
               splits: tuple[str, ...] = ("train", "test")) -> None:
    """Refuse data the model cannot take, before any training or evaluation: empty splits,
    images of another size (one sample goes through the model) and labels beyond its
    outputs (which would silently count as wrong, or crash mid-epoch)."""
    device = resolve_device(device)
    tensors = {s: (data.train_x, data.train_y) if s == "train" else (data.test_x, data.test_y) for s in splits}
    for split, (x, y) in tensors.items():
        if len(x) == 0 or len(y) == 0:
            raise DataError(f"dataset {data.name!r}: the {split} split is empty (0 images)")
    x0 = tensors[splits[0]][0][:1]
    was_training = model.training
    model.eval()
    try:
        out = model(x0.to(device))
    except (RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"dataset {data.name!r} images of shape {tuple(x0.shape[1:])} do not fit the model "
                        f"({type(model).__name__}): {reason}") from None
    finally:
        model.train(was_training)
    if out.dim() != 2:
        raise DataError(f"model {type(model).__name__} gives outputs of shape {tuple(out.shape[1:])} per image "
                        "for a classification dataset; expected one score per class")
    classes = out.shape[1]
    for split, (_, y) in tensors.items():
        top, low = int(y.max()), int(y.min())
        if top >= classes or low < 0:
            raise DataError(f"dataset {data.name!r}: {split} split has label {top if top >= classes else low}, "
                            f"but the model has {classes} classes (labels 0..{classes - 1})")


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.schedule == "constant" or total <= 1:
        return cfg.lr
    frac = step / total
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
    return cfg.lr * (0.1 ** int(frac * 3))  # step: /10 at 1/3 and 2/3


def regularization(model: nn.Module, l1: float, l2: float) -> torch.Tensor | None:
    """L1 / L2 penalty over weight matrices and kernels (not biases or norms)."""
    if not (l1 or l2):
        return None
    total = None
    for p in model.parameters():
        if p.requires_grad and p.dim() > 1:
            term = (l1 * p.abs().sum() if l1 else 0) + (l2 * p.pow(2).sum() if l2 else 0)
            total = term if total is None else total + term
    return total


def fit(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig = TrainConfig(),
    *,
    device: str | torch.device = "cpu",
    param_filter: Callable[[str, nn.Parameter], bool] | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor | None] | None = None,
    after_step: Iterable[Callable[[nn.Module], None]] = (),
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    eval_each_epoch: bool = True,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place on ``data.train_*``; returns per-epoch loss and accuracy."""
    smoothing = cfg.label_smoothing
    loss_of = loss if loss is not None else (
        lambda logits, xb, yb: F.cross_entropy(logits, yb, label_smoothing=smoothing))
    device = resolve_device(device)
    rank, world = world_()
    torch.manual_seed(cfg.seed)
    model.to(device)
    check_fits(model, data, device=device, splits=("train", "test") if eval_each_epoch else ("train",))
    params = [p for n, p in model.named_parameters()
              if p.requires_grad and (param_filter is None or param_filter(n, p))]
    if not params:
        raise ConfigError("nothing to train: no parameter requires a gradient")
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    net = model
    if world > 1:  # on CUDA: this rank's GPU (``cuda`` alone means the one torchrun's LOCAL_RANK selected)
        gpu = None
        if device.type == "cuda":
            gpu = [device.index if device.index is not None else torch.cuda.current_device()]
        net = nn.parallel.DistributedDataParallel(model, device_ids=gpu)
    hooks = list(after_step)
    average = WeightAverage(params, cfg.average) if cfg.average > 0 else None
    shifts = torch.Generator().manual_seed(cfg.seed * 100_003 + 7919 + rank) if cfg.shift else None
    batch = split_batch(cfg.batch_size)  # the global batch, shared among the ranks
    n_train = len(data.train_x) // world
    steps_per_epoch = math.ceil(n_train / batch)
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    result = TrainResult()
    start = time.perf_counter()
    step, epoch = 0, 0
    bar = tqdm(total=total, desc=desc, disable=not progress or rank != 0, leave=False, unit="step")
    while step < total:
        net.train()
        t0, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        for xb, yb in iterate_batches(data.train_x, data.train_y, batch, shuffle=True,
                                      seed=cfg.seed, epoch=epoch, rank=rank, world_size=world):
            if step >= total:
                break
            if shifts is not None:
                xb = random_shift(xb, cfg.shift, shifts)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, step, total)
            logits = net(xb)
            loss = loss_of(logits, xb, yb)
            penalty = regularization(model, cfg.l1, cfg.l2)
            extra = regularizer(model) if regularizer is not None else None
            full = loss + (penalty if penalty is not None else 0) + (extra if extra is not None else 0)
            opt.zero_grad(set_to_none=True)
            full.backward()
            opt.step()
            for hook in hooks:
                hook(model)
            if average is not None:
                average.update()
            step += 1
            seen += len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            loss_sum += float(loss.detach()) * len(yb)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        row = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1),
               "seconds": time.perf_counter() - t0, "steps": step}
        if eval_each_epoch:
            row["test_top1"] = evaluate(model, data, device=device)
        result.epochs.append(row)
        epoch += 1
    bar.close()
    if average is not None:  # the run's result is the average; hooks see it like any step's weights
        average.apply()
        for hook in hooks:
            hook(model)
    if net is not model:  # free the DDP wrapper now, not at exit after the group is gone
        net = logits = loss = full = None  # (gloo aborts a process that still holds one then)
        gc.collect()
    result.seconds = time.perf_counter() - start
    result.steps = step
    return result


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, *, device: str | torch.device = "cpu",
             batch_size: int = 1000, split: str = "test") -> float:
    """Top-1 accuracy (a fraction) of ``model`` on a split of ``data``; like ``fit``, it
    moves ``model`` to ``device`` first (a checkpoint loads on CPU)."""
    device = resolve_device(device)
    model.to(device)
    check_fits(model, data, device=device, splits=(split,))
    x, y = (data.test_x, data.test_y) if split == "test" else (data.train_x, data.train_y)
    was_training = model.training
    model.eval()
    correct = 0
    for xb, yb in iterate_batches(x, y, batch_size):
        correct += int((model(xb.to(device)).argmax(1) == yb.to(device)).sum())
    model.train(was_training)
    return correct / len(y)


# Default training per model: what `nnshrink train --model NAME` uses.
_DEFAULTS: dict[str, dict] = {
    "lenet300": dict(epochs=20, lr=0.05, weight_decay=1e-4, batch_size=128),
    "lenet5": dict(epochs=12, lr=0.05, weight_decay=5e-4, batch_size=128),
    # binary nets: Adam, no weight decay on the +-1 weights' latent values
    "lenet5-bwn": dict(epochs=8, lr=2e-3, optimizer="adam", weight_decay=0.0, batch_size=128),
    "lenet5-xnor": dict(epochs=6, lr=2e-3, optimizer="adam", weight_decay=0.0, batch_size=128),
    "vgg-small-bwn": dict(epochs=4, lr=2e-3, optimizer="adam", weight_decay=0.0, batch_size=128),
    "vgg-small-xnor": dict(epochs=4, lr=2e-3, optimizer="adam", weight_decay=0.0, batch_size=128),
    # compact architectures
    "squeezenet-small": dict(epochs=10, lr=2e-3, optimizer="adam", weight_decay=0.0, batch_size=128),
    "mobilenet-small": dict(epochs=10, lr=0.05, weight_decay=1e-4, batch_size=128),
    "vgg-small": dict(epochs=10, lr=0.02, weight_decay=5e-4, batch_size=128),
}


def default_train_config(model_name: str) -> TrainConfig:
    return TrainConfig(**_DEFAULTS.get(model_name, {}))
