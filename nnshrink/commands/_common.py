"""Flags and helpers shared by several sub-commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..io_utils import atomic_write_bytes, check_output_file


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


def add_json_arg(p) -> None:
    """``--json`` alone prints JSON to stdout; ``--json FILE`` writes it to FILE (see --force)."""
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="print the report as JSON, or write it to FILE")


def add_force_arg(p) -> None:
    p.add_argument("--force", action="store_true", help="replace output files that already exist")


def check_outputs(args, *paths) -> list[Path | None]:
    """Check every output of a command up front: ``paths`` (None skipped) and ``--json FILE``.

    Long work must not run only to find at the end that its result cannot be written.
    """
    force = bool(getattr(args, "force", False))
    json_dest = getattr(args, "json", None)
    if isinstance(json_dest, str) and json_dest != "-":
        check_output_file(json_dest, force=force)
    return [None if p is None else check_output_file(p, force=force) for p in paths]


def emit_json(obj, dest: str | None, force: bool = False) -> None:
    """Write ``obj`` as JSON to ``dest`` ('-' or None for stdout; a file is never replaced
    without ``force``)."""
    text = json.dumps(obj, indent=2, sort_keys=False)
    if dest in (None, "-"):
        sys.stdout.write(text + "\n")
    else:
        atomic_write_bytes(check_output_file(dest, force=force), (text + "\n").encode())
