"""The job side: a checkpointable array task that runs its runs one after the other, resuming an interrupted run
from its training checkpoint, and the handling of SLURM's preemption signal and requeue."""

from __future__ import annotations

import os
import subprocess
import time
import traceback

from bench import log
from bench.errors import BenchError
from bench.engine.checkpoint import FileCheckpointer, checkpoint_path
from bench.launch.slurm.profile import wants_gpu
from bench.launch.threads import apply_threads
from bench.store import Store, config_hash

try:  # submitit is a dependency; the import is guarded so that `bench` works in an environment without it
    import submitit
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover
    submitit = None
    Checkpointable = object


_STOPPING = False  # set once submitit's USR2 handler runs: from then on every exception belongs to it, not to a run


def _is_submitit_stop(exc: BaseException) -> bool:
    """An exception raised by submitit's preemption/timeout handler (its 'job not requeued' error, or a failing
    requeue) must reach submitit, not be recorded as the interrupted run's failure."""
    return _STOPPING or type(exc).__name__ == "UncompletedJobError"


def _requeue_immune_to_sigterm(env, countdown: int) -> None:
    """``scontrol requeue`` for submitit, protected from the SIGTERM that SLURM sends to every process of the step
    (this child included) when the job is cancelled, preempted or requeued: without it the requeue can die before
    it reaches the controller, and the task is lost instead of requeued. The child inherits SIGTERM ignored (set
    around the spawn: signal dispositions set to ignore survive fork and exec)."""
    import signal

    jid = env.job_id
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(["scontrol", "requeue", jid])
    finally:
        signal.signal(signal.SIGTERM, previous)
    if proc.wait(timeout=60) != 0:
        raise subprocess.CalledProcessError(proc.returncode, ["scontrol", "requeue", jid])
    log.info(f"Requeued job {jid} ({countdown} remaining timeouts)")


def _cuda_missing() -> str | None:
    """Why this process cannot use CUDA (one line), or None when it can."""
    import torch

    if torch.cuda.is_available():
        return None
    why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device visible"
    return (f"the SLURM profile asks for GPUs but the task on {os.uname().nodename} has none ({why}; "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): not running on CPU")


def _defer_preemption_signal() -> None:
    """submitit's USR2 handler (checkpoint, requeue, exit) runs wherever the main thread is, mid-step included.
    While a training loop runs, hold it (``bench.engine.loop.STOP``) until the loop has reached a step boundary and
    saved its state; outside training run it at once."""
    import signal

    from bench.engine.loop import STOP

    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        original = signal.getsignal(sig)
        if getattr(original, "__name__", "") != "checkpoint_and_try_requeue":
            continue

        def handler(signum, frame, original=original):
            if not STOP.defer(lambda: original(signum, frame)):
                original(signum, frame)

        handler.__name__ = "bench_deferred_checkpoint_and_try_requeue"
        signal.signal(sig, handler)


def _install_requeue_fix() -> None:
    if submitit is None or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    from submitit.slurm.slurm import SlurmJobEnvironment

    SlurmJobEnvironment._requeue = _requeue_immune_to_sigterm


class RunsFailed(RuntimeError):
    """Raised at the end of an array task in which some run failed, so that SLURM records the task as FAILED."""


class RunTask(Checkpointable):
    """One array task: ``RunTask()(payload)`` runs ``payload["configs"]`` one after the other.

    payload = {"configs": [config, ...], "store": "/abs/results/runs", "checkpoint_every": 10, "device": None}

    Completed runs are skipped (so a requeued task continues where it stopped); a failing run is recorded in the
    store (``*.failed.json`` with its traceback) and the task goes on with the next one, then ends with
    :class:`RunsFailed` so that SLURM marks the task FAILED.
    """

    def __call__(self, payload: dict) -> dict:
        from bench.engine.runner import execute

        global _STOPPING
        _STOPPING = False
        _install_requeue_fix()
        _defer_preemption_signal()
        apply_threads()  # BENCH_THREADS from the profile's env or the submitting shell (else torch's default)
        store = Store(payload["store"])
        configs = payload["configs"]
        every = int(payload.get("checkpoint_every") or 0)
        every_steps = int(payload.get("checkpoint_every_steps") or 0)
        every_s = 60.0 * float(payload.get("checkpoint_every_min") or 0)
        no_cuda = _cuda_missing() if payload.get("require_cuda") else None
        env = {k: os.environ.get(k) for k in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID",
                                              "SLURM_RESTART_COUNT")}
        task = (f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}" if env["SLURM_ARRAY_JOB_ID"]
                else env["SLURM_JOB_ID"] or f"pid {os.getpid()}")
        log.info(f"task {task} (job {env['SLURM_JOB_ID']}, restart {env['SLURM_RESTART_COUNT'] or 0}) on "
                 f"{os.uname().nodename}: {len(configs)} run(s), "
                 f"store {store.root}, checkpoint every {every} epoch(s)"
                 + (f", {every_steps} step(s)" if every_steps else "") + (f", {every_s / 60:g} min" if every_s else ""))
        summary = {"done": [], "skipped": [], "failed": []}
        for i, config in enumerate(configs, 1):
            h = config_hash(config)
            tr = config["train"]
            what = f"run {i}/{len(configs)} {config['label']} {tr['dataset']} shots={tr['shots']} seed={tr['seed']} [{h}]"
            ckpt = FileCheckpointer(checkpoint_path(store, config), every_steps, every_s)
            if store.is_complete(config):
                ckpt.clear()
                summary["skipped"].append(h)
                log.info(f"{what}: already complete")
                continue
            if no_cuda:
                store.write_failure(config, no_cuda, {"slurm": {k: v for k, v in env.items() if v}})
                summary["failed"].append(h)
                log.info(f"{what}: FAILED: {no_cuda}")
                continue
            log.info(f"{what}: start")
            t0 = time.time()
            try:
                execute(config, store, checkpointer=ckpt, checkpoint_every=every, device=payload.get("device"))
            except Exception as e:  # noqa: BLE001 - recorded with its traceback; the task goes on
                if _is_submitit_stop(e):
                    raise
                msg = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
                store.write_failure(config, msg, {"traceback": traceback.format_exc(),
                                                  "slurm": {k: v for k, v in env.items() if v}})
                summary["failed"].append(h)
                log.info(f"{what}: FAILED: {msg}")
                continue
            ckpt.clear()
            summary["done"].append(h)
            log.info(f"{what}: done in {time.time() - t0:.1f} s")
        log.info(f"task finished: {len(summary['done'])} done, {len(summary['skipped'])} already complete, "
                 f"{len(summary['failed'])} failed")
        if summary["failed"]:  # the SLURM task ends FAILED (mail-type=FAIL, sacct); the results above are kept
            raise RunsFailed(f"{len(summary['failed'])} of {len(configs)} run(s) failed (their errors are in the "
                             f"store's *.failed.json; `bench status` lists them)")
        return summary

    def checkpoint(self, *args, **kwargs):
        global _STOPPING
        _STOPPING = True
        log.info("preempted or at the time limit: requeuing this task; completed runs are kept and the interrupted "
                 "one resumes from its last training checkpoint")
        return super().checkpoint(*args, **kwargs)


def task_payload(configs: list[dict], store: Store, prof: dict) -> dict:
    """What one array task gets: its runs, the store, the checkpoint policy and the device (cuda, required, when
    the profile asks for GPUs: a task that lands without one fails its runs instead of training on the CPU)."""
    gpu = wants_gpu(prof)
    return {"configs": configs, "store": str(store.root), "checkpoint_every": prof["checkpoint_every"],
            "checkpoint_every_steps": prof["checkpoint_every_steps"],
            "checkpoint_every_min": prof["checkpoint_every_min"],
            "device": prof["device"] or ("cuda" if gpu else None),
            "require_cuda": gpu and not str(prof["device"] or "").startswith("cpu")}
