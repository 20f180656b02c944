"""The registry of submitted jobs (``<store>.slurm/registry.json``, next to the store) and queue states: which run
of a grid is done, pending, running, failed or missing, with the failing task's log tail."""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from bench import log
from bench.errors import BenchError
from bench.fileio import file_lock
from bench.store import Store, config_hash, write_json_atomic


def slurm_dir(store: Store, prof: dict | None = None) -> Path:
    """``<store>.slurm``: the registry and one log folder per submission."""
    if prof and prof.get("folder"):
        return Path(prof["folder"]).expanduser().resolve()
    root = store.root.expanduser().resolve()
    return root.with_name(root.name + ".slurm")


def registry_path(store: Store) -> Path:
    return slurm_dir(store) / "registry.json"


def load_registry(store: Store) -> dict:
    path = registry_path(store)
    data = Store._read(path) if path.exists() else None
    if not isinstance(data, dict):
        data = {}
    data.setdefault("runs", {})
    data.setdefault("submissions", [])
    return data


def require_command(cmd: str) -> str:
    exe = shutil.which(cmd)
    if not exe:
        raise BenchError(f"`{cmd}` not found on PATH: run this on a SLURM login node (or start the test cluster with "
                         f"`bash slurm/cluster.sh start`)")
    return exe


def queue_states(job_ids: list[str] | None = None) -> dict[str, str]:
    """``{job_id: SLURM state}`` of this user's jobs in the queue, one entry per array task (``123_4``)."""
    require_command("squeue")
    cmd = ["squeue", "-h", "-r", "-o", "%i|%T", "-u", getpass.getuser()]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise BenchError("squeue did not answer within 60 s: is the SLURM controller up?") from None
    if out.returncode != 0:
        raise BenchError(f"squeue failed: {(out.stderr or out.stdout).strip().splitlines()[-1:] or ['?']} "
                         f"(is the SLURM controller up?)")
    states = {}
    for line in out.stdout.splitlines():
        if "|" not in line:
            continue
        jid, state = (s.strip() for s in line.split("|", 1))
        for j in _expand_ids(jid):
            states[j] = state.split()[0] if state else "UNKNOWN"
    return states


def _expand_ids(jid: str) -> list[str]:
    """``123_[0-2,5%4]`` -> ``123_0 123_1 123_2 123_5``; plain ids unchanged."""
    m = re.fullmatch(r"(\d+)_\[([^\]]*)\]", jid)
    if not m:
        return [jid]
    out = []
    for part in m.group(2).split("%")[0].split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out += [f"{m.group(1)}_{i}" for i in range(int(a), int(b) + 1)]
        elif part:
            out.append(f"{m.group(1)}_{part}")
    return out


PENDING_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "PREEMPTED", "CONFIGURING",
                  "SPECIAL_EXIT", "STOPPED", "SUSPENDED", "RESIZING"}
ENDED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                "REVOKED"}


def queue_kind(state: str | None) -> str | None:
    """SLURM state -> 'pending' | 'running' | None (not in the queue any more, or ended)."""
    if not state or state in ENDED_STATES:
        return None
    return "pending" if state in PENDING_STATES else "running"


def log_tail(path: Path | str | None, lines: int = 15) -> list[str]:
    if not path:
        return []
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return [ln.rstrip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()][-lines:]


def run_states(grid: list[dict], store: Store, queue: dict[str, str] | None = None) -> dict[str, dict]:
    """``{run hash: {"state": done|pending|running|failed|missing, "job_id", "log", "error"}}`` for the grid.

    A run is *failed* when the store holds its failure record, or when its SLURM task left the queue without
    writing a result (killed, out of memory, time limit without requeue, cancelled).  Without a registry (nothing
    ever submitted to SLURM for this store) no queue is asked.
    """
    reg = load_registry(store)["runs"]
    if queue is None:
        if not any(config_hash(c) in reg for c in grid):
            queue = {}
        else:  # without squeue (not on the cluster) the queue is unknown: queue stays None
            try:
                queue = queue_states()
            except BenchError as e:
                log.info(f"queue unknown: {e}")
    out = {}
    for c in grid:
        h = config_hash(c)
        entry = reg.get(h) or {}
        job = entry.get("job_id")
        info = {"state": "missing", "job_id": job, "log": entry.get("stderr"), "error": None, "recorded": False}
        if store.is_complete(c):
            info["state"] = "done"
        elif job and queue is None:
            info["state"] = "unknown"
        elif job and queue_kind(queue.get(job)):
            info["state"] = queue_kind(queue.get(job))
        elif store.failure(c):
            info["state"] = "failed"
            info["error"] = (store.failure(c) or {}).get("error")
            info["recorded"] = True
            if (store.failure(c) or {}).get("traceback"):
                info["record"] = str(store.failure_path(c))
        elif job:
            info["state"] = "failed"
            info["error"] = (f"SLURM task {job} ended without a result (killed, out of memory, time limit or "
                             f"cancelled?)")
        out[h] = info
    return out


def record_submission(store: Store, tasks: list[list[dict]], jobs: list, folder: Path, prof: dict) -> None:
    path = registry_path(store)
    with file_lock(path):
        reg = load_registry(store)
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for task, job in zip(tasks, jobs):
            paths = job.paths
            for c in task:
                h = config_hash(c)
                old = reg["runs"].get(h)
                history = list((old or {}).get("history", []))
                if old and old.get("job_id"):
                    history.append(old["job_id"])
                reg["runs"][h] = {
                    "job_id": str(job.job_id),
                    "stdout": str(paths.stdout),
                    "stderr": str(paths.stderr),
                    "folder": str(folder),
                    "submitted_at": now,
                    "label": c["label"],
                    "dataset": c["train"]["dataset"],
                    "shots": c["train"]["shots"],
                    "seed": c["train"]["seed"],
                    "result": str(store.path_for(c)),
                    "history": history[-10:],
                }
        arrays = sorted({str(j.job_id).split("_")[0] for j in jobs})
        reg["submissions"].append({"time": now, "folder": str(folder), "arrays": arrays, "tasks": len(jobs),
                                   "runs": sum(len(t) for t in tasks), "profile": {k: v for k, v in prof.items()
                                                                                    if k not in ("env",)}})
        write_json_atomic(path, reg)
