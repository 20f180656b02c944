"""Shared helpers of ``lp_pp``, ``clap`` and ``zs_lp``: ImageNet's template set, class-row matching by name, and a
seeded batch source over a pooled bank of augmented views (CLAP's 20 views per image as separate samples).
"""

from __future__ import annotations

from typing import Callable

import torch

from bench.api import Unsupported

# The 7 templates of CoOp's / Tip-Adapter's IMAGENET_TEMPLATES_SELECT (LP ``datasets/imagenet.py:178-184``,
# CL ``datasets/imagenet_templates.py``).
IMAGENET_TEMPLATES_SELECT = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def class_rows(known: list[str], names: list[str], what: str) -> torch.Tensor:
    """Row indices into ``known`` for ``names`` (the same list, or any subset, matched by name, a repeated name in
    order); :class:`Unsupported` in one line for a name ``known`` does not hold."""
    if list(names) == list(known):
        return torch.arange(len(known))
    where: dict[str, list[int]] = {}
    for i, n in enumerate(known):
        where.setdefault(n, []).append(i)
    used: dict[str, int] = {}
    rows = []
    for n in names:
        slots = where.get(n)
        if not slots:
            raise Unsupported(f"{what} has weights only for its {len(known)} training classes (or a subset of "
                              f"them); '{n}' is not one of them")
        k = used.get(n, 0)
        rows.append(slots[min(k, len(slots) - 1)])
        used[n] = k + 1
    return torch.tensor(rows, dtype=torch.long)


class FullBatch:
    """A :class:`bench.engine.loop.Batches` source of one step per epoch on the whole set, in its given order (LP++'s
    full-batch gradient descent, LP ``linear_probe_p2.py:127-135``): yields ``((features, labels), N)``; no RNG."""

    desc = None

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return 1

    def epoch(self, e: int, start: int, saver: Callable[[], object]):
        return iter([((self.features, self.labels), len(self.labels))][start:])

    def state(self, boundary: bool) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


class PooledBatches:
    """A :class:`bench.engine.loop.Batches` source over one bank of samples (all augmented views of all images,
    each a separate sample), as CLAP's trainer draws them (CL ``trainers/adapters.py:431-456``): every epoch the
    bank is reshuffled (a ``torch.Generator`` seeded with the run seed) and ``steps`` consecutive slices of
    ``batch_size`` are taken from the shuffled order; ``steps`` = Dassl's ``len(train_loader_x)`` over the
    ``n_images`` images, i.e. ``n_images // batch_size`` when ``n_images >= batch_size``, else 1.
    Yields ``((features, labels), n)``."""

    desc = None

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, n_images: int, batch_size: int,
                 seed: int | None):
        self.features, self.labels = features, labels
        self.batch_size = int(batch_size)
        self.steps = int(n_images) // self.batch_size if int(n_images) >= self.batch_size else 1
        self.gen = torch.Generator().manual_seed(int(seed or 0))
        self.epoch_start = self.gen.get_state()

    def __len__(self) -> int:
        return self.steps

    def epoch(self, e: int, start: int, saver: Callable[[], object]):
        self.epoch_start = self.gen.get_state()
        order = torch.randperm(len(self.labels), generator=self.gen).to(self.labels.device)
        b = self.batch_size
        slices = [order[i * b:(i + 1) * b] for i in range(self.steps)]
        return (((self.features[idx], self.labels[idx]), len(idx)) for idx in slices[start:])

    def state(self, boundary: bool) -> dict:
        return {"generator": self.gen.get_state() if boundary else self.epoch_start}

    def load_state(self, state: dict) -> None:
        self.gen.set_state(state["generator"])
