"""Iterative pruning of LeNet-300-100 and LeNet-5 on Fashion-MNIST (Han et al. 2015, Table 1/2).

Loads the dense baseline checkpoint (training it with the default settings if missing),
prunes to per-layer target sparsities in several prune -> retrain rounds at lr / 10, and
prints per-layer kept % beside the paper's. Writes JSON with --json OUT.

    .venv/bin/python benchmarks/prune_lenet.py --model lenet300 --json runs/prune_l300.json
    .venv/bin/python benchmarks/prune_lenet.py --model lenet5 --json runs/prune_l5.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from nnshrink.checkpoint import load_checkpoint, save_checkpoint
from nnshrink.data import load_dataset
from nnshrink.models import build_model, resolve_config
from nnshrink.prune import iterative_prune, total_kept
from nnshrink.train import default_train_config, evaluate, fit

# Final per-layer sparsities (fraction pruned) and the paper's kept fractions.
PRESETS = {
    "lenet300": {
        "target": {"ip1": 0.93, "ip2": 0.9, "ip3": 0.7},
        "paper_kept": {"ip1": 0.08, "ip2": 0.09, "ip3": 0.26},
        "paper_total": "267K -> 22K (12x), error 1.64% -> 1.59% (MNIST)",
        "rounds": 5, "epochs_per_round": 3, "final_epochs": 10, "lr_scale": 0.5,
    },
    "lenet5": {
        "target": {"conv1": 0.34, "conv2": 0.88, "ip1": 0.94, "ip2": 0.81},
        "paper_kept": {"conv1": 0.66, "conv2": 0.12, "ip1": 0.08, "ip2": 0.19},
        "paper_total": "431K -> 36K (12x), error 0.80% -> 0.77% (MNIST)",
        "rounds": 4, "epochs_per_round": 1, "final_epochs": 4, "lr_scale": 0.5,
    },
}


def baseline(name: str, path: Path, data, quick: bool):
    if path.exists():
        model, meta = load_checkpoint(path)
        return model, f"loaded {path}"
    cfg = default_train_config(name)
    if quick:
        cfg = cfg.replace(epochs=2)
    model = build_model(name)
    fit(model, data, cfg, eval_each_epoch=False, progress=False)
    save_checkpoint(model, path, name, resolve_config(name), info={"dataset": data.name})
    return model, f"trained {path} ({cfg.epochs} epochs)"


def run(name: str, ckpt: Path, data, args) -> dict:
    preset = PRESETS[name]
    model, source = baseline(name, ckpt, data, args.quick)
    dense_top1 = evaluate(model, data)
    rounds = args.rounds or preset["rounds"]
    epr = args.epochs_per_round or preset["epochs_per_round"]
    fin = args.final_epochs or preset["final_epochs"]
    lr_scale = args.lr_scale or preset["lr_scale"]
    target = dict(preset["target"])
    if args.target:
        target.update(json.loads(args.target))
    if args.scale_kept != 1.0:
        target = {k: 1 - (1 - v) * args.scale_kept for k, v in target.items()}
    train_cfg = default_train_config(name)
    if args.quick:
        rounds, epr, fin = 2, 0.2, 0.2
    t0 = time.perf_counter()
    rep = iterative_prune(model, data, target, rounds=rounds, train_cfg=train_cfg, lr_scale=lr_scale,
                          epochs_per_round=epr, final_epochs=fin, progress=False)
    seconds = time.perf_counter() - t0
    params, nonzero, kept = total_kept(rep.layers)
    w_rows = [r for r in rep.layers if len(r.shape) >= 2]
    wp, wn, wk = total_kept(w_rows)
    layers = []
    for r in w_rows:
        layer = r.name.rsplit(".", 1)[0]
        layers.append({**r.as_dict(), "target_sparsity": round(target[layer], 4),
                       "paper_kept_pct": 100 * preset["paper_kept"][layer]})
    out = {
        "model": name, "baseline": source, "dense_top1": dense_top1, "pruned_top1": rep.top1_after,
        "drop_points": 100 * (dense_top1 - rep.top1_after),
        "params": params, "nonzero": nonzero, "kept_pct": 100 * kept, "ratio": params / nonzero,
        "weights": wp, "weights_nonzero": wn, "weights_kept_pct": 100 * wk,
        "layers": layers, "rounds": [r.__dict__ for r in rep.rounds],
        "retrain": {"rounds": rounds, "epochs_per_round": epr, "final_epochs": fin, "lr_scale": lr_scale,
                    "train_config": {**train_cfg.__dict__, "lr": train_cfg.lr * lr_scale}},
        "seconds": seconds, "paper": preset["paper_total"],
    }
    if args.save:
        from nnshrink.prune import remove_masks

        remove_masks(model)
        save_checkpoint(model, Path(args.save.format(model=name)), name, resolve_config(name),
                        info={"dataset": data.name, "top1": rep.top1_after, "pruned": True})
    return out


def show(res: dict) -> None:
    print(f"\n{res['model']}: {res['baseline']}; retrain {res['retrain']['rounds']} rounds "
          f"({res['seconds']:.0f} s)")
    print(f"{'layer':<8} {'weights':>8} {'kept':>8} {'kept %':>7} {'paper %':>8}")
    for l in res["layers"]:
        print(f"{l['name']:<8} {l['params']:>8} {l['nonzero']:>8} {l['kept_pct']:>7.2f} {l['paper_kept_pct']:>8.0f}")
    print(f"{'weights':<8} {res['weights']:>8} {res['weights_nonzero']:>8} {res['weights_kept_pct']:>7.2f}")
    print(f"{'all':<8} {res['params']:>8} {res['nonzero']:>8} {res['kept_pct']:>7.2f}   "
          f"({res['ratio']:.1f}x fewer; paper {res['paper']})")
    print(f"top-1 dense {100 * res['dense_top1']:.2f}% -> pruned {100 * res['pruned_top1']:.2f}% "
          f"(drop {res['drop_points']:+.2f} points)")
    for r in res["rounds"]:
        print(f"  round {r['round']}: kept {100 * r['kept']:.2f}% of prunable weights, top-1 after prune "
              f"{100 * r['top1_pruned']:.2f}%, after retrain {100 * r['top1_retrained']:.2f}% ({r['seconds']:.0f} s)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["lenet300", "lenet5", "both"], default="both")
    p.add_argument("--l300", default="runs/l300.safetensors", help="LeNet-300-100 dense checkpoint")
    p.add_argument("--l5", default="runs/l5.safetensors", help="LeNet-5 dense checkpoint")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--epochs-per-round", type=float, default=None)
    p.add_argument("--final-epochs", type=float, default=None)
    p.add_argument("--lr-scale", type=float, default=None, help="retraining lr / original lr (default: preset)")
    p.add_argument("--target", default=None, help='per-layer final sparsity as JSON, e.g. \'{"ip1": 0.95}\'')
    p.add_argument("--scale-kept", type=float, default=1.0, help="multiply every layer's kept fraction")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny retraining")
    p.add_argument("--save", default=None, help="save pruned checkpoints, e.g. runs/{model}-pruned.safetensors")
    p.add_argument("--json", default=None, metavar="OUT")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist")
    names = ["lenet300", "lenet5"] if args.model == "both" else [args.model]
    results = []
    for name in names:
        res = run(name, Path(args.l300 if name == "lenet300" else args.l5), data, args)
        show(res)
        results.append(res)
    if args.json:
        meta = {"machine": "2-core shared CPU VM, no GPU", "torch": torch.__version__,
                "python": platform.python_version(), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                "threads": args.threads, "quick": args.quick}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
