"""CoOp with a unified context (Zhou et al., IJCV 2022; docs/protocol.md §7): learnable words "[V]_1..[V]_M <name>."
shared by every class, trained with cross-entropy on logit_scale · cos(image, text); only the context learns.

Defaults (docs/protocol.md §7): few-shot: 16 random context vectors (std 0.02), class token at the end, batch 32,
lr 0.002, 50/100/100/200/200 epochs for 1/2/4/8/16 shots (50 on ImageNet); base-to-new, domain shift and
cross-dataset: 4 vectors initialised from "a photo of a", 200 epochs (50 on ImageNet).  The learned context
scores any class names (new classes, ImageNet-A/R's 200).
"""

import torch
import torch.nn.functional as F

from bench.api import Method, cosine_logits, fit_epochs, register_method
from ._prompts import OPTIM_SPEC, PROMPT_SPEC, coop_defaults, learner_from_hparams, optim_kwargs


@register_method("coop")
class CoOp(Method):
    description = "CoOp, unified learnable context (M=16 random few-shot; M=4 'a photo of a' otherwise)"
    display_name = "CoOp"
    color = "#D55E00"
    marker = "o"
    linestyle = "-"
    order = 20
    csc = False
    hparam_spec = {**PROMPT_SPEC, **OPTIM_SPEC}

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return coop_defaults(protocol, dataset, shots)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.learner = learner_from_hparams(ctx, csc=self.csc)

    def template_info(self) -> dict:
        return self.learner.info()

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One step: the class text features once for all classes, then CE over the batch."""
        text = self.learner.text_features(self.ctx.classnames)
        return F.cross_entropy(cosine_logits(features, text, self.ctx.backbone.logit_scale), labels)

    def fit(self, train):
        return fit_epochs(self.learner, self.loss, train, self.ctx, **optim_kwargs(self.hp))

    def logits(self, features, classnames):
        with torch.no_grad():
            text = self.learner.text_features(list(classnames))
            return cosine_logits(features.to(self.learner.ctx.device), text, self.ctx.backbone.logit_scale)
