"""``nnshrink train``: train a registered model and save a safetensors checkpoint."""

from __future__ import annotations

import argparse
import json
import math

from ._common import add_data_args, add_device_arg, add_force_arg, add_json_arg, check_outputs, emit_json


def finite_float(text: str) -> float:
    """argparse type: a float that is neither NaN nor infinite (float() accepts both)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number; got {text!r}")
    return value


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model from scratch and save a checkpoint")
    p.add_argument("--model", required=True, help="model name (see `nnshrink profile --list`)")
    add_data_args(p)
    add_device_arg(p)
    p.add_argument("--epochs", type=finite_float, default=None, help="epochs (default: per model)")
    p.add_argument("--lr", type=finite_float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--weight-decay", type=finite_float, default=None)
    p.add_argument("--l1", type=finite_float, default=None, help="L1 penalty on weights")
    p.add_argument("--l2", type=finite_float, default=None, help="L2 penalty on weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help='model options as JSON, e.g. \'{"dropout": 0.1}\'')
    add_json_arg(p)
    add_force_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", required=True, help="checkpoint path (.safetensors)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import save_checkpoint
    from ..data import load_dataset
    from ..errors import ConfigError
    from ..models import build_model, resolve_config
    from ..train import default_train_config, fit, resolve_device

    out, = check_outputs(args, args.output)
    device = resolve_device(args.device)
    try:
        overrides = json.loads(args.config) if args.config else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config is not valid JSON ({exc})") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"--config must be a JSON object; got {args.config!r}")
    config = resolve_config(args.model, **overrides)
    cfg = default_train_config(args.model)
    changes = {k: v for k, v in {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                                 "weight_decay": args.weight_decay, "l1": args.l1, "l2": args.l2,
                                 "seed": args.seed}.items() if v is not None}
    cfg = cfg.replace(**changes)
    data = load_dataset(args.dataset or "fashion-mnist", args.data_dir)
    model = build_model(args.model, **config)
    result = fit(model, data, cfg, device=device, progress=not args.quiet, desc=f"train {args.model}")
    top1 = result.epochs[-1]["test_top1"]
    report = {"model": args.model, "config": config, "dataset": data.name, "top1": top1,
              "train_seconds": result.seconds, "epochs": result.epochs, "train_config": cfg.__dict__}
    save_checkpoint(model.cpu(), out, args.model, config, info={"dataset": data.name, "top1": top1})
    if args.json:
        emit_json(report, args.json, force=args.force)
    if args.json != "-":
        per_epoch = result.seconds / max(len(result.epochs), 1)
        print(f"{args.model}: test top-1 {top1:.4f} after {len(result.epochs)} epochs "
              f"({result.seconds:.1f} s, {per_epoch:.1f} s/epoch) -> {out}")
    return 0
