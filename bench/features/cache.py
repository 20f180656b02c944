"""The feature cache (:class:`FeatureCache`) and the augmented training views of one run (:class:`TrainViews`)."""

from __future__ import annotations

import atexit
import json
import math
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch

from bench import claims, log
from bench.errors import BenchError
from bench.data.images import SignalSafeLoader, collate
from bench.features.decode import VIEWS_PER_ITEM, _split, _Views
from bench.features.keys import FORMAT, _digest, default_workers, numerics_key, transform_key
from bench.features.segments import _Bank, _checksum, _clean_stale, _segment_problem
from bench.fileio import atomic_open
from bench.paths import cache_dir


# ---------------------------------------------------------------------------------------------------------------
# The cache

class FeatureCache:
    """``cache.get(root, relpaths, "eval")`` / ``cache.get(root, relpaths, "train", view=v, seed=s)`` -> (N, D)
    float32 features; ``cache.views(root, relpaths, seed, n_views)`` -> :class:`TrainViews`.

    ``stats`` counts rows served from the cache (``hits``), rows encoded (``encoded``), files written and the
    seconds spent decoding and augmenting (CPU time summed over workers), encoding, writing and filling (wall).
    """

    def __init__(self, backbone, root: Path | None = None, batch_size: int = 128, workers: int | None = None,
                 memory_mb: float | None = None, flush_mb: float = 512.0):
        self.backbone = backbone
        self.root = Path(root) if root is not None else cache_dir() / "features"
        self.batch_size = batch_size
        self.workers = default_workers(backbone.device) if workers is None else workers
        if memory_mb is None:
            memory_mb = float(os.environ.get("BENCH_FEATURE_MEMORY_MB", 2048))
        self.memory_bytes = int(memory_mb * 2**20)
        self.flush_bytes = int(flush_mb * 2**20)
        self.stats = {"hits": 0, "encoded": 0, "files_written": 0, "decode_s": 0.0, "augment_s": 0.0,
                      "encode_s": 0.0, "write_s": 0.0, "read_s": 0.0, "fill_s": 0.0}
        self._banks: OrderedDict[Path, _Bank] = OrderedDict()
        self._base: Path | None = None
        stats_file = os.environ.get("BENCH_FEATURE_STATS")
        if stats_file:  # perf / tests: each process appends its counts at exit
            atexit.register(self._dump_stats, stats_file)

    @property
    def encoded(self) -> int:
        return self.stats["encoded"]

    def _dump_stats(self, path: str) -> None:
        with open(path, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), **self.stats}) + "\n")

    # --- keys ----------------------------------------------------------------------------------------------

    def base(self) -> Path:
        if self._base is None:
            self._base = self.root / _digest(self.backbone.identity) / numerics_key(self.backbone)
        return self._base

    def transform_key(self, transform: str, augmentation: dict | None = None) -> str:
        """Folder of a transform, keyed by its description: methods declaring the same augmentation share it."""
        b = self.backbone
        return transform_key(transform, b.eval_transform if transform == "eval" else b.train_transform_for(augmentation),
                             b.image_size)

    def bank_dir(self, dataset_root, transform: str, view: int | None = None, seed: int | None = None,
                 augmentation: dict | None = None) -> Path:
        name = "eval" if transform == "eval" else f"seed{int(seed or 0)}-view{int(view)}"
        return (self.base() / self.transform_key(transform, augmentation)
                / _digest(str(Path(dataset_root).resolve())) / name)

    @staticmethod
    def image_keys(dataset_root, relpaths: Sequence[str]) -> list[str]:
        keys = []
        for rel in relpaths:
            try:
                st = os.stat(os.path.join(dataset_root, rel))
            except OSError:
                raise BenchError(f"image not found: {Path(dataset_root) / rel}") from None
            keys.append(f"{rel}|{st.st_size}|{st.st_mtime_ns}")
        return keys

    # --- public --------------------------------------------------------------------------------------------

    def get(self, dataset_root, relpaths: list[str], transform: str = "eval", view: int = 0,
            seed: int | None = 0, augmentation: dict | None = None) -> torch.Tensor:
        if transform not in ("eval", "train"):
            raise ValueError(f"transform must be 'eval' or 'train', not {transform!r}")
        root = Path(dataset_root)
        keys = self.image_keys(root, relpaths)
        target = (None, self.bank_dir(root, "eval")) if transform == "eval" else \
            (int(view), self.bank_dir(root, "train", view, seed, augmentation))
        return self._serve(root, relpaths, keys, [target], target, seed, augmentation)

    def views(self, dataset_root, relpaths: list[str], seed: int | None, n_views: int,
              augmentation: dict | None = None) -> "TrainViews":
        """The augmented training views of a run (``augmentation``: the method's, None for CoOp's)."""
        return TrainViews(self, Path(dataset_root), list(relpaths), seed, int(n_views), augmentation)

    # --- banks in memory -----------------------------------------------------------------------------------

    def _bank(self, folder: Path, reload: bool = False) -> _Bank:
        if not reload and folder in self._banks:
            self._banks.move_to_end(folder)
            return self._banks[folder]
        bank = self._read(folder)
        self._banks.pop(folder, None)
        self._banks[folder] = bank
        total = sum(b.nbytes for b in self._banks.values())
        while total > self.memory_bytes and len(self._banks) > 1:
            _, old = self._banks.popitem(last=False)
            total -= old.nbytes
        return bank

    def _bank_name(self, folder: Path) -> str:
        """A bank's identity, written into each of its segments: its folder relative to the cache root (the
        backbone, numerics, transform, dataset and view keys)."""
        return Path(folder).relative_to(self.root).as_posix()

    def _read(self, folder: Path) -> _Bank:
        t0 = time.perf_counter()
        _clean_stale(folder)
        keys, feats = [], []
        for attempt in range(2):
            try:
                names = sorted(n for n in os.listdir(folder) if n.endswith(".pt") and not n.startswith("."))
            except FileNotFoundError:
                names = []
            keys, feats, vanished = [], [], False
            for name in names:
                path = folder / name
                try:
                    data = torch.load(path, map_location="cpu", weights_only=True)
                except FileNotFoundError:  # merged away by another process meanwhile: list again
                    vanished = True
                    continue
                except Exception as e:  # noqa: BLE001 - a cache file: drop it and recompute
                    data, problem = None, f"unreadable ({type(e).__name__})"
                else:
                    problem = _segment_problem(data, self._bank_name(folder))
                if problem:
                    log.info(f"feature cache segment {path} {problem}: removed, its features will be recomputed")
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                    continue
                keys += data["keys"]
                feats.append(data["feats"])
            if not vanished:
                break
        self.stats["read_s"] += time.perf_counter() - t0
        dim = self.backbone.embed_dim
        return _Bank(keys, torch.cat(feats) if feats else torch.zeros(0, dim))

    # --- serving and filling -------------------------------------------------------------------------------

    def _serve(self, root: Path, relpaths, keys, targets, want, seed, augmentation=None) -> torch.Tensor:
        """Features of ``want`` (a target); on any miss there, fill every target's missing rows first."""
        _, folder = want
        bank = self._bank(folder)
        miss = bank.missing(keys)
        self.stats["hits"] += len(keys) - len(miss)
        if miss:
            self._fill(root, relpaths, keys, targets, seed, augmentation)
            bank = self._bank(folder)
        if not keys:
            return torch.zeros(0, self.backbone.embed_dim)
        return bank.take(keys)

    def _fill(self, root: Path, relpaths, keys, targets, seed, augmentation=None) -> None:
        waiting = False
        while True:
            todo = {}
            for view, folder in targets:
                bank = self._bank(folder, reload=True)  # see what other processes added
                miss = bank.missing(keys)
                if miss:
                    todo[(view, folder)] = miss
            if not todo:
                return
            spec = sorted(f"{folder}|{keys[i]}" for (_, folder), miss in todo.items() for i in miss)
            claim = self._claim(_digest("\n".join(spec), 32))
            if claim is None:  # another process is encoding exactly this: wait for it, then look again
                if not waiting:
                    log.info("feature cache: another process is encoding these images; waiting for it")
                    waiting = True
                time.sleep(0.5)
                continue
            with claim:  # refreshed by its heartbeat while encoding; released however encoding ends
                self._encode(root, relpaths, keys, todo, seed, augmentation)
            return

    def _claim(self, name: str) -> "claims.Claim | None":
        """An exclusive claim (:mod:`bench.claims`) on encoding one missing set; None while another live process
        holds it (a killed process's claim is taken over at once, another host's once it is stale)."""
        return claims.acquire(self.base() / "claims" / f"{name}.claim", what="feature cache")

    def _encode(self, root: Path, relpaths, keys, todo: dict, seed, augmentation=None) -> None:
        """Decode each image with a missing row once, draw its missing views, encode in batches, write banks."""
        b = self.backbone
        t_fill = time.perf_counter()
        per_image: dict[int, list] = {}
        for (view, folder), miss in todo.items():
            for i in miss:
                per_image.setdefault(i, []).append((view, folder))
        n_views = max(len(v) for v in per_image.values())
        chunk = math.ceil(n_views / math.ceil(n_views / VIEWS_PER_ITEM))
        jobs, job_targets = [], []
        for i in sorted(per_image):
            tl = per_image[i]
            for s in range(0, len(tl), chunk):
                part = tl[s:s + chunk]
                jobs.append((relpaths[i], tuple(v for v, _ in part)))
                job_targets.append((i, [f for _, f in part]))
        sampler, cur, rows = [], [], 0
        for j, (_, vs) in enumerate(jobs):
            if cur and rows + len(vs) > self.batch_size:
                sampler.append(cur)
                cur, rows = [], 0
            cur.append(j)
            rows += len(vs)
        sampler.append(cur)
        total = sum(len(vs) for _, vs in jobs)
        workers = self.workers if total > self.batch_size else 0  # a handful of images: no worker start-up
        cuda = torch.device(b.device).type == "cuda"
        train_tf = b.train_transform_for(augmentation)
        split = _split(b.eval_transform), _split(train_tf)
        norm = None
        if split[0] and split[1] and all(torch.equal(split[0][k], split[1][k]) for k in (1, 2)):
            norm = split[0][1].to(b.device), split[0][2].to(b.device)
        ds = _Views(root, [rel for rel, _ in jobs], b.eval_transform, train_tf, seed,
                    split=norm is not None)
        loader = SignalSafeLoader(ds, batch_sampler=[[(j, jobs[j][1]) for j in js] for js in sampler],
                                  num_workers=workers, collate_fn=collate, pin_memory=cuda, persistent_workers=False,
                                  prefetch_factor=4 if workers else None)
        first = next(iter(todo))
        desc = f"encode {root.name} " + ("(eval)" if first[0] is None else
                                         f"(train, seed {seed}, {len(todo)} views)")
        chunks: list[torch.Tensor] = []
        rows: list[tuple[Path, str]] = []  # (bank folder, image key) of each encoded row, in order
        buffered = 0
        for x, idx, err, dec, aug in log.progress(loader, desc=desc, total=len(sampler)):
            if err:
                raise BenchError(err)
            self.stats["decode_s"] += dec
            self.stats["augment_s"] += aug
            t0 = time.perf_counter()
            if norm is not None:  # ToTensor + Normalize of the whole batch, as the transform does per image
                x = x.to(b.device, non_blocking=True).float()
                x.div_(255).sub_(norm[0]).div_(norm[1])
            f = b.encode_image(x).cpu()
            self.stats["encode_s"] += time.perf_counter() - t0
            for j in idx:
                i, folders = job_targets[j]
                rows.extend((folder, keys[i]) for folder in folders)
            chunks.append(f)
            self.stats["encoded"] += f.shape[0]
            buffered += f.numel() * 4
            if buffered > self.flush_bytes:
                self._flush(chunks, rows)
                chunks, rows, buffered = [], [], 0
        self._flush(chunks, rows)
        self.stats["fill_s"] += time.perf_counter() - t_fill

    def _flush(self, chunks: list[torch.Tensor], rows: list[tuple[Path, str]]) -> None:
        """Write the encoded rows: one segment per bank."""
        if not rows:
            return
        t0 = time.perf_counter()
        feats_all = torch.cat(chunks)
        by_folder: dict[Path, list[int]] = {}
        for r, (folder, _) in enumerate(rows):
            by_folder.setdefault(folder, []).append(r)
        for folder, idx in by_folder.items():
            keys = [rows[r][1] for r in idx]
            feats = feats_all[torch.tensor(idx, dtype=torch.long)]
            self._write_segment(folder, keys, feats)
            if folder in self._banks:
                self._banks[folder].add(keys, feats)
        self.stats["write_s"] += time.perf_counter() - t0

    def _write_segment(self, folder: Path, keys: list[str], feats: torch.Tensor) -> None:
        feats = feats.contiguous()
        if len(keys) and bool((feats == 0).all(dim=1).any()):
            raise BenchError(f"the image encoder returned all-zero features (writing {folder}): not caching them")
        data = {"format": FORMAT, "bank": self._bank_name(folder), "keys": keys, "feats": feats,
                "checksum": _checksum(keys, feats)}
        with atomic_open(folder / f"{_digest(chr(10).join(keys), 24)}.pt") as fh:
            torch.save(data, fh)
        self.stats["files_written"] += 1


class TrainViews:
    """``views(v)`` -> (N, D) features of augmented view ``v % n_views`` of a training set in a run with seed
    ``seed``. The first call that misses encodes every missing view of the set in one pass (each image decoded
    once); a method that never calls it encodes nothing."""

    def __init__(self, cache: FeatureCache, root: Path, relpaths: list[str], seed, n_views: int,
                 augmentation: dict | None = None):
        if n_views < 1:
            raise BenchError(f"n_views must be >= 1, not {n_views}")
        self.cache, self.root, self.relpaths, self.seed, self.n_views = cache, root, relpaths, seed, n_views
        self.augmentation = augmentation
        self._keys: list[str] | None = None

    def __call__(self, view: int) -> torch.Tensor:
        if self._keys is None:
            self._keys = self.cache.image_keys(self.root, self.relpaths)
        targets = [(v, self.cache.bank_dir(self.root, "train", v, self.seed, self.augmentation))
                   for v in range(self.n_views)]
        return self.cache._serve(self.root, self.relpaths, self._keys, targets, targets[view % self.n_views],
                                 self.seed, self.augmentation)
