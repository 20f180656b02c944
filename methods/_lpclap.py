"""Shared helper of ``lp_pp``, ``clap`` and ``zs_lp``: class-row matching by name."""

from __future__ import annotations

import torch

from bench.api import Unsupported



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
