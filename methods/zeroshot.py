"""Zero-shot CLIP with the CoOp code's per-dataset hand-crafted prompt (PROTOCOL.md §3.1).

``--set templates=ensemble`` gives CoOp's ``ZeroshotCLIP2``: the 7 selected ImageNet templates plus the dataset's
own (for non-ImageNet datasets), features normalised per template, averaged, re-normalised (§3.2).
"""

import torch.nn.functional as F

from bench.method import Method, cosine_logits, handcrafted_text_features
from bench.registry import register_method

IMAGENET_TEMPLATES_SELECT = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


@register_method("zeroshot")
class ZeroShotCLIP(Method):
    needs_training = False
    description = "zero-shot CLIP, hand-crafted prompt per dataset (CoOp's CUSTOM_TEMPLATES)"
    display_name = "Zero-shot CLIP"
    color = "#3A3A3A"
    marker = "*"
    linestyle = "-"
    order = 0

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return {"templates": "custom"}

    def templates(self) -> list[str]:
        if self.hp.get("templates", "custom") == "ensemble":
            extra = [] if self.ctx.dataset == "imagenet" else [self.ctx.template]
            return IMAGENET_TEMPLATES_SELECT + extra
        return [self.ctx.template]

    def template_info(self) -> dict:
        return {"set": self.hp.get("templates", "custom"), "templates": self.templates()}

    def logits(self, features, classnames):
        bb = self.ctx.backbone
        text = sum(handcrafted_text_features(bb, t, classnames) for t in self.templates())
        return cosine_logits(features, F.normalize(text, dim=-1), bb.logit_scale)
