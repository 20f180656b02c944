"""Cached image features of the frozen image encoder, shared by every process that uses one cache folder.

Key. A feature is stored under everything that could change its value, spelled the same in every process:

    <cache>/features/<backbone identity>/<precision>-<device type>-torch<version>/<transform>/<dataset root>/<bank>

- backbone identity: architecture + weights (open_clip tag, sha256 of the checkpoint file, or of random weights);
- numerics: the resolved precision (fp32, amp, bf16, fp16), the device type (``cpu``, or ``cuda-<GPU model>``)
  and the torch version: a bf16 GPU run and an fp32 CPU run never share a bank;
- transform: its parameters written out explicitly (:func:`describe_transform`: class names, sizes, scales,
  interpolation, mean/std, named functions; never ``repr`` with object addresses) + torchvision/Pillow versions;
- bank: ``eval``, or ``seed<S>-view<V>`` for augmented training view V of a run with seed S;
- within a bank each row is keyed by the image's path relative to its dataset root, its size and mtime.

Augmentation. View V of an image in a run with seed S is ``transform(image)`` with torch's RNG seeded by
:func:`view_seed` (S, relative path, V) -- see :func:`augment`. Two seeds of a run see different crops of an image,
two methods of one seed the same crops (a paired comparison), in any process, cached or not.

Cold path. Missing features are computed in one pipeline per request: DataLoader workers (as many as the CPUs
this process may use, ``os.sched_getaffinity``) decode each image ONCE and draw all its missing views, the main
process encodes them in batches while the workers prepare the next, and each bank is written once (a segment
per view; larger than ``flush_mb`` only in chunks). :class:`TrainViews` fills all views of a training set on its
first miss, so a method that never reads views (linear probe) encodes none.

Storage and concurrency (no file locks needed; safe on NFS/Lustre where ``flock`` does not lock across nodes):
a bank is a folder of immutable segment files, each written to a temporary file and renamed into place (a torn
read is impossible) and holding a sha256 checksum of its keys and features, verified on load (a corrupt, zeroed
or non-finite segment is deleted and recomputed). Concurrent writers add segments; duplicates are harmless.
Before encoding, a process claims the missing set with an exclusive-create marker (``O_CREAT|O_EXCL``); another
process needing the same set waits for it instead of encoding it twice (a claim not refreshed for
``CLAIM_STALE_S`` is taken over). Temporary files of killed writers older than ``STALE_TMP_S`` are removed.

Memory. Banks read in this process are kept in an LRU store bounded by ``memory_mb`` (default 2048, or
``$BENCH_FEATURE_MEMORY_MB``); evicted banks are read back from disk when needed again.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import socket
import time
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from bench import log
from bench.errors import BenchError
from bench.fileio import atomic_open
from bench.paths import cache_dir

FORMAT = 2                 # bumped whenever what a key means changes
STALE_TMP_S = 3600.0       # temporary files older than this belong to killed writers
CLAIM_STALE_S = 300.0      # a claim marker not refreshed for this long belongs to a dead process
CLAIM_REFRESH_S = 15.0
VIEWS_PER_ITEM = 16        # views drawn per decoded image per DataLoader item (bounds worker memory)


def _digest(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


# ---------------------------------------------------------------------------------------------------------------
# Augmentation seeding (public: an image-stream path uses the same crops)

def view_seed(run_seed: int | None, image_key: str, view: int) -> int:
    """Seed of augmented view ``view`` of image ``image_key`` (path relative to its dataset root) in a run
    with seed ``run_seed``: the same in every process and platform."""
    return int(_digest(f"{int(run_seed or 0)}|{image_key}|{int(view)}", 15), 16)


def augment(image, transform, run_seed: int | None, image_key: str, view: int) -> torch.Tensor:
    """``transform(image)`` drawn with torch's RNG seeded by :func:`view_seed`; the caller's RNG state is kept.

    With ``transform = backbone.train_transform`` this is exactly the pixels the feature cache encodes for that
    (run seed, image, view): an image-stream method that calls it sees the same crops and flips."""
    gen = torch.default_generator  # what torchvision's random transforms draw from (on the CPU)
    state = gen.get_state()
    gen.manual_seed(view_seed(run_seed, image_key, view))
    try:
        return transform(image)
    finally:
        gen.set_state(state)


def _plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "value") and hasattr(type(value), "__members__"):  # enums (InterpolationMode)
        return f"{type(value).__name__}.{value.name}"
    return describe_transform(value)


def describe_transform(tf) -> object:
    """A JSON-able description of a (torchvision) transform that is the same in every process.

    Compose -> list of steps; a function -> its module and qualified name; any other object -> its class name and
    public attributes (size, scale, ratio, interpolation, p, mean, std, antialias, ...)."""
    import torchvision.transforms as T

    if isinstance(tf, T.Compose):
        return [describe_transform(t) for t in tf.transforms]
    if _is_function(tf):  # by name, and by its code (a lambda or an edited function gets another key)
        code = getattr(tf, "__code__", None)
        body = _code_digest(code) if code is not None else ""
        return f"{getattr(tf, '__module__', '')}.{tf.__qualname__}:{body}"
    attrs = {k: _plain(v) for k, v in sorted(getattr(tf, "__dict__", {}).items())
             if not k.startswith("_") and k != "training"}
    return {"type": f"{type(tf).__module__}.{type(tf).__qualname__}", **attrs}


def _code_digest(code) -> str:
    """Digest of a function's bytecode and constants (nested code objects by their own digest, not their repr,
    which holds an address)."""
    consts = [_code_digest(c) if hasattr(c, "co_code") else repr(c) for c in code.co_consts]
    return _digest(repr((code.co_code, consts, code.co_names)), 8)


def _is_function(obj) -> bool:
    import types

    return isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType))


def transform_key(name: str, transform, image_size: int) -> str:
    """Folder name of a transform: ``<name>-<size>px-<digest of its description + library versions>``."""
    import PIL
    import torchvision

    text = json.dumps([FORMAT, describe_transform(transform), torchvision.__version__, PIL.__version__],
                      sort_keys=True)
    return f"{name}-{image_size}px-{_digest(text, 12)}"


def numerics_key(backbone) -> str:
    """``<precision>-<device type>-torch<version>``; CUDA devices are told apart by model name."""
    device = torch.device(backbone.device)
    kind = device.type
    if kind == "cuda":
        name = torch.cuda.get_device_name(device)
        kind += "-" + "".join(c if c.isalnum() else "_" for c in name).strip("_")
    return f"{backbone.precision}-{kind}-torch{torch.__version__.split('+')[0]}"


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (e.g. a SLURM allocation), not the whole node."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(device: str = "cpu") -> int:
    """DataLoader workers for decoding, from the CPUs this process may run on (its affinity, e.g. a SLURM
    allocation, not the whole node): all of them (at most 8) when a GPU encodes, all but one when the CPU
    encodes (that one runs the encoder, overlapped); 0 (decode in the main process) with a single CPU."""
    n = usable_cpus()
    if n <= 1:
        return 0
    return min(8, n if torch.device(device).type == "cuda" else n - 1)


# ---------------------------------------------------------------------------------------------------------------
# Segments: immutable files of (keys, features) with a checksum

def _checksum(keys: list[str], feats: torch.Tensor) -> str:
    h = hashlib.sha256("\n".join(keys).encode())
    h.update(feats.contiguous().numpy().tobytes() if feats.numel() else b"")
    return h.hexdigest()


def _segment_problem(data) -> str:
    """Why a loaded segment cannot be trusted ('' if it can)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return "unknown format"
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


def _dead_local_holder(holder: list[str]) -> bool:
    """True when a claim's "<host> <pid>" names a process of this host that no longer exists."""
    if len(holder) != 2 or holder[0] != socket.gethostname() or not holder[1].isdigit():
        return False
    try:
        os.kill(int(holder[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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


# ---------------------------------------------------------------------------------------------------------------
# Decoding + augmentation (in DataLoader workers)

def _split(transform):
    """(PIL-stage transform, mean, std) when ``transform`` ends with ToTensor + Normalize, else None.

    Workers then hand over uint8 images (4x fewer bytes between processes and to the GPU) and the main process
    applies ToTensor's /255 and Normalize to the whole batch: the same float operations, the same pixels."""
    import torchvision.transforms as T

    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, T.Compose) or len(steps) < 2 or type(steps[-2]) is not T.ToTensor \
            or type(steps[-1]) is not T.Normalize or steps[-1].inplace:
        return None
    norm = steps[-1]
    mean = torch.as_tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1)
    return T.Compose(steps[:-2]), mean, std


def _to_uint8(img) -> torch.Tensor:
    import numpy as np

    hwc = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(img.size[1], img.size[0], -1)
    return hwc.permute(2, 0, 1).contiguous()  # CHW, as ToTensor lays it out


class _Jobs(torch.utils.data.Dataset):
    """Item i: image jobs[i][0] decoded once -> its views jobs[i][1] (None = eval transform), stacked:
    uint8 (k, C, H, W) when both transforms split (see :func:`_split`), else the transforms' float tensors."""

    def __init__(self, root: Path, jobs: list[tuple[str, tuple]], eval_tf, train_tf, seed, split: bool):
        self.root, self.jobs, self.seed, self.split = root, jobs, seed, split
        self.eval_tf = _split(eval_tf)[0] if split else eval_tf
        self.train_tf = _split(train_tf)[0] if split else train_tf

    def __len__(self):
        return len(self.jobs)

    def __getitem__(self, i):
        rel, views = self.jobs[i]
        path = self.root / rel
        t0 = time.thread_time()  # CPU time of this worker: meaningful on a busy machine too
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as e:  # noqa: BLE001 - reported to the user as one line in the main process
            return None, i, f"cannot decode image {path}: {type(e).__name__}: {e}".splitlines()[0], 0.0, 0.0
        t1 = time.thread_time()
        xs = [self.eval_tf(img) if v is None else augment(img, self.train_tf, self.seed, rel, v) for v in views]
        if self.split:
            xs = [_to_uint8(x) for x in xs]
        return torch.stack(xs), i, "", t1 - t0, time.thread_time() - t1


def _collate(batch):
    for _, _, err, _, _ in batch:
        if err:
            return None, None, err, 0.0, 0.0
    return (torch.cat([x for x, *_ in batch]), [i for _, i, *_ in batch], "",
            sum(b[3] for b in batch), sum(b[4] for b in batch))


class ImageList(torch.utils.data.Dataset):
    """Images by relative path -> (transformed tensor, error message or ""); ``view`` seeds the augmentation
    as the cache does (with ``seed``), None applies ``transform`` as is."""

    def __init__(self, root: Path, relpaths: list[str], transform, view: int | None = None, seed: int | None = 0):
        self.root, self.relpaths, self.transform, self.view, self.seed = Path(root), relpaths, transform, view, seed

    def __len__(self):
        return len(self.relpaths)

    def __getitem__(self, i):
        path = self.root / self.relpaths[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as e:  # noqa: BLE001
            return torch.zeros(0), f"cannot decode image {path}: {type(e).__name__}: {e}".splitlines()[0]
        if self.view is None:
            return self.transform(img), ""
        return augment(img, self.transform, self.seed, self.relpaths[i], self.view), ""


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

    def transform_key(self, transform: str) -> str:
        b = self.backbone
        return transform_key(transform, b.eval_transform if transform == "eval" else b.train_transform,
                             b.image_size)

    def bank_dir(self, dataset_root, transform: str, view: int | None = None, seed: int | None = None) -> Path:
        name = "eval" if transform == "eval" else f"seed{int(seed or 0)}-view{int(view)}"
        return (self.base() / self.transform_key(transform) / _digest(str(Path(dataset_root).resolve()))
                / name)

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
            seed: int | None = 0) -> torch.Tensor:
        if transform not in ("eval", "train"):
            raise ValueError(f"transform must be 'eval' or 'train', not {transform!r}")
        root = Path(dataset_root)
        keys = self.image_keys(root, relpaths)
        target = (None, self.bank_dir(root, "eval")) if transform == "eval" else \
            (int(view), self.bank_dir(root, "train", view, seed))
        return self._serve(root, relpaths, keys, [target], target, seed)

    def views(self, dataset_root, relpaths: list[str], seed: int | None, n_views: int) -> "TrainViews":
        return TrainViews(self, Path(dataset_root), list(relpaths), seed, int(n_views))

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
                    problem = _segment_problem(data)
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

    def _serve(self, root: Path, relpaths, keys, targets, want, seed) -> torch.Tensor:
        """Features of ``want`` (a target); on any miss there, fill every target's missing rows first."""
        _, folder = want
        bank = self._bank(folder)
        miss = bank.missing(keys)
        self.stats["hits"] += len(keys) - len(miss)
        if miss:
            self._fill(root, relpaths, keys, targets, seed)
            bank = self._bank(folder)
        if not keys:
            return torch.zeros(0, self.backbone.embed_dim)
        return bank.take(keys)

    def _fill(self, root: Path, relpaths, keys, targets, seed) -> None:
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
            try:
                self._encode(root, relpaths, keys, todo, seed, claim)
            finally:
                try:
                    os.unlink(claim)
                except FileNotFoundError:
                    pass
            return

    def _claim(self, name: str) -> Path | None:
        """An exclusive claim on encoding one missing set; None while another live process holds it. A claim of a
        process of this host that no longer exists (killed: SIGKILL, OOM) is taken over at once, any other once it
        has not been refreshed for CLAIM_STALE_S."""
        folder = self.base() / "claims"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.claim"
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    age = time.time() - path.stat().st_mtime
                    holder = path.read_text().split()
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                dead = _dead_local_holder(holder)
                if age <= CLAIM_STALE_S and not dead:
                    return None
                why = f"its process {holder[1]} is gone" if dead else f"{age:.0f} s old"
                log.info(f"feature cache: taking over an abandoned claim {path} ({why})")
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{socket.gethostname()} {os.getpid()}\n")
            return path
        return None

    def _encode(self, root: Path, relpaths, keys, todo: dict, seed, claim: Path) -> None:
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
        split = _split(b.eval_transform), _split(b.train_transform)
        norm = None
        if split[0] and split[1] and all(torch.equal(split[0][k], split[1][k]) for k in (1, 2)):
            norm = split[0][1].to(b.device), split[0][2].to(b.device)
        ds = _Jobs(root, jobs, b.eval_transform, b.train_transform, seed, split=norm is not None)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=_collate,
                                             pin_memory=cuda, persistent_workers=False,
                                             prefetch_factor=4 if workers else None)
        first = next(iter(todo))
        desc = f"encode {root.name} " + ("(eval)" if first[0] is None else
                                         f"(train, seed {seed}, {len(todo)} views)")
        chunks: list[torch.Tensor] = []
        rows: list[tuple[Path, str]] = []  # (bank folder, image key) of each encoded row, in order
        buffered, last_touch = 0, time.time()
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
            if time.time() - last_touch > CLAIM_REFRESH_S:
                os.utime(claim)
                last_touch = time.time()
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
        data = {"format": FORMAT, "keys": keys, "feats": feats, "checksum": _checksum(keys, feats)}
        with atomic_open(folder / f"{_digest(chr(10).join(keys), 24)}.pt") as fh:
            torch.save(data, fh)
        self.stats["files_written"] += 1


class TrainViews:
    """``views(v)`` -> (N, D) features of augmented view ``v % n_views`` of a training set in a run with seed
    ``seed``. The first call that misses encodes every missing view of the set in one pass (each image decoded
    once); a method that never calls it encodes nothing."""

    def __init__(self, cache: FeatureCache, root: Path, relpaths: list[str], seed, n_views: int):
        if n_views < 1:
            raise BenchError(f"n_views must be >= 1, not {n_views}")
        self.cache, self.root, self.relpaths, self.seed, self.n_views = cache, root, relpaths, seed, n_views
        self._keys: list[str] | None = None

    def __call__(self, view: int) -> torch.Tensor:
        if self._keys is None:
            self._keys = self.cache.image_keys(self.root, self.relpaths)
        targets = [(v, self.cache.bank_dir(self.root, "train", v, self.seed)) for v in range(self.n_views)]
        return self.cache._serve(self.root, self.relpaths, self._keys, targets, targets[view % self.n_views],
                                 self.seed)
