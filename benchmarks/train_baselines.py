"""Issue 2's figures: default training of both LeNets on Fashion-MNIST, top-1 and time.

Runs the real CLI (`nnshrink train --model M -o runs/M.safetensors --json ...`) so the
figures are what a user gets with default settings.

    python benchmarks/train_baselines.py --json benchmarks/results/train_baselines.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import machine, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--models", default="lenet300,lenet5")
    args = ap.parse_args()
    Path(args.out_dir).mkdir(exist_ok=True)
    results = {"machine": machine(), "models": {}}
    total = 0.0
    for name in args.models.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json") as rep:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "nnshrink", "train", "--model", name, "--quiet",
                            "-o", f"{args.out_dir}/{name}.safetensors", "--json", rep.name], check=True)
            wall = time.perf_counter() - t0
            report = json.loads(Path(rep.name).read_text())
        total += wall
        epochs = report["epochs"]
        results["models"][name] = {
            "top1": report["top1"], "epochs": len(epochs), "wall_s": wall,
            "epoch_s_median": sorted(e["seconds"] for e in epochs)[len(epochs) // 2],
            "checkpoint": f"{args.out_dir}/{name}.safetensors"}
    results["total_wall_s"] = total
    write_json(results, args.json)


if __name__ == "__main__":
    main()
