"""Small helpers shared by the benchmark scripts: machine description, JSON output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path


def machine() -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_json(obj: dict | list, path: str | None) -> None:
    text = json.dumps(obj, indent=2)
    if path:
        Path(path).write_text(text + "\n")
    print(text)


def nnshrink(*args) -> str:
    """Run the real `nnshrink` command (this interpreter), fail on error, return stdout."""
    return subprocess.run([sys.executable, "-m", "nnshrink", *map(str, args)], check=True, capture_output=True,
                          text=True).stdout


def speedup_runs(fns: dict, runs: int, repeats: int, min_sample_s: float = 0.02) -> dict:
    """``runs`` independent interleaved measurements of {"dense": fn, "kernel": fn}: the
    speed-up (dense time / kernel time) of each run, their min and median, and the median
    times of the median run. A figure "in every one of N runs" is the min."""
    from nnshrink.runtime.timing import time_interleaved

    per_run = [time_interleaved(fns, repeats=repeats, min_sample_s=min_sample_s) for _ in range(runs)]
    speedups = [m["dense"] / m["kernel"] for m in per_run]
    mid = sorted(range(runs), key=lambda i: speedups[i])[runs // 2]
    return {"speedup": sorted(speedups)[runs // 2], "speedup_min": min(speedups), "speedup_runs": speedups,
            "dense_us": per_run[mid]["dense"] * 1e6, "kernel_us": per_run[mid]["kernel"] * 1e6}


def single_thread(threads: int = 1) -> None:
    """torch and numba threads, before numba is imported (its pool size is read once)."""
    os.environ["NUMBA_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
