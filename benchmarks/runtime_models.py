"""Whole models through the compressed runtime: LeNet-300-100 and LeNet-5 compressed
with each model's Deep Compression recipe (per-layer prune densities and bit widths of
the paper), written to .nsk, then ``nnshrink bench FILE`` on each archive: latency of
the dense float model vs ``runtime="compressed"`` vs ``runtime="auto"`` at batch 1 and
64, single thread and all threads, and resident weight bytes per runtime.

Weights: the zoo models' seeded random init, compressed without retraining, unless
``--checkpoint-dir`` holds ``<model>.safetensors`` checkpoints (``nnshrink train``).
Timing and resident bytes depend on the layer shapes, densities and bit widths only, not
on the trained values; accuracy is not measured here.

    python benchmarks/runtime_models.py --json benchmarks/results/runtime_models.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _util import machine, nnshrink, write_json  # noqa: E402


def archive_for(name: str, folder: Path, checkpoint_dir: str | None) -> Path:
    import torch

    from nnshrink.checkpoint import load_checkpoint
    from nnshrink.models import build_model, resolve_config
    from nnshrink.pipeline import archive_metadata, compress_model
    from nnshrink.recipes import load_recipe
    from nnshrink.stages import Context

    ckpt = Path(checkpoint_dir or "/nonexistent") / f"{name}.safetensors"
    if ckpt.is_file():
        model = load_checkpoint(ckpt)[0]
    else:
        torch.manual_seed(0)
        model = build_model(name)
    meta = archive_metadata(name, resolve_config(name), {})
    done = compress_model(model, load_recipe("deep-compression", name), Context(progress=False), metadata=meta)
    path = folder / f"{name}.nsk"
    path.write_bytes(done.blob)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    ap.add_argument("--models", default="lenet300,lenet5")
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", default="1,all")
    args = ap.parse_args()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = archive_for(name, Path(tmp), args.checkpoint_dir)
            rep = json.loads(nnshrink("bench", path, "--batch", "1,64", "--threads", args.threads,
                                      "--repeats", args.repeats, "--json", "-"))
            print(nnshrink("bench", path, "--batch", "1", "--threads", "1", "--repeats", 3), file=sys.stderr)
            out.append({"model": name, **rep})
    write_json({"command": " ".join(["python"] + sys.argv), "machine": machine(), "models": out}, args.json)


if __name__ == "__main__":
    main()
