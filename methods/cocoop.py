"""CoCoOp (Zhou et al., CVPR 2022; docs/protocol.md §7): CoOp's context plus an image-conditional shift.

A meta-net ``Linear(E, E//16) -> ReLU -> Linear(E//16, D)`` maps the L2-normalised image feature x to π(x), added to
every context token (v_m + π(x)), so each image gets its own prompts for all classes.  Defaults for every protocol:
4 context vectors from "a photo of a", class token at the end, batch 1, 10 epochs, lr 0.002.  The B × n_cls
prompts of a batch go through the text encoder in one call; test images are scored in chunks of bounded size.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api import Method, fit_epochs, register_method
from ._prompts import OPTIM_SPEC, PROMPT_SPEC, learner_from_hparams, optim_defaults, optim_kwargs


class CoCoOpNet(nn.Module):
    def __init__(self, learner, embed_dim: int, seed: int | None):
        super().__init__()
        self.learner = learner
        hidden = max(1, embed_dim // 16)
        with torch.random.fork_rng(devices=[]):  # seeded init, independent of the global stream
            torch.manual_seed(int(seed or 0))
            self.meta_net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True),
                                          nn.Linear(hidden, learner.ctx.shape[-1]))
        self.meta_net.to(learner.ctx.device)

    def forward(self, features: torch.Tensor, classnames: list[str], logit_scale: float) -> torch.Tensor:
        """(B, E) image features -> (B, n_cls) logits, each image against its own prompts."""
        f = F.normalize(features.float(), dim=-1)
        text = F.normalize(self.learner.conditional_text_features(classnames, self.meta_net(f)), dim=-1)
        return logit_scale * torch.einsum("be,bne->bn", f, text)


@register_method("cocoop")
class CoCoOp(Method):
    description = "CoCoOp, context + image-conditional meta-net shift (M=4 'a photo of a', batch 1, 10 epochs)"
    hparam_spec = {**PROMPT_SPEC, **OPTIM_SPEC}
    display_name = "CoCoOp"
    color = "#009E73"
    marker = "^"
    linestyle = "-"
    order = 30
    eval_prompts_per_chunk = 8192  # test-time images per encoder call = this // n_classes (at least 1)

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return {"n_ctx": 4, "ctx_init": "a photo of a", "class_token_position": "end", **optim_defaults(10, 1)}

    def __init__(self, ctx):
        super().__init__(ctx)
        self.net = CoCoOpNet(learner_from_hparams(ctx), ctx.backbone.embed_dim, ctx.seed)

    def template_info(self) -> dict:
        m = self.net.meta_net
        return {**self.net.learner.info(),
                "meta_net": f"{m[0].in_features}->{m[0].out_features}->{m[2].out_features} on the normalised image feature"}

    def loss(self, features, labels):
        return F.cross_entropy(self.net(features, self.ctx.classnames, self.ctx.backbone.logit_scale), labels)

    def fit(self, train):
        return fit_epochs(self.net, self.loss, train, self.ctx, **optim_kwargs(self.hp))

    def logits(self, features, classnames):
        classnames = list(classnames)
        chunk = max(1, self.eval_prompts_per_chunk // max(1, len(classnames)))
        device = self.net.learner.ctx.device
        with torch.no_grad():
            return torch.cat([self.net(features[i : i + chunk].to(device), classnames, self.ctx.backbone.logit_scale)
                              for i in range(0, len(features), chunk)]) if len(features) else \
                torch.zeros(0, len(classnames), device=device)
