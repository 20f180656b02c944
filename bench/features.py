"""Cached image features of the frozen image encoder.

Every image is encoded once per (backbone, transform, view) and stored on disk.  Entries are keyed by everything
that affects them: the backbone identity (architecture + weights digest), the transform, the view index, and the
image itself (path relative to its dataset root, file size and modification time).  Augmented training views are
deterministic: view ``v`` of an image is drawn with an RNG seeded from (image, v), so one cache serves every method,
seed and shot count that uses the image, and any process computes the same view.

Banks are grouped per (dataset root, view) in one ``.pt`` file each and updated under a file lock with an atomic
replace, so concurrent array jobs extend them without corrupting them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from PIL import Image

from bench import log
from bench.errors import BenchError
from bench.fileio import atomic_open, file_lock
from bench.paths import cache_dir


def _digest(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def view_seed(relpath: str, view: int) -> int:
    return int(_digest(f"{relpath}|{view}", 15), 16)


class ImageList(torch.utils.data.Dataset):
    """Images of a dataset root by relative path -> (transformed tensor, error message or "")."""

    def __init__(self, root: Path, relpaths: list[str], transform, view: int | None):
        self.root, self.relpaths, self.transform, self.view = root, relpaths, transform, view

    def __len__(self):
        return len(self.relpaths)

    def __getitem__(self, i):
        path = self.root / self.relpaths[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as e:  # noqa: BLE001 - reported to the user as one line in the main process
            return torch.zeros(0), f"cannot decode image {path}: {type(e).__name__}: {e}".splitlines()[0]
        if self.view is None:
            return self.transform(img), ""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.relpaths[i], self.view))
            return self.transform(img), ""


def _collate(batch):
    for _, err in batch:
        if err:
            return None, err
    return torch.stack([x for x, _ in batch]), ""


def _load_bank(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        return {}
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a corrupt bank is only a cache: rebuild it
        log.info(f"feature cache {path} unreadable; recomputing")
        return {}
    return dict(zip(data["keys"], data["feats"]))


def _save_bank(path: Path, bank: dict[str, torch.Tensor]) -> None:
    keys = list(bank)
    feats = torch.stack([bank[k] for k in keys]) if keys else torch.zeros(0)
    with atomic_open(path) as fh:
        torch.save({"keys": keys, "feats": feats}, fh)


class FeatureCache:
    """``cache.get(dataset_root, relpaths, transform="eval"|"train", view=v)`` -> (N, D) float32 features."""

    def __init__(self, backbone, root: Path | None = None, batch_size: int = 128, workers: int | None = None):
        self.backbone = backbone
        self.root = Path(root) if root is not None else cache_dir() / "features"
        self.batch_size = batch_size
        cpus = os.cpu_count() or 1
        self.workers = workers if workers is not None else (0 if cpus <= 2 else min(8, cpus - 1))
        self.encoded = 0  # images encoded by this cache object (not loaded): for tests and perf reports
        self._memory: dict[Path, dict[str, torch.Tensor]] = {}

    def transform_key(self, transform: str) -> str:
        b = self.backbone
        return f"{transform}-{b.image_size}px-" + _digest(repr(b.eval_transform if transform == "eval" else b.train_transform), 8)

    def bank_path(self, dataset_root: Path, transform: str, view: int) -> Path:
        return (self.root / _digest(self.backbone.identity) / self.transform_key(transform)
                / f"{_digest(str(Path(dataset_root).resolve()))}-view{view}.pt")

    @staticmethod
    def _key(dataset_root: Path, rel: str) -> str:
        try:
            st = os.stat(dataset_root / rel)
        except OSError:
            raise BenchError(f"image not found: {dataset_root / rel}") from None
        return f"{rel}|{st.st_size}|{st.st_mtime_ns}"

    def get(self, dataset_root, relpaths: list[str], transform: str = "eval", view: int = 0) -> torch.Tensor:
        if transform not in ("eval", "train"):
            raise ValueError(f"transform must be 'eval' or 'train', not {transform!r}")
        dataset_root = Path(dataset_root)
        view = view if transform == "train" else 0
        path = self.bank_path(dataset_root, transform, view)
        keys = [self._key(dataset_root, r) for r in relpaths]
        bank = self._memory.get(path)
        if bank is None:
            bank = _load_bank(path)
        missing = sorted({r for r, k in zip(relpaths, keys) if k not in bank})
        if missing:
            new = self._encode(dataset_root, missing, transform, view)
            with file_lock(path):
                bank = _load_bank(path)  # another job may have added entries meanwhile
                bank.update({self._key(dataset_root, r): f for r, f in zip(missing, new)})
                _save_bank(path, bank)
        self._memory[path] = bank
        return torch.stack([bank[k] for k in keys]) if keys else torch.zeros(0, self.backbone.embed_dim)

    def _encode(self, dataset_root: Path, relpaths: list[str], transform: str, view: int) -> torch.Tensor:
        b = self.backbone
        tf = b.eval_transform if transform == "eval" else b.train_transform
        ds = ImageList(dataset_root, relpaths, tf, view if transform == "train" else None)
        loader = torch.utils.data.DataLoader(ds, batch_size=self.batch_size, num_workers=self.workers,
                                             collate_fn=_collate)
        out = []
        desc = f"encode {dataset_root.name} ({transform}" + (f" view {view})" if transform == "train" else ")")
        for images, err in log.progress(loader, desc=desc, total=len(loader)):
            if err:
                raise BenchError(err)
            out.append(b.encode_image(images.to(b.device)).float().cpu())
        self.encoded += len(relpaths)
        return torch.cat(out)
