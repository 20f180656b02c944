"""SLURM profiles: defaults <- a YAML file (``slurm/<cluster>.yaml``) <- ``--slurm KEY=VALUE``; validation, SLURM
time formats, and the submitit executor parameters a profile asks for."""

from __future__ import annotations

import math
import re
from pathlib import Path

from bench.errors import BenchError

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
    "pack_max_cost": (20000, "a run is short when its method's estimated cost is at most this (epochs*shots*classes "
                             "by default; 0 for zero-shot and the linear probe)"),
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
    try:
        prof["pack_max_cost"] = float(prof["pack_max_cost"] or 0)
    except (TypeError, ValueError):
        prof["pack_max_cost"] = -1.0
    if not prof["pack_max_cost"] >= 0:
        raise BenchError(f"SLURM profile key pack_max_cost must be a number >= 0, not {prof['pack_max_cost']!r}")
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


def wants_gpu(prof: dict) -> bool:
    """Whether the profile asks SLURM for GPUs (``gpus`` > 0, or a ``gres`` naming gpu)."""
    return bool(prof.get("gpus")) or "gpu" in str(prof.get("gres") or "").lower()
