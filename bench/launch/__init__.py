"""Running a grid of run configs: in this process (:mod:`bench.launch.local`) or as SLURM job arrays
(:mod:`bench.launch.slurm`). The CLI chooses; neither launcher imports the other. Which runs of a grid still need
doing is a question to the store (:meth:`bench.store.Store.pending`).

The entry points, :func:`launch_local` and :func:`launch_slurm`, are importable from here and loaded on first use,
so that importing one launcher (a SLURM task importing :mod:`bench.launch.slurm`) never loads the other.
"""

from __future__ import annotations

import importlib

_ENTRY_POINTS = {"launch_local": "bench.launch.local", "launch_slurm": "bench.launch.slurm.submit"}

__all__ = list(_ENTRY_POINTS)


def __getattr__(name: str):
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
