"""LeNet-5 on Fashion-MNIST compressed post-training (no retraining): top-1 vs ratio.

    python benchmarks/post_training_cnn.py --json benchmarks/results/post_training_cnn.json \
        --section benchmarks/sections/26-post-training-cnn.md

Trains LeNet-5 with `nnshrink train --model lenet5 --epochs E` (deterministic, seed 0;
cached with --checkpoint), then compresses the trained weights at several settings with
``nnshrink.ptq.compress_model``: calibrated (512 training images: Fisher-weighted k-means,
GPTQ-compensated conv / fc layers) and data-free, beside the per-tensor path that existed
before (``compress --no-retrain --bits B``). Top-1 on the 10,000 test images of the model
decoded from the written .nsk file; ratio = float32 bytes of the state over the file size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._util import machine, nnshrink, write_json  # noqa: E402

COMMAND = ("python benchmarks/post_training_cnn.py --json benchmarks/results/post_training_cnn.json "
           "--section benchmarks/sections/26-post-training-cnn.md")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="trained LeNet-5 (made with nnshrink train if missing)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--json", default=None)
    ap.add_argument("--section", default=None)
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from nnshrink.checkpoint import load_checkpoint
    from nnshrink.data import load_dataset
    from nnshrink.format import read_archive, write_archive
    from nnshrink.post_training import compress_tensors
    from nnshrink.ptq.compress import compress_model
    from nnshrink.train import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = Path(args.checkpoint) if args.checkpoint else tmp / "lenet5.safetensors"
        if not ckpt.exists():
            nnshrink("train", "--model", "lenet5", "--dataset", "fashion-mnist", "--epochs", args.epochs,
                     "--quiet", "-o", ckpt)
        model, _ = load_checkpoint(ckpt)
        model.eval()
        data = load_dataset("fashion-mnist")
        base = evaluate(model, data)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        float_bytes = sum(v.numel() * v.element_size() for v in state.values())
        g = torch.Generator().manual_seed(0)
        pick = torch.randperm(len(data.train_x), generator=g)[:512]
        calib = [data.train_x[pick[i:i + 64]] for i in range(0, 512, 64)]
        rows = []

        def measure(tool, setting, path, seconds):
            decoded = {k: torch.from_numpy(v) for k, v in read_archive(path).dense_arrays().items()}
            model.load_state_dict({k: decoded[k].to(state[k].dtype) for k in state})
            top1 = evaluate(model, data)
            model.load_state_dict(state)
            size = path.stat().st_size
            rows.append({"tool": tool, "setting": setting, "bytes": size, "ratio": float_bytes / size,
                         "top1": top1, "drop_points": 100 * (base - top1), "seconds": seconds})
            print(f"{tool:<28} {setting:<28} {float_bytes / size:6.2f}x  top-1 {top1:.4f} "
                  f"(drop {100 * (base - top1):+.2f})  {seconds:.1f} s", flush=True)

        from safetensors.torch import save_file
        plain_in = tmp / "plain.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(plain_in))
        for bits in (5, 4, 3):
            out = tmp / f"plain{bits}.nsk"
            t0 = time.perf_counter()
            compress_tensors(plain_in, out, sparsity=0.0, bits=bits)
            measure("nnshrink per-tensor (before)", f"{bits} bits", out, time.perf_counter() - t0)
        for tool, cal in (("nnshrink data-free", None), ("nnshrink calibrated", calib)):
            for setting, kw in (("4 bits", dict(bits=4)), ("3 bits", dict(bits=3)),
                                ("3 bits, 1% outliers", dict(bits=3, outliers=0.01)),
                                ("2 bits, 1% outliers", dict(bits=2, outliers=0.01))):
                out = tmp / "ptq.nsk"
                t0 = time.perf_counter()
                res = compress_model(model, cal, min_numel=256, **kw)
                write_archive(out, res.tensors, res.metadata)
                measure(tool, setting, out, time.perf_counter() - t0)
    result = {"command": COMMAND, "machine": machine(), "epochs": args.epochs, "top1_float": base,
              "float_bytes": float_bytes, "note": args.note, "rows": rows}
    if args.section:
        lines = ["## Post-training compression of a CNN: LeNet-5, no retraining (issue 14)", "",
                 f"    {COMMAND}", "",
                 f"LeNet-5 trained {args.epochs} epochs by `nnshrink train` (top-1 {100 * base:.2f}%), compressed "
                 "without retraining; calibration: 512 training images. Top-1 of the model decoded from the .nsk "
                 f"file on the 10,000 test images. Machine: {result['machine']['cpu_count']}-core CPU, torch "
                 f"{result['machine']['torch']}, one thread{'; ' + args.note if args.note else ''}.", "",
                 "| tool | setting | bytes | ratio | top-1 | drop (points) | seconds |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['tool']} | {r['setting']} | {r['bytes']:,} | {r['ratio']:.2f}x | {100 * r['top1']:.2f}% | "
                  f"{r['drop_points']:+.2f} | {r['seconds']:.1f} |" for r in rows]
        Path(args.section).write_text("\n".join(lines) + "\n")
    write_json(result, args.json) if args.json else None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
