"""The SqueezeNet story of the brief on Fashion-MNIST: a compact architecture by design,
then Deep Compression on top, against dense LeNet-5 at comparable accuracy.

Trains `squeezenet-small` with `nnshrink train` (default settings, --epochs to shorten),
compresses it with the recipe below through `nnshrink compress`, evaluates the archive
with `nnshrink eval`, and compares bytes against dense LeNet-5 (4 bytes per parameter;
its top-1 is read from --lenet5, a checkpoint `nnshrink train --model lenet5` wrote).

    python benchmarks/squeezenet_story.py --json benchmarks/results/squeezenet_story.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import machine, nnshrink, write_json  # noqa: E402

RECIPE = """stages = ["prune", "share", "encode"]
[prune]
method = "sparsity"
sparsity = {sparsity}
rounds = {rounds}
retrain_epochs = 1
final_epochs = {final_epochs}
lr_factor = 0.5
[share]
conv_bits = {bits}
fc_bits = {bits}
finetune_epochs = 0.5
[encode]
half_dense = true
"""



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--out-dir", default="runs/squeezenet")
    ap.add_argument("--epochs", type=float, default=None, help="training epochs (default: the model's)")
    ap.add_argument("--checkpoint", default=None, help="start from this trained squeezenet-small checkpoint")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--final-epochs", type=float, default=3)
    ap.add_argument("--bits", type=int, default=6)
    ap.add_argument("--lenet5", default="runs/dc/lenet5.safetensors", help="dense LeNet-5 checkpoint")
    ap.add_argument("--reuse", action="store_true")
    args = ap.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.checkpoint or out / "squeezenet-small.safetensors")
    nsk, rep, recipe = out / "squeezenet-small.nsk", out / "report.json", out / "recipe.toml"
    t0 = time.perf_counter()
    if not args.checkpoint and not (args.reuse and ckpt.is_file()):
        extra = ["--epochs", args.epochs] if args.epochs else []
        nnshrink("train", "--model", "squeezenet-small", "--quiet", "--force", "-o", ckpt, *extra)
    train_s = time.perf_counter() - t0
    recipe.write_text(RECIPE.format(sparsity=args.sparsity, bits=args.bits, rounds=args.rounds,
                                   final_epochs=args.final_epochs))
    t0 = time.perf_counter()
    nnshrink("compress", ckpt, "-o", nsk, "--recipe", recipe, "--dataset", "fashion-mnist", "--json", rep,
             "--quiet", "--force")
    compress_s = time.perf_counter() - t0
    report = json.loads(rep.read_text())
    sq_top1 = json.loads(nnshrink("eval", nsk, "--dataset", "fashion-mnist", "--json"))["top1"]
    l5 = json.loads(nnshrink("eval", args.lenet5, "--dataset", "fashion-mnist", "--json"))["top1"]
    l5_bytes = 4 * json.loads(nnshrink("profile", "--model", "lenet5", "--json"))["total_params"]
    sq_params = json.loads(nnshrink("profile", "--model", "squeezenet-small", "--json"))["total_params"]
    write_json({"machine": machine(), "epochs": args.epochs, "checkpoint": str(ckpt), "sparsity": args.sparsity,
                "bits": args.bits, "rounds": args.rounds, "final_epochs": args.final_epochs,
                "squeezenet_params": sq_params, "squeezenet_dense_bytes": report["original_bytes"],
                "squeezenet_top1_dense": report["top1_before"], "squeezenet_top1_compressed": sq_top1,
                "squeezenet_nsk_bytes": nsk.stat().st_size, "squeezenet_ratio": report["ratio"],
                "lenet5_dense_bytes": l5_bytes, "lenet5_top1": l5,
                "ratio_vs_dense_lenet5_by_design": l5_bytes / report["original_bytes"],
                "ratio_vs_dense_lenet5_total": l5_bytes / nsk.stat().st_size,
                "ladder": report["ladder"], "train_s": train_s, "compress_s": compress_s}, args.json)


if __name__ == "__main__":
    main()
