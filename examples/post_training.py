"""An example model compressed post-training: no fine-tuning, a few calibration batches.

    python -m examples.post_training resnet_bn [--target-bpw 3 | --bits 3] [--outliers 0.01] [--recalibrate-bn]

The float model is the example's own (trained by its loop, or taken from its cache in
``runs/NAME/base.safetensors``, the same file ``python -m examples.NAME`` uses). Then,
where the retraining walk-through hands nnshrink a ``fine_tune`` loop, this one hands it
only input batches:

    result = nnshrink.compress(model, PostTraining(target_bpw=4), calibrate=batches, evaluate=top1)

``batches`` are ``--calibration`` training images (seeded); nnshrink measures each
weight's sensitivity and each layer's inputs on them, shares the weights with
sensitivity-weighted k-means and GPTQ error compensation, and picks per-layer bits;
``--recalibrate-bn`` then re-estimates the BatchNorm statistics on the same images (they
drift when the weights are shared). The archive is loaded into a freshly built model and
evaluated; ``benchmarks/post_training_cnn.py`` measures these settings on Fashion-MNIST. Without ``--calibration``
(0) the data-free fallback runs and the report says so.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

import torch

from examples import common

EXAMPLES = ("resnet_bn", "tiny_vit")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m examples.post_training", description=__doc__.split("\n")[0])
    p.add_argument("example", choices=EXAMPLES)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bits", type=int, default=None, help="every shared tensor at this many bits (default 4)")
    g.add_argument("--target-bpw", type=float, default=None, help="per-layer bits so the file holds B bits per weight")
    p.add_argument("--outliers", type=float, default=0.0, help="fraction of each shared tensor kept exactly")
    p.add_argument("--recalibrate-bn", action="store_true",
                   help="re-estimate the BatchNorm statistics on the calibration images after sharing")
    p.add_argument("--calibration", type=int, default=512, help="training images to calibrate on (0: data-free)")
    p.add_argument("--epochs", type=float, default=None, help="training epochs of the float model (the example's)")
    p.add_argument("--subset", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--data-dir", default=None, help="folder of the four IDX files (default: Fashion-MNIST)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/EXAMPLE)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    import nnshrink
    from nnshrink import PostTraining

    args = parse_args(argv)
    torch.set_num_threads(1)
    ex = importlib.import_module(f"examples.{args.example}").EXAMPLE
    out = args.out or Path("runs") / ex.name
    ex_argv = ["--out", str(out)] + [f for k, v in (("--epochs", args.epochs), ("--subset", args.subset),
                                                     ("--data-dir", args.data_dir)) if v is not None
                                     for f in (k, str(v))]
    ex_args = common.parse_args(ex, ex_argv)
    out.mkdir(parents=True, exist_ok=True)
    data = common.loaders(args.data_dir, args.subset)
    model, _ = common.trained(ex, ex_args, data)
    train_x = data[0].dataset.tensors[0]
    pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))[:args.calibration]
    batches = [train_x[pick[i:i + 64]] for i in range(0, len(pick), 64)] or None

    def top1(m):
        return common.evaluate(m, data[1])

    t0 = time.perf_counter()
    settings = PostTraining(bits=args.bits, target_bpw=args.target_bpw, outliers=args.outliers,
                            recalibrate_bn=args.recalibrate_bn)
    result = nnshrink.compress(model, settings, calibrate=batches, evaluate=top1)
    seconds = time.perf_counter() - t0
    archive = out / f"{ex.name}-post-training.nsk"
    written = result.save(archive)
    loaded = nnshrink.load(archive, model=ex.build()).eval()
    rep = result.report
    top1_loaded = top1(loaded)
    summary = {"example": ex.name, "setting": rep["setting"], "outliers": args.outliers,
               "calibration_images": len(pick), "original_bytes": rep["original_bytes"], "archive_bytes": written,
               "ratio": rep["original_bytes"] / written, "bits_per_weight": rep["bits_per_weight"],
               "top1_float": rep["top1_before"], "top1_loaded": top1_loaded,
               "drop_points": 100 * (rep["top1_before"] - top1_loaded), "seconds": seconds,
               "warnings": rep["warnings"], "archive": str(archive)}
    (out / "post-training-report.json").write_text(json.dumps(rep, indent=1, default=str))
    print(f"{ex.name} post-training ({rep['setting']}): {rep['original_bytes']:,} -> {written:,} bytes "
          f"({summary['ratio']:.1f}x), top-1 {summary['top1_float']:.4f} -> {summary['top1_loaded']:.4f}")
    for w in rep["warnings"]:
        print(f"warning: {w}")
    return {**summary, "model": result.model, "loaded": loaded}


if __name__ == "__main__":
    main()
