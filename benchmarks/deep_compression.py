"""Issue 6's figures: the Deep Compression pipeline on both LeNets with default settings.

For each model: train the dense baseline with `nnshrink train` (or reuse one with
--reuse), then `nnshrink compress CKPT --recipe deep-compression --dataset fashion-mnist`,
then `nnshrink eval` of the archive; records ratio (real file size), top-1 before / after,
the ladder and wall time per stage.

    python benchmarks/deep_compression.py --json benchmarks/deep_compression.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import machine, nnshrink, write_json  # noqa: E402



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--out-dir", default="runs/dc")
    ap.add_argument("--models", default="lenet300,lenet5")
    ap.add_argument("--recipe", default="deep-compression")
    ap.add_argument("--reuse", action="store_true", help="reuse dense checkpoints in --out-dir")
    args = ap.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "recipe": args.recipe, "models": {}}
    for name in args.models.split(","):
        ckpt, nsk, rep = out / f"{name}.safetensors", out / f"{name}.nsk", out / f"{name}.json"
        train_rep = out / f"{name}-train.json"
        t0 = time.perf_counter()
        if not (args.reuse and ckpt.is_file()):
            nnshrink("train", "--model", name, "--quiet", "--force", "-o", ckpt, "--json", train_rep)
        train_s = time.perf_counter() - t0
        training = json.loads(train_rep.read_text()) if train_rep.is_file() else {}
        t0 = time.perf_counter()
        nnshrink("compress", ckpt, "-o", nsk, "--recipe", args.recipe, "--dataset", "fashion-mnist", "--json", rep,
           "--quiet", "--force", "--plots", out / f"{name}-weights.png")
        compress_s = time.perf_counter() - t0
        report = json.loads(rep.read_text())
        evaluated = json.loads(nnshrink("eval", nsk, "--dataset", "fashion-mnist", "--json"))
        results["models"][name] = {
            "top1_before": report["top1_before"], "top1_after": report["top1_after"],
            "top1_from_archive": evaluated["top1"], "drop_points": report["top1_drop_points"],
            "original_bytes": report["original_bytes"], "compressed_bytes": report["compressed_bytes"],
            "file_bytes": nsk.stat().st_size, "ratio": report["ratio"], "ladder": report["ladder"],
            "layers": report["layers"], "stages": [{k: s.get(k) for k in ("stage", "seconds", "top1")}
                                                   for s in report["stages"]],
            "train_s": train_s, "compress_s": compress_s, "recipe": report["recipe"],
            "train_epochs": len(training.get("epochs", [])),
            "epoch_s": [round(e["seconds"], 2) for e in training.get("epochs", [])],
            "dense_top1_at_training": training.get("top1")}
    results["total_s"] = sum(m["train_s"] + m["compress_s"] for m in results["models"].values())
    write_json(results, args.json)


if __name__ == "__main__":
    main()
