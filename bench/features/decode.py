"""Decoding and augmenting images for the encoder, in DataLoader workers: each image decoded once for all of its
missing views."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from PIL import Image

from bench.features.keys import augment

VIEWS_PER_ITEM = 16        # views drawn per decoded image per DataLoader item (bounds worker memory)


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
