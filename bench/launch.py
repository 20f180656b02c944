"""Running a grid of run configs: in this process (``local``) or as SLURM job arrays (``slurm``)."""

from __future__ import annotations

from bench import log
from bench.runner import execute_safely
from bench.store import Store


def pending(grid: list[dict], store: Store) -> list[dict]:
    """The runs of ``grid`` without a complete result (missing or failed)."""
    return [c for c in grid if not store.is_complete(c)]


def launch_local(grid: list[dict], store: Store, device: str | None = None) -> dict:
    """Run every missing config in this process, one after the other; a failing run never stops the grid."""
    todo = pending(grid, store)
    log.info(f"{len(grid)} runs in the grid, {len(grid) - len(todo)} already complete, {len(todo)} to run")
    ok = failed = 0
    for config in log.progress(todo, desc="runs", total=len(todo)):
        if execute_safely(config, store, device=device) is None:
            failed += 1
        else:
            ok += 1
    return {"total": len(grid), "skipped": len(grid) - len(todo), "ran": ok, "failed": failed}


def launch_slurm(grid: list[dict], store: Store, args) -> dict:
    """Submit the missing runs of ``grid`` as SLURM job arrays (see :mod:`bench.slurm`); returns at once."""
    from bench.slurm import launch_slurm as _launch_slurm

    return _launch_slurm(grid, store, args)
