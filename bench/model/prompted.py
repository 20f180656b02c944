"""Deep prompts inside open_clip's towers, run block by block from a :class:`bench.model.backbone.Backbone`.

No fork of open_clip: the functions below call the model's own modules (embeddings, LayerNorms, residual blocks,
pooling, projections) in open_clip's order and insert learnable tokens between them, as the MaPLe / IVLP / VPT /
PromptSRC reference code does in its modified CLIP:

* text: the caller passes word embeddings whose positions 1..n already hold the layer-0 prompts (CoOp-style
  splice); before block i (i = 1 .. len(deep)) positions 1..n of the residual stream are *replaced* by
  ``deep[i-1]``.  Causal mask passed explicitly, end-of-text pooling, ``ln_final``, ``text_projection``; with
  ``cut`` only the first max(eot)+1 positions run (exact: attention is causal and the prompts sit before EOT).
* vision: conv1 patches, class token, positional embedding (and open_clip's patch dropout, identity in eval);
  then the n prompt tokens are *appended* at the end of the sequence (no positional embedding), ``ln_pre`` runs
  on the whole sequence; before block i (i = 1 .. len(deep)) the last n tokens are replaced by ``deep[i-1]``.
  The prompt tokens are dropped after the last block and the output is pooled as open_clip pools that model
  (``ln_post`` + class token or mean, attentional pooling, ``proj``).

Everything is differentiable w.r.t. the prompts; the frozen weights never receive gradients (requires_grad is
off on the backbone).  Precision as the backbone's (autocast on GPU, fp32 on CPU); outputs are float32.
ViT towers with CLIP-style text transformers only: anything else is refused with one line.
"""

from __future__ import annotations

from typing import Sequence

import torch

from bench.model.backbone import pool_text
from bench.errors import BenchError


def check_vit(backbone) -> None:
    """Refuse (one line) a backbone whose towers cannot take deep prompts."""
    from open_clip.transformer import VisionTransformer

    m = backbone.model
    if not isinstance(getattr(m, "visual", None), VisionTransformer):
        kind = type(getattr(m, "visual", None)).__name__
        raise BenchError(f"{backbone.arch} has a {kind} image tower: deep-prompt methods need an open_clip "
                         f"VisionTransformer (ViT-*) architecture")
    backbone._check_prompt_support()  # CLIP-style causal text transformer with EOT pooling


def _run_blocks(transformer, x: torch.Tensor, attn_mask, insert) -> torch.Tensor:
    """x (n, L, W) batch-first through the blocks; ``insert(i, x)`` may rewrite x before block i."""
    for i, block in enumerate(transformer.resblocks):
        x = insert(i, x)
        if not transformer.batch_first:
            x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
        else:
            x = block(x, attn_mask=attn_mask)
    return x


def encode_text(backbone, embeds: torch.Tensor, tokens: torch.Tensor, deep: Sequence[torch.Tensor] = (),
                cut: bool = True) -> torch.Tensor:
    """Text features (n, embed_dim) float32, not normalised, with deep prompts.

    embeds (n, L, D): word embeddings, prompts of layer 0 already at positions 1..k.  tokens (n, L): locates EOT.
    deep: per deeper layer 1..len(deep), a (k, D) or (n, k, D) tensor replacing positions 1..k before that block.
    """
    check_vit(backbone)
    m = backbone.model
    if len(deep) > len(m.transformer.resblocks) - 1:
        raise BenchError(f"{len(deep) + 1} text prompt layers, but {backbone.arch}'s text tower has "
                         f"{len(m.transformer.resblocks)} blocks")
    if embeds.shape[:2] != tokens.shape:
        raise ValueError(f"embeds {tuple(embeds.shape)} does not match tokens {tuple(tokens.shape)}")
    tokens = tokens.to(backbone.device)
    eot = tokens.argmax(dim=-1)
    n_pos = int(eot.max()) + 1 if cut else embeds.shape[1]
    k = deep[0].shape[-2] if len(deep) else 0
    if k and k + 1 > int(eot.min()):
        raise BenchError(f"{k} deep text prompts do not fit before the end-of-text token")
    cast = m.transformer.get_cast_dtype()
    n = embeds.shape[0]

    def insert(i, x):
        if i == 0 or i > len(deep):
            return x
        p = deep[i - 1].to(x.dtype)
        p = p.expand(n, k, x.shape[-1]) if p.dim() == 2 else p
        return torch.cat([x[:, :1], p, x[:, 1 + k:]], dim=1)

    with backbone._autocast():
        x = embeds[:, :n_pos].to(backbone.device, cast) + m.positional_embedding[:n_pos].to(cast)
        x = _run_blocks(m.transformer, x, m.attn_mask[:n_pos, :n_pos], insert)
        x = pool_text(m, x, eot)
    return x.float()


def encode_image(backbone, images: torch.Tensor, prompts: torch.Tensor | None = None,
                 deep: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """Image features (B, embed_dim) float32, not normalised, with deep vision prompts.

    prompts: (k, W) or (B, k, W) appended after the positional embedding, before ``ln_pre``; None: no prompts
    (then ``deep`` must be empty).  deep: per deeper layer 1..len(deep), (k, W) or (B, k, W) replacing the last
    k tokens before that block.
    """
    check_vit(backbone)
    v = backbone.model.visual
    if prompts is None and len(deep):
        raise ValueError("deep vision prompts need first-layer prompts")
    if len(deep) > len(v.transformer.resblocks) - 1:
        raise BenchError(f"{len(deep) + 1} vision prompt layers, but {backbone.arch}'s image tower has "
                         f"{len(v.transformer.resblocks)} blocks")
    dtype = torch.float16 if backbone.precision == "fp16" else torch.float32
    images = images.to(backbone.device, dtype)
    b = images.shape[0]
    k = 0 if prompts is None else prompts.shape[-2]

    def expand(p, x):
        p = p.to(x.dtype)
        return p.expand(b, k, x.shape[-1]) if p.dim() == 2 else p

    def insert(i, x):
        if i == 0 or i > len(deep):
            return x
        return torch.cat([x[:, :-k], expand(deep[i - 1], x)], dim=1)

    with backbone._autocast():
        x = v.conv1(images)
        x = x.reshape(b, x.shape[1], -1).permute(0, 2, 1)
        x = torch.cat([v.class_embedding.view(1, 1, -1).expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = x + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        if k:
            x = torch.cat([x, expand(prompts, x)], dim=1)
        x = v.ln_pre(x)
        x = _run_blocks(v.transformer, x, None, insert)
        if k:
            x = x[:, :-k]
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
    return pooled.float()
