"""The ``nnshrink`` command.

Each sub-command lives in its own module under :mod:`nnshrink.commands` and exposes
``register(subparsers)``; the module list is discovered, so adding a command means adding
a file. User errors (:class:`NNShrinkError`) print one line and exit 2; a reader that
closes the pipe early (``nnshrink inspect X | head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys

from . import __version__, commands
from .errors import NNShrinkError

MAX_THREADS = 1024
MAX_ERROR_CHARS = 500
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a command killed by SIGPIPE


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error form: one line naming the bad flag, exit 2 (the
    usage block argparse prints first would make a bad flag two lines; --help has it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    # ASCII digits only: str.isdigit() also accepts "²", which int() then refuses.
    if not re.fullmatch(r"[0-9]{1,4}", value.strip()) or not 1 <= int(value) <= MAX_THREADS:
        raise NNShrinkError(f"NNSHRINK_THREADS must be an integer in 1..{MAX_THREADS}; got {value[:40]!r}")
    import torch

    torch.set_num_threads(int(value))


def one_line(message: object, limit: int = MAX_ERROR_CHARS) -> str:
    """An error message as one line of at most ``limit`` characters: a message quoting a
    huge or multi-line value must not flood the terminal."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _set_threads()
        if getattr(args, "device", None) is not None:  # every command, before any model moves
            from .train import resolve_device

            resolve_device(args.device)
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at exit
        return rc
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except NNShrinkError as exc:
        print(one_line(f"nnshrink {args.command}: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnshrink {args.command}: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what the closed pipe
    did not take raises nothing (Python's documented recipe for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass


def run() -> None:
    """The console script: ``main``, then exit with its status. A process that ran under
    torchrun leaves without the interpreter's teardown (distributed.leave_without_teardown),
    or torch 2.13 can abort a finished rank and torchrun report it as failed."""
    rc = main()
    group = sys.modules.get("nnshrink.distributed")  # not imported: no group was joined
    if group is not None and group.left_a_group():
        group.leave_without_teardown(rc)
    sys.exit(rc)


if __name__ == "__main__":  # pragma: no cover
    run()
