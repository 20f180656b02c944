"""Training-state checkpoints in files: :class:`FileCheckpointer` and where a run's checkpoint lives.

Used by every launcher that resumes interrupted runs (SLURM array tasks); not SLURM-specific.  The training loop
(:func:`bench.engine.loop.fit`) decides when to save and what a state holds; this module only stores it safely.
"""

from __future__ import annotations

from pathlib import Path

from bench import log
from bench.fileio import atomic_open
from bench.store import Store


def checkpoint_path(store: Store, config: dict) -> Path:
    """``<store>/<method>/<dataset>/<tag>-<hash>.ckpt.pt``: beside the run's result file."""
    return store.path_for(config).with_suffix(".ckpt.pt")


class FileCheckpointer:
    """Training state in one file, replaced atomically (temporary file + fsync + ``os.replace``); also saved within
    epochs every ``every_steps`` steps / ``every_s`` seconds (0: not)."""

    def __init__(self, path: Path | str, every_steps: int = 0, every_s: float = 0.0):
        self.path = Path(path)
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
