"""Issue 12's proof: two models nnshrink does not know, compressed through the public API.

Runs each example's ``main`` for real (full Fashion-MNIST; the example's own training
loop, then ``nnshrink.compress`` with the example's recipe, ``save``, ``nnshrink.load``
into a fresh instance, top-1 of the loaded model), then the CLI on the ResNet's float
checkpoint (``--model-factory examples.resnet_bn:build --data-factory
examples.resnet_bn:loaders``), side by side in separate processes of one torch thread
each. A float model cached by an earlier run of the same example with the same settings
is reused (``--fresh`` retrains it). Writes JSON and the BENCHMARKS section.

    python benchmarks/own_models.py --json benchmarks/results/own_models.json \
        --section benchmarks/sections/15-own-models.md
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _util import machine, nnshrink, write_json  # noqa: E402

TARGETS = {"resnet_bn": (25.0, 0.5), "tiny_vit": (15.0, 1.0)}  # (ratio >=, top-1 drop <= points)
COMMAND = ("python benchmarks/own_models.py --json benchmarks/results/own_models.json "
           "--section benchmarks/sections/15-own-models.md")


def run_example(name: str, out: Path, fresh: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    mod = importlib.import_module(f"examples.{name}")
    argv = ["--out", str(out / name), "--threads", "1"] + (["--retrain"] if fresh else [])
    t0 = time.perf_counter()
    res = mod.main(argv)
    wall = time.perf_counter() - t0
    summary = {k: v for k, v in res.items() if k not in ("model", "loaded")}
    report = json.loads((out / name / "report.json").read_text())
    summary["wall_seconds"] = wall
    summary["layers"] = report["layers"]
    summary["ladder"] = report.get("ladder")
    summary["recipe"] = report.get("recipe")
    ratio_min, drop_max = TARGETS[name]
    summary["target"] = {"ratio_min": ratio_min, "drop_max_points": drop_max,
                         "met": summary["ratio"] >= ratio_min and summary["drop_points"] <= drop_max}
    return summary


def run_cli(out: Path) -> dict:
    """The same ResNet checkpoint through `nnshrink compress` with the example's factories."""
    ckpt, nsk, rep = out / "resnet_bn" / "base.safetensors", out / "resnet_bn-cli.nsk", out / "resnet_bn-cli.json"
    recipe = out / "resnet_bn-recipe.toml"
    recipe.write_text(importlib.import_module("examples.resnet_bn").RECIPE)
    t0 = time.perf_counter()
    nnshrink("compress", ckpt, "--model-factory", "examples.resnet_bn:build", "--data-factory",
             "examples.resnet_bn:loaders", "--recipe", recipe, "-o", nsk, "--json", rep, "--force", "--quiet")
    report = json.loads(rep.read_text())
    return {"input": str(ckpt), "seconds": time.perf_counter() - t0, "original_bytes": report["original_bytes"],
            "compressed_bytes": report["compressed_bytes"], "file_bytes": nsk.stat().st_size,
            "ratio": report["ratio"], "top1_before": report.get("top1_before"),
            "top1_after": report.get("top1_after")}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def section(results: dict) -> str:
    m = results["machine"]
    lines = [
        "## Your own model: a ResNet with BatchNorm and a small ViT (issue 12)", "",
        f"    {COMMAND}", "",
        "Each row is one run of the example's `main` (`examples/resnet_bn.py`, `examples/tiny_vit.py`):",
        "the example trains its float model with its own AdamW loop on all 60,000 Fashion-MNIST",
        "training images, compresses it with `nnshrink.compress(model, recipe, fine_tune=...,",
        "evaluate=...)` (the ResNet's `fine_tune` distils from the float model; the recipe, loop",
        "and why are in each example's docstring), saves",
        "the archive, loads it into a freshly built model with `nnshrink.load(path, model=...)` and",
        "measures top-1 of that loaded model on the 10,000 test images. Ratio: float32 bytes of",
        "every parameter and buffer (the report's `original_bytes`) over the archive's size on disk.",
        f"Machine: {m['cpu_count']}-core shared CPU VM, torch {m['torch']}, one torch thread per run, "
        f"up to {m.get('jobs', 1)} runs side by side.", "",
        "| model | params | top-1 float -> loaded | drop | float32 -> .nsk | ratio | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["examples"].items():
        t = r["target"]
        lines.append(f"| {name} | {r['params']:,} | {pct(r['top1_float'])} -> {pct(r['top1_loaded'])} | "
                     f"{r['drop_points']:+.2f} points | {r['original_bytes']:,} -> {r['archive_bytes']:,} B | "
                     f"**{r['ratio']:.1f}x** | >= {t['ratio_min']:g}x, drop <= {t['drop_max_points']:g} | "
                     f"{'yes' if t['met'] else 'NO'} |")
    lines += ["", "The ladder (each rung a real archive of the model at that point; top-1 by the example's own",
              "metric; the last rung is the saved file):", "",
              "| model | " + " | ".join(r["rung"] for r in next(iter(results["examples"].values()))["ladder"]) + " |",
              "|---|" + "---|" * len(next(iter(results["examples"].values()))["ladder"])]
    for name, r in results["examples"].items():
        cells = [f"{x['ratio']:.1f}x, {pct(x['top1'])}" for x in r["ladder"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, r in results["examples"].items():
        trained = (f"{r['train_seconds']:.0f} s" if r["train_seconds"] else "time not recorded") + \
            (", cached from an earlier run of the example" if r["train_cached"] else "")
        if r.get("from_earlier_invocation"):
            lines.append(f"- {name}: this row comes from an earlier invocation of the same script (its example "
                         "and recipe unchanged since), kept with `--keep-from EARLIER.json` while the other "
                         "example was rerun alone (`--examples NAME`).")
        lines.append(f"- {name}: float training {r['epochs']:g} epochs ({trained}); compression "
                     f"{r['compress_seconds']:.0f} s (wall, on a busy shared machine); largest difference between "
                     f"the loaded and the in-process compressed model's outputs: "
                     f"{r['max_abs_diff_loaded_vs_compressed']:.3g}.")
    cli = results.get("cli")
    if cli:
        lines += ["", f"The same float checkpoint through the command line (`nnshrink compress {cli['input']}"
                  " --model-factory examples.resnet_bn:build --data-factory "
                  "examples.resnet_bn:loaders --recipe RECIPE.toml`, the CLI's own retraining loop): "
                  f"{cli['original_bytes']:,} -> {cli['compressed_bytes']:,} B, **{cli['ratio']:.1f}x**, top-1 "
                  f"{pct(cli['top1_before'])} -> {pct(cli['top1_after'])}, {cli['seconds']:.0f} s. The ratio is the "
                  "API's within a few per cent (same recipe; the retrained survivors differ); the accuracy is that of "
                  "nnshrink's default loop (SGD at the recipe's lr factors), which the example's recipe was not "
                  "tuned for."]
    vit = results["examples"].get("tiny_vit")
    if vit:
        lines += ["", "Attention input projections in the ViT's archive (pruned and shared):", "",
                  "| tensor | params | nonzero | encoding | weight bits | bytes |", "|---|---|---|---|---|---|"]
        for row in vit["layers"]:
            if row["name"].endswith("in_proj_weight"):
                wb = row.get("weight_bits") or {}
                lines.append(f"| {row['name']} | {row['params']:,} | {row['nonzero']:,} | {row.get('encoding')} | "
                             f"{wb.get('before', '-')} | {row['bytes']:,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    ap.add_argument("--section", default=None, help="write the BENCHMARKS section (markdown) here")
    ap.add_argument("--out-dir", type=Path, default=Path("runs"))
    ap.add_argument("--examples", default="resnet_bn,tiny_vit")
    ap.add_argument("--fresh", action="store_true", help="retrain the float models even when cached")
    ap.add_argument("--no-cli", action="store_true")
    ap.add_argument("--jobs", type=int, default=3, help="runs side by side (each single-threaded)")
    ap.add_argument("--from-json", default=None, help="only rewrite --section from this script's earlier JSON")
    ap.add_argument("--keep-from", default=None,
                    help="this script's earlier JSON: keep its rows for the examples not run now")
    args = ap.parse_args()
    if args.from_json:
        Path(args.section).write_text(section(json.loads(Path(args.from_json).read_text())))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    torch.set_num_threads(1)
    names = args.examples.split(",")
    results = {"machine": {**machine(), "torch_threads": 1, "jobs": args.jobs}, "command": COMMAND, "examples": {}}
    cli_ready = not args.fresh and (args.out_dir / "resnet_bn" / "base.safetensors").is_file()
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = {name: pool.submit(run_example, name, args.out_dir, args.fresh) for name in names}
        cli = pool.submit(run_cli, args.out_dir) if cli_ready and not args.no_cli and "resnet_bn" in names else None
        results["examples"] = {name: f.result() for name, f in runs.items()}
        if cli is None and not args.no_cli and "resnet_bn" in names:
            cli = pool.submit(run_cli, args.out_dir)  # needs the float model the example trained
        if cli is not None:
            results["cli"] = cli.result()
    if args.keep_from:
        earlier = json.loads(Path(args.keep_from).read_text())
        for name, row in earlier["examples"].items():
            results["examples"].setdefault(name, {**row, "from_earlier_invocation": True})
        if "cli" not in results and "cli" in earlier:
            results["cli"] = {**earlier["cli"], "from_earlier_invocation": True}
    write_json(results, args.json)
    if args.section:
        Path(args.section).write_text(section(results))


if __name__ == "__main__":
    main()
