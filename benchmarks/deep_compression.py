"""The Deep Compression pipeline on both LeNets with the default recipe, over training seeds.

For each model and seed: `nnshrink train --seed S` (or reuse the checkpoint with --reuse),
then `nnshrink compress CKPT --recipe deep-compression --dataset fashion-mnist --seed S`,
then `nnshrink eval` of the archive. Records per seed: ratio (real file size), top-1
before / after, the ladder and wall time per stage; per model: mean, worst and spread of
ratio and drop, and whether the targets hold on the worst seed. Archives and base
checkpoints stay in OUT-DIR/seedS/ (git-ignored runs/), so that

    python benchmarks/deep_compression.py --repack-from RESULTS.json --json NEW.json

re-writes every seed's archive with the current writer and re-measures its ratio and
top-1 (decode is bit-exact; top-1 is re-evaluated anyway), with no retraining.

    python benchmarks/deep_compression.py --seeds 3 --jobs 2 --json benchmarks/results/deep_compression_seeds.json
    python benchmarks/deep_compression.py --table benchmarks/results/deep_compression_seeds.json

    python benchmarks/deep_compression.py --fit-check A.json B.json --json FIT.json

evaluates every seed's dense checkpoint and archive on the training split as well as the
test split (is the compressed net underfitting, or overfitting its retraining?).

Runs can be split by model or seed (``--models lenet5 --seed-list 1``, each with its own
--json); ``--table A.json B.json ...`` prints their seeds together and summarizes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import machine, nnshrink, write_json  # noqa: E402

# Issue 17's figures: ratio on the worst of the seeds, top-1 drop (points) on the worst seed.
TARGETS = {"lenet300": {"ratio": 60.0, "drop_points": 0.3}, "lenet5": {"ratio": 70.0, "drop_points": 0.3}}


def run_seed(name: str, seed: int, out: Path, recipe: str, reuse: bool) -> dict:
    """Train (or reuse) and compress one model at one seed; the seed's record."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt, nsk, rep = out / f"{name}.safetensors", out / f"{name}.nsk", out / f"{name}.json"
    train_rep = out / f"{name}-train.json"
    trained = not (reuse and ckpt.is_file())
    t0 = time.perf_counter()
    if trained:
        nnshrink("train", "--model", name, "--seed", seed, "--quiet", "--force", "-o", ckpt, "--json", train_rep)
    train_s = time.perf_counter() - t0
    training = json.loads(train_rep.read_text()) if train_rep.is_file() else {}
    t0 = time.perf_counter()
    nnshrink("compress", ckpt, "-o", nsk, "--recipe", recipe, "--dataset", "fashion-mnist", "--seed", seed,
             "--json", rep, "--quiet", "--force")
    compress_s = time.perf_counter() - t0
    report = json.loads(rep.read_text())
    evaluated = json.loads(nnshrink("eval", nsk, "--dataset", "fashion-mnist", "--json"))
    return {
        "seed": seed, "archive": str(nsk), "checkpoint": str(ckpt),
        "top1_before": report["top1_before"], "top1_after": report["top1_after"],
        "top1_from_archive": evaluated["top1"], "drop_points": report["top1_drop_points"],
        "original_bytes": report["original_bytes"], "compressed_bytes": report["compressed_bytes"],
        "file_bytes": nsk.stat().st_size, "ratio": report["ratio"], "ladder": report["ladder"],
        "layers": report["layers"],
        "stages": [{k: s.get(k) for k in ("stage", "seconds", "top1")} for s in report["stages"]],
        "train_s": train_s if trained else training.get("train_seconds"), "trained_now": trained,
        "compress_s": compress_s, "recipe": report["recipe"],
        "train_epochs": len(training.get("epochs", [])), "dense_top1_at_training": training.get("top1")}


def summarize(name: str, seeds: list[dict]) -> dict:
    """Mean, worst and spread (max - min) of ratio and drop; targets checked on the worst seed."""
    ratios = [s["ratio"] for s in seeds]
    drops = [s["drop_points"] for s in seeds]
    out = {"seeds": len(seeds),
           "ratio": {"mean": statistics.fmean(ratios), "worst": min(ratios), "best": max(ratios),
                     "spread": max(ratios) - min(ratios)},
           "drop_points": {"mean": statistics.fmean(drops), "worst": max(drops), "best": min(drops),
                           "spread": max(drops) - min(drops)},
           "compress_s": {"mean": statistics.fmean(s["compress_s"] for s in seeds),
                          "max": max(s["compress_s"] for s in seeds)}}
    target = TARGETS.get(name)
    if target:
        out["target"] = target
        out["met"] = {"ratio": out["ratio"]["worst"] >= target["ratio"],
                      "drop_points": out["drop_points"]["worst"] <= target["drop_points"]}
    return out


def repack_archive(src: Path, dst: Path) -> str:
    """Re-write ``src`` with the current writer into ``dst``; returns how. Uses
    ``nnshrink.format.repack`` where the format offers it, else re-serializes the decoded
    tensors with the per-tensor gap-width search the pipeline uses."""
    import nnshrink.format as fmt

    if hasattr(fmt, "repack"):
        fmt.repack(src, dst)
        return "nnshrink.format.repack"
    from nnshrink.io_utils import atomic_write_bytes
    from nnshrink.pipeline import search_index_bits, serialize_archive

    archive = fmt.read_archive(src)
    bits = search_index_bits(archive.tensors, {}, archive.metadata, huffman=True)
    atomic_write_bytes(dst, serialize_archive(archive.tensors, archive.metadata, bits, huffman=True))
    return "read_archive + serialize"


def repack_results(path: Path) -> dict:
    """Every seed's archive of an earlier run, re-written and re-measured (no retraining)."""
    old = json.loads(path.read_text())
    results = {"machine": machine(), "repacked_from": str(path), "recipe": old["recipe"],
               "seed_list": old["seed_list"], "models": {}}
    for name, entry in old["models"].items():
        seeds = []
        for s in entry["per_seed"]:
            src = Path(s["archive"])
            dst = src.with_name(src.stem + "-repacked.nsk")
            how = repack_archive(src, dst)
            evaluated = json.loads(nnshrink("eval", dst, "--dataset", "fashion-mnist", "--json"))
            file_bytes = dst.stat().st_size
            seeds.append({**s, "archive": str(dst), "repacked_with": how, "bytes_before_repack": s["file_bytes"],
                          "file_bytes": file_bytes, "compressed_bytes": file_bytes,
                          "ratio": s["original_bytes"] / file_bytes, "top1_from_archive": evaluated["top1"],
                          "top1_after": evaluated["top1"],
                          "drop_points": 100 * (s["top1_before"] - evaluated["top1"])})
        results["models"][name] = {"summary": summarize(name, seeds), "per_seed": seeds}
    return results


def fit_check(paths: list[str]) -> dict:
    """Train- and test-split top-1 of the dense checkpoint and of the archive, per seed of
    each run (the recipe's name beside it)."""
    import torch

    from nnshrink import load
    from nnshrink.checkpoint import load_checkpoint
    from nnshrink.data import load_dataset
    from nnshrink.models import build_model
    from nnshrink.train import evaluate

    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist")
    rows = []
    for path in paths:
        run = json.loads(Path(path).read_text())
        for name, entry in run["models"].items():
            for s in entry["per_seed"]:
                dense, meta = load_checkpoint(s["checkpoint"])
                packed = load(s["archive"], model=build_model(name, **meta["config"]))
                rows.append({"results": path, "recipe": s["recipe"]["name"], "model": name, "seed": s["seed"],
                             "dense_train_top1": evaluate(dense, data, split="train"),
                             "dense_test_top1": evaluate(dense, data),
                             "archive_train_top1": evaluate(packed, data, split="train"),
                             "archive_test_top1": evaluate(packed, data)})
                print(rows[-1], flush=True)
    return {"machine": machine(), "rows": rows}


def merge(runs: list[dict]) -> dict:
    """Several runs' seeds in one result (e.g. one run per model, or per seed), re-summarized."""
    per_model: dict[str, list[dict]] = {}
    for run in runs:
        for name, entry in run["models"].items():
            per_model.setdefault(name, []).extend(entry["per_seed"])
    return {"models": {name: {"summary": summarize(name, seeds), "per_seed": seeds}
                       for name, seeds in per_model.items()}}


def table(results: dict) -> str:
    """The section's per-seed and summary tables (markdown) from a results JSON."""
    names = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5"}
    lines = ["| net | seed | top-1 dense -> archive | drop (points) | .nsk bytes | ratio | compress s |",
             "|---|---|---|---|---|---|---|"]
    for name, entry in results["models"].items():
        for s in entry["per_seed"]:
            lines.append(f"| {names.get(name, name)} | {s['seed']} | {100 * s['top1_before']:.2f}% -> "
                         f"{100 * s['top1_from_archive']:.2f}% | {s['drop_points']:+.2f} | {s['file_bytes']:,} | "
                         f"{s['ratio']:.1f}x | {s['compress_s']:.0f} |")
    lines += ["", "| net | seeds | ratio mean / worst / spread | drop mean / worst / spread | target (worst seed) |",
              "|---|---|---|---|---|"]
    for name, entry in results["models"].items():
        m = entry["summary"]
        r, d = m["ratio"], m["drop_points"]
        tgt = ""
        if "target" in m:
            ok = all(m["met"].values())
            tgt = (f">= {m['target']['ratio']:g}x, drop <= {m['target']['drop_points']:g}: "
                   f"{'**met**' if ok else '**not met**'}")
        lines.append(f"| {names.get(name, name)} | {m['seeds']} | {r['mean']:.1f}x / **{r['worst']:.1f}x** / "
                     f"{r['spread']:.1f} | {d['mean']:+.2f} / **{d['worst']:+.2f}** / {d['spread']:.2f} | {tgt} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    ap.add_argument("--out-dir", default="runs/dc-seeds")
    ap.add_argument("--models", default="lenet300,lenet5")
    ap.add_argument("--recipe", default="deep-compression")
    ap.add_argument("--seeds", type=int, default=1, help="run seeds 0..N-1")
    ap.add_argument("--seed-list", default=None, help="comma-separated seeds (instead of --seeds)")
    ap.add_argument("--jobs", type=int, default=1, help="(model, seed) runs at once (each one torch thread)")
    ap.add_argument("--reuse", action="store_true", help="reuse dense checkpoints in OUT-DIR/seedS/")
    ap.add_argument("--repack-from", default=None, metavar="RESULTS.json",
                    help="re-write and re-measure the archives of an earlier run instead of running")
    ap.add_argument("--table", nargs="+", default=None, metavar="RESULTS.json",
                    help="print the markdown tables of one run or several (e.g. one per model)")
    ap.add_argument("--fit-check", nargs="+", default=None, metavar="RESULTS.json",
                    help="top-1 on the training and test splits of every seed's dense net and archive")
    args = ap.parse_args()
    if args.fit_check:
        write_json(fit_check(args.fit_check), args.json)
        return
    if args.table:
        print(table(merge([json.loads(Path(p).read_text()) for p in args.table])))
        return
    if args.repack_from:
        write_json(repack_results(Path(args.repack_from)), args.json)
        return
    seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    models = args.models.split(",")
    if args.jobs > 1:
        os.environ.setdefault("NNSHRINK_THREADS", "1")
    runs = [(name, seed) for name in models for seed in seeds]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        done = list(pool.map(lambda job: run_seed(job[0], job[1], Path(args.out_dir) / f"seed{job[1]}",
                                                   args.recipe, args.reuse), runs))
    results = {"machine": {**machine(), "nnshrink_threads": os.environ.get("NNSHRINK_THREADS"), "jobs": args.jobs},
               "recipe": args.recipe, "seed_list": seeds, "models": {}}
    for name in models:
        per_seed = [r for (n, _), r in zip(runs, done) if n == name]
        results["models"][name] = {"summary": summarize(name, per_seed), "per_seed": per_seed}
    results["wall_s"] = time.perf_counter() - t0
    write_json(results, args.json)


if __name__ == "__main__":
    main()
