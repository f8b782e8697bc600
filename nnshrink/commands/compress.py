"""``nnshrink compress``: run a recipe on a checkpoint and write a .nsk archive."""

from __future__ import annotations

from ._common import add_data_args, add_device_arg, add_force_arg, add_json_arg, check_outputs, emit_json


def register(sub) -> None:
    p = sub.add_parser("compress", help="prune / share / encode a checkpoint into a .nsk archive",
                       description="Compress an nnshrink checkpoint with a recipe, or any safetensors file "
                       "post-training (--no-retrain). Post-training is lossless unless --sparsity or --bits is "
                       "given: every tensor keeps its dtype, shape and bits (0-d, float64, float16, bfloat16, "
                       "integers). --sparsity / --bits turn float tensors of >= 1024 values into float32 "
                       "approximations; smaller and integer tensors stay exact.")
    p.add_argument("input", help="nnshrink checkpoint, or any safetensors file (post-training, --no-retrain)")
    p.add_argument("-o", "--output", required=True, help="archive path (.nsk)")
    p.add_argument("--recipe", default=None,
                   help="deep-compression (default), prune, share, binary, or a recipe FILE.toml")
    add_data_args(p)
    add_device_arg(p)
    p.add_argument("--no-retrain", action="store_true", help="compress without retraining or fine-tuning")
    p.add_argument("--sparsity", type=float, default=None, help="target sparsity per layer (overrides the recipe)")
    p.add_argument("--bits", type=int, default=None, help="index bits for every shared layer (overrides the recipe)")
    add_json_arg(p)
    p.add_argument("--plots", default=None, metavar="PNG", help="plot the weight distributions to this PNG")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last finished stage")
    add_force_arg(p)
    p.add_argument("--keep-work", action="store_true", help="keep the per-stage checkpoints (OUT.work/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _override(recipe, sparsity, bits):
    from dataclasses import replace

    if sparsity is not None and "prune" in recipe.stages:
        recipe = replace(recipe, prune=replace(recipe.prune, method="sparsity", sparsity=sparsity, layers={}))
    if bits is not None and "share" in recipe.stages:
        recipe = replace(recipe, share=replace(recipe.share, fc_bits=bits, conv_bits=bits, layers={}))
    return recipe


def run(args) -> int:
    from ..checkpoint import is_nnshrink_checkpoint
    from ..errors import ConfigError
    from ..pipeline import compress_checkpoint
    from ..post_training import compress_tensors
    from ..recipes import PruneConfig, ShareConfig, load_recipe
    from ..train import resolve_device

    out, plots = check_outputs(args, args.output, args.plots)  # --resume does not imply --force
    if args.sparsity is not None:
        PruneConfig(sparsity=args.sparsity)  # validates with a clear message
    if args.bits is not None:
        ShareConfig(fc_bits=args.bits, conv_bits=args.bits)
    plain = not is_nnshrink_checkpoint(args.input)
    if plain and not args.no_retrain:
        raise ConfigError(f"{args.input} is not an nnshrink checkpoint (no model in its metadata), so it "
                          "cannot be retrained; pass --no-retrain for post-training compression")
    _refuse_unused(args, plain)
    device = resolve_device(args.device)
    if plain:
        report = compress_tensors(args.input, out, sparsity=args.sparsity or 0.0, bits=args.bits)
    else:
        from ..checkpoint import read_metadata
        from ..data import load_dataset

        model_name = read_metadata(args.input).get("nnshrink.model")
        recipe = _override(load_recipe(args.recipe or "deep-compression", model_name), args.sparsity, args.bits)
        data = load_dataset(args.dataset, args.data_dir) if args.dataset else None
        report = compress_checkpoint(args.input, out, recipe, data=data, device=str(device),
                                     retrain=not args.no_retrain, resume=args.resume, progress=not args.quiet,
                                     plots=plots, keep_work=args.keep_work)
    if args.json:
        emit_json(report, args.json, force=args.force)
    if args.json != "-":
        print_summary(report)
    return 0


def _refuse_unused(args, plain: bool) -> None:
    """A flag the run would ignore is refused: whoever passed it expects it to act."""
    from ..errors import ConfigError

    if plain:
        unused = [flag for flag, value in (("--recipe", args.recipe), ("--dataset", args.dataset),
                                           ("--data-dir", args.data_dir), ("--device", args.device != "cpu"),
                                           ("--plots", args.plots), ("--resume", args.resume),
                                           ("--keep-work", args.keep_work)) if value]
        if unused:
            raise ConfigError(f"{', '.join(unused)} given, but {args.input} is a plain tensor file: post-training "
                              "compression takes no recipe, data or device (only --sparsity and --bits)")
    elif args.data_dir and not args.dataset:
        raise ConfigError(f"--data-dir {args.data_dir} given without --dataset NAME, so no data would be read")
    elif args.no_retrain and not args.dataset and args.device != "cpu":
        raise ConfigError(f"--device {args.device} would be unused: with --no-retrain and no --dataset, "
                          "no model runs")


def print_summary(report: dict) -> None:
    from ..report import ladder_table, layer_table

    print(layer_table(report["layers"], report.get("model")))
    if report.get("ladder"):
        print()
        print(ladder_table(report["ladder"]))
    top = ""
    if report.get("top1_after") is not None:
        top = f", top-1 {report['top1_before']:.4f} -> {report['top1_after']:.4f}"
    print(f"\n{report['output']}: {report['original_bytes']:,} -> {report['compressed_bytes']:,} bytes "
          f"({report['ratio']:.1f}x){top}")
