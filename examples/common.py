"""What both examples share: the user's own DataLoaders, training loop and top-1, a
cache for the trained float model, and ``run``, the walk-through itself.

The loop and the metric are the code a user already has for their own model (only the
IDX reader comes from nnshrink, so no torchvision is needed); ``run`` hands them to
``nnshrink.compress`` as ``fine_tune`` and ``evaluate``, saves the archive, loads it into
a freshly built model with ``nnshrink.load`` and evaluates that.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from nnshrink.batchnorm import calibration_batches
from nnshrink.data import load_dataset
from nnshrink.errors import ConfigError

Loaders = tuple[DataLoader, DataLoader]


def loaders(data_dir: str | os.PathLike | None = None, subset: int | None = None, batch_size: int = 128,
            seed: int = 0) -> Loaders:
    """(train, test) DataLoaders over Fashion-MNIST (or the IDX set in ``data_dir``).

    ``subset`` keeps the first N images of each split, for quick runs and tests."""
    if subset is not None and subset < 1:
        raise ConfigError(f"subset must be >= 1 image; got {subset}")
    ds = load_dataset("fashion-mnist", data_dir)
    n_train = len(ds.train_x) if subset is None else min(subset, len(ds.train_x))
    n_test = len(ds.test_x) if subset is None else min(subset, len(ds.test_x))
    train = TensorDataset(ds.train_x[:n_train], ds.train_y[:n_train])
    test = TensorDataset(ds.test_x[:n_test], ds.test_y[:n_test])
    gen = torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen),
            DataLoader(test, batch_size=1000))


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft-target loss: KL(teacher || student) at ``temperature``, scaled by T^2
    so its gradients keep the size of the hard-label loss's whatever T is."""
    t = temperature
    return nn.functional.kl_div(nn.functional.log_softmax(logits / t, 1), nn.functional.log_softmax(teacher_logits / t, 1),
                                reduction="batchmean", log_target=True) * t * t


def train(model: nn.Module, loader: DataLoader, epochs: float, *, lr: float, weight_decay: float = 0.0,
          label_smoothing: float = 0.0, params: Callable[[nn.Module], list] | None = None,
          teacher: nn.Module | None = None, distill: float = 0.0, temperature: float = 4.0) -> None:
    """AdamW with a cosine schedule over ``epochs`` (fractions allowed: whole batches).

    A fresh optimizer per call: each call is one training or fine-tuning phase. With a
    ``teacher`` (the float model, in eval mode), the loss mixes in ``distill`` parts of
    its soft targets (``distill_loss``): a pruned net recovers more from the float net's
    full output distribution than from the hard labels alone."""
    if teacher is not None and not 0 < distill <= 1:
        raise ConfigError(f"distill must be in (0, 1] with a teacher; got {distill}")
    if epochs <= 0:
        return
    steps = max(1, round(epochs * len(loader)))
    trainable = [p for p in (params(model) if params else model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    model.train()
    if teacher is not None:
        teacher.eval()
    device = next(model.parameters()).device  # batches come from the loader on CPU
    step = 0
    while step < steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    soft = teacher(x)
                loss = (1 - distill) * loss + distill * distill_loss(logits, soft, temperature)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step == steps:
                break
    model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy (a fraction) over ``loader``; leaves the model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for x, y in loader:
        correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
        total += len(y)
    return correct / max(total, 1)


def load_or_train(build: Callable[[], nn.Module], path: Path, fit: Callable[[nn.Module], None],
                  key: dict[str, str]) -> tuple[nn.Module, bool, float | None]:
    """The trained float model from ``path`` when it was trained with the same ``key``
    (epochs, subset, ...), else trained with ``fit`` and saved there (atomically).

    Returns (model, whether it came from the cache, training seconds when it was trained)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = build()
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if {k: meta.get(k) for k in key} == key:
            model.load_state_dict(load_file(str(path)))
            return model.eval(), True, float(meta["train_seconds"]) if "train_seconds" in meta else None
    t0 = time.perf_counter()
    fit(model)
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={**key, "train_seconds": repr(seconds)})
    tmp.replace(path)
    return model.eval(), False, seconds


@dataclass(frozen=True)
class Example:
    """One example's choices: its model, how it trains, and the recipe that compresses it."""

    name: str
    build: Callable[[], nn.Module]
    epochs: float
    lr: float
    weight_decay: float
    finetune_lr: float
    recipe: str  # TOML text
    distill: float = 0.0  # fine-tuning: weight of the float model's soft targets (0: labels only)
    calibrate: bool = False  # pass training batches as ``calibrate=`` (BatchNorm statistics)


def parse_args(ex: Example, argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m examples.{ex.name}",
                                description="Train, compress, save, load and evaluate; see the module's docstring.")
    p.add_argument("--epochs", type=float, default=ex.epochs, help="training epochs of the float model")
    p.add_argument("--subset", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--out", type=Path, default=Path("runs") / ex.name, help="output folder (cache, archive, report)")
    p.add_argument("--data-dir", default=None, help="folder of the four IDX files (default: Fashion-MNIST)")
    p.add_argument("--retrain", action="store_true", help="train the float model even when it is cached")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: training, fine-tuning and evaluation")
    p.add_argument("--seed", type=int, default=0,
                   help="compression seed: k-means and the fine-tuning's shuffles (the float model keeps seed 0)")
    return p.parse_args(argv)


def trained(ex: Example, args: argparse.Namespace, data: Loaders) -> tuple[nn.Module, dict]:
    """The float model, trained by the example's loop or taken from the cache in ``args.out``."""
    key = {"example": ex.name, "epochs": repr(args.epochs), "subset": repr(args.subset),
           "data": str(args.data_dir or "fashion-mnist"), "lr": repr(ex.lr), "weight_decay": repr(ex.weight_decay)}
    path = args.out / "base.safetensors"
    if args.retrain:
        path.unlink(missing_ok=True)
    torch.manual_seed(0)
    model, cached, seconds = load_or_train(ex.build, path, lambda m: train(m.to(args.device), data[0], args.epochs,
                                                                    lr=ex.lr, weight_decay=ex.weight_decay), key)
    return model, {"cached": cached, "seconds": seconds}


def run(ex: Example, argv: list[str] | None = None) -> dict:
    """Train (or take from the cache), compress, save, load into a fresh model, evaluate.

    Returns the summary (also written to ``OUT/summary.json``) plus the compressed and the
    loaded models under "model" and "loaded", for callers that check them."""
    import nnshrink
    from nnshrink.recipes import recipe_from_dict

    from nnshrink.train import resolve_device

    args = parse_args(ex, argv)
    args.device = resolve_device(args.device)  # no GPU: one clear error before any work
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = loaders(args.data_dir, args.subset)
    model, train_info = trained(ex, args, data)
    model.to(args.device)  # a cached model loads on CPU
    params = sum(p.numel() for p in model.parameters())
    top1_float = evaluate(model, data[1])

    teacher = copy.deepcopy(model).eval() if ex.distill else None  # compress works in place

    def fine_tune(m: nn.Module, epochs: int) -> None:  # the same loop, gentler: a fraction of the lr
        train(m, data[0], epochs, lr=ex.finetune_lr, teacher=teacher, distill=ex.distill)

    # the same compression whether the float model was trained now or taken from the cache
    torch.manual_seed(args.seed)
    data[0].generator.manual_seed(args.seed)
    calibrate = calibration_batches(data[0].dataset.tensors[0], seed=args.seed) if ex.calibrate else None
    recipe = recipe_from_dict(tomllib.loads(ex.recipe), ex.name)
    t0 = time.perf_counter()
    result = nnshrink.compress(model, recipe, fine_tune=fine_tune, evaluate=lambda m: evaluate(m, data[1]),
                               calibrate=calibrate, seed=args.seed, device=str(args.device))
    archive = args.out / f"{ex.name}.nsk"
    written = result.save(archive)
    compress_s = time.perf_counter() - t0

    loaded = nnshrink.load(archive, model=ex.build()).to(args.device).eval()
    top1_loaded = evaluate(loaded, data[1])
    probe = next(iter(data[1]))[0][:64].to(args.device)
    with torch.no_grad():
        max_diff = float((loaded(probe) - result.model.eval()(probe)).abs().max())
    report = result.report
    summary = {
        "example": ex.name, "params": params,
        "epochs": args.epochs, "subset": args.subset, "seed": args.seed, "train_seconds": train_info["seconds"],
        "train_cached": train_info["cached"], "compress_seconds": compress_s,
        "original_bytes": report["original_bytes"], "archive_bytes": written,
        "ratio": report["original_bytes"] / written, "report_ratio": report["ratio"],
        "top1_float": top1_float, "top1_loaded": top1_loaded, "drop_points": 100 * (top1_float - top1_loaded),
        "max_abs_diff_loaded_vs_compressed": max_diff, "archive": str(archive),
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{ex.name}: {summary['original_bytes']:,} -> {written:,} bytes ({summary['ratio']:.1f}x), "
          f"top-1 {top1_float:.4f} -> {top1_loaded:.4f} ({summary['drop_points']:+.2f} points drop)")
    return {**summary, "model": result.model, "loaded": loaded}
