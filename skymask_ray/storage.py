"""Atomic file writes: a file a run writes is either the old version or the complete new one.

Every result file (rows, masks, checkpoint, config, study summaries, report
outputs) is written to a temporary file in the same folder, flushed to disk
(``fsync``), then renamed over the target (``os.replace``, atomic on POSIX)
and the folder entry is synced. A full disk or a missing permission becomes
one :class:`~skymask_ray.errors.ResultsWriteError` line naming the file and
the disk; the previous version of the file is left untouched.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import ResultsWriteError


def _describe(exc: OSError, path: Path) -> str:
    """One line: what failed, on which file and disk, and how much space is left there."""
    where = path.parent if path.parent.exists() else Path(".")
    try:
        free = shutil.disk_usage(where).free / 1024**2
        disk = f"{os.path.realpath(where)} ({free:.0f} MB free)"
    except OSError:
        disk = str(where)
    if exc.errno == errno.ENOSPC:
        return f"no space left on the disk of {disk} while writing {path}; free some space and rerun (with --resume)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: {exc.strerror} (disk {disk})"
    return f"could not write {path}: {exc.strerror or exc}"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(fh)`` on a temp file, fsync, and rename it into place."""
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a result file gets the usual permissions
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _sync_dir(path.parent)
    except OSError as exc:
        raise ResultsWriteError(_describe(exc, path)) from None
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    return atomic_write_bytes(path, text.encode())


def _sync_dir(folder: Path) -> None:
    """Persist the rename itself (the folder entry); best effort where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable_folder(path: str | Path, what: str = "output folder") -> Path:
    """Fail early (before Ray starts) if ``path`` cannot be a folder we can write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ResultsWriteError(f"{what} {str(path)!r} exists and is not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ResultsWriteError(f"{what} {str(path)!r} cannot be created: {str(probe)!r} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ResultsWriteError(f"{what} {str(path)!r} is not writable ({str(probe)!r} denies writing)")
    return path
