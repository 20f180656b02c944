"""Low-rank weight adapters (LoRA) on the attention maps of open_clip's towers, without forking open_clip.

:class:`LoRA` holds trainable low-rank deltas for chosen linear maps — ``q``, ``k``, ``v`` (the three slices of
the fused ``in_proj_weight`` of open_clip's ``nn.MultiheadAttention``) and ``o`` (``out_proj``) — of chosen blocks
of the text tower, the image tower or both.  Each adapted map computes

    y = W x + b + s · B A dropout(x),    s = alpha / √r,

with A (r × d_in) Kaiming-uniform (a = √5), B (d_out × r) zeros, dropout only on the LoRA input and only while
the :class:`LoRA` module is in training mode, the frozen W and b untouched (CLIP-LoRA, ``loralib/layers.py``;
facts with file:line in docs/protocol.md).  Zero B gives the frozen model's outputs.

The backbone is shared by every run of a process, so it is adapted only *inside* :meth:`LoRA.applied`: on entry
the ``forward`` of each adapted attention module is replaced (an instance attribute, nothing of the class) by
:func:`lora_attention`, on exit it is removed again, and the frozen weights are never written.  Everything that
runs the towers inside — open_clip's own ``encode_image`` / ``encode_text`` or :mod:`bench.model.prompted`
(text cut at end-of-text, exact under the causal mask) — runs the adapted attention, on CPU and GPU alike.

:func:`lora_attention` is self-attention as ``nn.MultiheadAttention`` computes it for open_clip: per-slice input
projections (plus the deltas), heads, ``scaled_dot_product_attention`` with the same mask semantics (an additive
float mask, or a boolean one where True means "not allowed"; 2-D or per-head 3-D), the module's attention dropout
in training mode only, then ``out_proj``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import BenchError

MATRICES = ("q", "k", "v", "o")
ENCODERS = ("text", "vision", "both")
# Which blocks, as in CLIP-LoRA's INDEX_POSITIONS (loralib/utils.py:10-44) for 12 blocks, for any depth n.
POSITIONS = {
    "all": lambda n: range(n),
    "bottom": lambda n: range(n // 3),
    "mid": lambda n: range(n // 3, 2 * n // 3),
    "up": lambda n: range(2 * n // 3, n),
    "half-bottom": lambda n: range(n // 2),
    "half-up": lambda n: range(n // 2, n),
    "top": lambda n: range(n - 1, n),
    "top3": lambda n: range(max(n - 3, 0), n),
}


def parse_matrices(params) -> tuple[str, ...]:
    """"qkv", "q,k,v", ["q", "v"] -> ("q", "k", "v") / ("q", "v"); BenchError for anything else."""
    items = list(params.replace(",", "").replace(" ", "")) if isinstance(params, str) else list(params)
    if not items or any(p not in MATRICES for p in items) or len(set(items)) != len(items):
        raise BenchError(f"LoRA params {params!r}: expected a non-empty subset of q, k, v, o (e.g. qkv, qv, qkvo)")
    return tuple(p for p in MATRICES if p in items)


def attention_modules(backbone, encoder: str, position: str = "all") -> list[tuple[str, nn.MultiheadAttention]]:
    """(name, attention module) of the chosen blocks: names ``text.<i>`` / ``vision.<i>``; BenchError (one line)
    for a tower without open_clip self-attention blocks."""
    from open_clip.transformer import VisionTransformer

    if encoder not in ENCODERS:
        raise BenchError(f"LoRA encoder {encoder!r}: expected one of {', '.join(ENCODERS)}")
    if position not in POSITIONS:
        raise BenchError(f"LoRA position {position!r}: expected one of {', '.join(POSITIONS)}")
    m = backbone.model
    towers = []
    if encoder in ("text", "both"):
        if getattr(m, "token_embedding", None) is None or not hasattr(m, "transformer"):
            raise BenchError(f"{backbone.arch} has no CLIP-style text transformer: LoRA cannot adapt its text tower")
        towers.append(("text", m.transformer))
    if encoder in ("vision", "both"):
        if not isinstance(getattr(m, "visual", None), VisionTransformer):
            raise BenchError(f"{backbone.arch} has a {type(getattr(m, 'visual', None)).__name__} image tower: "
                             f"LoRA adapts open_clip VisionTransformer (ViT-*) towers only")
        towers.append(("vision", m.visual.transformer))
    out = []
    for tower, transformer in towers:
        blocks = list(transformer.resblocks)
        for i in POSITIONS[position](len(blocks)):
            attn = getattr(blocks[i], "attn", None)
            if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
                raise BenchError(f"{backbone.arch}: block {i} of the {tower} tower has no fused nn.MultiheadAttention "
                                 f"(in_proj_weight): LoRA cannot adapt it")
            out.append((f"{tower}.{i}", attn))
    return out


class LowRankDelta(nn.Module):
    """The LoRA path of one linear map: x -> s · B A dropout(x) (the delta only; W x + b is the frozen map's)."""

    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, d_in))
        self.B = nn.Parameter(torch.zeros(d_out, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = float(alpha) / math.sqrt(rank)
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(x.to(self.A.dtype), self.dropout, self.training) if self.dropout else x.to(self.A.dtype)
        return (F.linear(F.linear(h, self.A), self.B) * self.scale).to(x.dtype)


def lora_attention(mha: nn.MultiheadAttention, deltas: dict, query, key, value, key_padding_mask=None,
                   need_weights=True, attn_mask=None, average_attn_weights=True, is_causal=False):
    """``mha``'s self-attention with ``deltas`` (matrix name -> :class:`LowRankDelta`) added to its maps; the
    signature and return value of ``nn.MultiheadAttention.forward`` (attention weights are not computed: None)."""
    if key is not query or value is not query:
        raise BenchError("LoRA adapts self-attention only (query, key and value must be the same tensor)")
    if key_padding_mask is not None:
        raise BenchError("LoRA attention does not take a key_padding_mask (open_clip's towers pass none)")
    # Sequence-first, in nn.MultiheadAttention's order of operations (so the frozen part is computed as it does).
    x = query.transpose(0, 1) if mha.batch_first else query
    length, n, width = x.shape
    heads = mha.num_heads
    packed = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    packed = packed.unflatten(-1, (3, width)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()

    def project(i: int, name: str) -> torch.Tensor:
        y = packed[i] + deltas[name](x) if name in deltas else packed[i]
        return y.view(length, n * heads, width // heads).transpose(0, 1).view(n, heads, length, width // heads)

    q, k, v = project(0, "q"), project(1, "k"), project(2, "v")
    mask = attn_mask
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=mask.device).masked_fill_(mask, float("-inf"))
        mask = mask.view(1, 1, length, length) if mask.dim() == 2 else mask.view(n, heads, length, length)
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=mha.dropout if mha.training else 0.0,
                                         is_causal=bool(is_causal) and mask is None)
    out = out.permute(2, 0, 1, 3).reshape(length * n, width)
    y = mha.out_proj(out)
    if "o" in deltas:
        y = y + deltas["o"](out)
    y = y.view(length, n, width)
    return (y.transpose(0, 1) if mha.batch_first else y), None


class LoRA(nn.Module):
    """Trainable low-rank deltas for the attention maps ``params`` of the blocks ``position`` of ``encoder``.

    Parameters: ``deltas[<tower>_<block>_<matrix>]`` (:class:`LowRankDelta`), created on the backbone's device
    from a generator seeded with ``seed`` (so two runs with one seed start equal).  The backbone is not a
    submodule: ``state_dict()`` holds the deltas only.  Use the towers inside :meth:`applied`.
    """

    def __init__(self, backbone, rank: int = 2, alpha: float = 1.0, dropout: float = 0.0, params="qkv",
                 encoder: str = "both", position: str = "all", seed: int | None = 0):
        super().__init__()
        if int(rank) < 1:
            raise BenchError(f"LoRA rank {rank}: expected an integer >= 1")
        self.backbone = backbone
        self.matrices = parse_matrices(params)
        self.encoder, self.position = encoder, position
        self._targets = attention_modules(backbone, encoder, position)
        self.deltas = nn.ModuleDict()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed or 0))
            for name, mha in self._targets:
                d = mha.embed_dim
                for matrix in self.matrices:
                    self.deltas[self._key(name, matrix)] = LowRankDelta(d, d, int(rank), alpha, dropout)
        self.to(backbone.device)
        self._depth = 0

    @staticmethod
    def _key(name: str, matrix: str) -> str:
        return f"{name.replace('.', '_')}_{matrix}"

    @property
    def adapts_text(self) -> bool:
        return self.encoder in ("text", "both")

    @property
    def adapts_vision(self) -> bool:
        return self.encoder in ("vision", "both")

    def info(self) -> dict:
        return {"matrices": "".join(self.matrices), "encoder": self.encoder, "position": self.position,
                "blocks": [name for name, _ in self._targets],
                "parameters": sum(p.numel() for p in self.parameters())}

    @contextmanager
    def applied(self):
        """Inside: the backbone's adapted attention modules run :func:`lora_attention` with these deltas (nested
        use is a no-op); on exit their own ``forward`` is back.  Another LoRA already applied is refused."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        for name, mha in self._targets:
            if "forward" in mha.__dict__:
                raise BenchError(f"attention {name} of {self.backbone.arch} is already adapted by another LoRA")
        try:
            for name, mha in self._targets:
                deltas = {m: self.deltas[self._key(name, m)] for m in self.matrices}
                mha.forward = partial(lora_attention, mha, deltas)
            self._depth = 1
            yield self
        finally:
            self._depth = 0
            for _, mha in self._targets:
                mha.__dict__.pop("forward", None)
