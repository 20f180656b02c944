"""Shared parts of the methods that prompt the encoders (``vpt_deep``, ``ivlp``, ``maple``, ``promptsrc``).

:class:`DeepPrompts` holds the learnable tokens of both towers and encodes through :mod:`bench.model.prompted`:

* text (``n_ctx_text`` > 0): the prompt of class c is ``"<ctx_init> <name>."`` when ``ctx_init`` has at least
  ``n_ctx_text`` tokens (its first ``n_ctx_text`` token embeddings initialise the context, the rest of the words
  stay fixed: MaPLe's "a photo" + "of a <name>."), else ``"X .. X <name>."`` with N(0, 0.02²) context; layers
  1 .. ``text_depth``-1 get their own N(0, 0.02²) tokens replacing positions 1..n.  ``n_ctx_text`` = 0: the
  hand-crafted prompt ``"a photo of a <name>."``, frozen (VPT-deep).
* vision (``n_ctx_vision`` > 0): N(0, 0.02²) tokens appended before ``ln_pre``, replaced at layers
  1 .. ``vision_depth``-1.  ``coupled`` (MaPLe): the vision tokens of layer i are Linear(text width → vision
  width) of the text tokens of layer i, one Linear per layer; only text tokens and the Linears are parameters.

:class:`DeepPromptMethod` is the base of the four methods: ``trains_on = "images"``, CE training with
:func:`bench.engine.imagestream.fit_image_epochs`, text features cached per class list at evaluation.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api import (BenchError, Method, Param, check_vit, cosine_logits, encode_image, encode_text,
                       fit_image_epochs, prompt_name)
from ._prompts import OPTIM_SPEC, optim_defaults, optim_kwargs

HANDCRAFTED = "a photo of a {}."  # the frozen text side of VPT-deep (MaPLe repository's VPT trainer)


def optim_spec() -> dict:
    """hparam_spec entries of the shared optimiser keys (the CoOp family's)."""
    return dict(OPTIM_SPEC)


def prompt_spec() -> dict:
    return {
        "n_ctx_text": Param(int, min=0, help="learnable text tokens per layer (0: hand-crafted prompt)"),
        "n_ctx_vision": Param(int, min=0, help="learnable vision tokens per layer"),
        "text_depth": Param(int, min=0, help="text layers that get prompts (1: the input only)"),
        "vision_depth": Param(int, min=0, help="vision layers that get prompts (1: the input only)"),
        "ctx_init": Param(str, help="words initialising the text context ('' : random)"),
    }


class DeepPrompts(nn.Module):
    """Learnable prompt tokens of both towers (see the module docstring); the backbone is not a submodule."""

    def __init__(self, backbone, n_ctx_text: int, n_ctx_vision: int, text_depth: int, vision_depth: int,
                 ctx_init: str = "", coupled: bool = False, seed: int | None = 0):
        super().__init__()
        check_vit(backbone)
        self.backbone = backbone
        m = backbone.model
        d, w = m.token_embedding.embedding_dim, m.visual.conv1.out_channels
        self.n_text, self.n_vision = int(n_ctx_text), int(n_ctx_vision)
        self.text_depth = int(text_depth) if self.n_text else 0
        self.vision_depth = int(vision_depth) if self.n_vision else 0
        self.coupled = bool(coupled)
        # The references' depth 12 means "every layer" of ViT-B/16: a shallower tower gets prompts in all its layers.
        self.text_depth = min(self.text_depth, len(m.transformer.resblocks))
        self.vision_depth = min(self.vision_depth, len(m.visual.transformer.resblocks))
        if self.n_text and self.text_depth < 1:
            raise BenchError("text_depth must be >= 1 when n_ctx_text > 0")
        if self.coupled and (self.n_text != self.n_vision or self.text_depth != self.vision_depth or not self.n_text):
            raise BenchError("coupled (MaPLe) prompts need n_ctx_text == n_ctx_vision > 0 and equal depths")
        self.ctx_init = (ctx_init or "").strip().replace("_", " ")
        init_ids = backbone.name_token_ids(self.ctx_init) if self.ctx_init else []
        self.use_init = bool(self.n_text) and len(init_ids) >= self.n_text
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed or 0))
            if self.n_text:
                if self.use_init:
                    init = backbone.token_embedding(backbone.tokenize([self.ctx_init]))[0, 1:1 + self.n_text]
                else:
                    init = torch.randn(self.n_text, d) * 0.02
                self.text_ctx = nn.Parameter(init.detach().float().cpu())
                self.text_deep = nn.ParameterList(
                    [nn.Parameter(torch.randn(self.n_text, d) * 0.02) for _ in range(self.text_depth - 1)])
            if self.coupled:
                self.proj = nn.Linear(d, w)
                self.deep_proj = nn.ModuleList([nn.Linear(d, w) for _ in range(self.vision_depth - 1)])
            elif self.n_vision:
                self.vision_ctx = nn.Parameter(torch.randn(self.n_vision, w) * 0.02)
                self.vision_deep = nn.ParameterList(
                    [nn.Parameter(torch.randn(self.n_vision, w) * 0.02) for _ in range(self.vision_depth - 1)])
        self.to(backbone.device)
        self._prompt_sets: dict = {}

    def info(self) -> dict:
        text = (self.ctx_init if self.use_init else " ".join(["X"] * self.n_text)) if self.n_text else None
        return {"text_prompt": f"{text} {{}}." if text else HANDCRAFTED, "n_ctx_text": self.n_text,
                "n_ctx_vision": self.n_vision, "text_depth": self.text_depth, "vision_depth": self.vision_depth,
                "coupled": self.coupled}

    # --- text ---------------------------------------------------------------------------------------------

    def _prompts(self, classnames: tuple[str, ...]):
        ps = self._prompt_sets.get(classnames)
        if ps is None:
            b = self.backbone
            prefix = self.ctx_init if self.use_init else " ".join(["X"] * self.n_text)
            tokens = b.tokenize([f"{prefix} {prompt_name(c)}." for c in classnames])
            eot = tokens.argmax(dim=1)
            if int(eot.min()) <= self.n_text:
                raise BenchError(f"a prompt with {self.n_text} context tokens does not fit the text encoder's "
                                 f"context length {tokens.shape[1]}")
            tokens = tokens[:, :int(eot.max()) + 1]
            if len(self._prompt_sets) >= 4:
                self._prompt_sets.pop(next(iter(self._prompt_sets)))
            ps = self._prompt_sets[classnames] = (tokens.to(b.device), b.token_embedding(tokens))
        return ps

    def text_features(self, classnames) -> torch.Tensor:
        """(n, embed_dim) text features (not normalised) of the prompted (or hand-crafted) class prompts."""
        if not self.n_text:
            from bench.api import handcrafted_text_features
            return handcrafted_text_features(self.backbone, HANDCRAFTED, list(classnames))
        tokens, embeds = self._prompts(tuple(classnames))
        ctx = self.text_ctx.to(embeds.dtype)
        embeds = torch.cat([embeds[:, :1], ctx.expand(len(tokens), -1, -1), embeds[:, 1 + self.n_text:]], dim=1)
        return encode_text(self.backbone, embeds, tokens, list(self.text_deep))

    # --- vision -------------------------------------------------------------------------------------------

    def vision_prompts(self):
        if self.coupled:
            return self.proj(self.text_ctx), [p(t) for p, t in zip(self.deep_proj, self.text_deep)]
        if self.n_vision:
            return self.vision_ctx, list(self.vision_deep)
        return None, []

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        first, deep = self.vision_prompts()
        return encode_image(self.backbone, images, first, deep)


class DeepPromptMethod(Method):
    """CE on logit_scale · cos(prompted image, prompted text) over the image stream (MaPLe, IVLP, VPT-deep)."""

    trains_on = "images"
    coupled = False
    linestyle = "-"

    @classmethod
    def _hparams(cls, n_text, n_vision, t_depth, v_depth, epochs, lr, ctx_init="a photo of a", batch=4) -> dict:
        return {"n_ctx_text": n_text, "n_ctx_vision": n_vision, "text_depth": t_depth, "vision_depth": v_depth,
                "ctx_init": ctx_init, **optim_defaults(epochs, batch, lr)}

    def __init__(self, ctx):
        super().__init__(ctx)
        hp = self.hp
        self.prompts = DeepPrompts(ctx.backbone, int(hp["n_ctx_text"]), int(hp["n_ctx_vision"]),
                                   int(hp["text_depth"]), int(hp["vision_depth"]), str(hp.get("ctx_init") or ""),
                                   coupled=self.coupled, seed=ctx.seed)
        self._text_cache: dict = {}

    def template_info(self) -> dict:
        return self.prompts.info()

    def logits_of(self, images, classnames):
        text = self.prompts.text_features(classnames)
        return cosine_logits(self.prompts.image_features(images), text, self.ctx.backbone.logit_scale)

    def loss(self, batch) -> torch.Tensor:
        return F.cross_entropy(self.logits_of(batch.images, self.ctx.classnames), batch.labels)

    def fit(self, train) -> dict:
        self._text_cache.clear()
        return fit_image_epochs(self.prompts, self.loss, train, self.ctx, **optim_kwargs(self.hp),
                                **self.fit_extras())

    def fit_extras(self) -> dict:
        return {}

    def logits(self, images, classnames):
        """(B, 3, H, W) test images -> (B, len(classnames)) logits; text features computed once per class list."""
        key = tuple(classnames)
        if key not in self._text_cache:
            self._text_cache.clear()
            with torch.no_grad():
                self._text_cache[key] = self.prompts.text_features(list(classnames))
        with torch.no_grad():
            return cosine_logits(self.prompts.image_features(images), self._text_cache[key],
                                 self.ctx.backbone.logit_scale)
