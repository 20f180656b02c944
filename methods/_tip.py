"""Shared parts of ``tip_adapter`` and ``tip_adapter_f`` (Zhang et al., ECCV 2022; ``gaopengcuhk/Tip-Adapter`` at
d0e2d6f8, "TA" below): the zero-shot classifier, the cache, the logits, the alpha/beta grid search, the per-dataset
configuration, and the method base class both register a subclass of.

Formulas (TA ``main.py:32,39-42,91-94``, ``utils.py:38-62,99-129``), with f̂ the L2-normalised image feature:

* zero-shot classifier W (C, D): the dataset's template filled with each class name, L2-normalised; on ImageNet the
  reference's 7-template ensemble (:data:`IMAGENET_TEMPLATES`, TA ``datasets/imagenet.py:177-183``): each template's
  embedding normalised, averaged over templates, normalised again (TA ``utils.py:18-35``);
* cache keys K (N·K, D) = L2-normalise(mean over the augmented views of the RAW image features) (TA
  ``utils.py:46-60``); values V (N·K, C) = one-hot labels (``utils.py:62``);
* logits = 100 · f̂ Wᵀ + α · exp(−β (1 − f̂ Kᵀ)) V, the 100 hard-coded (not the backbone's logit scale);
* search: every β of ``beta_list`` (outer loop) × every α of ``alpha_list`` (inner loop), the strict maximum of
  accuracy from 0 (ties go to the first point found; if no point scores above 0 the reference keeps β = α = 0,
  i.e. the zero-shot logits, and so do we).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.api import Method, Param, handcrafted_text_features
from ._templates import IMAGENET_TEMPLATES_SELECT as IMAGENET_TEMPLATES  # TA datasets/imagenet.py:177-183

LOGIT_SCALE = 100.0  # TA main.py:32,53,93 (hard-coded)
CHUNK_ELEMENTS = 1 << 24  # test rows per chunk in logits: about this many affinities (float64: 128 MiB)

# TA configs/<ds>.yaml:17-21 (search_scale [S_beta, S_alpha], init_beta, init_alpha) and :31 (train_epoch);
# TA's fgvc config is the suite's fgvc_aircraft.
CONFIGS = {
    #                 S_beta S_alpha beta alpha epochs
    "caltech101":     (12, 5, 1.0, 3.0, 20),
    "dtd":            (13, 13, 1.0, 2.0, 20),
    "eurosat":        (12, 10, 1.0, 2.0, 100),
    "fgvc_aircraft":  (30, 30, 1.0, 5.0, 20),
    "food101":        (10, 10, 1.0, 1.17, 20),
    "imagenet":       (7, 3, 1.0, 1.17, 20),
    "oxford_flowers": (50, 50, 1.0, 10.0, 20),
    "oxford_pets":    (7, 3, 1.0, 1.17, 20),
    "stanford_cars":  (20, 10, 1.0, 3.0, 20),
    "sun397":         (12, 10, 1.0, 1.17, 20),
    "ucf101":         (7, 3, 1.0, 3.0, 20),
}
# Any other dataset (the miniature world's mini_patterns, mini_fabrics, mini_textures, ...): a stated generic
# default, ImageNet's configuration (the one TA ships for ImageNet, Pets and, search range only, UCF101).
GENERIC = CONFIGS["imagenet"]

TIP_SPEC = {
    "init_alpha": Param(float, min=0.0, help="alpha without search (no val split), and during Tip-F training"),
    "init_beta": Param(float, min=0.0, help="beta without search (no val split), and during Tip-F training"),
    "search": Param(bool, help="search alpha and beta on the few-shot val split (when there is one)"),
    "search_scale_beta": Param(float, min=0.0, help="upper end S_beta of the beta grid"),
    "search_scale_alpha": Param(float, min=0.0, help="upper end S_alpha of the alpha grid"),
    "search_steps_beta": Param(int, min=1, help="beta grid points"),
    "search_steps_alpha": Param(int, min=1, help="alpha grid points"),
    "augment_views": Param(int, min=1, help="augmented views averaged into the cache keys"),
}


def tip_defaults(dataset: str) -> dict:
    s_beta, s_alpha, beta, alpha, _ = CONFIGS.get(dataset, GENERIC)
    return {"init_alpha": alpha, "init_beta": beta, "search": True, "search_scale_beta": float(s_beta),
            "search_scale_alpha": float(s_alpha), "search_steps_beta": 200, "search_steps_alpha": 20,
            "augment_views": 10}


def dataset_epochs(dataset: str) -> int:
    return CONFIGS.get(dataset, GENERIC)[4]


def templates_for(dataset: str, template: str) -> list[str]:
    """ImageNet: the 7-template ensemble; every other dataset: its own hand-crafted (CoOp) template."""
    return list(IMAGENET_TEMPLATES) if dataset == "imagenet" else [template]


def zero_shot_weights(backbone, templates: list[str], classnames: list[str]) -> torch.Tensor:
    """(C, D) classifier: one template -> its normalised features; several -> normalise, average, normalise."""
    if len(templates) == 1:
        return handcrafted_text_features(backbone, templates[0], list(classnames)).float()
    per = torch.stack([handcrafted_text_features(backbone, t, list(classnames)).float() for t in templates])
    return F.normalize(per.mean(dim=0), dim=-1)


def cache_keys(train, n_views: int) -> tuple[torch.Tensor, int]:
    """(N, D) keys: the mean of the raw features of views 0..n-1 (n = min(n_views, train.n_views)), normalised."""
    n = max(1, min(int(n_views), int(train.n_views)))
    total = None
    for v in range(n):
        x = train.view(v).double()
        total = x if total is None else total + x
    return F.normalize(total / n, dim=-1).float(), n


def grid(scale: float, steps: int) -> list[float]:
    """TA utils.py:103-104: ``[i * (scale - 0.1) / steps + 0.1 for i in range(steps)]`` (same float arithmetic)."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(int(steps))]


def cache_logits(affinity: torch.Tensor, values: torch.Tensor, beta: float) -> torch.Tensor:
    return ((-1) * (beta - beta * affinity)).exp() @ values


def search_hp(clip_logits: torch.Tensor, affinity: torch.Tensor, values: torch.Tensor, labels: torch.Tensor,
              betas: list[float], alphas: list[float]) -> tuple[float, float, int]:
    """The reference grid search on (validation) logits: (beta, alpha, correct count of the best point).
    β outer, α inner, strict improvement from 0 correct (TA utils.py:106-125)."""
    best, best_beta, best_alpha = 0, 0.0, 0.0
    for beta in betas:
        cache = cache_logits(affinity, values, beta)
        for alpha in alphas:
            correct = int(((clip_logits + cache * alpha).argmax(dim=1) == labels).sum())
            if correct > best:
                best, best_beta, best_alpha = correct, float(beta), float(alpha)
    return best_beta, best_alpha, best


class TipBase(Method):
    """The cache model shared by Tip-Adapter and Tip-Adapter-F (not registered)."""

    # base2new: unseen classes have all-zero value columns, i.e. they get the zero-shot logits only (what the
    # reference's formula gives for a class absent from the cache); cross-dataset transfer would be zero-shot on
    # every target, so it is not offered.
    protocols = ("fewshot", "base2new", "domain_shift")
    hparam_spec = dict(TIP_SPEC)

    @classmethod
    def train_augmentation(cls, hparams: dict) -> dict | None:
        return {"crop_scale": (0.5, 1.0)}  # TA main.py:173-178: RandomResizedCrop(224, scale=(0.5, 1)) + flip

    @classmethod
    def cached_views(cls, hparams: dict) -> int | None:
        return int(hparams.get("augment_views", 10))

    @classmethod
    def train_epochs(cls, hparams: dict) -> int | None:
        return None  # training-free (Tip-F overrides)

    def __init__(self, ctx):
        super().__init__(ctx)
        # the training dataset's prompts: kept for every evaluation (ImageNet-A/R and the new classes of
        # base2new are scored with the same classifier as the training classes)
        self.templates = templates_for(ctx.dataset, ctx.template)
        self.alpha = float(self.hp.get("init_alpha", 1.0))
        self.beta = float(self.hp.get("init_beta", 1.0))
        self.keys: torch.Tensor | None = None     # (NK, D); Tip-F: the trained keys
        self.values: torch.Tensor | None = None   # (NK, C) one-hot over the training classes
        self._columns: dict = {}                   # W's and V's columns for the last list of class names scored

    def template_info(self) -> dict:
        return {"templates": list(self.templates), "logit_scale": LOGIT_SCALE}

    def text_weights(self, classnames) -> torch.Tensor:
        return zero_shot_weights(self.ctx.backbone, self.templates, list(classnames))

    def build_cache(self, train) -> dict:
        self._columns = {}
        keys, n = cache_keys(train, int(self.hp.get("augment_views", 10)))
        self.keys = keys
        self.values = F.one_hot(train.labels.long(), len(self.ctx.classnames)).float()
        return {"cache_views": n, "cache_size": int(keys.shape[0])}

    def value_columns(self, classnames) -> torch.Tensor:
        """V's columns for ``classnames``: a training class's by name (repeated names in order), zeros otherwise."""
        where: dict[str, list[int]] = {}
        for i, n in enumerate(self.ctx.classnames):
            where.setdefault(n, []).append(i)
        used: dict[str, int] = {}
        cols = []
        zero = torch.zeros(self.values.shape[0], device=self.values.device)
        for n in classnames:
            slots = where.get(n)
            if not slots:
                cols.append(zero)
                continue
            k = used.get(n, 0)
            used[n] = k + 1
            cols.append(self.values[:, slots[min(k, len(slots) - 1)]])
        return torch.stack(cols, dim=1)

    def scores(self, features: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               alpha: float, beta: float) -> torch.Tensor:
        """100 · f̂ Wᵀ + α · exp(−β(1 − f̂ Kᵀ)) V, in float64."""
        f = F.normalize(features.double(), dim=-1)
        clip = LOGIT_SCALE * f @ weights.double().t()
        return clip + alpha * cache_logits(f @ keys.double().t(), values.double(), beta)

    def search(self, train, keys: torch.Tensor) -> dict:
        """alpha/beta from the few-shot val split (the grid), or the initial values; the record of which."""
        hp = self.hp
        if not hp.get("search", True):
            return {"alpha": self.alpha, "beta": self.beta, "search": "off (initial alpha and beta)"}
        if train.val_features is None or not len(train.val_features):
            return {"alpha": self.alpha, "beta": self.beta,
                    "search": "none: no few-shot val split (initial alpha and beta)"}
        f = F.normalize(train.val_features.double(), dim=-1)
        labels = train.val_labels.to(f.device)
        clip = LOGIT_SCALE * f @ self.text_weights(self.ctx.classnames).to(f.device).double().t()
        affinity = f @ keys.to(f.device).double().t()
        betas = grid(float(hp["search_scale_beta"]), int(hp["search_steps_beta"]))
        alphas = grid(float(hp["search_scale_alpha"]), int(hp["search_steps_alpha"]))
        beta, alpha, correct = search_hp(clip, affinity, self.values.to(f.device).double(), labels, betas, alphas)
        init = int(((clip + self.alpha * cache_logits(affinity, self.values.to(f.device).double(), self.beta))
                    .argmax(dim=1) == labels).sum())
        self.alpha, self.beta = alpha, beta
        n = len(labels)
        return {"alpha": alpha, "beta": beta, "search": f"val ({n} images)",
                "val_acc": 100.0 * correct / n, "val_acc_init": 100.0 * init / n,
                "val_acc_zeroshot": 100.0 * float((clip.argmax(dim=1) == labels).float().mean())}

    def current_keys(self) -> torch.Tensor:
        return self.keys

    def logits(self, features, classnames):
        """Rows scored in chunks (the affinity to every cache entry of a whole test set need not fit in memory);
        W's and V's columns are built once per list of class names."""
        key = tuple(classnames)
        if self._columns.get("key") != key:
            self._columns = {"key": key, "weights": self.text_weights(classnames),
                             "values": self.value_columns(list(classnames))}
        weights = self._columns["weights"].to(features.device, torch.float64)
        values = self._columns["values"].to(features.device, torch.float64)
        keys = self.current_keys().to(features.device, torch.float64)
        rows = max(1, CHUNK_ELEMENTS // max(1, keys.shape[0]))
        with torch.no_grad():
            return torch.cat([self.scores(features[i:i + rows], weights, keys, values, self.alpha, self.beta).float()
                              for i in range(0, len(features), rows)]) if len(features) else \
                features.new_zeros((0, len(classnames)))
