"""Compact architectures on Fashion-MNIST: parameters, mult-adds and top-1 of LeNet-5, the
small SqueezeNet and the small MobileNet (alpha 1.0 and 0.5), each trained by the real
`nnshrink train` with its default recipe (or --epochs); plus the ImageNet-size profiles.
Checkpoints are kept in --save-dir (squeezenet_story.py can start from the SqueezeNet one).

    .venv/bin/python benchmarks/arch_models.py --save-dir runs/arch --json benchmarks/results/arch_models.json
    .venv/bin/python benchmarks/arch_models.py --quick     # profiles + 1/10 epoch each
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import machine, nnshrink, write_json  # noqa: E402

from nnshrink.arch.profile import profile_named  # noqa: E402

SMALL = [("lenet5", {}), ("squeezenet-small", {}), ("mobilenet-small", {"width": 1.0}),
         ("mobilenet-small", {"width": 0.5})]
IMAGENET = [("squeezenet1_0", {}), ("squeezenet1_1", {}), ("mobilenet_v1", {}), ("mobilenet_v1", {"width": 0.75}),
            ("mobilenet_v1", {"width": 0.5}), ("mobilenet_v1", {"width": 0.25}),
            ("mobilenet_v1", {"resolution": 160}), ("vgg16", {})]


def label(name: str, cfg: dict) -> str:
    return name + "".join(f" {k}={v}" for k, v in cfg.items())


def train_small(name: str, cfg: dict, args) -> dict:
    """Train one small net through the real CLI; the report is `nnshrink train --json`'s."""
    out = Path(args.save_dir) / (label(name, cfg).replace(" ", "_").replace("=", "") + ".safetensors")
    report = out.with_suffix(".json")
    epochs = ["--epochs", 0.1 if args.quick else args.epochs] if (args.quick or args.epochs) else []
    if not (args.reuse and report.is_file()):
        nnshrink("train", "--model", name, "--config", json.dumps(cfg), "--quiet", "--force", "-o", out,
                 "--json", report, *epochs)
    return json.loads(report.read_text()) | {"checkpoint": str(out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=float, default=None, help="training epochs per small model (default: its own)")
    ap.add_argument("--quick", action="store_true", help="1/10 epoch per model (smoke test)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (NNSHRINK_THREADS)")
    ap.add_argument("--only", default=None, help="comma-separated small model names to train (default: all)")
    ap.add_argument("--save-dir", default="runs/arch", help="checkpoints and training reports go here")
    ap.add_argument("--reuse", action="store_true", help="keep models already trained in --save-dir")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args(argv)
    os.environ["NNSHRINK_THREADS"] = str(args.threads)
    Path(args.save_dir).mkdir(parents=True, exist_ok=True)
    out = {"machine": machine(), "threads": args.threads, "epochs": args.epochs, "quick": args.quick,
           "imagenet": [], "fashion_mnist": []}
    print(f"{'ImageNet-size model':<36} {'params':>13} {'mult-adds':>15}")
    for name, cfg in IMAGENET:
        p = profile_named(name, **cfg)
        out["imagenet"].append({"model": name, "config": cfg, "params": p.total_params, "macs": p.total_macs})
        print(f"{label(name, cfg):<36} {p.total_params:>13,} {p.total_macs:>15,}")
    print(f"\n{'Fashion-MNIST model':<36} {'params':>10} {'mult-adds':>12} {'epochs':>6} {'top-1':>7} {'train s':>8}")
    for name, cfg in SMALL:
        if args.only and name not in args.only.split(","):
            continue
        prof = profile_named(name, **cfg)
        rep = train_small(name, cfg, args)
        row = {"model": name, "config": cfg, "params": prof.total_params, "macs": prof.total_macs,
               "top1": rep["top1"], "epochs": rep["train_config"]["epochs"], "train_seconds": rep["train_seconds"],
               "train_config": rep["train_config"], "checkpoint": rep["checkpoint"]}
        out["fashion_mnist"].append(row)
        print(f"{label(name, cfg):<36} {prof.total_params:>10,} {prof.total_macs:>12,} {row['epochs']:>6g} "
              f"{row['top1']:>7.4f} {row['train_seconds']:>8.1f}", flush=True)
    if args.json:
        write_json(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
