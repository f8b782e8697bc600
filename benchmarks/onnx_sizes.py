"""ONNX files of Deep-Compression LeNet archives: bytes of each form, top-1, onnxruntime speed.

For each model: a short float training and a short Deep Compression run (the built-in
recipe, its retraining scaled by --epochs-scale; sizes depend on the recipe's sparsities
and bits, not on how long it retrained), then `nnshrink export --onnx --onnx-codebook`.
Reported per model: the float32 parameters, the archive, the decoded ONNX file and the
codebook ONNX file (bytes and ratio against float32); top-1 on the full test set of the
archive in PyTorch and of both ONNX files in onnxruntime; latency of the decoded model
in PyTorch and of both files in onnxruntime (one thread each, batch 1 and 64, wall-clock
medians of interleaved repeats; the speed-up is PyTorch's time over onnxruntime's).
Archives are kept in --work and reused when present.

    python benchmarks/onnx_sizes.py --json benchmarks/results/onnx_sizes.json [--md OUT.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._util import machine, nnshrink, write_json  # noqa: E402


def archive_for(model: str, work: Path, epochs: float, scale: float) -> tuple[Path, dict]:
    """(archive, compress report) of ``model``: trained and compressed once, then reused."""
    base, out, report = work / f"{model}.safetensors", work / f"{model}.nsk", work / f"{model}.compress.json"
    if not base.exists():
        nnshrink("train", "--model", model, "--dataset", "fashion-mnist", "--epochs", epochs, "-o", base, "--quiet")
    if not out.exists():
        nnshrink("compress", base, "-o", out, "--recipe", "deep-compression", "--dataset", "fashion-mnist",
                 "--epochs-scale", scale, "--json", report, "--quiet", "--force")
    return out, json.loads(report.read_text())


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def top1_onnx(sess, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    name = sess.get_inputs()[0].name
    hits = sum(int((sess.run(None, {name: x[i:i + batch].numpy()})[0].argmax(1) == y[i:i + batch].numpy()).sum())
               for i in range(0, len(x), batch))
    return hits / len(x)


@torch.no_grad()
def top1_torch(model, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    return sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch)) / len(x)


def speed(model, sessions: dict, x: torch.Tensor, batches: list[int], repeats: int) -> list[dict]:
    from nnshrink.runtime.timing import time_interleaved

    rows = []
    for b in batches:
        xb = x[:b].contiguous()
        xn = xb.numpy()
        fns = {"torch": lambda: model(xb)}
        for key, sess in sessions.items():
            name = sess.get_inputs()[0].name
            fns[key] = (lambda s=sess, n=name: s.run(None, {n: xn}))
        with torch.no_grad():
            t = time_interleaved(fns, repeats=repeats, clock="wall")
        rows.append({"batch": b, "seconds": t, "speedup_vs_torch": {k: t["torch"] / t[k] for k in sessions}})
    return rows


def measure(model_name: str, work: Path, args) -> dict:
    import nnshrink as nns
    from nnshrink.data import load_dataset

    archive, comp = archive_for(model_name, work, args.epochs, args.epochs_scale)
    dense, small, rep_path = work / f"{model_name}.onnx", work / f"{model_name}.codebook.onnx", \
        work / f"{model_name}.export.json"
    t0 = time.perf_counter()
    nnshrink("export", archive, "--onnx", dense, "--onnx-codebook", small, "--json", rep_path, "--force")
    export_s = time.perf_counter() - t0
    rep = json.loads(rep_path.read_text())
    data = load_dataset("fashion-mnist")
    model = nns.load(archive).eval()
    sessions = {"onnx": session(dense), "onnx_codebook": session(small)}
    float_bytes = comp["original_bytes"]
    sizes = {"float32": float_bytes, "archive": rep["archive_bytes"], "onnx": rep["onnx_bytes"],
             "onnx_codebook": rep["onnx_codebook_bytes"]}
    return {
        "model": model_name, "bytes": sizes, "ratio_vs_float32": {k: float_bytes / v for k, v in sizes.items()},
        "codebook_tensors": rep["files"][1]["codebook_tensors"],
        "max_abs_diff_vs_torch": {("onnx_codebook" if f["codebook"] else "onnx"): f["max_abs_diff"]
                                  for f in rep["files"]},
        "top1": {"archive_torch": top1_torch(model, data.test_x, data.test_y),
                 **{k: top1_onnx(s, data.test_x, data.test_y) for k, s in sessions.items()}},
        "speed": speed(model, sessions, data.test_x, args.batches, args.repeats),
        "export_seconds_both_files": export_s,
        "compress_settings": {"train_epochs": args.epochs, "recipe": "deep-compression",
                              "epochs_scale": args.epochs_scale, "top1_after": comp.get("top1_after")},
    }


def markdown(res: dict) -> str:
    lines = ["| model | float32 | .nsk archive | ONNX decoded | ONNX codebook | codebook / decoded | "
             "top-1 archive (torch) / decoded / codebook (onnxruntime) |", "|---|---|---|---|---|---|---|"]
    for r in res["models"]:
        b, x, t = r["bytes"], r["ratio_vs_float32"], r["top1"]
        lines.append(f"| {r['model']} | {b['float32']:,} B | {b['archive']:,} B ({x['archive']:.1f}x) | "
                     f"{b['onnx']:,} B ({x['onnx']:.2f}x) | {b['onnx_codebook']:,} B ({x['onnx_codebook']:.2f}x) | "
                     f"{b['onnx_codebook'] / b['onnx']:.3f} | {t['archive_torch']:.2%} / {t['onnx']:.2%} / "
                     f"{t['onnx_codebook']:.2%} |")
    lines += ["", "| model | batch | PyTorch | onnxruntime decoded | onnxruntime codebook |", "|---|---|---|---|---|"]
    for r in res["models"]:
        for s in r["speed"]:
            t, up = s["seconds"], s["speedup_vs_torch"]
            lines.append(f"| {r['model']} | {s['batch']} | {t['torch'] * 1e6:,.0f} us | {t['onnx'] * 1e6:,.0f} us "
                         f"({up['onnx']:.2f}x) | {t['onnx_codebook'] * 1e6:,.0f} us ({up['onnx_codebook']:.2f}x) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet300,lenet5")
    ap.add_argument("--work", default=str(ROOT / "runs/onnx_sizes"), help="archives and ONNX files (reused)")
    ap.add_argument("--epochs", type=float, default=1, help="float training epochs")
    ap.add_argument("--epochs-scale", type=float, default=0.05, help="the recipe's retraining, scaled")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None, help="write the markdown tables here")
    args = ap.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    os.environ.setdefault("NNSHRINK_THREADS", "1")
    torch.set_num_threads(int(os.environ["NNSHRINK_THREADS"]))
    torch.manual_seed(0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res = {"command": "python benchmarks/onnx_sizes.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": machine(), "models": [measure(m, work, args) for m in args.models.split(",")]}
    if args.md:
        Path(args.md).write_text(markdown(res))
    write_json(res, args.json)
    return res


if __name__ == "__main__":
    main()
