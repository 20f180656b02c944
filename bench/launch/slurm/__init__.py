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

Modules: :mod:`~bench.launch.slurm.profile` (profiles and executor parameters), :mod:`~bench.launch.slurm.packing`
(runs into array tasks), :mod:`~bench.launch.slurm.task` (the array task, preemption and requeue),
:mod:`~bench.launch.slurm.queue` (the job registry and queue states), :mod:`~bench.launch.slurm.submit` (submission
and status details).
"""

from bench.launch.slurm.packing import estimated_cost, is_short, pack
from bench.launch.slurm.profile import (PROFILE_KEYS, executor_parameters, load_profile, parse_time_min, profile_path,
                                        wants_gpu)
from bench.launch.slurm.queue import (ENDED_STATES, PENDING_STATES, _expand_ids, load_registry, log_tail, queue_kind,
                                      queue_states, registry_path, run_states, slurm_dir)
from bench.launch.slurm.submit import launch_slurm, make_executor, print_status_details, submit
from bench.launch.slurm.task import FileCheckpointer, RunsFailed, RunTask, checkpoint_path, task_payload

__all__ = ["PROFILE_KEYS", "ENDED_STATES", "PENDING_STATES", "FileCheckpointer", "RunTask", "RunsFailed",
           "checkpoint_path", "estimated_cost", "executor_parameters", "is_short", "launch_slurm", "load_profile",
           "load_registry", "log_tail", "make_executor", "pack", "parse_time_min", "print_status_details",
           "profile_path", "queue_kind", "queue_states", "registry_path", "run_states", "slurm_dir", "submit",
           "task_payload", "wants_gpu"]
