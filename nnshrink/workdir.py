"""The work folder of a compression run (``OUT.work/``): per-stage checkpoints for --resume.

One run at a time per output: the folder holds a lock (``flock`` on ``OUT.work/lock``, so
the kernel releases it when its process dies, however it dies: a dead run's lock is taken
over, a live run's is refused). ``run.json`` names the run (input hash, recipe, ...): a
resume continues only the same run. A stage is finished when its record, a ``*.json``
file other than run.json, exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError, OutputError
from .io_utils import atomic_write_bytes

LOCK = "lock"
RUN = "run.json"


def work_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".work")


def finished_stages(work: Path) -> list[Path]:
    """The stage records in ``work`` (every ``*.json`` but run.json), sorted."""
    return sorted(p for p in work.glob("*.json") if p.name != RUN)


def _lock(work: Path, output: Path) -> int:
    """Create ``work`` if needed and hold its lock; returns the locked fd.

    Retries when the folder or lock file it locked was removed meanwhile by the run that
    held it (finished runs remove their folder while still holding the lock).
    """
    for _ in range(20):
        if work.exists() and not work.is_dir():
            raise OutputError(f"{work} (the work folder of {output}) is not a folder; remove it")
        try:
            work.mkdir(exist_ok=True)
        except FileNotFoundError:
            raise OutputError(f"output folder {str(output.parent)!r} does not exist (for {str(output)!r})") from None
        try:
            fd = os.open(work / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder vanished between mkdir and open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(f"another nnshrink run (pid {holder}) is writing {output} (it holds {work}/{LOCK}); "
                              "wait for it to finish or stop it") from None
        try:
            same = os.stat(work / LOCK).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)
    raise ConfigError(f"could not lock {work}: it keeps being removed by another run")


def _reset(work: Path) -> None:
    """Empty ``work`` but for the lock (a killed run that finished no stage: nothing to keep)."""
    for p in work.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


@contextlib.contextmanager
def work_dir(output: str | os.PathLike, run_id: dict[str, Any], *, resume: bool = False,
             keep: bool = False) -> Iterator[Path]:
    """Hold the work folder of the run writing ``output`` and yield its path.

    Refuses a folder another live run holds; a folder with finished stages is continued only
    with ``resume`` and only by the same run (else the message says: --resume, or remove it).
    A dead run's folder without finished stages is emptied and reused. On success the folder is
    removed unless ``keep``; on failure it is kept only when a stage finished (for --resume).
    """
    output = Path(output)
    work = work_path(output)
    fd = _lock(work, output)
    ok = False
    try:
        run_file = work / RUN
        done = finished_stages(work)
        if done and not resume:
            raise ConfigError(f"{work} holds {len(done)} finished stage(s) of an earlier run; pass --resume "
                              f"to continue it, or remove it (rm -r {work})")
        if done:
            try:
                previous = json.loads(run_file.read_text())
            except (OSError, ValueError):
                previous = None
            if previous != json.loads(json.dumps(run_id)):
                raise ConfigError(f"{work} belongs to a different run (input, recipe or dataset changed); "
                                  f"remove it (rm -r {work}) to start afresh")
        else:
            _reset(work)
            atomic_write_bytes(run_file, json.dumps(run_id, indent=1).encode())
        yield work
        ok = True
    finally:
        try:
            if (ok and not keep) or (not ok and not finished_stages(work)):
                shutil.rmtree(work, ignore_errors=True)
        finally:
            os.close(fd)
