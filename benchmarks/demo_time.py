"""Issue 6's demo figure: `nnshrink demo` (the README's main job) end to end, timed.

    python benchmarks/demo_time.py --json benchmarks/results/demo_time.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import machine, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--out-dir", default="runs/demo")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "nnshrink", "demo", "--out-dir", args.out_dir, "--quiet", "--force"]
    proc = subprocess.run(cmd + (["--quick"] if args.quick else []), check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    summary = json.loads((Path(args.out_dir) / "demo.json").read_text())
    write_json({"machine": machine(), "command": "nnshrink demo" + (" --quick" if args.quick else ""),
                "wall_s": wall, "table": proc.stdout.split("== Deep Compression, Table 1")[-1],
                "models": {r["model"]: {k: r[k] for k in ("ratio", "top1_before", "top1_after", "compressed_bytes",
                                                          "original_bytes", "train_seconds", "seconds")}
                           for r in summary["reports"]}}, args.json)


if __name__ == "__main__":
    main()
