"""CNNs compressed post-training (no retraining): top-1 vs ratio, LeNet-5 and the
own-model residual CNN (examples/resnet_bn.py), one table.

    python benchmarks/post_training_cnn.py --json benchmarks/results/post_training_cnn.json \
        --section benchmarks/sections/26-post-training-cnn.md

LeNet-5 is trained with `nnshrink train --model lenet5 --epochs E` (deterministic, seed 0;
cached with --checkpoint). The ResNet-BN example (0.3M parameters, BatchNorm, a model
nnshrink does not know) is trained by the example's own loop and cache
(``examples.common.trained``: seed 0, ``--resnet-epochs``, default the example's 8,
kept in ``--resnet-out``/base.safetensors, so ``python -m examples.resnet_bn`` and this
script share it). Each float model is then compressed at several settings through the
public API, ``nnshrink.compress(model, PostTraining(...), calibrate=...)``: calibrated
(512 training images, seed 0: Fisher-weighted k-means, GPTQ-compensated conv / fc
layers; for a model with BatchNorm also with ``recalibrate_bn=True``, the BN statistics
re-estimated on the same images after sharing) and data-free, at fixed bits and at a
bits-per-weight budget (per-layer bits chosen by measured error), beside the per-tensor path that existed before
(``compress --no-retrain --bits B``). Top-1 on the 10,000 test images of the model
loaded from the written .nsk file with ``nnshrink.load``; ratio = float32 bytes of the
state over the file size; seconds = wall time of one compression (calibration included).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._util import machine, nnshrink, write_json  # noqa: E402

MODELS = ("lenet5", "resnet_bn")
SETTINGS = (("4 bits", dict(bits=4)), ("3 bits", dict(bits=3)),
            ("3 bits, 1% outliers", dict(bits=3, outliers=0.01)), ("2 bits, 1% outliers", dict(bits=2, outliers=0.01)),
            ("target 3 bits per weight", dict(target_bpw=3.0)), ("target 2.5 bits per weight", dict(target_bpw=2.5)))
CALIBRATION_IMAGES, CALIBRATION_BATCH = 512, 64
TARGET_DROP = 0.5  # points of top-1: the LeNet-5 bar (>= 10x within it)
MIN_NUMEL = 256  # LeNet-5's and the ResNet's small convs are shared too (the 144-weight stem stays exact)


def lenet5(args, tmp: Path, data):
    """(float LeNet-5, name, how it was trained)."""
    from nnshrink.checkpoint import load_checkpoint

    ckpt = Path(args.checkpoint) if args.checkpoint else tmp / "lenet5.safetensors"
    if not ckpt.exists():
        nnshrink("train", "--model", "lenet5", "--dataset", "fashion-mnist", "--epochs", args.epochs,
                 "--quiet", "-o", ckpt)
    model, _ = load_checkpoint(ckpt)
    return model.eval(), f"LeNet-5 trained {args.epochs} epochs by `nnshrink train`"


def resnet_bn(args, tmp: Path, data):
    """(float ResNet-BN, name, how it was trained): the example's own loop and cache."""
    from examples import common
    from examples.resnet_bn import EXAMPLE

    epochs = [] if args.resnet_epochs is None else ["--epochs", str(args.resnet_epochs)]
    ex_args = common.parse_args(EXAMPLE, ["--out", str(args.resnet_out), *epochs])  # the example's own cache key
    ex_args.out.mkdir(parents=True, exist_ok=True)
    model, info = common.trained(EXAMPLE, ex_args, common.loaders())
    how = "taken from its cache" if info["cached"] else f"trained now in {info['seconds']:.0f} s"
    return model.eval(), (f"ResNet-BN (examples/resnet_bn.py) trained {ex_args.epochs:g} epochs by the example's "
                          f"own loop, seed 0 ({how})")


def calibration(data) -> list[torch.Tensor]:
    """512 training images of a seeded shuffle, in batches of 64 (the same for every model)."""
    pick = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0))[:CALIBRATION_IMAGES]
    return [data.train_x[pick[i:i + CALIBRATION_BATCH]] for i in range(0, CALIBRATION_IMAGES, CALIBRATION_BATCH)]


def run_model(name: str, model, data, tmp: Path) -> tuple[list[dict], dict]:
    """Every setting on one float model: rows of the table and the model's facts."""
    import nnshrink as nsk
    from safetensors.torch import save_file

    from nnshrink import PostTraining
    from nnshrink.batchnorm import batchnorm_layers
    from nnshrink.post_training import compress_tensors
    from nnshrink.train import evaluate

    base = evaluate(model, data)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    float_bytes = sum(v.numel() * v.element_size() for v in state.values())
    calib = calibration(data)
    rows = []

    def measure(tool, setting, path, seconds, warnings=()):
        loaded = nsk.load(path, model=copy.deepcopy(model)).eval()
        top1 = evaluate(loaded, data)
        size = path.stat().st_size
        rows.append({"model": name, "tool": tool, "setting": setting, "bytes": size, "ratio": float_bytes / size,
                     "top1": top1, "drop_points": 100 * (base - top1), "seconds": seconds,
                     "budget_missed": any("cannot be met" in w for w in warnings)})
        print(f"{name:<10} {tool:<28} {setting:<22} {float_bytes / size:6.2f}x  top-1 {top1:.4f} "
              f"(drop {100 * (base - top1):+.2f})  {seconds:.1f} s", flush=True)

    plain_in = tmp / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(plain_in))
    for bits in (5, 4, 3):
        out = tmp / f"{name}-plain{bits}.nsk"
        t0 = time.perf_counter()
        compress_tensors(plain_in, out, sparsity=0.0, bits=bits)
        measure("nnshrink per-tensor (before)", f"{bits} bits", out, time.perf_counter() - t0)
    tools = [("nnshrink data-free", None, {}), ("nnshrink calibrated", calib, {})]
    if batchnorm_layers(model):
        tools.append(("nnshrink calibrated, BN re-estimated", calib, {"recalibrate_bn": True}))
    for tool, cal, extra in tools:
        for setting, kw in SETTINGS:
            out = tmp / f"{name}-ptq.nsk"
            work = copy.deepcopy(model)  # compress fills the model with the decoded weights
            t0 = time.perf_counter()
            # force: a budget below the smallest reachable writes that smallest (marked in the table)
            result = nsk.compress(work, PostTraining(min_numel=MIN_NUMEL, force=True, **kw, **extra),
                                  calibrate=cal, progress=False)
            result.save(out)
            measure(tool, setting, out, time.perf_counter() - t0, result.report["warnings"])
    return rows, {"top1_float": base, "float_bytes": float_bytes, "params": sum(p.numel() for p in model.parameters())}


def section(result: dict, note: str) -> str:
    """The section's markdown: the command as run, each model's facts, one table."""
    m = result["machine"]
    facts = result["models"]
    lines = ["## Post-training compression of CNNs: LeNet-5 and the ResNet-BN example, no retraining (issue 14)", "",
             f"    {result['command']}", ""]
    for name, f in facts.items():
        lines.append(f"- {name}: {f['trained']}; float top-1 {100 * f['top1_float']:.2f}%, {f['params']:,} "
                     f"parameters, {f['float_bytes']:,} bytes of state.")
    lines += ["", f"Compressed without retraining through `nnshrink.compress(model, PostTraining(...), calibrate=...)` "
              f"(tensors of >= {MIN_NUMEL} values shared); calibration: {CALIBRATION_IMAGES} training images. Top-1 "
              "of the model loaded from the .nsk file with `nnshrink.load`, on the 10,000 test images. Machine: "
              f"{m['cpu_count']}-core CPU, torch {m['torch']}, one thread{'; ' + note if note else ''}.", "",
              "| model | tool | setting | bytes | ratio | top-1 | drop (points) | seconds |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['tool']} | {r['setting']}{' (*)' if r.get('budget_missed') else ''} | "
              f"{r['bytes']:,} | {r['ratio']:.2f}x | {100 * r['top1']:.2f}% | {r['drop_points']:+.2f} | "
              f"{r['seconds']:.1f} |" for r in result["rows"]]
    lines += ["", f"Largest ratio within {TARGET_DROP} points of the float model's top-1, no retraining:", ""]
    for name in facts:
        ok = [r for r in result["rows"] if r["model"] == name and r["drop_points"] <= TARGET_DROP]
        best = max(ok, key=lambda r: r["ratio"], default=None)
        lines.append(f"- {name}: " + (f"{best['ratio']:.2f}x at a {best['drop_points']:+.2f}-point drop ({best['tool']}, "
                                      f"{best['setting']})" if best else "none"))
    if any(r.get("budget_missed") for r in result["rows"]):
        lines += ["", "(*) the budget was below the smallest size the allocator estimated reachable; written with "
                  "`force=True`, i.e. the smallest reachable (the report's warning)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    ap.add_argument("--checkpoint", default=None, help="trained LeNet-5 (made with nnshrink train if missing)")
    ap.add_argument("--epochs", type=int, default=6, help="LeNet-5 training epochs")
    ap.add_argument("--resnet-epochs", type=float, default=None,
                    help="ResNet-BN training epochs (default: the example's)")
    ap.add_argument("--resnet-out", type=Path, default=Path("runs") / "resnet_bn",
                    help="the example's cache folder (base.safetensors is reused when trained the same way)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--section", default=None)
    ap.add_argument("--note", default="", help="a remark on the run for the section (e.g. the machine's load)")
    ap.add_argument("--section-from", default=None, metavar="JSON",
                    help="only rewrite --section from a results file this script wrote (no run)")
    args = ap.parse_args(argv)
    if args.section_from:
        if not args.section:
            ap.error("--section-from needs --section")
        result = json.loads(Path(args.section_from).read_text())
        Path(args.section).write_text(section(result, result.get("note", "")))
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        ap.error(f"--models takes {', '.join(MODELS)}; got {args.models!r}")
    torch.set_num_threads(1)

    from nnshrink.data import load_dataset

    data = load_dataset("fashion-mnist")
    build = {"lenet5": lenet5, "resnet_bn": resnet_bn}
    rows, facts = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            model, trained = build[name](args, Path(tmp), data)
            torch.manual_seed(0)
            got, fact = run_model(name, model, data, Path(tmp))
            rows += got
            facts[name] = {**fact, "trained": trained}
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "benchmarks/post_training_cnn.py", *argv])  # as run
    result = {"command": command, "machine": machine(), "epochs": args.epochs, "resnet_epochs": args.resnet_epochs,
              "calibration_images": CALIBRATION_IMAGES, "min_numel": MIN_NUMEL, "models": facts,
              "note": args.note, "rows": rows}
    if args.section:
        Path(args.section).write_text(section(result, args.note))
    write_json(result, args.json) if args.json else None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
