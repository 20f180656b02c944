"""CLIP-LoRA (Zanella & Ben Ayed, CVPR 2024 workshops; ``MaxZanella/CLIP-LoRA``): low-rank updates of the attention
weights of both encoders, trained with cross-entropy on the few-shot images.

What is learned (``loralib/layers.py:361-423``, ``loralib/utils.py:10-50,107-134``): in every block of both towers
the q, k and v maps of the attention get y = W x + s · B A dropout(x), rank r = 2, s = alpha / √r with alpha = 1
(``layers.py:42``: √r, not r), A Kaiming-uniform, B zero (``:54-68``), dropout 0.25 on the LoRA input in training
only (``:198-208``), biases frozen (:class:`bench.api.LoRA`).
Forward and loss (``lora.py:94-113``, ``main.py:22``): CE(100 · cos(image, text)); the text features of the training
classes are recomputed through the adapted text tower at every iteration, with gradient; the single template
"a photo of a {}." on every dataset (the per-dataset templates are commented out in ``datasets/*.py``).
Optimisation (``lora.py:73-76,122``, ``run_utils.py:20-37``): AdamW (lr 2e-4, weight decay 1e-2, betas 0.9/0.999),
cosine annealing to 1e-6 stepped per iteration, 500 × shots iterations at batch 32 (``n_iters`` here is that total);
no validation, no search, the test set once at the end.  Augmentation: the suite's reference random resized crop
and flip on the image stream.  Precision: the suite's policy (fp16 autocast with loss scaling on GPU, fp32 on CPU;
the reference runs fp16 autocast).  The LoRA weights do not depend on the class, so every protocol is served; the
repository only ran few-shot (docs/protocol.md, "CLIP-LoRA").
"""

import torch
import torch.nn.functional as F

from bench.api import (LoRA, ImageBatches, Method, Param, cosine_iterations, encode_image, encode_text, fit,
                       prompt_name, register_method)

TEMPLATE = "a photo of a {}."
LOGIT_SCALE = 100.0
ITERS_PER_SHOT = 500


@register_method("clip_lora")
class CLIPLoRA(Method):
    trains_on = "images"
    description = "CLIP-LoRA: rank-2 LoRA on q, k, v of both towers, AdamW + per-iteration cosine, 500 x shots iters"
    display_name = "CLIP-LoRA"
    color = "#E7298A"
    marker = "H"
    order = 90
    hparam_spec = {
        "rank": Param(int, min=1, help="LoRA rank r"),
        "alpha": Param(float, min=0.0, help="LoRA alpha (scale alpha / sqrt(r))"),
        "dropout": Param(float, min=0.0, max=1.0, help="dropout on the LoRA input, training only"),
        "params": Param(str, choices=("q", "k", "v", "o", "qk", "qv", "kv", "qkv", "qo", "ko", "vo", "qko", "qvo",
                                      "kvo", "qkvo"), help="which attention maps get LoRA"),
        "encoder": Param(str, choices=("text", "vision", "both"), help="which tower(s) get LoRA"),
        "position": Param(str, choices=("all", "bottom", "mid", "up", "half-bottom", "half-up", "top", "top3"),
                          help="which blocks of each adapted tower"),
        "n_iters": Param(int, min=1, help="training iterations in total (reference: 500 x shots)"),
        "lr": Param(float, min=0.0, help="AdamW learning rate"),
        "batch_size": Param(int, min=1, help="training batch size"),
    }

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return {"rank": 2, "alpha": 1.0, "dropout": 0.25, "params": "qkv", "encoder": "both", "position": "all",
                "n_iters": ITERS_PER_SHOT * max(1, int(shots or 1)), "lr": 2e-4, "batch_size": 32}

    @classmethod
    def train_epochs(cls, hparams):
        return None  # trains for n_iters iterations

    @classmethod
    def estimated_cost(cls, hparams, n_train):
        return float(hparams.get("n_iters", ITERS_PER_SHOT)) * float(hparams.get("batch_size", 32))

    def __init__(self, ctx):
        super().__init__(ctx)
        hp = self.hp
        self.lora = LoRA(ctx.backbone, rank=int(hp["rank"]), alpha=float(hp["alpha"]), dropout=float(hp["dropout"]),
                         params=str(hp["params"]), encoder=str(hp["encoder"]), position=str(hp["position"]),
                         seed=ctx.seed)
        self._tokens: dict = {}
        self._text_cache: dict = {}

    def template_info(self):
        return {"template": TEMPLATE, **self.lora.info()}

    def text_features(self, classnames) -> torch.Tensor:
        """(n, embed_dim) features of "a photo of a <class>." through the (adapted) text tower, cut at EOT."""
        key = tuple(classnames)
        if key not in self._tokens:
            b = self.ctx.backbone
            tokens = b.tokenize([TEMPLATE.format(prompt_name(c)) for c in classnames])
            self._tokens = {key: (tokens, b.token_embedding(tokens))}
        tokens, embeds = self._tokens[key]
        with self.lora.applied():
            return encode_text(self.ctx.backbone, embeds, tokens)

    def image_features(self, images) -> torch.Tensor:
        with self.lora.applied():
            return encode_image(self.ctx.backbone, images)

    def scores(self, image, text) -> torch.Tensor:
        return LOGIT_SCALE * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()

    def loss(self, batch):
        if self.lora.adapts_text:
            text = self.text_features(self.ctx.classnames)
        else:  # the frozen text tower: once
            text = self._frozen_text()
        return F.cross_entropy(self.scores(self.image_features(batch.images), text), batch.labels)

    def _frozen_text(self):
        key = ("frozen", tuple(self.ctx.classnames))
        if key not in self._text_cache:
            with torch.no_grad():
                self._text_cache[key] = self.text_features(self.ctx.classnames)
        return self._text_cache[key]

    def fit(self, train):
        self._text_cache.clear()
        hp = self.hp
        n_iters, lr = int(hp["n_iters"]), float(hp["lr"])
        adamw = lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, betas=(0.9, 0.999))  # noqa: E731
        stats = fit(self.lora, self.loss, ImageBatches(train.loader(int(hp["batch_size"]))), self.ctx,
                    iterations=n_iters, optimizer=adamw, schedule=cosine_iterations(lr, n_iters, eta_min=1e-6))
        self._text_cache.clear()
        return stats

    def logits(self, images, classnames):
        """(B, 3, H, W) test images -> (B, len(classnames)) logits; text features once per class list."""
        key = tuple(classnames)
        with torch.no_grad():
            if key not in self._text_cache:
                self._text_cache.clear()
                self._text_cache[key] = self.text_features(list(classnames))
            return self.scores(self.image_features(images), self._text_cache[key])
