"""Zero-shot CLIP with the CoOp code's per-dataset hand-crafted prompt (docs/protocol.md, "Hand-crafted prompts").

Every evaluation is scored with the template of the dataset being evaluated (``ctx.template`` inside the runner's
evaluation), so cross-dataset transfer scores DTD with "{} texture." and EuroSAT with
"a centered satellite photo of {}.", as the reference's per-dataset zero-shot runs do.

``--set templates=ensemble`` gives CoOp's ``ZeroshotCLIP2``: the 7 selected ImageNet templates plus the evaluated
dataset's own for every dataset except ImageNet itself (its variants -V2/-Sketch/-A/-R do get theirs, as in the
reference, which compares the dataset name with "ImageNet"); features normalised per template, averaged,
re-normalised.
"""

import torch.nn.functional as F

from bench.api import Method, Param, cosine_logits, handcrafted_text_features, register_method
from ._templates import IMAGENET_TEMPLATES_SELECT


@register_method("zeroshot")
class ZeroShotCLIP(Method):
    needs_training = False
    description = "zero-shot CLIP, hand-crafted prompt per dataset (CoOp's CUSTOM_TEMPLATES)"
    hparam_spec = {"templates": Param(str, choices=("custom", "ensemble"), help="the dataset's prompt or the ensemble")}
    display_name = "Zero-shot CLIP"
    color = "#3A3A3A"
    marker = "*"
    linestyle = "-"
    order = 0

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return {"templates": "custom"}

    def templates(self) -> list[str]:
        """The templates for the dataset at hand (the evaluated one during an evaluation)."""
        if self.hp.get("templates", "custom") == "ensemble":
            dataset = self.ctx.eval_dataset or self.ctx.dataset
            extra = [] if dataset == "imagenet" else [self.ctx.template]
            return list(IMAGENET_TEMPLATES_SELECT) + extra
        return [self.ctx.template]

    def template_info(self) -> dict:
        return {"set": self.hp.get("templates", "custom"), "templates": self.templates()}

    def logits(self, features, classnames):
        bb = self.ctx.backbone
        text = sum(handcrafted_text_features(bb, t, classnames) for t in self.templates())
        return cosine_logits(features, F.normalize(text, dim=-1), bb.logit_scale)
