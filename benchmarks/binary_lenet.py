"""Binary LeNet-5 on Fashion-MNIST: accuracy of BWN / XNOR (with and without K, both block
orders) against the float LeNet-5, and the archive size of the binarised layers.

    python benchmarks/binary_lenet.py --json runs/binary_lenet.json          # full (minutes per net)
    python benchmarks/binary_lenet.py --quick --json /tmp/binary_quick.json  # smoke run

The float baseline is read from --float-ckpt (runs/l5.safetensors) when present,
otherwise trained here with the same budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from nnshrink.data import Dataset, load_dataset
from nnshrink.encodings import export_encodings
from nnshrink.models import build_model
from nnshrink.quantize.binary import clip_binary_weights, export_binary
from nnshrink.train import default_train_config, evaluate, fit

VARIANTS = [  # (label, model name, config overrides)
    ("bwn", "lenet5-bwn", {}),
    ("xnor", "lenet5-xnor", {}),
    ("xnor-noK", "lenet5-xnor", {"scale_input": False}),
    ("xnor-usual", "lenet5-xnor", {"order": "usual"}),
    ("xnor-usual-noK", "lenet5-xnor", {"order": "usual", "scale_input": False}),
]


def storage(model: torch.nn.Module, name: str, config: dict) -> dict:
    """Bytes of the binarised layers' weights: from the real archive if the writer exists."""
    binary = export_binary(model)
    float_bytes = sum(4 * t.signs.size for t in binary.values())
    try:
        from nnshrink.format import read_archive, write_archive
    except ImportError:
        packed = sum((t.signs.size + 7) // 8 + 4 * t.scales.size for t in binary.values())
        return {"source": "packed bytes (no archive writer)", "float32_bytes": float_bytes,
                "binary_bytes": packed, "ratio": float_bytes / packed}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.nsk"
        write_archive(path, binary, {"model": name, "config": config})
        arch = read_archive(path)
        rec_bytes = sum(r["bytes"] for r in arch.records)
        only_binary_file = path.stat().st_size
        full = Path(tmp) / "full.nsk"
        write_archive(full, export_encodings(model), {"model": name, "config": config})
        full_bytes = full.stat().st_size
    total_float = sum(4 * v.numel() for k, v in model.state_dict().items() if v.is_floating_point())
    n_scales = sum(t.scales.size for t in binary.values())
    return {"source": "nnshrink.format.write_archive records", "float32_bytes": float_bytes,
            "binary_bytes": rec_bytes, "ratio": float_bytes / rec_bytes,
            "ratio_if_fp16_scales": float_bytes / (rec_bytes - 2 * n_scales),
            "binary_only_file_bytes": only_binary_file,
            "whole_model_file_bytes": full_bytes, "whole_model_float32_bytes": total_float,
            "whole_model_ratio": total_float / full_bytes}


def subset(data: Dataset, n_train: int, n_test: int) -> Dataset:
    return Dataset(data.name, data.train_x[:n_train], data.train_y[:n_train], data.test_x[:n_test],
                   data.test_y[:n_test])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (subset, few steps)")
    ap.add_argument("--epochs", type=float, default=None, help="epochs per binary net (default: per model)")
    ap.add_argument("--float-ckpt", default="runs/l5.safetensors")
    ap.add_argument("--only", default=None, help="comma list of variant labels")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist")
    if args.quick:
        data = subset(data, 2048, 1000)
    results: dict = {"machine": "2-core shared CPU VM, no GPU, torch " + torch.__version__.split("+")[0] + " CPU",
                     "quick": args.quick, "threads": args.threads, "variants": {}}

    # float baseline
    if not args.quick and os.path.exists(args.float_ckpt):
        from nnshrink.checkpoint import load_checkpoint
        fmodel, _ = load_checkpoint(args.float_ckpt)
        results["float"] = {"source": args.float_ckpt, "top1": evaluate(fmodel, data)}
    else:
        fmodel = build_model("lenet5")
        cfg = default_train_config("lenet5").replace(epochs=args.epochs or 1, **({"max_steps": 30} if args.quick else {}))
        r = fit(fmodel, data, cfg, progress=False)
        results["float"] = {"source": "trained here", "top1": evaluate(fmodel, data), "train_seconds": r.seconds}
    print(f"float lenet5: top-1 {results['float']['top1']:.4f} ({results['float']['source']})", flush=True)

    only = set(args.only.split(",")) if args.only else None
    for label, name, over in VARIANTS:
        if only and label not in only:
            continue
        model = build_model(name, **over)
        cfg = default_train_config(name)
        if args.epochs:
            cfg = cfg.replace(epochs=args.epochs)
        if args.quick:
            cfg = cfg.replace(epochs=1, max_steps=30)
        t0 = time.perf_counter()
        r = fit(model, data, cfg, after_step=[clip_binary_weights], progress=False, eval_each_epoch=not args.quick)
        top1 = evaluate(model, data)
        row = {"model": name, "config": over, "top1": top1, "delta_vs_float": top1 - results["float"]["top1"],
               "train_seconds": time.perf_counter() - t0, "train_config": cfg.__dict__,
               "epochs": r.epochs, "storage": storage(model, name, over)}
        results["variants"][label] = row
        print(f"{label:15s} top-1 {top1:.4f} (delta {row['delta_vs_float'] * 100:+.2f} pts) "
              f"train {row['train_seconds']:.0f} s; binarised weights {row['storage']['ratio']:.1f}x smaller",
              flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
