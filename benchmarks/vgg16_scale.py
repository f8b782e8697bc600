"""VGG-16 at scale: post-training compress + decompress of a 138M-parameter file, time and peak memory.

No pretrained weights exist here, so the file is VGG-16 (nnshrink's zoo model) initialised
randomly with a fixed seed and saved as plain safetensors (no nnshrink metadata: the
post-training path). Then, each as its own process, timed by wall clock, its peak
resident memory read from the kernel (``wait4`` rusage of that child):

    nnshrink compress vgg16.safetensors --no-retrain --sparsity 0.9 --bits 5 -o vgg16.nsk
    nnshrink decompress vgg16.nsk -o vgg16.dense.safetensors

Targets (issue 16): compress + decompress under 90 s on the 2-core machine, peak memory
under 3x the dense size. The JSON carries ``total_s``, ``peak_rss_bytes``,
``dense_bytes`` and the per-command figures; the decompressed file is checked to hold
every tensor of the input with its shape.

    python benchmarks/vgg16_scale.py --json benchmarks/results/vgg16_scale.json [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._util import machine, write_json  # noqa: E402

TARGET_S, TARGET_RSS_X = 90.0, 3.0


def make_input(path: Path, model: str = "vgg16") -> None:
    """VGG-16 (or the zoo ``model``) with random weights (seed 0), written as plain safetensors."""
    import torch
    from safetensors.torch import save_file

    from nnshrink.models import build_model

    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in build_model(model).state_dict().items()}
    save_file(state, str(path))


def run_measured(args: list) -> dict:
    """Run ``nnshrink ARGS`` as a child process; its wall time and its own peak RSS."""
    cmd = [sys.executable, "-m", "nnshrink", *map(str, args)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[2:])} failed ({proc.returncode}): {err.strip()}")
    return {"command": "nnshrink " + " ".join(map(str, args)), "seconds": seconds,
            "peak_rss_bytes": usage.ru_maxrss * 1024, "stdout_tail": out.strip().splitlines()[-1:]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / "runs/vgg16_scale"))
    ap.add_argument("--sparsity", default="0.9")
    ap.add_argument("--bits", default="5")
    ap.add_argument("--json", default=None)
    ap.add_argument("--model", default="vgg16", help="zoo model (a small one checks the script quickly)")
    args = ap.parse_args(argv)
    os.environ.setdefault("NNSHRINK_THREADS", "1")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src, nsk, dense = (work / f"{args.model}{ext}" for ext in (".safetensors", ".nsk", ".dense.safetensors"))
    if not src.exists():
        make_input(src, args.model)
    compress = run_measured(["compress", src, "--no-retrain", "--sparsity", args.sparsity, "--bits", args.bits,
                             "-o", nsk, "--force", "--quiet"])
    decompress = run_measured(["decompress", nsk, "-o", dense, "--force"])

    from safetensors import safe_open

    with safe_open(str(src), "pt") as a, safe_open(str(dense), "pt") as b:
        same_keys = sorted(a.keys()) == sorted(b.keys())
        same_shapes = same_keys and all(a.get_slice(k).get_shape() == b.get_slice(k).get_shape() for k in a.keys())
    dense_bytes = src.stat().st_size
    total = compress["seconds"] + decompress["seconds"]
    peak = max(compress["peak_rss_bytes"], decompress["peak_rss_bytes"])
    res = {"command": "python benchmarks/vgg16_scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": machine(), "nnshrink_threads": os.environ["NNSHRINK_THREADS"],
           "dense_bytes": dense_bytes, "archive_bytes": nsk.stat().st_size, "ratio": dense_bytes / nsk.stat().st_size,
           "total_s": total, "peak_rss_bytes": peak, "peak_rss_x_dense": peak / dense_bytes,
           "targets": {"total_s": TARGET_S, "peak_rss_x_dense": TARGET_RSS_X,
                       "met": total < TARGET_S and peak / dense_bytes < TARGET_RSS_X},
           "decompressed_matches_keys_and_shapes": same_shapes,
           "compress": compress, "decompress": decompress}
    write_json(res, args.json)
    return res


if __name__ == "__main__":
    main()
