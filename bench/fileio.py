"""Atomic file replacement and advisory locks: what the results store, the feature cache, the few-shot
samples and the training checkpoints share so that killed or concurrent jobs never leave a corrupt file."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from bench.errors import BenchError

# Out of space: no space left, file-size limit (`ulimit -f`, with SIGXFSZ ignored), disk quota.
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class DiskFull(BenchError):
    """A write failed because the disk is full, a quota or the file-size limit was reached."""


def disk_full_error(exc: BaseException, path: Path | str) -> DiskFull | None:
    """A one-line :class:`DiskFull` naming ``path`` if ``exc`` (or what caused it: torch.save wraps the OSError
    in an 'enforce fail at inline_container.cc' RuntimeError) is an out-of-space error, else None."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            what = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "the file-size limit was reached",
                    errno.EDQUOT: "the disk quota was exceeded"}[e.errno]
            return DiskFull(f"cannot write {path}: {what} (free space or raise the limit, then run again; "
                            f"results written so far are kept)")
        e = e.__cause__ or e.__context__
    return None


_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """The mode a plain ``open()`` would give a new file: 0o666 less the process's umask (read each time: a
    program importing the suite may change it), so a group-shared store or cache stays readable by the group."""
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o077)
        os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_open(path: Path | str) -> Iterator[BinaryIO]:
    """Write to a temporary file beside ``path``; on success fsync and ``os.replace`` it into place.

    The file gets the mode the umask gives (:func:`file_mode`). Readers see the old file or the complete new one, never a partial one; on an exception (or a kill) the
    temporary file is removed (or, after a hard kill, left as a hidden ``.<name>.*.tmp`` that nothing reads).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())  # mkstemp creates 0600 whatever the umask
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except Exception as e:
        full = disk_full_error(e, path)
        if full is not None:
            raise full from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def file_lock(path: Path | str) -> Iterator[None]:
    """An exclusive advisory lock on ``<path>.lock`` (works across processes on one machine / NFS with locking)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_temp_name(name: str) -> bool:
    """A temporary file of :func:`atomic_open` (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def clean_stale_temps(folder: Path | str, max_age_s: float = 900.0) -> list[Path]:
    """Remove temporary files of :func:`atomic_open` under ``folder`` untouched for ``max_age_s`` seconds: what
    writers killed mid-write (``kill -9``, power loss) leave. A live writer keeps its file's mtime fresh.
    Returns the removed paths."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if not is_temp_name(name):
                continue
            p = Path(dirpath) / name
            try:
                if now - p.stat().st_mtime > max_age_s:
                    p.unlink()
                    removed.append(p)
            except OSError:
                continue
    return removed
