"""``nnshrink factorize``: rewrite a trained model's large layers into low-rank pairs
(initialised by SVD of the trained weights), fine-tune, and save a checkpoint that
rebuilds itself (model ``factorized``, config {base, base_config, plan})."""

from __future__ import annotations

from ._common import add_data_args, add_device_arg, add_force_arg, add_json_arg, check_outputs, emit_json


def register(sub) -> None:
    p = sub.add_parser("factorize", help="low-rank factorise a trained model's conv / fc layers, then fine-tune")
    p.add_argument("input", metavar="CHECKPOINT", help="checkpoint written by nnshrink (.safetensors)")
    add_data_args(p)
    add_device_arg(p)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--rank", type=int, default=None, help="the same rank R for every rewritten layer")
    how.add_argument("--energy", type=float, default=None,
                     help="per layer, the smallest rank keeping this fraction of sum(s^2), in (0, 1]")
    how.add_argument("--ratio", type=float, default=None,
                     help="per layer, the largest rank keeping at most this fraction of its weights (default 0.5)")
    p.add_argument("--layers", default=None, help="comma-separated layer names (default: every large conv / fc)")
    p.add_argument("--conv-mode", default="spatial", choices=("spatial", "channel"),
                   help="kxk conv -> kx1 + 1xk (spatial, default) or kxk bottleneck + 1x1 (channel)")
    p.add_argument("--min-weights", type=int, default=10_000, help="skip layers smaller than this (default)")
    p.add_argument("--epochs", type=float, default=2, help="fine-tuning epochs (0: none; default 2)")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: 1/10 of training)")
    p.add_argument("--seed", type=int, default=0)
    add_json_arg(p)
    add_force_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", required=True, help="output checkpoint (.safetensors)")
    p.set_defaults(func=run)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def run(args) -> int:
    from ..arch.factorize import factorize, merge_plans, plan_dict
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..data import load_dataset
    from ..errors import ConfigError
    from ..train import default_train_config, evaluate, fit

    out, = check_outputs(args, args.output)
    if args.epochs < 0:
        raise ConfigError(f"epochs must be >= 0; got {args.epochs}")
    model, meta = load_checkpoint(args.input)
    data = load_dataset(args.dataset or meta["info"].get("dataset") or "fashion-mnist", args.data_dir)
    layers = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    params_before = _params(model)
    top1_before = evaluate(model, data)
    model, choices = factorize(model, rank=args.rank, energy=args.energy, ratio=args.ratio, layers=layers,
                               conv_mode=args.conv_mode, min_weights=args.min_weights)
    top1_svd = evaluate(model, data)
    base, config = merge_plans(meta["model"], meta["config"], plan_dict(choices))
    train_seconds = 0.0
    top1_after = top1_svd
    if args.epochs > 0:
        cfg = default_train_config(base)
        cfg = cfg.replace(epochs=args.epochs, lr=args.lr if args.lr is not None else cfg.lr / 10, seed=args.seed)
        result = fit(model, data, cfg, device=args.device, progress=not args.quiet, eval_each_epoch=False,
                     desc="fine-tune factorized")
        model.cpu()
        train_seconds = result.seconds
        top1_after = evaluate(model, data)
    layer_before = sum(c.params_before for c in choices)
    layer_after = sum(c.params_after for c in choices)
    report = {"input": args.input, "output": str(out), "base": base, "dataset": data.name,
              "params_before": params_before, "params_after": _params(model),
              "factorized_weights_before": layer_before, "factorized_weights_after": layer_after,
              "factorized_ratio": layer_before / max(layer_after, 1),
              "top1_before": top1_before, "top1_svd": top1_svd, "top1_after": top1_after,
              "fine_tune_epochs": args.epochs, "fine_tune_seconds": train_seconds,
              "layers": [c.as_dict() for c in choices]}
    save_checkpoint(model, out, "factorized", config,
                    info={"dataset": data.name, "top1": top1_after, "factorized_from": meta["model"]})
    if args.json:
        emit_json(report, args.json, force=args.force)
    if args.json != "-":
        for c in choices:
            print(f"  {c.name:<16} {c.kind:<8} rank {c.rank:>4}/{c.max_rank:<4} weights {c.params_before:>9,} -> "
                  f"{c.params_after:>9,} ({c.params_before / max(c.params_after, 1):.2f}x), "
                  f"energy kept {c.energy:.3f}")
        print(f"{base}: params {params_before:,} -> {report['params_after']:,}; factorised layers "
              f"{layer_before:,} -> {layer_after:,} ({report['factorized_ratio']:.2f}x); top-1 "
              f"{top1_before:.4f} -> {top1_svd:.4f} (SVD only) -> {top1_after:.4f} "
              f"(after {args.epochs:g} epochs fine-tuning) -> {out}")
    return 0
