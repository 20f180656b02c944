"""Decoding and augmenting images for the encoder, in DataLoader workers: each image decoded once for all of its
missing views."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.data.images import ImageFiles
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


class _Views(ImageFiles):
    """Key (i, views) -> image i decoded once -> its views (None = the eval transform, v = :func:`augment`'s
    view v), stacked: uint8 (k, C, H, W) when both transforms split (see :func:`_split`), else the transforms'
    float tensors."""

    def __init__(self, root: Path, relpaths: list[str], eval_tf, train_tf, seed, split: bool):
        super().__init__(root, relpaths)
        self.seed, self.split = seed, split
        self.eval_tf = _split(eval_tf)[0] if split else eval_tf
        self.train_tf = _split(train_tf)[0] if split else train_tf

    def draw(self, img, relpath: str, views) -> list[torch.Tensor]:
        xs = [self.eval_tf(img) if v is None else augment(img, self.train_tf, self.seed, relpath, v) for v in views]
        return [_to_uint8(x) for x in xs] if self.split else xs


class ImageList(ImageFiles):
    """Images by relative path -> ``transform`` as is (``view`` None) or view ``view`` of :func:`augment` (seeded
    as the cache does, with ``seed``); items as :class:`~bench.data.images.ImageFiles` gives them."""

    def __init__(self, root: Path, relpaths: list[str], transform, view: int | None = None, seed: int | None = 0):
        super().__init__(root, relpaths)
        self.transform, self.view, self.seed = transform, view, seed

    def draw(self, img, relpath: str, spec) -> list[torch.Tensor]:
        if self.view is None:
            return [self.transform(img)]
        return [augment(img, self.transform, self.seed, relpath, self.view)]
