"""Running a grid in this process, one run after the other, sharing the work with concurrent commands on one store
through the store's run claims."""

from __future__ import annotations

import os
import socket
import time

from bench import log
from bench.claims import release_claims
from bench.engine.checkpoint import FileCheckpointer, checkpoint_path, local_policy
from bench.engine.runner import execute_safely
from bench.data.images import usable_cpus
from bench.launch.threads import oversubscription_hint
from bench.store import Store

WAIT_POLL_S = 1.0  # how often a command re-checks the runs another process is executing


def launch_local(grid: list[dict], store: Store, device: str | None = None) -> dict:
    """Run every missing config in this process, one after the other; a failing run never stops the grid.

    Each run is claimed before it executes (:meth:`Store.claim`), so concurrent commands on one store share
    the work: a run another live process holds is left to it and waited for at the end. Counts: ``ran`` and
    ``failed`` here, ``skipped`` (complete before this command), ``by_other`` (completed by another process),
    ``failed_other`` (failed in another process). A run held by another process on this host while torch's
    threads outnumber the CPUs gets one line saying what to set (:mod:`bench.launch.threads`)."""
    policy = local_policy()  # training-state checkpoints beside the results: a killed run resumes
    todo = store.pending(grid)
    log.info(f"{len(grid)} runs in the grid, {len(grid) - len(todo)} already complete, {len(todo)} to run")
    counts = {"ran": 0, "failed": 0, "by_other": 0, "failed_other": 0}
    waiting: dict[int, tuple[dict, float]] = {}
    hinted = False  # the shared-CPU check is made once, at the first run held by another process

    def attempt(config: dict, seen_at: float | None) -> bool:
        """Run ``config`` if it can be claimed; False when another process holds it."""
        claim = store.claim(config)
        if claim is None:
            return False
        try:
            if store.is_complete(config):
                counts["by_other"] += 1
            elif seen_at is not None and _failed_since(store, config, seen_at):
                counts["failed_other"] += 1
            elif execute_safely(config, store, device=device, checkpoint_every=policy["every"], checkpointer=
                                FileCheckpointer(checkpoint_path(store, config), policy["every_steps"],
                                                 policy["every_s"], quiet=True)) is None:
                counts["failed"] += 1
            else:
                counts["ran"] += 1
        finally:
            claim.release()
        return True

    try:
        for config in log.progress(todo, desc="runs", total=len(todo)):
            if not attempt(config, None):
                waiting[id(config)] = (config, time.time())
                if not hinted:
                    hinted = _shared_cpu_hint(store, config, device)
        if waiting:
            log.info(f"{len(waiting)} run(s) are being executed by another process: waiting for them")
        while waiting:
            time.sleep(WAIT_POLL_S)
            for key, (config, seen_at) in list(waiting.items()):
                if attempt(config, seen_at):  # released: done, failed there, or abandoned (then run here)
                    del waiting[key]
    finally:
        release_claims()  # interrupted (Ctrl-C, SIGTERM): no claim of this process outlives it
    return {"total": len(grid), "skipped": len(grid) - len(todo), **counts}


def _shared_cpu_hint(store: Store, config: dict, device: str | None) -> bool:
    """When another process on this host holds ``config`` and a CPU run's torch threads (both processes' together)
    outnumber the CPUs, log what to set. True once the holder was seen (the check is not repeated)."""
    import torch

    holder = store.claim_holder(config) or {}
    if holder.get("host") != socket.gethostname() or holder.get("pid") in (None, os.getpid()):
        return False
    on_gpu = str(device).startswith("cuda") if device else torch.cuda.is_available()
    line = None if on_gpu else oversubscription_hint(torch.get_num_threads(), usable_cpus(), 2)
    if line:
        log.info(line)
    return True


def _failed_since(store: Store, config: dict, t: float) -> bool:
    path = store.failure_path(config)
    try:
        return path.stat().st_mtime >= t - 1.0
    except OSError:
        return False
