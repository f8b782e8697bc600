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


def write_json(obj: dict, path: str | None) -> None:
    text = json.dumps(obj, indent=2)
    if path:
        Path(path).write_text(text + "\n")
    print(text)


def nnshrink(*args) -> str:
    """Run the real `nnshrink` command (this interpreter), fail on error, return stdout."""
    return subprocess.run([sys.executable, "-m", "nnshrink", *map(str, args)], check=True, capture_output=True,
                          text=True).stdout
