"""A bank's storage: immutable segment files of (keys, features) that name their bank and carry a checksum,
the removal of killed writers' temporary files, and a bank in memory."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Sequence

import torch

from bench.features.keys import FORMAT

STALE_TMP_S = 3600.0       # temporary files older than this belong to killed writers


# ---------------------------------------------------------------------------------------------------------------
# Segments: immutable files of (keys, features) with a checksum

def _checksum(keys: list[str], feats: torch.Tensor) -> str:
    h = hashlib.sha256("\n".join(keys).encode())
    h.update(feats.contiguous().numpy().tobytes() if feats.numel() else b"")
    return h.hexdigest()


def _segment_problem(data, bank: str) -> str:
    """Why a loaded segment cannot be trusted in the bank folder ``bank`` (relative to the cache root; '' if it can).
    A segment names the bank it was written for: one copied into another bank (another view, transform or model)
    would pass every other check with features of other images."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return "unknown format"
    if data.get("bank") != bank:
        return (f"written for another bank ({data['bank']})" if isinstance(data.get("bank"), str) else
                "without the bank it was written for (written before segments named it)")
    keys, feats = data.get("keys"), data.get("feats")
    if not isinstance(keys, list) or not isinstance(feats, torch.Tensor) or feats.dtype != torch.float32 \
            or feats.ndim != 2 or feats.shape[0] != len(keys):
        return "malformed"
    if data.get("checksum") != _checksum(keys, feats):
        return "checksum mismatch"
    if not torch.isfinite(feats).all():
        return "non-finite features"
    if len(keys) and bool((feats == 0).all(dim=1).any()):
        return "all-zero feature rows"
    return ""


def _clean_stale(folder: Path, now: float | None = None) -> None:
    """Remove temporary files of killed writers (``.<name>.*.tmp``) older than STALE_TMP_S."""
    now = now or time.time()
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for e in entries:
        if e.name.startswith(".") and e.name.endswith(".tmp"):
            try:
                if now - e.stat().st_mtime > STALE_TMP_S:
                    os.unlink(e.path)
            except FileNotFoundError:
                pass


class _Bank:
    """One bank in memory: key -> row of one (N, D) tensor."""

    def __init__(self, keys: list[str], feats: torch.Tensor):
        self.index: dict[str, int] = {}
        for i, k in enumerate(keys):
            self.index.setdefault(k, i)
        self.feats = feats

    @property
    def nbytes(self) -> int:
        return self.feats.numel() * 4 + 100 * len(self.index)

    def add(self, keys: list[str], feats: torch.Tensor) -> None:
        n = self.feats.shape[0]
        self.feats = torch.cat([self.feats, feats]) if n else feats
        for i, k in enumerate(keys):
            self.index.setdefault(k, n + i)

    def missing(self, keys: Sequence[str]) -> list[int]:
        return [i for i, k in enumerate(keys) if k not in self.index]

    def take(self, keys: Sequence[str]) -> torch.Tensor:
        return self.feats[torch.tensor([self.index[k] for k in keys], dtype=torch.long)]
