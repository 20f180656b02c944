"""Training-state checkpoints in files: :class:`FileCheckpointer`, where a run's checkpoint lives, and the local
launcher's checkpoint policy.

Used by both launchers, so that an interrupted run resumes where it stopped: SLURM array tasks (policy from the
SLURM profile) and local ``bench run`` (policy from the environment, :func:`local_policy`; a run killed with
``kill -9`` resumes on the next ``bench run``).  The training loop (:func:`bench.engine.loop.fit`) decides when to
save and what a state holds; this module only stores it safely.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench import log
from bench.errors import BenchError
from bench.fileio import atomic_open
from bench.store import Store


def checkpoint_path(store: Store, config: dict) -> Path:
    """``<store>/<method>/<dataset>/<tag>-<hash>.ckpt.pt``: beside the run's result file."""
    return store.path_for(config).with_suffix(".ckpt.pt")


class FileCheckpointer:
    """Training state in one file, replaced atomically (temporary file + fsync + ``os.replace``); also saved within
    epochs every ``every_steps`` steps / ``every_s`` seconds (0: not). ``quiet``: routine saves are logged at debug
    level only (a local grid's output; a SLURM task's log names every save)."""

    def __init__(self, path: Path | str, every_steps: int = 0, every_s: float = 0.0, quiet: bool = False):
        self.path, self.quiet = Path(path), quiet
        self.every_steps = int(every_steps or 0)
        self.every_s = float(every_s or 0)

    def load(self) -> dict | None:
        import torch

        if not self.path.exists():
            return None
        try:
            # weights_only: a checkpoint holds tensors, numbers, strings, lists and dicts only; a crafted file
            # cannot run code (torch's restricted unpickler refuses every other global).
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a checkpoint only saves time: start the run over
            log.info(f"checkpoint {self.path} unreadable ({type(e).__name__}: {e}); starting the run from epoch 0")
            self.clear()
            return None

    def save(self, state: dict) -> None:
        import torch

        with atomic_open(self.path) as fh:
            torch.save(state, fh)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


LOCAL_POLICY = {  # environment variable -> (default, what it sets) for local runs
    "BENCH_CHECKPOINT_EVERY": (10, "epochs between training-state checkpoints (0: none by epoch)"),
    "BENCH_CHECKPOINT_EVERY_STEPS": (0, "training steps between checkpoints within epochs (0: not by steps)"),
    "BENCH_CHECKPOINT_EVERY_MIN": (30, "minutes between checkpoints within epochs (0: not by time)"),
}


def local_policy() -> dict:
    """The local launcher's checkpoint policy: {"every": epochs, "every_steps": steps, "every_s": seconds}, from
    ``BENCH_CHECKPOINT_EVERY`` (default 10), ``BENCH_CHECKPOINT_EVERY_STEPS`` (0) and ``BENCH_CHECKPOINT_EVERY_MIN``
    (30), the SLURM profile's defaults. The end of training is always saved."""
    values = {}
    for name, (default, what) in LOCAL_POLICY.items():
        raw = os.environ.get(name, "").strip()
        try:
            values[name] = float(raw) if raw else float(default)
            if values[name] < 0 or values[name] != values[name]:
                raise ValueError
        except ValueError:
            raise BenchError(f"{name}={raw!r}: must be a number >= 0 ({what})") from None
    return {"every": int(values["BENCH_CHECKPOINT_EVERY"]), "every_steps": int(values["BENCH_CHECKPOINT_EVERY_STEPS"]),
            "every_s": 60.0 * values["BENCH_CHECKPOINT_EVERY_MIN"]}
