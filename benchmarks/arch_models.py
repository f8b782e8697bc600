"""Compact architectures on Fashion-MNIST: parameters, mult-adds and top-1 of LeNet-5, the
small SqueezeNet and the small MobileNet (alpha 1.0 and 0.5), each trained for the same
(short) number of epochs with its default recipe; plus the ImageNet-size profiles.

    .venv/bin/python benchmarks/arch_models.py --epochs 1 --json runs/arch_models.json
    .venv/bin/python benchmarks/arch_models.py --quick     # profiles + 30 training steps each
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from nnshrink.arch.profile import profile_named
from nnshrink.data import load_dataset
from nnshrink.models import build_model
from nnshrink.train import default_train_config, evaluate, fit

SMALL = [("lenet5", {}), ("squeezenet-small", {}), ("mobilenet-small", {"width": 1.0}),
         ("mobilenet-small", {"width": 0.5})]
IMAGENET = [("squeezenet1_0", {}), ("squeezenet1_1", {}), ("mobilenet_v1", {}), ("mobilenet_v1", {"width": 0.75}),
            ("mobilenet_v1", {"width": 0.5}), ("mobilenet_v1", {"width": 0.25}),
            ("mobilenet_v1", {"resolution": 160}), ("vgg16", {})]


def label(name: str, cfg: dict) -> str:
    return name + "".join(f" {k}={v}" for k, v in cfg.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=float, default=1.0, help="training epochs per small model")
    ap.add_argument("--quick", action="store_true", help="30 training steps per model (smoke test)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated small model names to train (default: all)")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {"machine": "2-core shared CPU VM, no GPU, torch " + torch.__version__, "epochs": args.epochs,
           "quick": args.quick, "imagenet": [], "fashion_mnist": []}
    print(f"{'ImageNet-size model':<36} {'params':>13} {'mult-adds':>15}")
    for name, cfg in IMAGENET:
        p = profile_named(name, **cfg)
        out["imagenet"].append({"model": name, "config": cfg, "params": p.total_params, "macs": p.total_macs})
        print(f"{label(name, cfg):<36} {p.total_params:>13,} {p.total_macs:>15,}")
    data = load_dataset("fashion-mnist")
    print(f"\n{'Fashion-MNIST model':<36} {'params':>10} {'mult-adds':>12} {'top-1':>7} {'train s':>8}")
    for name, cfg in SMALL:
        if args.only and name not in args.only.split(","):
            continue
        prof = profile_named(name, **cfg)
        torch.manual_seed(0)
        model = build_model(name, **cfg)
        tc = default_train_config(name).replace(epochs=args.epochs, max_steps=30 if args.quick else None)
        res = fit(model, data, tc, progress=False, eval_each_epoch=False)
        top1 = evaluate(model, data)
        row = {"model": name, "config": cfg, "params": prof.total_params, "macs": prof.total_macs,
               "top1": top1, "train_seconds": res.seconds, "steps": res.steps, "train_config": tc.__dict__}
        out["fashion_mnist"].append(row)
        print(f"{label(name, cfg):<36} {prof.total_params:>10,} {prof.total_macs:>12,} {top1:>7.4f} "
              f"{res.seconds:>8.1f}", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
