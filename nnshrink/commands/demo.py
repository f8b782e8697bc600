"""``nnshrink demo``: the main job. Trains LeNet-300-100 and LeNet-5 on Fashion-MNIST,
runs the Deep Compression pipeline on both, and prints the paper's Table 1 beside ours."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ._common import add_data_args, add_device_arg, add_force_arg, add_json_arg, check_outputs, emit_json

MODELS = ("lenet300", "lenet5")


def register(sub) -> None:
    p = sub.add_parser("demo", help="train and compress both LeNets; print the paper-style table")
    add_data_args(p)
    add_device_arg(p)
    p.add_argument("--out-dir", default="demo-out", help="folder for checkpoints, archives and reports")
    p.add_argument("--quick", action="store_true", help="a short run (minutes): fewer epochs, one prune round")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of lenet300,lenet5")
    p.add_argument("--reuse", action="store_true", help="reuse dense checkpoints already in --out-dir")
    add_json_arg(p)
    add_force_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def quick_recipe(recipe):
    from dataclasses import replace

    # final_epochs = -1: the one round retrains retrain_epochs, not the full recipe's final epochs
    prune = (replace(recipe.prune, rounds=1, retrain_epochs=0.3, final_epochs=-1) if "prune" in recipe.stages
             else recipe.prune)
    share = replace(recipe.share, finetune_epochs=0.2) if "share" in recipe.stages else recipe.share
    return recipe.with_configs(prune=prune, share=share)


def run(args) -> int:
    from ..checkpoint import save_checkpoint
    from ..data import load_dataset
    from ..errors import ConfigError, OutputError
    from ..models import build_model, resolve_config
    from ..pipeline import compress_checkpoint
    from ..recipes import load_recipe
    from ..report import ladder_table, layer_table, paper_comparison
    from ..train import default_train_config, fit
    from ..workdir import work_path

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise ConfigError(f"--models takes a subset of {','.join(MODELS)}; got {args.models!r}")
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out-dir {str(out_dir)!r} is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{n}{ext}" for n in models for ext in (".nsk", "-weights.png")]
    written += [out_dir / f"{n}.safetensors" for n in models if not args.reuse]
    check_outputs(args, *written, out_dir / "demo.json")  # before the training, not after it
    data = load_dataset(args.dataset or "fashion-mnist", args.data_dir)
    reports = []
    t_all = time.perf_counter()
    for name in models:
        ckpt = out_dir / f"{name}.safetensors"
        t0 = time.perf_counter()
        if not (args.reuse and ckpt.is_file()):
            cfg = default_train_config(name)
            if args.quick:
                cfg = cfg.replace(epochs=1)
            config = resolve_config(name)
            model = build_model(name, **config)
            print(f"[{name}] training {cfg.epochs:g} epochs on {data.name} ...", flush=True)
            fit(model, data, cfg, device=args.device, progress=not args.quiet, eval_each_epoch=False,
                desc=f"train {name}")
            save_checkpoint(model.cpu(), ckpt, name, config, info={"dataset": data.name})
        train_s = time.perf_counter() - t0
        recipe = load_recipe("deep-compression", name)
        if args.quick:
            recipe = quick_recipe(recipe)
        archive = out_dir / f"{name}.nsk"
        work = work_path(archive)
        if args.force and work.exists():  # a killed demo's stages: --force starts afresh
            shutil.rmtree(work)
        print(f"[{name}] compressing (recipe {recipe.name}) ...", flush=True)
        report = compress_checkpoint(ckpt, archive, recipe, data=data, device=args.device,
                                     progress=not args.quiet, plots=out_dir / f"{name}-weights.png")
        report["train_seconds"] = train_s
        reports.append(report)
        print(f"\n== {name}: per layer ==\n{layer_table(report['layers'], name)}")
        print(f"\n== {name}: ladder ==\n{ladder_table(report['ladder'])}\n", flush=True)
    print("== Deep Compression, Table 1: paper (MNIST) vs nnshrink (" + data.name + ") ==")
    print(paper_comparison(reports))
    total = time.perf_counter() - t_all
    print(f"\ndemo finished in {total / 60:.1f} min; archives, reports and plots in {out_dir}/")
    summary = {"dataset": data.name, "quick": args.quick, "seconds": total, "reports": reports}
    emit_json(summary, str(out_dir / "demo.json"), force=args.force)
    if args.json:
        emit_json(summary, args.json, force=args.force)
    return 0
