"""Atomic file replacement and advisory locks: what the results store, the feature cache, the few-shot
samples and the training checkpoints share so that killed or concurrent jobs never leave a corrupt file."""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


@contextmanager
def atomic_open(path: Path | str) -> Iterator[BinaryIO]:
    """Write to a temporary file beside ``path``; on success fsync and ``os.replace`` it into place.

    Readers see the old file or the complete new one, never a partial one; on an exception (or a kill) the
    temporary file is removed (or, after a hard kill, left as a hidden ``.<name>.*.tmp`` that nothing reads).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
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
