"""CLAP (Silva-Rodríguez, Hajimiri, Ben Ayed, Dolz, CVPR 2024; ``jusiro/CLAP`` at dbdf409, trainer ``ADAPTER``;
CL below): a linear probe of class prototypes initialised at the zero-shot text prototypes and held near them by a
class-wise penalty whose weights come from the zero-shot accuracy on the support set.  ``zs_lp`` (same file family,
methods/zs_lp.py) is the same recipe without the penalty (CL README:31-35: ``INIT=ZS CONSTRAINT=none``).

What is learned (CL ``trainers/adapters.py:148-150``): prototypes W ∈ R^{C×D} (``nn.Parameter``), initialised at the
zero-shot prototypes T: the text features (UNnormalised) of the dataset's single CoOp template (``:31-47``); on
ImageNet the mean of the unnormalised features of the 7 selected templates plus "a photo of a {}." (``:112-127``).
Forward (``:343-354``): ``logits = logit_scale · cos(f, w_c)`` (``ctx.backbone.logit_scale``, CLIP's exp'd scale).
Loss (``:219-230,698-709``): CE + mean_c λ_c ||w_c − t_c||², squared L2 on the UNnormalised prototypes (CLAP,
``CONSTRAINT=l2``); CE only for ZS-LP.  λ_c is fixed before training (``init_lagrangian_multipliers``,
``:232-252``, called at ``:559-562``): the class-c mean, over all augmented support views of class c, of the
zero-shot softmax probability of the true class (``diag(softmax(Z)ᵀY)/count``, ``:242-243``); the released commands
use ``l2``, never ``adaptative``, so λ is never updated (``:631-632``).
Features (``:142-143,816-827``): ``views`` = 20 augmented views per training image with the suite's CoOp
augmentation (RandomResizedCrop (0.08, 1) + flip, as Dassl's, ``configs/trainers/SGD_lr1e-1_B256_ep300.yaml:13``),
all 20·N views kept as separate samples of one bank (``cached_views`` declares 20; a run capped with ``--views``
uses what it has and records ``n_views_used``).
Optimisation (``configs/trainers/SGD_lr1e-1_B256_ep300.yaml:15-23``, Dassl defaults): SGD lr 0.1, momentum 0.9,
weight decay 0; 300 epochs; cosine stepped per epoch after 1 warm-up epoch at a constant 1e-5 (the suite's
:func:`warmup_cosine`, Dassl's scheduler); batch 256.  One epoch is ``len(train_loader_x)`` batches (``:431-456``):
N // 256 for N ≥ 256 images, else 1, sliced from the bank of 20·N views reshuffled every epoch (a generator seeded
with the run seed: :class:`PooledBatches`).  No validation, no search: the last epoch (``:668-677``).

Defaults: the same on every dataset (the released commands use one config for the 11 datasets; also used for any
other dataset).

Deliberate differences from the reference:
* the text prototypes come from the suite's backbone in its precision (the reference encodes them with fp16 CLIP,
  ``train.py:95``); features and training are fp32 as in the reference (``:520``);
* the epoch's shuffle uses a seeded ``torch.Generator`` (the reference: ``np.random``), and the test set is never
  scored during training (the reference logs the test accuracy at every step, ``:711-717``, without using it);
* the loss scaler of fp16 backbones is not used: the loss is fp32 on cached features.

Protocols: few-shot and domain shift as the reference (ImageNet-A/R: prototype rows selected by name, as
``:759-773``).  Prototypes exist only for the training classes; a class name never trained on is scored with its
ZERO-SHOT prototype, built as at initialisation from the EVALUATED dataset's template(s) (its CoOp template; the
7 + 1 on ImageNet): the prototype it would have started from, and the one CLAP's penalty pulls towards.  Base-to-new
and cross-dataset are therefore served (the reference ran neither; the same choice as ``taskres`` in this lineage),
and their new-class / target scores are those of zero-shot CLIP with these prototypes, by construction.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api import Method, Param, PooledBatches, TrainData, fit, prompt_name, register_method, warmup_cosine
from ._prompts import match_classes
from ._templates import IMAGENET_TEMPLATES_SELECT

IMAGENET_EXTRA = "a photo of a {}."
CHUNK = 8192


def zero_shot_prototypes(backbone, templates: list[str], classnames: list[str]) -> torch.Tensor:
    """(C, D) mean over templates of the UNnormalised text features (CL ``:118-127``)."""
    per = [backbone.encode_text([t.format(prompt_name(c)) for c in classnames], normalize=False).float()
           for t in templates]
    return torch.stack(per).mean(0)


def cos_logits(f: torch.Tensor, w: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * F.normalize(f, dim=-1) @ F.normalize(w, dim=-1).t()


def true_class_multipliers(f: torch.Tensor, y: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """λ_c = mean over the views of class c of softmax(zero-shot logits)[true class] (0 for a class without views)."""
    own = torch.cat([  # in chunks: 20 views x 16 shots x 1000 classes on ImageNet
        torch.softmax(cos_logits(f[i:i + CHUNK], text, scale), dim=-1).gather(1, y[i:i + CHUNK, None])[:, 0]
        for i in range(0, len(y), CHUNK)]).double()
    one_hot = F.one_hot(y, text.shape[0]).double()  # matmuls: deterministic on CUDA (index_add_ may not be)
    return ((one_hot.t() @ own) / one_hot.sum(0).clamp_min(1)).to(f.dtype)


class Prototypes(nn.Module):
    def __init__(self, text: torch.Tensor, lam: torch.Tensor):
        super().__init__()
        self.prototypes = nn.Parameter(text.clone())
        self.register_buffer("text", text.clone())
        self.register_buffer("lam", lam.clone())


@register_method("clap")
class CLAP(Method):
    description = "CLAP: zero-shot-initialised prototypes, class-wise L2 penalty to them, 20 views, SGD 0.1 x 300"
    display_name = "CLAP"
    color = "#7570B3"
    marker = "P"
    linestyle = "-"
    order = 150
    constrained = True
    hparam_spec = {
        "epochs": Param(int, min=1, help="training epochs (each max(1, N // batch_size) batches)"),
        "batch_size": Param(int, min=1, help="samples (views) per SGD step"),
        "lr": Param(float, min=0.0, help="peak SGD learning rate"),
        "momentum": Param(float, min=0.0, max=1.0, help="SGD momentum"),
        "weight_decay": Param(float, min=0.0, help="SGD weight decay"),
        "warmup_epochs": Param(int, min=0, help="epochs of constant warm-up learning rate"),
        "warmup_lr": Param(float, min=0.0, help="warm-up learning rate"),
        "views": Param(int, min=1, help="augmented views per training image pooled into the training bank"),
    }

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return {"epochs": 300, "batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0,
                "warmup_epochs": 1, "warmup_lr": 1e-5, "views": 20}

    @classmethod
    def train_augmentation(cls, hparams):
        return None  # the suite's CoOp augmentation: RandomResizedCrop (0.08, 1) + flip, as Dassl's

    @classmethod
    def cached_views(cls, hparams):
        return int(hparams.get("views", 20))

    def __init__(self, ctx):
        super().__init__(ctx)
        self.train_templates = self.templates_for(ctx.dataset)
        self.model: Prototypes | None = None
        self._zero_shot: dict = {}

    def template_info(self) -> dict:
        info = {"templates": self.train_templates, "prototypes": "trained (zero-shot init: mean of unnormalised "
                "text features)", "constraint": "l2" if self.constrained else "none"}
        if self.ctx.eval_dataset is not None:
            info["unseen_classes"] = {"zero-shot prototypes": self.templates_for(self.ctx.eval_dataset)}
        return info

    def loss(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = self.model
        loss = F.cross_entropy(cos_logits(f, m.prototypes, self.ctx.backbone.logit_scale), y)
        if self.constrained:
            loss = loss + (m.lam * (m.prototypes - m.text).pow(2).sum(-1)).mean()
        return loss

    @staticmethod
    def step(loss_fn, args, opt, scaler):
        """A plain fp32 step (the cached features are fp32: no loss scaling)."""
        loss = loss_fn(*args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def bank(self, train: TrainData) -> tuple[torch.Tensor, torch.Tensor, int]:
        """All ``views`` augmented views of every image as separate samples: (V·N, D), (V·N,), V."""
        dev = torch.device(self.ctx.device)
        v = min(int(self.hp.get("views", 20)), int(train.n_views))
        if v < int(self.hp.get("views", 20)):
            self.ctx.log(f"{self.name}: {train.n_views} cached views per image (of {self.hp.get('views', 20)})")
        feats = torch.cat([train.view(i).to(dev).float() for i in range(v)])
        labels = train.labels.to(dev).repeat(v)
        return feats, labels, v

    def fit(self, train: TrainData) -> dict:
        ctx, hp = self.ctx, self.hp
        dev = torch.device(ctx.device)
        feats, labels, v = self.bank(train)
        text = zero_shot_prototypes(ctx.backbone, self.train_templates, ctx.classnames).to(dev)
        scale = ctx.backbone.logit_scale
        with torch.no_grad():
            lam = true_class_multipliers(feats, labels, text, scale) if self.constrained else torch.zeros(
                len(text), device=dev)
        self.model = m = Prototypes(text, lam)
        epochs, lr = int(hp["epochs"]), float(hp["lr"])
        data = PooledBatches(feats, labels, len(train.labels), int(hp["batch_size"]), ctx.seed)
        optimizer = lambda params: torch.optim.SGD(params, lr=lr, momentum=float(hp["momentum"]),  # noqa: E731
                                                   weight_decay=float(hp["weight_decay"]))
        stats = fit(m, self.loss, data, ctx, epochs=epochs, optimizer=optimizer, step_fn=self.step,
                    schedule=warmup_cosine(lr, epochs, int(hp["warmup_epochs"]), float(hp["warmup_lr"])))
        stats.pop("loss_scale", None)
        stats.update(n_views_used=v, steps_per_epoch=len(data), selection="last epoch")
        if self.constrained:
            stats["lambda_mean"] = float(lam.mean())
        with torch.no_grad():
            stats["prototype_shift"] = float((m.prototypes - m.text).norm(dim=-1).mean())
        return stats

    def templates_for(self, dataset: str) -> list[str]:
        """The zero-shot prototype templates of ``dataset``: ImageNet's 7 + 1, else its CoOp template at hand."""
        return list(IMAGENET_TEMPLATES_SELECT) + [IMAGENET_EXTRA] if dataset == "imagenet" else [self.ctx.template]

    def prototypes_for(self, classnames: list[str]) -> torch.Tensor:
        """(n, D) rows: the trained prototype of every training class name, the zero-shot prototype (the evaluated
        dataset's template(s), as at initialisation) of any other name."""
        m, known = self.model, self.ctx.classnames
        where = {n: i for i, n in reversed(list(enumerate(known)))}
        unseen = list(dict.fromkeys(n for n in classnames if n not in where))
        if not unseen:
            return m.prototypes[match_classes(known, list(classnames), self.display_name).to(m.prototypes.device)]
        templates = self.templates_for(self.ctx.eval_dataset or self.ctx.dataset)
        key = (tuple(templates), tuple(unseen))
        if key not in self._zero_shot:
            self._zero_shot.clear()
            self._zero_shot[key] = zero_shot_prototypes(self.ctx.backbone, templates, unseen).to(m.prototypes.device)
        zs = self._zero_shot[key]
        rows = [m.prototypes[where[n]] if n in where else zs[unseen.index(n)] for n in classnames]
        return torch.stack(rows)

    def logits(self, features, classnames):
        if self.model is None:
            raise RuntimeError(f"{self.name}: fit() first")
        with torch.no_grad():
            w = self.prototypes_for(list(classnames))
            return cos_logits(features.to(w.device).float(), w, self.ctx.backbone.logit_scale)
