"""SLURM job arrays through submitit: profiles, packing, a checkpointable task, a job registry, queue states.

``bench run --launcher slurm --slurm-profile slurm/<cluster>.yaml`` calls :func:`launch_slurm`: the runs of the grid
without a complete result, and not already queued or running, are grouped into array tasks (short runs packed
several per task, long ones alone) and submitted as one ``sbatch --array`` per call via submitit's
``AutoExecutor.map_array``; the command returns at once, printing the job ids and the log folder.

Each array task runs :class:`RunTask` (a ``submitit.helpers.Checkpointable``): its runs one after the other through
:func:`bench.engine.runner.execute` with a :class:`FileCheckpointer` (training state in ``<result>.ckpt.pt`` beside the
result file, written every ``checkpoint_every`` epochs, every ``checkpoint_every_steps`` steps /
``checkpoint_every_min`` minutes within epochs, and at the end of training; removed once the result is written).
On preemption or time limit SLURM sends USR2; while a run trains, the signal is held until the current step ends
and the training state is saved (:data:`bench.engine.loop.STOP`), then submitit calls ``RunTask.checkpoint`` and
requeues the task; the requeued task skips its completed runs (the store has them) and resumes the interrupted
one, mid-epoch if need be, from its checkpoint.

Job ids are recorded per run hash in ``<store>.slurm/registry.json`` (next to the store), so :func:`run_states`
can tell done / pending / running / failed / missing for ``bench status``, with the failing task's log tail.
"""

from __future__ import annotations

import getpass
import math
import os
import re
import shutil
import subprocess
import time
import traceback
from pathlib import Path

from bench import log
from bench.errors import BenchError
from bench.fileio import file_lock
from bench.store import Store, config_hash, write_json_atomic
from bench.engine.checkpoint import FileCheckpointer, checkpoint_path  # noqa: F401 - moved; importers use it here

try:  # submitit is a dependency; the import is guarded so that `bench` works in an environment without it
    import submitit
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover
    submitit = None
    Checkpointable = object

# ----------------------------------------------------------------------------------------------------------------------
# Profiles

#: Every profile key with its default and meaning (slurm/README.md documents the same table).
PROFILE_KEYS: dict[str, tuple[object, str]] = {
    "partition": (None, "--partition"),
    "account": (None, "--account"),
    "qos": (None, "--qos"),
    "constraint": (None, "--constraint (node features, e.g. a100|h100)"),
    "exclude": (None, "--exclude (nodes to avoid)"),
    "gpus": (0, "GPUs per task (--gpus-per-node); 0 for CPU runs"),
    "gres": (None, "--gres instead of --gpus-per-node (e.g. gpu:1, gpu:a100:1) for clusters that reject the latter"),
    "cpus": (2, "--cpus-per-task"),
    "mem_gb": (None, "--mem in GB per task (None: the partition's default)"),
    "time": (60, "time limit per array task: minutes, or H:MM:SS, or D-HH:MM:SS"),
    "array_parallelism": (64, "at most this many tasks of an array run at once (--array=0-N%P)"),
    "max_array_size": (1000, "split submissions into arrays of at most this many tasks (the cluster's MaxArraySize)"),
    "checkpoint_every": (10, "epochs between training-state checkpoints (0: none by epoch; the end of training and "
                             "a preemption always save)"),
    "checkpoint_every_steps": (0, "also save within epochs every this many training steps (0: not by steps)"),
    "checkpoint_every_min": (30, "also save within epochs every this many minutes (0: not by time)"),
    "pack_size": (16, "at most this many short runs per array task (1: one run per task)"),
    "pack_max_cost": (20000, "a run is short when it does not train, is a linear probe, or epochs*shots*classes is "
                             "at most this"),
    "signal_delay_s": (120, "SLURM sends USR2 this long before the time limit (--signal=USR2@N) to checkpoint"),
    "max_timeouts": (3, "requeues after hitting the time limit (preemptions are always requeued)"),
    "job_name": ("bench", "--job-name"),
    "setup": ([], "shell lines run in the job before python (module load ..., source venv/bin/activate)"),
    "env": ({}, "environment variables exported in the job (the submitting shell's are exported too)"),
    "sbatch": ({}, "extra sbatch flags as {flag: value} without dashes, e.g. {mail-type: END, reservation: x}"),
    "srun_args": ([], "extra arguments of the srun line that starts the task"),
    "python": (None, "interpreter the jobs run (default: the one running bench, sys.executable)"),
    "folder": (None, "log folder root (default: <store>.slurm next to the results store)"),
    "device": (None, "device for the runs (default: cuda when the profile asks for GPUs, else cuda when the job "
                     "sees a GPU, else cpu)"),
}


def profile_path(name: str) -> Path:
    """A profile file: the path as given, or ``slurm/<name>[.yaml]`` in the repository."""
    from bench.paths import resource_dir

    candidates = [Path(name).expanduser()]
    base = resource_dir("slurm")
    if not Path(name).is_absolute():
        candidates += [base / name, base / f"{name}.yaml", base / Path(name).name]
    for c in candidates:
        if c.is_file():
            return c
    known = sorted(p.stem for p in base.glob("*.yaml"))
    raise BenchError(f"SLURM profile not found: {name} (looked for {candidates[0]}; profiles in slurm/: "
                     f"{', '.join(known) or 'none'})")


def load_profile(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """Profile defaults <- YAML file <- ``--slurm KEY=VALUE`` overrides (``sbatch.mail-type=END`` sets a dict entry)."""
    import yaml

    prof = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
            for k, (v, _) in PROFILE_KEYS.items()}
    if path:
        p = profile_path(str(path))
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise BenchError(f"SLURM profile {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise BenchError(f"SLURM profile {p} must be a mapping of keys to values")
        _check_keys(data, f"in {p}")
        prof.update(data)
    from bench.protocols import parse_value, split_pair

    for pair in overrides or []:
        key, value = split_pair(pair, "--slurm", "partition=gpu")
        value = value.strip()
        top, _, sub = key.partition(".")
        _check_keys({top: None}, "in --slurm")
        if sub:
            if not isinstance(prof.get(top), dict):
                raise BenchError(f"bad --slurm {pair!r}: {top} is not a mapping")
            prof[top] = {**prof[top], sub: parse_value(value, scalar=False)}
        elif top in ("setup", "srun_args") and not value.startswith("["):
            prof[top] = [*prof[top], value]
        else:
            prof[top] = parse_value(value, scalar=False)
    return _validate(prof)


def _check_keys(data: dict, where: str) -> None:
    unknown = sorted(set(data) - set(PROFILE_KEYS))
    if unknown:
        raise BenchError(f"unknown SLURM profile key(s) {', '.join(unknown)} {where}; known: {', '.join(PROFILE_KEYS)}")


def parse_time_min(value) -> int:
    """SLURM time formats (minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S) -> whole minutes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return max(1, math.ceil(value))
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise BenchError(f"bad SLURM time {value!r}: use minutes, H:MM:SS or D-HH:MM:SS")
    days, a, b, c = m.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, s = int(a), int(b or 0), int(c or 0)
        seconds = int(days) * 86400 + h * 3600 + mi * 60 + s
    elif c is not None:  # H:M:S
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # M:S
        seconds = int(a) * 60 + int(b)
    else:
        seconds = int(a) * 60
    return max(1, math.ceil(seconds / 60))


def _validate(prof: dict) -> dict:
    def int_key(k, lo):
        try:
            v = int(prof[k])
        except (TypeError, ValueError):
            raise BenchError(f"SLURM profile key {k} must be an integer, not {prof[k]!r}") from None
        if v < lo:
            raise BenchError(f"SLURM profile key {k} must be >= {lo}, not {v}")
        prof[k] = v

    for k, lo in (("gpus", 0), ("cpus", 1), ("array_parallelism", 1), ("max_array_size", 1), ("checkpoint_every", 0),
                  ("checkpoint_every_steps", 0), ("pack_size", 1), ("signal_delay_s", 0), ("max_timeouts", 0)):
        int_key(k, lo)
    try:
        prof["checkpoint_every_min"] = float(prof["checkpoint_every_min"] or 0)
    except (TypeError, ValueError):
        raise BenchError(f"SLURM profile key checkpoint_every_min must be a number of minutes, not "
                         f"{prof['checkpoint_every_min']!r}") from None
    prof["pack_max_cost"] = float(prof["pack_max_cost"] or 0)
    prof["time_min"] = parse_time_min(prof["time"])
    if prof["mem_gb"] is not None:
        prof["mem_gb"] = float(prof["mem_gb"])
    for k in ("setup", "srun_args"):
        v = prof[k] or []
        prof[k] = [str(x) for x in ([v] if isinstance(v, str) else v)]
    for k in ("env", "sbatch"):
        if not isinstance(prof[k] or {}, dict):
            raise BenchError(f"SLURM profile key {k} must be a mapping, not {prof[k]!r}")
        prof[k] = dict(prof[k] or {})
    bad = [k for k in prof["env"] if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k))]
    if bad:
        raise BenchError(f"SLURM profile key env: bad variable name(s) {', '.join(map(str, bad))}")
    return prof


def _dquote(value) -> str:
    """Double-quoted for the job's shell, so that variables such as ``$USER`` expand there."""
    text = "" if value is None else str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'


def executor_parameters(prof: dict) -> dict:
    """Profile -> ``AutoExecutor.update_parameters`` keywords."""
    params = {
        "name": prof["job_name"],
        "timeout_min": prof["time_min"],
        "cpus_per_task": prof["cpus"],
        "nodes": 1,
        "tasks_per_node": 1,
        "slurm_array_parallelism": prof["array_parallelism"],
        "slurm_signal_delay_s": prof["signal_delay_s"],
    }
    if prof["gres"]:
        params["slurm_gres"] = str(prof["gres"])
    elif prof["gpus"]:
        params["gpus_per_node"] = prof["gpus"]
    if prof["mem_gb"] is not None:
        params["mem_gb"] = prof["mem_gb"]
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if prof[key]:
            params[f"slurm_{key}"] = str(prof[key])
    setup = [f"export {k}={_dquote(v)}" for k, v in prof["env"].items()] + prof["setup"]
    if setup:
        params["slurm_setup"] = setup
    if prof["sbatch"]:
        params["slurm_additional_parameters"] = {str(k).lstrip("-"): (True if v is None else v)
                                                 for k, v in prof["sbatch"].items()}
    if prof["srun_args"]:
        params["slurm_srun_args"] = prof["srun_args"]
    return params


# ----------------------------------------------------------------------------------------------------------------------
# Packing


def estimated_cost(config: dict) -> float:
    """A rough cost of a run: 0 for runs that do not train, else epochs * shots * classes."""
    from bench.data import get_spec
    from bench.registry import get_method

    cls = get_method(config["method"])
    if not cls.needs_training:
        return 0.0
    hp = config.get("hparams") or {}
    epochs = hp.get("epochs") or hp.get("max_epoch") or 1
    try:
        n_classes = get_spec(config["train"]["dataset"]).num_classes
    except BenchError:
        n_classes = 1000
    if config["train"].get("classes") in ("base", "new"):
        n_classes = math.ceil(n_classes / 2)
    return float(epochs) * max(int(config["train"].get("shots") or 1), 1) * n_classes


def is_short(config: dict, max_cost: float) -> bool:
    from bench.registry import get_method

    if not get_method(config["method"]).needs_training or config["method"] == "linear_probe":
        return True
    return estimated_cost(config) <= max_cost


def pack(configs: list[dict], pack_size: int, max_cost: float) -> list[list[dict]]:
    """Array tasks: long runs one per task (most expensive first), short runs packed ``pack_size`` per task, grouped
    by backbone and dataset so a task loads its backbone and features once."""
    short = [c for c in configs if pack_size > 1 and is_short(c, max_cost)]
    short_ids = {id(c) for c in short}
    long = sorted((c for c in configs if id(c) not in short_ids), key=estimated_cost, reverse=True)
    short.sort(key=lambda c: (c["backbone"]["arch"], str(c["backbone"].get("weights")), c["train"]["dataset"],
                              c["method"], c["train"]["shots"], c["train"]["seed"] or 0))
    tasks = [[c] for c in long]
    tasks += [short[i : i + pack_size] for i in range(0, len(short), pack_size)]
    return tasks


# ----------------------------------------------------------------------------------------------------------------------
# The job side: checkpointer and the checkpointable array task


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


def wants_gpu(prof: dict) -> bool:
    """Whether the profile asks SLURM for GPUs (``gpus`` > 0, or a ``gres`` naming gpu)."""
    return bool(prof.get("gpus")) or "gpu" in str(prof.get("gres") or "").lower()


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


# ----------------------------------------------------------------------------------------------------------------------
# Registry of submitted jobs (next to the store) and queue states


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


def _require(cmd: str) -> str:
    exe = shutil.which(cmd)
    if not exe:
        raise BenchError(f"`{cmd}` not found on PATH: run this on a SLURM login node (or start the test cluster with "
                         f"`bash slurm/cluster.sh start`)")
    return exe


def queue_states(job_ids: list[str] | None = None) -> dict[str, str]:
    """``{job_id: SLURM state}`` of this user's jobs in the queue, one entry per array task (``123_4``)."""
    _require("squeue")
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


# ----------------------------------------------------------------------------------------------------------------------
# Submission


def _register(store: Store, tasks: list[list[dict]], jobs: list, folder: Path, prof: dict) -> None:
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


def task_payload(configs: list[dict], store: Store, prof: dict) -> dict:
    """What one array task gets: its runs, the store, the checkpoint policy and the device (cuda, required, when
    the profile asks for GPUs: a task that lands without one fails its runs instead of training on the CPU)."""
    gpu = wants_gpu(prof)
    return {"configs": configs, "store": str(store.root), "checkpoint_every": prof["checkpoint_every"],
            "checkpoint_every_steps": prof["checkpoint_every_steps"],
            "checkpoint_every_min": prof["checkpoint_every_min"],
            "device": prof["device"] or ("cuda" if gpu else None),
            "require_cuda": gpu and not str(prof["device"] or "").startswith("cpu")}


def make_executor(folder: Path, prof: dict):
    if submitit is None:  # pragma: no cover
        raise BenchError("submitit is not installed: pip install submitit")
    _require("sbatch")
    kwargs = {"slurm_max_num_timeout": prof["max_timeouts"]}
    if prof["python"]:
        kwargs["slurm_python"] = str(prof["python"])
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", **kwargs)
    ex.update_parameters(**executor_parameters(prof))
    return ex


def submit(grid: list[dict], store: Store, prof: dict, out=print) -> dict:
    """Submit the runs of ``grid`` that have no complete result and no queued/running task; returns a summary."""
    from bench.launch import pending

    store = Store(store.root.expanduser().resolve())
    todo = pending(grid, store)
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
        _register(store, tasks[i : i + size], got, folder, prof)
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
