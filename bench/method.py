"""The method interface. A method is one file in ``methods/``: a :class:`Method` subclass under ``@register_method``.

The harness hands a method a :class:`Context` (frozen backbone, the training label space, the dataset's hand-crafted
templates, hyperparameters, seed, a checkpointer) and a :class:`TrainData` (labels + cached image features, one tensor
per augmented view).  The method trains in :meth:`Method.fit` and scores test features in :meth:`Method.logits`
against any list of class names (the training classes, the new classes of base-to-new, or a subset such as the
200 classes of ImageNet-A/R).  It never reads images, datasets or the results store.  A method that trains through
the image encoder declares ``trains_on = "images"`` and gets augmented image batches instead (bench/imagestream.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from bench.errors import BenchError


def prompt_name(classname: str) -> str:
    """Class names are stored with underscores (as in CoOp's split files); prompts use spaces."""
    return classname.replace("_", " ")


@dataclass
class TrainData:
    """A few-shot training set as cached, frozen image features (never images)."""

    labels: torch.Tensor                          # (N,) int64, 0..n_classes-1
    view: Callable[[int], torch.Tensor]           # v -> (N, D) float32 features of augmented view v (not normalised)
    n_views: int                                  # views available; epoch e uses view e % n_views
    eval_features: torch.Tensor                   # (N, D) features under the test transform (no augmentation)
    val_features: torch.Tensor | None = None      # few-shot validation split, test transform
    val_labels: torch.Tensor | None = None


class Checkpointer:
    """Training-state checkpoints for resuming (SLURM preemption). The default keeps nothing."""

    def load(self) -> dict | None:
        return None

    def save(self, state: dict) -> None:
        pass

    def clear(self) -> None:
        pass


@dataclass
class Context:
    backbone: Any                                 # bench.backbone.Backbone (frozen, eval mode)
    classnames: list[str]                         # training label space, index = label
    template: str                                 # the dataset's CoOp hand-crafted template, e.g. "a photo of a {}."
    kgcoop_template: str                          # the template KgCoOp uses for its w_clip targets
    dataset: str
    hparams: dict
    seed: int | None = None
    protocol: str = "fewshot"
    checkpointer: Checkpointer = field(default_factory=Checkpointer)
    checkpoint_every: int = 0                     # epochs between training-state checkpoints (0: never)
    log: Callable[[str], None] = print

    @property
    def device(self):
        return self.backbone.device


_TEXT_CACHE: dict = {}


def handcrafted_text_features(backbone, template: str, classnames: list[str]) -> torch.Tensor:
    """L2-normalised text features of ``template`` filled with each class name, computed once per process."""
    key = (backbone.identity, template, tuple(classnames))
    if key not in _TEXT_CACHE:
        texts = [template.format(prompt_name(c)) for c in classnames]
        _TEXT_CACHE[key] = backbone.encode_text(texts, normalize=True)
    return _TEXT_CACHE[key]


def cosine_logits(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """CLIP logits: logit_scale · cos(image, text); both sides are L2-normalised here."""
    return logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()


class Unsupported(BenchError):
    """Raised by a method asked for something it cannot do (e.g. unseen class names for a CSC context)."""


class Method:
    """Base class: subclass it in one file in ``methods/`` and decorate it with ``@register_method("name")``."""

    name: ClassVar[str] = ""
    needs_training: ClassVar[bool] = True      # False: shots and seed do not matter (zero-shot)
    protocols: ClassVar[tuple[str, ...]] = ("fewshot", "base2new", "domain_shift", "cross_dataset")
    description: ClassVar[str] = ""
    # "features": fit() gets a TrainData of cached features and logits() test features (the default);
    # "images": fit() gets a bench.imagestream.ImageTrainData (augmented image batches through DataLoader
    # workers) and logits() batches of test images under the test transform (methods that prompt the encoder).
    trains_on: ClassVar[str] = "features"

    @classmethod
    def default_hparams(cls, protocol: str, dataset: str, shots: int) -> dict:
        """The reference hyperparameters for this protocol / dataset / shot count (PROTOCOL.md)."""
        return {}

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.hp = ctx.hparams

    def fit(self, train: TrainData) -> dict:
        """Train on cached features; return training statistics (e.g. {"loss": [per-epoch means]})."""
        return {}

    def logits(self, features: torch.Tensor, classnames: list[str]) -> torch.Tensor:
        """(N, D) test image features (not normalised) -> (N, len(classnames)) logits."""
        raise NotImplementedError
