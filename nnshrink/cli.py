"""The ``nnshrink`` command.

Each sub-command lives in its own module under :mod:`nnshrink.commands` and exposes
``register(subparsers)``; the module list is discovered, so adding a command means adding
a file. User errors (:class:`NNShrinkError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from . import __version__, commands
from .errors import NNShrinkError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnshrink",
        description="Make trained PyTorch networks small and fast.",
    )
    parser.add_argument("--version", action="version", version=f"nnshrink {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def _set_threads() -> None:
    """NNSHRINK_THREADS caps torch's intra-op threads: on a shared, oversubscribed machine a
    2-thread team can run 10x slower than one thread (measured while several jobs ran)."""
    value = os.environ.get("NNSHRINK_THREADS")
    if not value:
        return
    if not value.isdigit() or int(value) < 1:
        raise NNShrinkError(f"NNSHRINK_THREADS must be a positive integer; got {value!r}")
    import torch

    torch.set_num_threads(int(value))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _set_threads()
        return int(args.func(args) or 0)
    except NNShrinkError as exc:
        print(f"nnshrink {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnshrink {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
