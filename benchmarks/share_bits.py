"""Top-1 against weight-sharing bits (2..8), fc and conv layers separately, three inits.

Deep Compression's Figures 6/7 on Fashion-MNIST LeNet-5: share only the fc layers (conv
left float) or only the conv layers (fc left float) at b bits, with linear, density or
random centroid init; report top-1 before and after a short centroid fine-tuning (only
codebooks + biases train, via nnshrink.train.fit with share.finetune_filter).
Reuses runs/l5.safetensors (dense baseline, default settings) or trains it.

    .venv/bin/python benchmarks/share_bits.py [--quick] [--json OUT] [--md OUT]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from nnshrink.checkpoint import load_checkpoint
from nnshrink.data import Dataset, load_dataset
from nnshrink.quantize.share import finetune, share_weights
from nnshrink.train import TrainConfig, evaluate

ROOT = Path(__file__).resolve().parents[1]


def baseline(path: Path, model: str):
    if not path.exists():
        subprocess.run([sys.executable, "-m", "nnshrink", "train", "--model", model, "-o", str(path),
                        "--quiet"], check=True, cwd=ROOT)
    return load_checkpoint(path)[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "runs/l5.safetensors"))
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--steps", type=int, default=40, help="fine-tuning steps per point")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--bits", default="2,3,4,5,6,7,8")
    ap.add_argument("--inits", default="linear,density,random")
    ap.add_argument("--kinds", default="fc,conv")
    ap.add_argument("--test-subset", type=int, default=3000, help="evaluate on the first N test images (0 = all)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None, help="write the markdown table here")
    ap.add_argument("--paper-bits", action="store_true",
                    help="instead: LeNet-300-100 at 6 bits and LeNet-5 at conv 8 / fc 5 (dense, not "
                         "pruned), full test set, 200 Adam steps at lr 1e-4 and 1e-3")
    args = ap.parse_args(argv)
    if args.paper_bits:
        return paper_bits(args)
    if args.quick:
        args.bits, args.inits, args.steps, args.test_subset = "2,4,8", "linear", 20, 2000
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist")
    if args.test_subset:
        data = Dataset(data.name, data.train_x, data.train_y, data.test_x[:args.test_subset],
                       data.test_y[:args.test_subset])
    base = baseline(Path(args.checkpoint), args.model)
    t0 = time.perf_counter()
    dense = evaluate(base, data)
    cfg = TrainConfig(epochs=1, lr=args.lr, optimizer=args.optimizer, weight_decay=0.0, max_steps=args.steps,
                      schedule="cosine", batch_size=128)
    rows = []
    for kind in args.kinds.split(","):
        for init in args.inits.split(","):
            for b in [int(v) for v in args.bits.split(",")]:
                m = copy.deepcopy(base)
                rep = share_weights(m, b, init=init, targets=[kind])
                before = evaluate(m, data)
                finetune(m, data, cfg, progress=False, eval_each_epoch=False)
                after = evaluate(m, data)
                row = {"kind": kind, "init": init, "bits": b, "top1_shared": before, "top1_finetuned": after,
                       "k_used": {r.name: r.k_used for r in rep}}
                rows.append(row)
                print(f"{kind:4s} {init:8s} {b} bits: top1 {100 * before:.2f} -> {100 * after:.2f} "
                      f"(dense {100 * dense:.2f})", flush=True)
    seconds = time.perf_counter() - t0
    res = {"model": args.model, "checkpoint": os.path.relpath(args.checkpoint, ROOT), "dense_top1": dense,
           "test_images": len(data.test_y), "finetune": {"steps": args.steps, "lr": args.lr,
                                                         "optimizer": args.optimizer, "batch_size": 128},
           "seconds": seconds, "rows": rows}
    md = table(res)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    if args.md:
        Path(args.md).write_text(md)
    return res


def paper_bits(args):
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist")
    out = {}
    for name, path, bits in (("lenet300", ROOT / "runs/l300.safetensors", 6),
                             ("lenet5", ROOT / "runs/l5.safetensors", None)):
        base = baseline(path, name)
        m0 = copy.deepcopy(base)
        rows = share_weights(m0, bits)
        res = {"dense_top1": evaluate(base, data), "shared_top1": evaluate(m0, data),
               "bits": {r.name: r.bits for r in rows}, "storage_bits": sum(r.storage_bits for r in rows),
               "original_bits": sum(32 * r.params for r in rows)}
        for lr in (1e-4, 1e-3):
            m = copy.deepcopy(m0)
            finetune(m, data, TrainConfig(epochs=1, lr=lr, optimizer="adam", weight_decay=0.0, max_steps=200),
                     progress=False, eval_each_epoch=False)
            res[f"finetuned_adam_lr{lr:g}_200steps_top1"] = evaluate(m, data)
        out[name] = res
        print(name, json.dumps(res), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


def table(res) -> str:
    bits = sorted({r["bits"] for r in res["rows"]})
    lines = [f"LeNet-5 top-1 % (dense {100 * res['dense_top1']:.2f}) on {res['test_images']} test images; "
             f"cell = shared -> after {res['finetune']['steps']} fine-tuning steps", "",
             "| layers | init | " + " | ".join(f"{b} bits" for b in bits) + " |",
             "|---|---|" + "---|" * len(bits)]
    groups = {}
    for r in res["rows"]:
        groups.setdefault((r["kind"], r["init"]), {})[r["bits"]] = r
    for (kind, init), cells in groups.items():
        label = "fc only (conv float)" if kind == "fc" else "conv only (fc float)"
        vals = [f"{100 * cells[b]['top1_shared']:.2f} -> {100 * cells[b]['top1_finetuned']:.2f}" if b in cells else ""
                for b in bits]
        lines.append(f"| {label} | {init} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
