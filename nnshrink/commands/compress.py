"""``nnshrink compress``: run a recipe on a checkpoint and write a .nsk archive."""

from __future__ import annotations

from ._common import add_data_args, add_device_arg, add_force_arg, add_json_arg, check_outputs, emit_json

POST_TRAINING = "post-training"  # ptq.module.POST_TRAINING, without importing torch for --help


def register(sub) -> None:
    p = sub.add_parser("compress", help="prune / share / encode a checkpoint into a .nsk archive",
                       description="Compress an nnshrink checkpoint with a recipe, a state_dict of your own "
                       "model (--model-factory; --recipe post-training or the post-training flags below compress it "
                       "with calibration batches and no training loop), a local Hugging Face folder (--hf-model), "
                       "or any safetensors file post-training (--no-retrain). "
                       "A plain safetensors file is stored losslessly unless --sparsity or --bits is "
                       "given: every tensor keeps its dtype, shape and bits (0-d, float64, float16, bfloat16, "
                       "integers). --sparsity / --bits turn float tensors of >= 1024 values into float32 "
                       "approximations; smaller and integer tensors stay exact.")
    p.add_argument("input", nargs="?", default=None,
                   help="nnshrink checkpoint, a state_dict of your model (with --model-factory), "
                   "or any safetensors file (post-training, --no-retrain); none with --hf-model")
    p.add_argument("-o", "--output", required=True, help="archive path (.nsk)")
    p.add_argument("--recipe", default=None,
                   help="deep-compression (default), prune, share, binary, a recipe FILE.toml, or post-training "
                        "(with --model-factory: no training loop, calibration batches only)")
    add_data_args(p)
    p.add_argument("--model-factory", default=None, metavar="PKG.MOD:FN",
                   help="your code that builds the model INPUT holds: FN() -> nn.Module (imported from the "
                        "current folder / PYTHONPATH)")
    p.add_argument("--data-factory", default=None, metavar="PKG.MOD:FN",
                   help="with --model-factory: FN() -> (train_loader, test_loader) to retrain and measure top-1; "
                        "without it nothing is retrained")
    add_device_arg(p)
    p.add_argument("--no-retrain", action="store_true", help="compress without retraining or fine-tuning")
    p.add_argument("--sparsity", type=float, default=None, help="target sparsity per layer (overrides the recipe)")
    p.add_argument("--target-ratio", type=float, default=None, metavar="R",
                   help="choose per-layer sparsities by measured sensitivity and encoded size so the archive is "
                        "about 1/R of the original (replaces the recipe's prune sparsities; needs a dataset)")
    p.add_argument("--bits", type=int, default=None,
                   help="codebook width: 2**bits shared values per shared tensor (overrides the recipe)")
    p.add_argument("--epochs-scale", type=float, default=None, metavar="F",
                   help="multiply every retraining of the recipe (prune retrain_epochs / final_epochs, share "
                        "finetune_epochs) by F > 0: 0.5 for a quicker run, 2 for a longer one")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the retraining shuffles and the k-means init (default: the model's training seed)")
    g = p.add_argument_group("post-training compression (no retraining) of your own model (--model-factory) or "
                             "a local Hugging Face model folder (--hf-model)")
    g.add_argument("--hf-model", default=None, metavar="DIR",
                   help="folder with config.json, model.safetensors and a tokenizer (needs nnshrink[hf]); "
                        "the archive keeps the weight file's names, so decompress gives a loadable model.safetensors")
    g.add_argument("--calibration", default=None, metavar="FILE",
                   help="with --hf-model: one text per line: sensitivities and layer inputs for weighted sharing "
                        "and error compensation (without it: the data-free fallback)")
    g.add_argument("--calibration-factory", default=None, metavar="PKG.MOD:FN",
                   help="with --model-factory: FN() -> batches of typical inputs (a list or DataLoader of tensors "
                        "or (inputs, labels) pairs) to calibrate on; without it, the first training batches of "
                        "--data-factory, else the data-free fallback")
    g.add_argument("--target-bpw", type=float, default=None, metavar="B",
                   help="choose per-layer bits so the file holds B bits per weight (all overhead included)")
    g.add_argument("--max-error", type=float, default=None, metavar="E",
                   help="instead of a budget: the fewest bytes whose estimated relative output error on the "
                        "calibration data (sum of squared changes over sum of squares) stays <= E")
    g.add_argument("--recalibrate-bn", action="store_true",
                   help="with --model-factory: after sharing, re-estimate the BatchNorm statistics on the "
                        "calibration batches and store those")
    g.add_argument("--tune-steps", type=int, default=0, metavar="N",
                   help="after sharing, tune the exactly-stored norms and biases N Adam steps towards the float "
                        "model's outputs on the calibration data (shared weights unchanged; default 0: off)")
    g.add_argument("--probe", action="store_true",
                   help="with --target-bpw, --max-error or --sparsity-by-layer: rescale each layer's error estimate "
                        "by its output error measured once on the calibration data before choosing (slower)")
    g.add_argument("--sparsity-by-layer", action="store_true",
                   help="with --sparsity S: prune S of all error-compensated layers' weights overall, each layer's "
                        "fraction chosen by its measured pruning error (needs calibration data)")
    g.add_argument("--sparsity-over", choices=("compensated", "all"), default="compensated",
                   help="which weights a calibrated --sparsity prunes: the error-compensated layers' (default) or "
                        "all shared weights, embeddings too (compensated with their lookups' output gradients)")
    g.add_argument("--prune-rounds", type=int, default=1, metavar="R",
                   help="calibrated pruning: choose the mask in R rounds, refitting the kept weights by least "
                        "squares after each (slower, less error; default 1: SparseGPT's one pass)")
    g.add_argument("--sequential", action="store_true",
                   help="compress the error-compensated layers group after group towards the float model's "
                        "outputs from the inputs the compressed layers before them give (needs calibration data "
                        "and --bits, not a budget)")
    g.add_argument("--outliers", type=float, default=0.0, metavar="F",
                   help="fraction of each shared tensor kept exactly (float16) beside its codebook")
    add_json_arg(p)
    p.add_argument("--plots", default=None, metavar="PNG", help="plot the weight distributions to this PNG")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last finished stage")
    add_force_arg(p)
    p.add_argument("--keep-work", action="store_true", help="keep the per-stage checkpoints (OUT.work/)")
    p.add_argument("--quiet", action="store_true", help="no progress lines or bars (stderr)")
    p.set_defaults(func=run)


def _override(recipe, args):
    """The recipe with the command line's --sparsity, --bits and --epochs-scale applied."""
    from dataclasses import replace

    from ..errors import ConfigError

    if args.sparsity is not None and "prune" in recipe.stages:
        recipe = recipe.with_configs(prune=replace(recipe.prune, method="sparsity", sparsity=args.sparsity, layers={}))
    if args.target_ratio is not None:
        if "prune" not in recipe.stages:
            raise ConfigError(f"--target-ratio {args.target_ratio:g} given, but recipe {recipe.name!r} does not prune")
        recipe = recipe.with_configs(prune=replace(recipe.prune, method="sparsity", target_ratio=args.target_ratio,
                                                   layers={}))
    if args.bits is not None and "share" in recipe.stages:
        recipe = recipe.with_configs(share=replace(recipe.share, fc_bits=args.bits, conv_bits=args.bits, layers={}))
    if args.epochs_scale is not None:
        if not recipe.retrains:
            raise ConfigError(f"--epochs-scale {args.epochs_scale:g} given, but recipe {recipe.name!r} retrains "
                              "nothing to scale")
        recipe = recipe.scaled(args.epochs_scale)
    return recipe


def import_factory(spec: str, flag: str):
    """The function ``PKG.MOD:FN`` names (the user's code, named on the command line)."""
    import importlib
    import os
    import re
    import sys

    from ..errors import ConfigError

    m = re.fullmatch(r"([A-Za-z_][\w.]*):([A-Za-z_]\w*)", spec or "")
    if not m:
        raise ConfigError(f"{flag} must look like PKG.MOD:FN (a module path, a colon, a function); got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(m.group(1))
    except Exception as exc:
        raise ConfigError(f"{flag} {spec!r}: cannot import {m.group(1)!r} ({type(exc).__name__}: {exc})") from None
    fn = getattr(module, m.group(2), None)
    if not callable(fn):
        raise ConfigError(f"{flag} {spec!r}: module {m.group(1)!r} has no function {m.group(2)!r}")
    return fn


def _call_factory(fn, spec: str, flag: str):
    from ..errors import ConfigError

    try:
        return fn()
    except Exception as exc:
        raise ConfigError(f"{flag} {spec!r} raised {type(exc).__name__}: {exc}") from None


def dataset_from_loaders(train, test, name: str):
    """The two loaders' batches in memory as a Dataset, so nnshrink's own ``fit`` and
    ``evaluate`` run on them (each loader is read once: augmentation is drawn once)."""
    import torch

    from ..data import Dataset
    from ..errors import ConfigError

    def gather(loader, which: str):
        xs, ys = [], []
        try:
            for batch in loader:
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ConfigError(f"--data-factory {name!r}: {which} batches must be (inputs, labels); "
                                      f"got {type(batch).__name__}")
                xs.append(torch.as_tensor(batch[0]))
                ys.append(torch.as_tensor(batch[1]).long())
        except TypeError as exc:
            raise ConfigError(f"--data-factory {name!r}: the {which} loader is not iterable ({exc})") from None
        if not xs:
            raise ConfigError(f"--data-factory {name!r}: the {which} loader yields no batches")
        return torch.cat(xs), torch.cat(ys)

    tr_x, tr_y = gather(train, "train")
    te_x, te_y = gather(test, "test")
    return Dataset(name, tr_x, tr_y, te_x, te_y)


def own_model(args):
    """The module ``--model-factory`` builds, filled from INPUT (shapes checked)."""
    import torch.nn as nn

    from ..checkpoint import load_tensors
    from ..errors import ConfigError
    from ..loading import load_into

    model = _call_factory(import_factory(args.model_factory, "--model-factory"), args.model_factory,
                          "--model-factory")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model-factory {args.model_factory!r} must return an nn.Module; "
                          f"got {type(model).__name__}")
    return load_into(model, load_tensors(args.input), str(args.input))


def own_data(args):
    """``--data-factory``'s two loaders as a Dataset, or None without it."""
    from ..errors import ConfigError

    if not args.data_factory:
        return None
    loaders = _call_factory(import_factory(args.data_factory, "--data-factory"), args.data_factory, "--data-factory")
    if not isinstance(loaders, (tuple, list)) or len(loaders) != 2:
        raise ConfigError(f"--data-factory {args.data_factory!r} must return (train_loader, test_loader); "
                          f"got {type(loaders).__name__}")
    return dataset_from_loaders(*loaders, args.data_factory)


def compress_own_model(args, out) -> dict:
    """INPUT is a plain state_dict of the module ``--model-factory`` builds."""
    import torch.nn as nn

    from ..batchnorm import calibration_batches
    from ..checkpoint import load_tensors
    from ..distributed import is_writer
    from ..errors import ConfigError
    from ..loading import load_into
    from ..pipeline import archive_metadata, compress_to_file
    from ..recipes import load_recipe
    from ..stages import Context, fit_trainer, top1_metric
    from ..train import TrainConfig

    if args.dataset:
        raise ConfigError("--dataset does not apply to --model-factory models; give --data-factory PKG.MOD:FN")
    model = own_model(args)
    data = own_data(args)
    recipe = _override(load_recipe(args.recipe or "deep-compression"), args)
    retrain = data is not None and not args.no_retrain
    seed = args.seed if args.seed is not None else TrainConfig().seed
    progress = not args.quiet and is_writer()
    ctx = Context(trainer=fit_trainer(data, TrainConfig(seed=seed), device=args.device, progress=progress)
                  if retrain else None,
                  metric=top1_metric(data, device=args.device) if data is not None else None,
                  device=args.device, progress=progress, seed=seed,
                  calibration=calibration_batches(data.train_x, seed=seed) if data is not None else None)
    if data is None:
        ctx.note("no --data-factory: compressed without retraining (--no-retrain)")
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    report = compress_to_file(model, out, recipe, ctx,
                              metadata=archive_metadata(None, {}, {"class": cls, "recipe": recipe.name,
                                                                   "dataset": args.data_factory}),
                              run_id={"class": cls, "retrain": retrain, "data": args.data_factory},
                              resume=args.resume, plots=args.plots, keep_work=args.keep_work)
    return {"input": str(args.input), "dataset": args.data_factory, **report}


def run(args) -> int:
    import sys

    from ..checkpoint import is_nnshrink_checkpoint
    from ..distributed import is_writer, join_from_env
    from ..errors import ConfigError
    from ..recipes import PruneConfig, ShareConfig, check_epochs_scale
    from ..report import flag_growth
    from ..train import resolve_device

    out, plots = check_outputs(args, args.output, args.plots)  # --resume does not imply --force
    if args.calibration_factory and not args.model_factory:
        raise ConfigError("--calibration-factory needs --model-factory (the model the batches are for)")
    if args.calibration and args.hf_model is None:
        raise ConfigError("--calibration FILE given without --hf-model DIR (texts are for a Hugging Face model "
                          "folder; your own model takes --calibration-factory PKG.MOD:FN)")
    ptq_flags = post_training_flags(args)
    if args.hf_model is None and not args.model_factory and (ptq_flags or args.recipe == POST_TRAINING) \
            and not (args.input and is_nnshrink_checkpoint(args.input)):
        raise ConfigError(f"{', '.join(ptq_flags) or '--recipe ' + POST_TRAINING} given without --model-factory "
                          "PKG.MOD:FN, an nnshrink checkpoint or --hf-model DIR (the model post-training "
                          "compression runs)")
    if args.hf_model is not None:
        return _run_hf(args, out)
    if ptq_flags or args.recipe == POST_TRAINING:
        if args.input is None:
            raise ConfigError("give INPUT: a state_dict of the model --model-factory builds, or an nnshrink checkpoint")
        return _run_own_post_training(args, out)
    if args.input is None:
        raise ConfigError("give INPUT (a checkpoint or safetensors file) or --hf-model DIR")
    if args.sparsity is not None:
        PruneConfig(sparsity=args.sparsity)  # validates with a clear message
    if args.target_ratio is not None:
        if args.sparsity is not None:
            raise ConfigError(f"--target-ratio {args.target_ratio:g} chooses the sparsities; do not also give "
                              f"--sparsity {args.sparsity:g}")
        PruneConfig(target_ratio=args.target_ratio)
    if args.bits is not None:
        ShareConfig(fc_bits=args.bits, conv_bits=args.bits)
    if args.epochs_scale is not None:
        check_epochs_scale(args.epochs_scale, "--epochs-scale")
    if args.data_factory and not args.model_factory:
        raise ConfigError("--data-factory needs --model-factory (the model the data is for)")
    plain = not args.model_factory and not is_nnshrink_checkpoint(args.input)
    if plain and not args.no_retrain:
        raise ConfigError(f"{args.input} is not an nnshrink checkpoint (no model in its metadata), so it "
                          "cannot be retrained; pass --no-retrain for post-training compression")
    _refuse_unused(args, plain)
    device = resolve_device(args.device)
    with join_from_env(str(device)) as distributed:  # under torchrun: every rank runs, rank 0 writes
        if plain and distributed:
            raise ConfigError("post-training compression (--no-retrain on a plain tensor file) runs in one "
                              "process; start it without torchrun")
        report = _compress(args, out, plain, plots, device)
        if not is_writer():
            return 0
    flag_growth(report)
    if args.json:
        emit_json(report, args.json, force=args.force)
    if args.json != "-":
        print_summary(report)
    for line in report.get("warnings") or []:  # on stderr, also beside --json -
        print(f"warning: {line}", file=sys.stderr)
    return 0


def post_training_flags(args) -> list[str]:
    """The flags that only post-training compression takes (they select it for --model-factory)."""
    return [f for f, v in (("--calibration-factory", args.calibration_factory),
                           ("--target-bpw", args.target_bpw is not None), ("--max-error", args.max_error is not None),
                           ("--outliers", args.outliers), ("--recalibrate-bn", args.recalibrate_bn),
                           ("--tune-steps", args.tune_steps), ("--sparsity-by-layer", args.sparsity_by_layer),
                           ("--sparsity-over", args.sparsity_over != "compensated"),
                           ("--prune-rounds", args.prune_rounds != 1),
                           ("--sequential", args.sequential), ("--probe", args.probe)) if v]


def _one_budget(args) -> None:
    from ..errors import ConfigError

    if sum(v is not None for v in (args.bits, args.target_bpw, args.max_error)) > 1:
        raise ConfigError("give one of --bits, --target-bpw and --max-error")


def _run_own_post_training(args, out) -> int:
    """``--recipe post-training`` or the post-training flags, on a state_dict of your model
    (``--model-factory``) or an nnshrink checkpoint: INPUT compressed without a training
    loop, as ``nnshrink.compress(model, PostTraining(...), calibrate=...)`` does."""
    from ..batchnorm import calibration_batches
    from ..errors import ConfigError
    from ..io_utils import atomic_write_bytes
    from ..ptq.module import PostTraining, compress_module
    from ..ptq.tune import check_steps
    from ..stages import top1_metric
    from ..train import TrainConfig
    from ..workdir import work_dir

    if args.recipe not in (None, POST_TRAINING):
        raise ConfigError(f"{', '.join(post_training_flags(args))} given with --recipe {args.recipe}: these flags are "
                          f"for post-training compression (--recipe {POST_TRAINING})")
    unused = [flag for flag, value in (("--dataset", args.dataset and args.model_factory),
                                       ("--data-dir", args.data_dir and not args.dataset),
                                       ("--device", args.device != "cpu"), ("--plots", args.plots),
                                       ("--resume", args.resume), ("--keep-work", args.keep_work),
                                       ("--target-ratio", args.target_ratio is not None),
                                       ("--epochs-scale", args.epochs_scale is not None)) if value]
    if unused:
        raise ConfigError(f"{', '.join(unused)} given, but post-training compression retrains nothing and runs on "
                          "the CPU; it takes --calibration-factory / --data-factory (your model) or --dataset (an "
                          "nnshrink checkpoint), --bits or --target-bpw or --max-error, --outliers, --sparsity, "
                          "--recalibrate-bn, --tune-steps, --sparsity-by-layer, --sparsity-over, --prune-rounds, "
                          "--sequential, --probe, --seed")
    if args.input is None:
        raise ConfigError("give INPUT: the state_dict (safetensors) of the model --model-factory builds")
    _one_budget(args)
    check_steps(args.tune_steps, "--tune-steps")
    settings = PostTraining(bits=args.bits, target_bpw=args.target_bpw, max_error=args.max_error,
                            outliers=args.outliers, sparsity=args.sparsity or 0.0, force=args.force,
                            recalibrate_bn=args.recalibrate_bn, tune_steps=args.tune_steps,
                            sparsity_by_layer=args.sparsity_by_layer, sparsity_over=args.sparsity_over,
                            sequential=args.sequential, probe=args.probe, prune_rounds=args.prune_rounds)
    zoo = None
    if args.model_factory:
        model, data = own_model(args), own_data(args)
    else:  # an nnshrink checkpoint: its zoo model, its dataset
        from ..checkpoint import load_checkpoint
        from ..data import load_dataset

        model, meta = load_checkpoint(args.input)
        zoo = (meta["model"], meta["config"])
        data = load_dataset(args.dataset, args.data_dir) if args.dataset else None
    seed = args.seed if args.seed is not None else TrainConfig().seed
    calibrate = None
    if args.calibration_factory:
        calibrate = _call_factory(import_factory(args.calibration_factory, "--calibration-factory"),
                                  args.calibration_factory, "--calibration-factory")
    elif data is not None:
        calibrate = calibration_batches(data.train_x, seed=seed)
    source = "--calibration-factory or --data-factory" if args.model_factory else "--dataset"
    for flag, asked in (("--max-error", settings.max_error is not None), ("--recalibrate-bn", args.recalibrate_bn),
                        ("--tune-steps", bool(args.tune_steps)), ("--sparsity-by-layer", args.sparsity_by_layer),
                        ("--sequential", args.sequential), ("--probe", args.probe)):
        if asked and calibrate is None:
            raise ConfigError(f"{flag} needs calibration data: give {source}")
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    with work_dir(out, {"post-training": str(args.input)}):  # the lock: one run writes ``out`` at a time
        blob, _, report = compress_module(
            model, settings, calibrate=calibrate, evaluate=top1_metric(data) if data is not None else None,
            metadata={"class": cls, "dataset": args.data_factory or args.dataset, "source": str(args.input)},
            seed=seed, progress=not args.quiet, missing_data=source, zoo=zoo)
        atomic_write_bytes(out, blob)
    report = {"input": str(args.input), "output": str(out), "dataset": args.data_factory or args.dataset,
              "calibration": args.calibration_factory or (data is not None and "training batches of the data"),
              **report}
    _emit_post_training(args, report, out)
    return 0


def _emit_post_training(args, report: dict, out) -> None:
    """--json, the per-layer lines and the summary, warnings on stderr."""
    import sys

    if args.json:
        emit_json(report, args.json, force=args.force)
    if args.json != "-":
        for r in report["layers"]:
            if "bits" in r:
                print(f"{r['name']:<50} {str(tuple(r['shape'])):<14} {r['bits']} bits  outliers {r['outliers']:>6}  "
                      f"sparsity {r['sparsity']:.2f}  est. error {r['estimated_error']:.3g}")
        top = ""
        if report.get("top1_after") is not None:
            top = f", top-1 {report['top1_before']:.4f} -> {report['top1_after']:.4f}"
        print(f"\n{out}: {report['original_bytes']:,} -> {report['compressed_bytes']:,} bytes "
              f"({report['ratio']:.2f}x, {report['bits_per_weight']:.3f} bits per weight{top}); "
              f"{report['post_training']['method']}")
    for line in report.get("warnings") or []:
        print(f"warning: {line}", file=sys.stderr)


def _run_hf(args, out) -> int:
    import sys

    from ..errors import ConfigError
    from ..ptq.folder import compress_hf_folder
    from ..workdir import work_dir

    unused = [flag for flag, value in (("INPUT", args.input), ("--recipe", args.recipe), ("--dataset", args.dataset),
                                       ("--model-factory", args.model_factory), ("--resume", args.resume),
                                       ("--epochs-scale", args.epochs_scale is not None), ("--plots", args.plots),
                                       ("--data-factory", args.data_factory), ("--data-dir", args.data_dir),
                                       ("--target-ratio", args.target_ratio is not None),
                                       ("--keep-work", args.keep_work), ("--device", args.device != "cpu"),
                                       ("--recalibrate-bn", args.recalibrate_bn))
              if value]
    if unused:
        raise ConfigError(f"{', '.join(unused)} given with --hf-model: post-training compression of a model "
                          "folder takes --calibration, --bits or --target-bpw, --outliers, --sparsity, "
                          "--sparsity-by-layer, --sparsity-over, --prune-rounds, --sequential, --probe and "
                          "--tune-steps")
    _one_budget(args)
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    with work_dir(out, {"post-training": str(args.hf_model)}):
        report = compress_hf_folder(args.hf_model, out, calibration=args.calibration,
                                    bits=args.bits or 4, target_bpw=args.target_bpw, max_error=args.max_error,
                                    outliers=args.outliers, tune_steps=args.tune_steps,
                                    sparsity_by_layer=args.sparsity_by_layer, sequential=args.sequential,
                                    sparsity_over=args.sparsity_over, probe=args.probe,
                                    prune_rounds=args.prune_rounds,
                                    sparsity=args.sparsity or 0.0, force=args.force, progress=say)
    _emit_post_training(args, report, out)
    return 0


def _compress(args, out, plain: bool, plots, device) -> dict:
    """The report of the run INPUT asks for: own model, plain tensor file or zoo checkpoint."""
    from ..distributed import is_writer
    from ..pipeline import compress_checkpoint
    from ..post_training import compress_tensors
    from ..recipes import load_recipe

    if args.model_factory:
        return compress_own_model(args, out)
    if plain:
        from ..workdir import work_dir

        with work_dir(out, {"post-training": str(args.input)}):  # the lock: one run writes ``out`` at a time
            return compress_tensors(args.input, out, sparsity=args.sparsity or 0.0, bits=args.bits)
    from ..checkpoint import read_metadata
    from ..data import load_dataset

    model_name = read_metadata(args.input).get("nnshrink.model")
    recipe = _override(load_recipe(args.recipe or "deep-compression", model_name), args)
    data = load_dataset(args.dataset, args.data_dir) if args.dataset else None
    return compress_checkpoint(args.input, out, recipe, data=data, device=str(device),
                               retrain=not args.no_retrain, resume=args.resume,
                               progress=not args.quiet and is_writer(), plots=plots, keep_work=args.keep_work, seed=args.seed)


def _refuse_unused(args, plain: bool) -> None:
    """A flag the run would ignore is refused: whoever passed it expects it to act."""
    from ..errors import ConfigError

    if plain:
        unused = [flag for flag, value in (("--recipe", args.recipe), ("--dataset", args.dataset),
                                           ("--data-dir", args.data_dir), ("--device", args.device != "cpu"),
                                           ("--plots", args.plots), ("--resume", args.resume),
                                           ("--keep-work", args.keep_work), ("--seed", args.seed is not None),
                                           ("--target-ratio", args.target_ratio is not None),
                                           ("--epochs-scale", args.epochs_scale is not None)) if value]
        if unused:
            raise ConfigError(f"{', '.join(unused)} given, but {args.input} is a plain tensor file: post-training "
                              "compression takes no recipe, data, retraining or device (only --sparsity and --bits)")
    elif args.epochs_scale is not None and (args.no_retrain or (args.model_factory and not args.data_factory)):
        why = "--no-retrain" if args.no_retrain else "no --data-factory"
        raise ConfigError(f"--epochs-scale {args.epochs_scale:g} given, but nothing retrains ({why})")
    elif args.data_dir and not args.dataset:
        raise ConfigError(f"--data-dir {args.data_dir} given without --dataset NAME, so no data would be read")
    elif args.no_retrain and not args.dataset and not args.data_factory and args.device != "cpu":
        raise ConfigError(f"--device {args.device} would be unused: with --no-retrain and no --dataset, "
                          "no model runs")


def print_summary(report: dict) -> None:
    from ..report import ladder_table, layer_table, ratio_text

    print(layer_table(report["layers"], report.get("model")))
    if report.get("ladder"):
        print()
        print(ladder_table(report["ladder"]))
    top = ""
    if report.get("top1_after") is not None:
        top = f", top-1 {report['top1_before']:.4f} -> {report['top1_after']:.4f}"
    ratio = ratio_text(report["original_bytes"], report["compressed_bytes"])
    print(f"\n{report['output']}: {report['original_bytes']:,} -> {report['compressed_bytes']:,} bytes "
          f"({ratio}){top}")
    if report.get("max_rel_error_tensor"):
        from ..format.errors import show

        print(f"reconstruction error (relative L2): worst {report['max_rel_error']:.4f} in "
              f"{show(report['max_rel_error_tensor'])} (per tensor: rel_error in --json)")
