"""PromptSRC (Khattak et al., ICCV 2023; ``PromptSRC:trainers/promptsrc.py``): IVLP-style independent deep prompts
regularised towards the frozen model, with Gaussian prompt aggregation.

Prompts: 4 text tokens initialised from "a photo of a" and 4 N(0, 0.02²) vision tokens, deep in both towers.
Loss = CE + L_SCL, L_SCL = KL(p_frozen ‖ p_prompted) summed / (B·C)
     + 25 · L1(normalised prompted text features, frozen text features averaged over 60 ImageNet templates)
     + 10 · L1(normalised prompted image feature, normalised frozen feature of the *same augmented image*),
frozen logits = logit scale · frozen image feature · template-averaged text features (both normalised).
Gaussian prompt aggregation: after epoch e (1..E) the prompt weights are added with weight N(e; gpa_mean,
gpa_std) normalised over the E epochs; the aggregate is what is tested.
Defaults (SGD lr 0.0025, batch 4, cosine, 1 warm-up epoch at 1e-5 everywhere):
  base2new (``vit_b16_c2_ep20_batch4_4+4ctx.yaml``): depth 9, 20 epochs, GPA 15 / 1;
  domain_shift, cross_dataset (``..._cross_datasets.yaml``): depth 3, 20 epochs, GPA 6 / 10;
  fewshot (``vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml``): depth 9, 50 epochs, GPA 30 / 30 (ImageNet,
  Caltech101, Pets, Food101, UCF101, SUN397, and the datasets the config does not name) or 45 / 5 (Cars,
  Flowers102, Aircraft, DTD, EuroSAT), as the config's comment says.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api import Param, cosine_logits, fit_image_epochs, prompt_name, register_method
from ._deep import DeepPromptMethod, optim_spec, prompt_spec

GPA_45_5 = {"stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat"}


def imagenet_templates() -> list[str]:
    """The 60 templates of PromptSRC's text target: "a photo of a {}." then CLIP's first 60 ImageNet templates
    without it (open_clip ships CLIP's 80)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    first60 = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES[:60]]
    return ["a photo of a {}."] + [t for t in first60 if t != "a photo of a {}."]


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    g = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, epochs + 1)]
    s = sum(g)
    return [x / s for x in g]


class _Aggregated(nn.Module):
    """The prompts plus their running Gaussian-weighted sum (buffers, so checkpoints carry it)."""

    def __init__(self, prompts):
        super().__init__()
        self.prompts = prompts
        for name, p in prompts.named_parameters():
            self.register_buffer("gpa_" + name.replace(".", "_"), torch.zeros_like(p))

    def accumulate(self, weight: float) -> None:
        for name, p in self.prompts.named_parameters():
            getattr(self, "gpa_" + name.replace(".", "_")).add_(p.detach(), alpha=weight)

    def load_aggregate(self) -> None:
        with torch.no_grad():
            for name, p in self.prompts.named_parameters():
                p.copy_(getattr(self, "gpa_" + name.replace(".", "_")))


@register_method("promptsrc")
class PromptSRC(DeepPromptMethod):
    description = "PromptSRC: IVLP 4+4 + self-regularisation to frozen CLIP + Gaussian prompt aggregation"
    display_name = "PromptSRC"
    color = "#bcbd22"
    marker = "p"
    order = 80
    hparam_spec = {
        **prompt_spec(), **optim_spec(),
        "text_loss_weight": Param(float, min=0.0, help="weight of the L1 text-consistency loss"),
        "image_loss_weight": Param(float, min=0.0, help="weight of the L1 image-consistency loss"),
        "gpa_mean": Param(float, help="Gaussian prompt aggregation: mean epoch"),
        "gpa_std": Param(float, min=1e-6, help="Gaussian prompt aggregation: std in epochs"),
    }

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        if protocol in ("domain_shift", "cross_dataset"):
            depth, epochs, gpa = 3, 20, (6.0, 10.0)
        elif protocol == "fewshot":
            depth, epochs, gpa = 9, 50, (45.0, 5.0) if dataset in GPA_45_5 else (30.0, 30.0)
        else:
            depth, epochs, gpa = 9, 20, (15.0, 1.0)
        return {**cls._hparams(4, 4, depth, depth, epochs=epochs, lr=0.0025), "text_loss_weight": 25.0,
                "image_loss_weight": 10.0, "gpa_mean": gpa[0], "gpa_std": gpa[1]}

    def frozen_text(self) -> torch.Tensor:
        """Normalised mean over the 60 templates of the frozen text features of the training classes."""
        if getattr(self, "_frozen_text", None) is None:
            b, names = self.ctx.backbone, [prompt_name(c) for c in self.ctx.classnames]
            feats = torch.stack([b.encode_text([t.format(n) for n in names], normalize=False)
                                 for t in imagenet_templates()]).mean(0)
            self._frozen_text = F.normalize(feats, dim=-1)
        return self._frozen_text

    def loss(self, batch):
        scale = self.ctx.backbone.logit_scale
        text = F.normalize(self.prompts.text_features(self.ctx.classnames), dim=-1)
        image = F.normalize(self.prompts.image_features(batch.images), dim=-1)
        logits = scale * image @ text.t()
        frozen_image = F.normalize(batch.frozen, dim=-1)  # the frozen encoder on the very same augmented images
        frozen_logits = cosine_logits(frozen_image, self.frozen_text(), scale)
        kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(frozen_logits, dim=1), reduction="sum",
                      log_target=True) / logits.numel()
        l1_text = F.l1_loss(text, self.frozen_text()) * float(self.hp["text_loss_weight"])
        l1_image = F.l1_loss(image, frozen_image) * float(self.hp["image_loss_weight"])
        return F.cross_entropy(logits, batch.labels) + kl + l1_text + l1_image

    def fit(self, train):
        from ._prompts import optim_kwargs

        self._text_cache.clear()
        kw = optim_kwargs(self.hp)
        weights = gpa_weights(kw["epochs"], float(self.hp["gpa_mean"]), float(self.hp["gpa_std"]))
        agg = _Aggregated(self.prompts)
        stats = fit_image_epochs(agg, self.loss, train, self.ctx, **kw,
                                 on_epoch_end=lambda e: agg.accumulate(weights[e - 1]))
        agg.load_aggregate()
        return {**stats, "gpa_weights": weights}
