"""Decoding image files for the encoder: the one dataset of the suite, and DataLoaders safe under preemption.

:class:`ImageFiles` decodes image ``i`` (a path relative to a dataset root) once per item and hands it to
:meth:`ImageFiles.draw`, which turns it into one or more tensors (the eval transform, seeded augmentations...).
Its users differ only in ``draw``: the feature cache (:mod:`bench.features`, several views per decode, seeded by
``view_seed``) and the image stream (:mod:`bench.engine.imagestream`, one view, seeded by ``augmentation_seed``).

A file that cannot be decoded is not raised in the worker: its item carries a one-line message that
:func:`collate` passes on and the main process raises as a :class:`~bench.errors.BenchError`.

DataLoader worker processes ignore the preemption and termination signals (:class:`SignalSafeLoader`): forked
from the main process, they would otherwise run its handlers too (a SLURM preemption handled twice); the main
process handles the signal and stops its workers.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from PIL import Image


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (e.g. a SLURM allocation), not the whole node."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ImageFiles(torch.utils.data.Dataset):
    """Images by path relative to ``root``. Key ``i`` or ``(i, spec)`` -> ``(x, i, error, decode_s, draw_s)``:
    image i decoded once, ``x`` the tensors of :meth:`draw` (image, relpath, spec) stacked (k, C, H, W); on a
    file that cannot be decoded ``x`` is None and ``error`` one line naming it. ``decode_s`` / ``draw_s``: CPU time
    of this worker spent decoding and drawing (meaningful on a busy machine too)."""

    def __init__(self, root, relpaths: list[str]):
        self.root, self.relpaths = Path(root), list(relpaths)

    def __len__(self):
        return len(self.relpaths)

    def draw(self, img, relpath: str, spec) -> list[torch.Tensor]:
        """The tensors made of one decoded (RGB PIL) image; ``spec`` is the second part of the key (or None)."""
        raise NotImplementedError

    def __getitem__(self, key):
        i, spec = key if isinstance(key, tuple) else (key, None)
        path = self.root / self.relpaths[i]
        t0 = time.thread_time()
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as e:  # noqa: BLE001 - reported to the user as one line by the main process
            return None, i, f"cannot decode image {path}: {type(e).__name__}: {e}".splitlines()[0], 0.0, 0.0
        t1 = time.thread_time()
        x = torch.stack(self.draw(img, self.relpaths[i], spec))
        return x, i, "", t1 - t0, time.thread_time() - t1


def collate(batch):
    """Items of :class:`ImageFiles` -> ``(x, indices, error, decode_s, draw_s)``: their tensors concatenated along
    the first dimension; on any error ``(None, None, error, 0, 0)``."""
    for _, _, err, _, _ in batch:
        if err:
            return None, None, err, 0.0, 0.0
    return (torch.cat([x for x, *_ in batch]), [i for _, i, *_ in batch], "",
            sum(b[3] for b in batch), sum(b[4] for b in batch))


_WORKER_IGNORES = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGHUP)


def worker_init(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores SIGUSR1/SIGUSR2 (preemption), SIGTERM and SIGHUP, whose
    handlers it inherited from the main process, then unblocks them (:class:`SignalSafeLoader` forks it with them
    blocked); the main process handles them and stops its workers."""
    for sig in _WORKER_IGNORES:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_IGNORES)


class SignalSafeLoader(torch.utils.data.DataLoader):
    """A DataLoader whose worker processes never run the main process's signal handlers: the signals are blocked
    while the workers are forked (a signal then reaches the main process a moment later) and ignored in them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, worker_init_fn=worker_init, **kwargs)

    def _get_iterator(self):
        if self.num_workers == 0:
            return super()._get_iterator()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_IGNORES)
        try:
            return super()._get_iterator()  # forks the workers
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
