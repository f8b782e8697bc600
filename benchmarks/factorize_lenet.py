"""Factorise a trained LeNet-5 on Fashion-MNIST (conv2 -> 5x1 + 1x5, ip1 -> two low-rank
fc layers, ranks from the SVD of the trained weights), fine-tune, and report weights in
the factorised layers and top-1 before / after. Same code path as `nnshrink factorize`.

    .venv/bin/python benchmarks/factorize_lenet.py --base runs/l5.safetensors --json runs/factorize_lenet.json
    .venv/bin/python benchmarks/factorize_lenet.py --quick    # 20 fine-tuning steps, one setting
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch

from nnshrink.arch.factorize import factorize
from nnshrink.checkpoint import load_checkpoint, save_checkpoint
from nnshrink.data import load_dataset
from nnshrink.models import build_model
from nnshrink.train import default_train_config, evaluate, fit

SETTINGS = [{"ratio": 0.5}, {"ratio": 0.25}, {"ratio": 0.1}, {"energy": 0.8}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="runs/l5.safetensors", help="trained LeNet-5 (trained here if missing)")
    ap.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs per setting")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist")
    if Path(args.base).is_file():
        base, meta = load_checkpoint(args.base)
        base_note = f"loaded {args.base} ({meta['model']})"
    else:
        base = build_model("lenet5")
        cfg = default_train_config("lenet5").replace(max_steps=50 if args.quick else None)
        fit(base, data, cfg, progress=False, eval_each_epoch=False)
        save_checkpoint(base, args.base, "lenet5", {"num_classes": 10, "conv_relu": True, "dropout": 0.0},
                        info={"dataset": data.name})
        base_note = f"trained here with {cfg}"
    top1_base = evaluate(base, data)
    params_base = sum(p.numel() for p in base.parameters())
    print(f"dense LeNet-5: {params_base:,} params, top-1 {top1_base:.4f} ({base_note})")
    rows = []
    for setting in SETTINGS[:1] if args.quick else SETTINGS:
        model, choices = factorize(copy.deepcopy(base), **setting)
        top1_svd = evaluate(model, data)
        tc = default_train_config("lenet5")
        tc = tc.replace(epochs=args.epochs, lr=tc.lr / 10, max_steps=20 if args.quick else None)
        res = fit(model, data, tc, progress=False, eval_each_epoch=False)
        top1 = evaluate(model, data)
        before = sum(c.params_before for c in choices)
        after = sum(c.params_after for c in choices)
        row = {"setting": setting, "layers": [c.as_dict() for c in choices],
               "factorized_weights_before": before, "factorized_weights_after": after,
               "factorized_ratio": before / after, "params_before": params_base,
               "params_after": sum(p.numel() for p in model.parameters()), "top1_before": top1_base,
               "top1_svd": top1_svd, "top1_after": top1, "drop_points": 100 * (top1_base - top1),
               "fine_tune_seconds": res.seconds, "fine_tune_steps": res.steps}
        rows.append(row)
        ranks = ", ".join(f"{c.name} r={c.rank}" for c in choices)
        print(f"{json.dumps(setting):<18} {ranks:<24} layers {before:,} -> {after:,} ({before / after:.2f}x) "
              f"total {params_base:,} -> {row['params_after']:,}  top-1 {top1_base:.4f} -> {top1_svd:.4f} (SVD) "
              f"-> {top1:.4f} (fine-tuned; drop {row['drop_points']:+.2f} pts)", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": "2-core shared CPU VM, no GPU, torch " + torch.__version__,
                       "base": base_note, "epochs": args.epochs, "quick": args.quick, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
