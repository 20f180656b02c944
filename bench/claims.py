"""Claim files: the one way concurrent processes (several `bench run`s, SLURM tasks on many nodes) agree that one of
them does a piece of work — a run of the results store, a missing set of images of the feature cache.

A claim is a file created with ``O_CREAT|O_EXCL`` (atomic on local disks, NFS and Lustre; no locks) holding
``{"pid", "host", "time"}`` and touched by a heartbeat thread every :data:`HEARTBEAT_S` while its work runs. It is
abandoned, and taken over, when its process is gone (a process of this host: checked at once, so a killed run
never stalls the next command) or when it has not been refreshed for :data:`STALE_S` (a process of another host,
or one that hangs; ``BENCH_CLAIM_STALE_S``). Taking over renames the abandoned file aside first, so of several
processes taking over at once exactly one wins the next exclusive create.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from bench import log

HEARTBEAT_S = 15.0
STALE_S = float(os.environ.get("BENCH_CLAIM_STALE_S", 300))
_WRITING_S = 10.0  # an empty or unreadable claim this young is being written right now


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def holder(path: Path | str) -> dict | None:
    """The live claim at ``path`` (pid, host, time), or None when there is none or it is abandoned."""
    why = abandoned(Path(path))
    return None if why is not None else (_read(Path(path)) or {"pid": None, "host": None})


def abandoned(path: Path) -> str | None:
    """Why the claim at ``path`` is free to take ("absent", "its process N is gone", "N s old"), or None while live."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return "absent"
    info = _read(path)
    if info is None:
        return None if age < _WRITING_S else f"unreadable and {age:.0f} s old"
    pid = info.get("pid")
    if info.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
        return f"its process {pid} is gone"
    return f"{age:.0f} s old" if age > STALE_S else None


class Claim:
    """This process holds the claim at ``path``; a heartbeat thread keeps it fresh until :meth:`release`."""

    def __init__(self, path: Path):
        self.path = path
        _HELD.add(self)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"claim {path.name}")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the file if it is still this process's (not taken over meanwhile)."""
        self._stop.set()
        _HELD.discard(self)
        info = _read(self.path)
        if info is not None and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


_HELD: set = set()  # the claims this process holds


def release_claims() -> None:
    """Release every claim this process still holds (on the way out of an interrupted command)."""
    for claim in list(_HELD):
        claim.release()


def acquire(path: Path | str, what: str = "") -> Claim | None:
    """Claim ``path`` for this process, taking over an abandoned claim (one log line naming ``what`` and why);
    None while another live process holds it. OSError (e.g. a read-only folder) propagates to the caller."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask decides the mode
        except FileExistsError:
            why = abandoned(path)
            if why is None:
                return None
            if why != "absent" and what:
                log.info(f"{what}: taking over an abandoned claim {path} ({why})")
            stale = path.with_name(f".{path.name}.{os.getpid()}.stale")
            try:  # atomic: of several processes taking over, one renames it, the others retry the O_EXCL
                os.rename(path, stale)
                stale.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            continue
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, fh)
            return Claim(path)
        except BaseException:  # interrupted while claiming: leave no claim behind
            path.unlink(missing_ok=True)
            raise
    return None
