"""Flags and helpers shared by several sub-commands."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import ConfigError


def add_data_args(p) -> None:
    p.add_argument("--dataset", default=None, help="fashion-mnist, mnist, or idx (with --data-dir)")
    p.add_argument("--data-dir", default=None, help="folder with the four IDX files (or NNSHRINK_DATA)")


def add_device_arg(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")


def add_max_elements_arg(p) -> None:
    from ..format import DEFAULT_MAX_ELEMENTS

    p.add_argument("--max-elements", type=_positive_int, default=DEFAULT_MAX_ELEMENTS, metavar="N",
                   help=f"refuse archives that decode to more than N elements (default {DEFAULT_MAX_ELEMENTS})")


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def check_output_path(path: str | os.PathLike, force: bool = True) -> Path:
    """Refuse an output whose folder does not exist (or that exists, unless ``force``)."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"output folder {str(parent)!r} does not exist (for {str(out)!r})")
    if out.exists() and not force:
        raise ConfigError(f"output file {str(out)!r} exists; pass --force to overwrite")
    return out


def emit_json(obj, dest: str | None) -> None:
    """Write ``obj`` as JSON to ``dest`` ('-' or None for stdout)."""
    text = json.dumps(obj, indent=2, sort_keys=False)
    if dest in (None, "-"):
        sys.stdout.write(text + "\n")
    else:
        out = check_output_path(dest)
        from ..io_utils import atomic_write_bytes

        atomic_write_bytes(out, (text + "\n").encode())
