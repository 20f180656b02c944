"""CLIP-Adapter (Gao et al., IJCV 2023, "CLIP-Adapter: Better Vision-Language Models with Feature Adapters";
``gaopengcuhk/CLIP-Adapter`` at 08d07f8, whose only code is ``clip_adapter.py``).

What is learned: a bottleneck MLP A on the image feature, Linear(D, D/4, no bias) -> ReLU -> Linear(D/4, D, no bias)
-> ReLU (``clip_adapter.py:55-67``; instantiated ``Adapter(1024, 4)`` at ``:97``, 1024 being RN50's width: D here is
the backbone's embedding width, as in CLAP's reimplementation ``trainers/adapters.py:186-191``), initialised as
torch's ``nn.Linear`` (Kaiming-uniform) from a generator seeded with the run seed.

Forward (``:100-115``): f' = r*A(f) + (1 - r)*f on the unnormalised image feature f, r = 0.2 (hard-coded at
``:104-105``); f' and the frozen text features t are L2-normalised and logits = logit_scale * cos(f', t) (the
backbone's ``logit_scale``). t: the single CoOp template of the dataset at hand filled with each class name
(``:18-34,79-86``; ImageNet and its variants "a photo of a {}."). Loss: cross-entropy (``:155-158``). Only the adapter
is optimised (``:144``); both encoders are frozen (the reference casts CLIP to fp32, ``:128``).

Optimisation: the repository ships NO optimiser, schedule, epochs or config; its README (``README.md:11,14``) says
to drop the file into CoOp's ``trainers/`` and "follow CoOp's command". So the suite trains it with CoOp's recipe
(``_prompts.coop_defaults``' optimisation keys, the same numbers as the ``coop`` method): SGD (momentum 0.9, weight
decay 5e-4), lr 0.002, batch 32, 1 warm-up epoch at a constant 1e-5 then cosine per epoch; few-shot epochs
50/100/100/200/200 for 1/2/4/8/16 shots (50 on ImageNet, CoOp's ``rn50_ep50`` for ImageNet); base-to-new, domain
shift and cross-dataset: 200 epochs (50 on ImageNet) as CoOp's other protocols. The last epoch is the final model;
no validation, no search (the reference ships none). The paper's own training values are not in the repository;
``--set lr=... epochs=...`` changes them.

Every protocol is served: the adapter acts on the image feature only, so any list of class names is scored with
the evaluated dataset's template (new classes, ImageNet-A/R's 200, other datasets).

Deliberate differences from the reference:
- D = the backbone's embedding width (the official code hard-codes 1024, RN50 only).
- Trained on the suite's cached augmented views (random resized crop (0.08, 1) + flip, CoOp's augmentation),
  epoch e seeing view e % n_views, instead of a fresh augmentation at every step; precision is the suite's policy.
- The recipe above is the suite's choice (CoOp's), not the authors' (none shipped). CLAP's reimplementation trains
  it with SGD lr 0.1 for 300 epochs on 20 views; LP++'s (``methods/clip_adapter.py`` of its repository) saves no
  checkpoint before loading one: neither is used.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api import (FeatureBatches, Method, Param, cosine_logits, fit, handcrafted_text_features,
                       register_method, sgd, warmup_cosine)
from ._prompts import OPTIM_SPEC, coop_defaults, optim_kwargs

RATIO = 0.2      # clip_adapter.py:104
REDUCTION = 4    # clip_adapter.py:97


class Adapter(nn.Module):
    """f -> r * relu(W2 relu(W1 f)) + (1 - r) * f, W1: (D/reduction, D), W2: (D, D/reduction), no biases."""

    def __init__(self, dim: int, reduction: int = REDUCTION, ratio: float = RATIO, seed: int | None = 0,
                 device="cpu"):
        super().__init__()
        self.ratio = float(ratio)
        hidden = max(1, int(dim) // int(reduction))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed or 0))
            self.fc = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                    nn.Linear(hidden, dim, bias=False), nn.ReLU())
        self.to(device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.ratio * self.fc(features) + (1.0 - self.ratio) * features


@register_method("clip_adapter")
class CLIPAdapter(Method):
    description = "CLIP-Adapter: residual bottleneck MLP on the image feature (r=0.2), CoOp's SGD recipe"
    display_name = "CLIP-Adapter"
    color = "#B15928"
    marker = "h"
    linestyle = "-"
    order = 100
    protocols = ("fewshot", "base2new", "domain_shift", "cross_dataset")
    hparam_spec = {
        "ratio": Param(float, min=0.0, max=1.0, help="residual ratio r: f' = r*A(f) + (1-r)*f"),
        "reduction": Param(int, min=1, help="bottleneck reduction: hidden width D // reduction"),
        **OPTIM_SPEC,
    }

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        coop = coop_defaults(protocol, dataset, int(shots or 16))
        return {"ratio": RATIO, "reduction": REDUCTION, **optim_kwargs(coop)}

    def __init__(self, ctx):
        super().__init__(ctx)
        self.adapter = Adapter(ctx.backbone.embed_dim, int(self.hp.get("reduction", REDUCTION)),
                               float(self.hp.get("ratio", RATIO)), seed=ctx.seed, device=ctx.device)
        self.train_template = ctx.template

    def template_info(self) -> dict:
        return {"template": self.ctx.template, "trained_with": self.train_template, "ratio": self.adapter.ratio,
                "hidden": self.adapter.fc[0].out_features}

    def text(self, template: str, classnames: list[str]) -> torch.Tensor:
        return handcrafted_text_features(self.ctx.backbone, template, list(classnames))

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        text = self.text(self.train_template, self.ctx.classnames)
        return F.cross_entropy(cosine_logits(self.adapter(features), text, self.ctx.backbone.logit_scale), labels)

    def fit(self, train):
        kw = optim_kwargs(self.hp)
        epochs, lr = kw["epochs"], kw["lr"]
        return fit(self.adapter, self.loss, FeatureBatches(train, kw["batch_size"], self.ctx.seed, self.ctx.device),
                   self.ctx, epochs=epochs, optimizer=sgd(lr, kw["momentum"], kw["weight_decay"]),
                   schedule=warmup_cosine(lr, epochs, kw["warmup_epochs"], kw["warmup_lr"]))

    def logits(self, features, classnames):
        with torch.no_grad():
            text = self.text(self.ctx.template, classnames)
            return cosine_logits(self.adapter(features.to(text.device)), text, self.ctx.backbone.logit_scale)
