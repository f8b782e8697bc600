"""Safe file access: what a path is, before nnshrink reads it or writes over it.

Writes are atomic (temp file beside the target + rename): a killed process never leaves a
half file, and a failed write (full disk, no permission) leaves the old file as it was.
nnshrink writes only regular files: a rename over a device node or FIFO would replace the
node itself (as root, ``-o /dev/null`` would replace the system's /dev/null).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import NNShrinkError, OutputError

# Write failures that are the user's environment, not a bug: one clear line each.
_WRITE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                 errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                 errno.EROFS: "read-only file system", errno.EFBIG: "file too large"}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_kind(mode: int) -> str:
    """A readable name for what a stat mode is ('a directory', 'a named pipe (FIFO)', ...)."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_input_file(path: str | os.PathLike, error: type[NNShrinkError] = NNShrinkError) -> Path:
    """Refuse an input that is missing, unreadable or not a regular file, naming what it is.

    Checked before opening: opening a FIFO blocks and /dev/zero never ends, so a reader
    must never get that far. ``error`` is the caller's error class (CheckpointError, ...).
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path} is {file_kind(mode)}, not a regular file")
    if not os.access(path, os.R_OK):
        raise error(f"{path}: permission denied")
    return path


def check_output_file(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an output nnshrink must not write: a missing folder, a directory, anything but a
    regular file (even with ``force``), or an existing file without ``force``."""
    out = Path(path)
    parent = out.parent
    if not parent.is_dir():
        what = "does not exist" if not parent.exists() else "is not a folder"
        raise OutputError(f"output folder {str(parent)!r} {what} (for {str(out)!r})")
    try:
        mode = os.stat(out).st_mode  # through a symlink: the file it names is what gets written
    except FileNotFoundError:
        if out.is_symlink():
            raise OutputError(f"output {str(out)!r} is a dangling symlink; remove it or name another file") from None
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        link = " (through a symlink)" if out.is_symlink() else ""
        raise OutputError(f"output {str(out)!r} is {file_kind(mode)}{link}; nnshrink writes only regular files")
    if mode is not None and not force:
        raise OutputError(f"output file {str(out)!r} exists; pass --force to replace it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {str(out)!r}: permission denied in {str(parent)!r}")
    return out


def write_error(exc: BaseException) -> int | None:
    """The errno of an environment write failure (ENOSPC, EACCES, ...) in ``exc``, else None.

    Besides OSError this reads the '(os error N)' that Rust-backed writers such as
    safetensors put in their own exception's message.
    """
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in _WRITE_ERRNOS else None
    m = re.search(r"os error (\d+)", str(exc))
    return int(m.group(1)) if m and int(m.group(1)) in _WRITE_ERRNOS else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove temp files of earlier writes to ``target`` whose writer is dead (killed mid-write).

    Temp names are ``.NAME.PID.XXXXXXXX.tmp``; one without a live PID (or without a PID,
    from an older version) is debris.
    """
    removed = []
    prefix = f".{target.name}."
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for e in entries:
        if not (e.name.startswith(prefix) and e.name.endswith(".tmp")) or not e.is_file(follow_symlinks=False):
            continue
        pid = e.name[len(prefix):-len(".tmp")].split(".")[0]
        if pid.isdigit() and _pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(e.path)
            removed.append(Path(e.path))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds.

    A symlink is written through (its target file is replaced). A target that exists and is
    not a regular file is refused. Full disk / no permission raise one-line OutputError with
    the old file intact; the temp file never outlives the call.
    """
    target = Path(path)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    if target.exists() and not target.is_file():
        check_output_file(target, force=True)  # raises, naming what the target is
    remove_stale_temps(target)
    tmp_path = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp",
                                   dir=target.parent or ".")
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, target)
    except Exception as exc:
        code = write_error(exc)
        if code is None:
            raise
        keep = "; the file that was there is unchanged" if target.exists() else ""
        raise OutputError(f"cannot write {str(target)!r}: {_WRITE_ERRNOS[code]}{keep}") from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result over ``path`` only if it returns."""
    with atomic_path(path) as tmp:
        writer(tmp)
