"""Submission (``bench run --launcher slurm``) and the SLURM part of ``bench status``."""

from __future__ import annotations

import time
from pathlib import Path

from bench.errors import BenchError
from bench.launch.slurm.packing import pack
from bench.launch.slurm.profile import executor_parameters, load_profile
from bench.launch.slurm.queue import (load_registry, log_tail, queue_kind, queue_states, record_submission,
                                      registry_path, require_command, slurm_dir)
from bench.launch.slurm.task import RunTask, task_payload
from bench.store import Store, config_hash

try:  # submitit is a dependency; the import is guarded so that `bench` works in an environment without it
    import submitit
except ImportError:  # pragma: no cover
    submitit = None


def make_executor(folder: Path, prof: dict):
    if submitit is None:  # pragma: no cover
        raise BenchError("submitit is not installed: pip install submitit")
    require_command("sbatch")
    kwargs = {"slurm_max_num_timeout": prof["max_timeouts"]}
    if prof["python"]:
        kwargs["slurm_python"] = str(prof["python"])
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", **kwargs)
    ex.update_parameters(**executor_parameters(prof))
    return ex


def submit(grid: list[dict], store: Store, prof: dict, out=print) -> dict:
    """Submit the runs of ``grid`` that have no complete result and no queued/running task; returns a summary."""
    store = Store(store.root.expanduser().resolve())
    todo = store.pending(grid)
    reg = load_registry(store)["runs"]
    queue = queue_states() if any(config_hash(c) in reg for c in todo) else {}
    active = [c for c in todo if queue_kind(queue.get((reg.get(config_hash(c)) or {}).get("job_id")))]
    active_ids = {id(c) for c in active}
    todo = [c for c in todo if id(c) not in active_ids]
    summary = {"total": len(grid), "complete": len(grid) - len(todo) - len(active), "active": len(active),
               "submitted": len(todo), "jobs": [], "folder": None, "tasks": 0}
    head = (f"{len(grid)} runs in the grid: {summary['complete']} complete, {len(active)} queued or running")
    if not todo:
        out(f"{head}; nothing to submit")
        return summary
    tasks = pack(todo, prof["pack_size"], prof["pack_max_cost"])
    folder = slurm_dir(store, prof) / time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while folder.exists():
        n += 1
        folder = folder.with_name(folder.name.split(".")[0] + f".{n}")
    folder.mkdir(parents=True)
    ex = make_executor(folder, prof)
    payloads = [task_payload(t, store, prof) for t in tasks]
    jobs = []
    size = prof["max_array_size"]
    for i in range(0, len(payloads), size):
        chunk = payloads[i : i + size]
        try:
            got = ex.map_array(RunTask(), chunk)
        except Exception as e:  # noqa: BLE001 - sbatch's own message is what the user needs
            msg = str(e).strip().splitlines()
            raise BenchError(f"sbatch refused the submission: {msg[-1] if msg else type(e).__name__} "
                             f"(profile: partition={prof['partition']}, account={prof['account']}, "
                             f"qos={prof['qos']}); submission script in {folder}") from None
        jobs += got
        record_submission(store, tasks[i : i + size], got, folder, prof)
    arrays = sorted({str(j.job_id).split("_")[0] for j in jobs}, key=int)
    n_short = sum(len(t) for t in tasks if len(t) > 1)
    summary.update(jobs=[str(j.job_id) for j in jobs], arrays=arrays, folder=str(folder), tasks=len(tasks))
    packed = f" ({n_short} short runs packed up to {prof['pack_size']} per task)" if n_short else ""
    out(f"{head}; submitting {len(todo)} as {len(tasks)} array task(s){packed}")
    out(f"submitted job array(s) {', '.join(arrays)} ({len(jobs)} tasks: {jobs[0].job_id} .. {jobs[-1].job_id})")
    out(f"logs:     {folder}/<array>_<task>_0_log.err|out")
    out(f"registry: {registry_path(store)}")
    out("follow with `bench status` and the same grid flags; cancel with `scancel " + " ".join(arrays) + "`")
    return summary


def launch_slurm(grid: list[dict], store: Store, args) -> dict:
    """``bench run --launcher slurm``: profile + ``--slurm KEY=VALUE`` overrides -> :func:`submit`."""
    prof = load_profile(getattr(args, "slurm_profile", None), getattr(args, "slurm", None))
    return submit(grid, store, prof)


def print_status_details(grid: list[dict], states: dict[str, dict], out=print, max_failed: int = 10) -> None:
    """For ``bench status``: the failing runs with their error and SLURM log (the run's own lines when the run
    recorded its failure, the log's tail when the task ended without a result), and the active job ids."""
    failed = [(c, states[config_hash(c)]) for c in grid if states[config_hash(c)]["state"] == "failed"]
    for c, st in failed[:max_failed]:
        tr = c["train"]
        job = f" (SLURM task {st['job_id']})" if st.get("job_id") else ""
        out(f"failed: {c['label']} {tr['dataset']} shots={tr['shots']} seed={tr['seed']}{job}: {st.get('error')}")
        if st.get("record"):
            out(f"  traceback in {st['record']}")
        if not st.get("log"):
            continue
        if st.get("recorded"):
            lines = [ln for ln in log_tail(st["log"], 10_000) if f"[{config_hash(c)}]" in ln][-6:]
            out(f"  log {st['log']}" + (":" if lines else ""))
        else:
            lines = log_tail(st["log"])
            out(f"  last lines of {st['log']}:")
        for ln in lines:
            out(f"    {ln}")
    if len(failed) > max_failed:
        out(f"... and {len(failed) - max_failed} more failed runs")
    active = sorted({st["job_id"] for st in states.values() if st["state"] in ("pending", "running")})
    if active:
        shown = ", ".join(active[:20]) + (" ..." if len(active) > 20 else "")
        out(f"in the queue: {len(active)} task(s): {shown}")
    if any(st["state"] == "unknown" for st in states.values()):
        out("queue not reachable (squeue failed): submitted runs without a result are shown as unknown")
