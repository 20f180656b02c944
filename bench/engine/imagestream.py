"""The image-side input path: methods that train *through* the image encoder (``trains_on = "images"``).

For such a method the harness hands :meth:`Method.fit` an :class:`ImageTrainData` instead of cached features:

    loader = train.loader(batch_size)          # a DataLoader with worker processes, over the few-shot sample
    for batch in loader.epoch(e):              # ImageBatch: augmented images, labels, sample indices
        batch.images                           # (B, 3, H, W) on the backbone's device, the reference augmentation
        batch.frozen                           # the frozen encoder's features of these very images (computed once)

and at evaluation it streams the test images under the test transform in batches of 100 and calls
``method.logits(images, classnames)`` per batch.  :func:`fit_image_epochs` is the reference recipe of the suite's
one training loop (:func:`bench.engine.loop.fit`) over this stream, with its checkpoints (by epochs, steps and
minutes, on the preemption signal, at the end of training) and exact mid-epoch resume.

Determinism: the augmentation of sample image ``i`` in epoch ``e`` is drawn from an RNG seeded with
(run seed, image path, e), and the batch order of epoch ``e`` from (run seed, e): an epoch is the same whatever
the number of workers, and a run resumed at step ``k`` of epoch ``e`` starts the sampler there (the skipped
batches are not decoded) and continues exactly as an uninterrupted one.

Images are decoded by the suite's one image dataset (:class:`bench.data.images.ImageFiles`) in DataLoader workers
that ignore the preemption and termination signals (:class:`bench.data.images.SignalSafeLoader`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from bench import log
from bench.data.images import ImageFiles, SignalSafeLoader, collate, usable_cpus
from bench.errors import BenchError
from bench.engine.loop import batches, fit, sgd, warmup_cosine

EVAL_BATCH = 100  # the reference's DATALOADER.TEST.BATCH_SIZE


def worker_count() -> int:
    """DataLoader workers: the CPUs this process may use, minus one for the training loop (at most 8).

    ``BENCH_WORKERS`` overrides (0 = decode in the main process).
    """
    env = os.environ.get("BENCH_WORKERS")
    if env:
        return max(0, int(env))
    n = usable_cpus()
    return min(8, n - 1) if n > 1 else 0


def _seed(*parts) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def augmentation_seed(run_seed: int, relpath: str, epoch: int) -> int:
    """The torch seed of the training augmentation of one image in one epoch of one run."""
    return _seed("aug", int(run_seed), relpath, int(epoch))


class _Images(ImageFiles):
    """Key (i, epoch) -> image i augmented for that epoch (torch's RNG seeded by :func:`augmentation_seed`, the
    caller's CPU RNG state kept); key i -> the transform as is (the test transform, no RNG)."""

    def __init__(self, root: Path, relpaths: list[str], transform, run_seed: int = 0):
        super().__init__(root, relpaths)
        self.transform, self.run_seed = transform, run_seed

    def draw(self, img, relpath: str, epoch) -> list[torch.Tensor]:
        if epoch is None:
            return [self.transform(img)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(augmentation_seed(self.run_seed, relpath, epoch))
            return [self.transform(img)]


def _checked(loader):
    """(images, index) of each batch of ``loader``; an image that cannot be decoded is one line here."""
    for images, index, err, _, _ in loader:
        if err:
            raise BenchError(err)
        yield images, torch.tensor(index, dtype=torch.long)


class _EpochBatches(torch.utils.data.Sampler):
    """The reference's random batches (drop_last when the set holds a batch) of the current epoch, from step
    ``start`` on."""

    def __init__(self, n: int, batch_size: int, run_seed: int):
        self.n, self.batch_size, self.run_seed, self.epoch, self.start = n, batch_size, run_seed, 0, 0

    def __iter__(self):
        gen = torch.Generator().manual_seed(_seed("order", self.run_seed, self.epoch))
        for idx in batches(self.n, self.batch_size, gen)[self.start:]:
            yield [(int(i), self.epoch) for i in idx]

    def __len__(self):
        return self.n // self.batch_size if self.n >= self.batch_size else 1


class ImageBatch:
    """One training batch: ``images`` (B, 3, H, W) and ``labels`` (B,) on the device, ``index`` into the sample.

    ``frozen``: the frozen image encoder's features (B, embed_dim) of exactly these augmented images, computed
    on first access (no grad) — e.g. PromptSRC's image-consistency target.
    """

    def __init__(self, images, labels, index, backbone):
        self.images, self.labels, self.index, self._backbone, self._frozen = images, labels, index, backbone, None

    @property
    def frozen(self) -> torch.Tensor:
        if self._frozen is None:
            self._frozen = self._backbone.encode_image(self.images)
        return self._frozen


class ImageLoader:
    """A DataLoader (persistent workers) over the few-shot sample; ``epoch(e)`` yields that epoch's batches."""

    def __init__(self, data: "ImageTrainData", batch_size: int, workers: int | None = None):
        self.data = data
        self.sampler = _EpochBatches(len(data.relpaths), int(batch_size), data.run_seed)
        workers = worker_count() if workers is None else workers
        ds = _Images(data.root, data.relpaths, data.backbone.train_transform_for(data.augmentation), data.run_seed)
        self.loader = SignalSafeLoader(
            ds, batch_sampler=self.sampler, num_workers=workers, collate_fn=collate,
            persistent_workers=workers > 0, pin_memory=data.backbone.device.startswith("cuda"))

    def __len__(self):
        return len(self.sampler)

    def epoch(self, e: int, start: int = 0):
        """The batches of epoch ``e`` from step ``start`` on (earlier ones are neither sampled nor decoded)."""
        self.sampler.epoch, self.sampler.start = int(e), int(start)
        batches_of_epoch = iter(self.loader)  # now, not at the first batch: the loop restores RNG states after it
        b = self.data.backbone
        return (ImageBatch(images.to(b.device, non_blocking=True), self.data.labels[index].to(b.device), index, b)
                for images, index in _checked(batches_of_epoch))


class ImageBatches:
    """:class:`ImageLoader` as the training loop's batch source (:class:`bench.engine.loop.Batches`): yields
    ``((ImageBatch,), n)``; the stream is seeded by run seed and epoch, so a checkpoint needs no state of it."""

    desc = "epoch"

    def __init__(self, loader: ImageLoader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def epoch(self, e: int, start: int, saver=None):
        return (((batch,), len(batch.labels)) for batch in self.loader.epoch(e, start))

    def state(self, boundary: bool) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


@dataclass
class ImageTrainData:
    """A few-shot training set as image files (``trains_on = "images"``)."""

    root: Path                      # dataset root
    relpaths: list[str]             # sample images, relative to root
    labels: torch.Tensor            # (N,) int64, 0..n_classes-1
    backbone: object                # the frozen backbone
    run_seed: int = 0
    workers: int | None = None      # None: worker_count()
    augmentation: dict | None = None  # the method's declared augmentation (None: CoOp's, the backbone's)

    def loader(self, batch_size: int) -> ImageLoader:
        return ImageLoader(self, batch_size, self.workers)


def build_image_train_data(config: dict, backbone, data_root, workers: int | None = None):
    """Few-shot sample (the suite's shared picks) -> class subsample -> an :class:`ImageTrainData`."""
    from bench.data import fewshot_sample, load_splits, record_sample, subsample_classes

    tr = config["train"]
    splits = load_splits(tr["dataset"], data_root)
    sample = fewshot_sample(splits, tr["shots"], tr["seed"])
    record_sample(splits, tr["shots"], tr["seed"])
    train, _, _, names = subsample_classes(sample["train"], sample["val"], [], tr["classes"])
    data = ImageTrainData(root=Path(splits.root), relpaths=[it.path for it in train],
                          labels=torch.tensor([it.label for it in train], dtype=torch.long), backbone=backbone,
                          run_seed=int(tr["seed"] or 0), workers=workers, augmentation=config.get("augmentation"))
    return data, names


def stream_logits(method, backbone, root, relpaths: list[str], classnames: list[str],
                  batch_size: int = EVAL_BATCH, workers: int | None = None) -> torch.Tensor:
    """Test images under the test transform, in batches, through ``method.logits(images, classnames)``."""
    workers = worker_count() if workers is None else workers
    ds = _Images(Path(root), relpaths, backbone.eval_transform)
    loader = SignalSafeLoader(ds, batch_size=batch_size, num_workers=min(workers, len(ds) // batch_size),
                              collate_fn=collate)
    out = []
    with torch.no_grad():
        for images, _ in _checked(log.progress(loader, desc=f"test {Path(root).name}", total=len(loader))):
            out.append(method.logits(images.to(backbone.device), classnames).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, len(classnames))


def fit_image_epochs(
    module: torch.nn.Module,
    loss_fn: Callable[[ImageBatch], torch.Tensor],
    train: ImageTrainData,
    ctx,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    warmup_epochs: int = 1,
    warmup_lr: float = 1e-5,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict:
    """The reference recipe over the image stream, ``loss_fn(batch)``; returns {"loss": per-epoch means, "epochs"}.

    Only ``module``'s parameters that require grad train.  Its ``state_dict()`` is checkpointed with the rest of
    the training state (:func:`bench.engine.loop.fit`): keep any running aggregate such as PromptSRC's in buffers.
    ``on_epoch_end(e)`` runs after each epoch e (1-based), before that epoch's checkpoint.
    """
    return fit(module, loss_fn, ImageBatches(train.loader(batch_size)), ctx, epochs=epochs,
               optimizer=sgd(lr, momentum, weight_decay), schedule=warmup_cosine(lr, epochs, warmup_epochs, warmup_lr),
               on_epoch_end=on_epoch_end)
