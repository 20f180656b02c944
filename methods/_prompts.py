"""The CoOp-family prompt learner, shared by ``coop``, ``coop_csc``, ``cocoop`` and ``kgcoop`` (docs/protocol.md §7).

A prompt for class ``c`` is the tokenised string ``"X X ... X <name>."`` (``end``), ``"X .. <name> X .. X."``
(``middle``: ``n_ctx // 2`` X's before the name, the rest after) or ``"<name> X ... X."`` (``front``); the word
embeddings of the X positions are replaced by the learnable context vectors and the sequence goes through the frozen
text encoder (:meth:`Backbone.encode_prompts`, cut at the last end-of-text token).  The frozen parts (token ids,
word embeddings, the X positions) are built once per list of class names and cached; only the context is a
parameter.  Contexts come in three shapes:

* unified ``(n_ctx, D)``: one context for every class (CoOp, KgCoOp; also CoCoOp's base context);
* class-specific ``(n_cls, n_ctx, D)`` (CoOp-CSC): one per training class, usable only for those classes;
* per image ``(G, 1, n_ctx, D)``: CoCoOp's ``v_m + π(x)``, one prompt set per image.

Also here: the reference hyperparameter defaults of the family, and name-based class matching used by every
method that can only score its training classes (or a subset, e.g. the 200 classes of ImageNet-A/R).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from bench.api import BenchError, Param, Unsupported, prompt_name

POSITIONS = ("end", "middle", "front")
PLACEHOLDER = "X"
OPTIM_KEYS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs", "warmup_lr")


# --------------------------------------------------------------------------------------------- hyperparameters

OPTIM_SPEC = {
    "epochs": Param(int, min=1, help="training epochs"),
    "batch_size": Param(int, min=1, help="images per SGD step"),
    "lr": Param(float, min=0.0, help="peak SGD learning rate"),
    "momentum": Param(float, min=0.0, max=1.0, help="SGD momentum"),
    "weight_decay": Param(float, min=0.0, help="SGD weight decay"),
    "warmup_epochs": Param(int, min=0, help="epochs of constant warm-up learning rate"),
    "warmup_lr": Param(float, min=0.0, help="warm-up learning rate"),
}
PROMPT_SPEC = {
    "n_ctx": Param(int, min=1, help="learnable context vectors; ignored with ctx_init"),
    "ctx_init": Param(str, help="words the context starts from; '' for random vectors"),
    "class_token_position": Param(str, choices=POSITIONS, help="where the class name goes in the prompt"),
}

def optim_defaults(epochs: int, batch_size: int, lr: float = 0.002) -> dict:
    """SGD + 1 epoch constant warm-up at 1e-5 + cosine (docs/protocol.md §6)."""
    return {"epochs": epochs, "batch_size": batch_size, "lr": lr, "momentum": 0.9, "weight_decay": 5e-4,
            "warmup_epochs": 1, "warmup_lr": 1e-5}


def coop_fewshot_epochs(dataset: str, shots: int) -> int:
    """CoOp's few-shot schedule: 50/100/100/200/200 epochs for 1/2/4/8/16 shots, 50 on ImageNet."""
    if dataset == "imagenet":
        return 50
    return 50 if shots <= 1 else 100 if shots <= 4 else 200


def coop_defaults(protocol: str, dataset: str, shots: int) -> dict:
    """CoOp (unified or CSC) per protocol (docs/protocol.md §7)."""
    if protocol == "fewshot":
        prompt = {"n_ctx": 16, "ctx_init": "", "class_token_position": "end"}
        epochs = coop_fewshot_epochs(dataset, shots)
    else:  # base2new, domain_shift, cross_dataset: the CoCoOp papers' `vit_b16_ctxv1` / `*_ep50_ctxv1`
        prompt = {"n_ctx": 4, "ctx_init": "a photo of a", "class_token_position": "end"}
        epochs = 50 if dataset == "imagenet" else 200
    return {**prompt, **optim_defaults(epochs, 32)}


def optim_kwargs(hp: dict) -> dict:
    """The fit_epochs keyword arguments from a method's hyperparameters."""
    out = {k: hp[k] for k in OPTIM_KEYS if k in hp}
    for k in ("epochs", "batch_size", "warmup_epochs"):
        if k in out:
            out[k] = int(out[k])
    for k in ("lr", "momentum", "weight_decay", "warmup_lr"):
        if k in out:
            out[k] = float(out[k])
    return out


# --------------------------------------------------------------------------------------------- class matching

def match_classes(known: list[str], names: list[str], what: str = "this model") -> torch.Tensor:
    """Indices into ``known`` of each of ``names`` (the same list, or any subset, matched by name).

    A repeated name is matched in order (its k-th occurrence in ``names`` to its k-th in ``known``).
    Raises :class:`Unsupported` for a name ``known`` does not hold.
    """
    if list(names) == list(known):
        return torch.arange(len(known))
    where: dict[str, list[int]] = {}
    for i, n in enumerate(known):
        where.setdefault(n, []).append(i)
    used: dict[str, int] = {}
    idx = []
    for n in names:
        k = used.get(n, 0)
        slots = where.get(n, [])
        if not slots:
            raise Unsupported(f"{what} scores only its {len(known)} training classes (or a subset of them); "
                              f"'{n}' is not one of them")
        idx.append(slots[min(k, len(slots) - 1)])
        used[n] = k + 1
    return torch.tensor(idx, dtype=torch.long)


# --------------------------------------------------------------------------------------------- prompt assembly

def prompt_string(classname: str, n_ctx: int, position: str = "end", placeholder: str = PLACEHOLDER) -> str:
    """The text a prompt stands for, with the context written as placeholder words."""
    name = prompt_name(classname)
    xs = [placeholder] * n_ctx
    if position == "end":
        words = xs + [name]
    elif position == "middle":
        h = n_ctx // 2
        words = xs[:h] + [name] + xs[h:]
    elif position == "front":
        words = [name] + xs
    else:
        raise BenchError(f"unknown class_token_position '{position}'; known: {', '.join(POSITIONS)}")
    return " ".join(words) + "."


def context_positions(name_len: int, n_ctx: int, position: str) -> list[int]:
    """Token positions of the context in a prompt (0 is the start-of-text token)."""
    if position == "end":
        return list(range(1, 1 + n_ctx))
    if position == "middle":
        h = n_ctx // 2
        return list(range(1, 1 + h)) + list(range(1 + h + name_len, 1 + n_ctx + name_len))
    return list(range(1 + name_len, 1 + name_len + n_ctx))  # front


@dataclass
class PromptSet:
    """The frozen part of the prompts for one list of class names."""

    classnames: tuple[str, ...]
    tokens: torch.Tensor      # (n, L) token ids (L = last end-of-text + 1 when cut, else the context length)
    embeds: torch.Tensor      # (n, L, D) word embeddings, on the backbone's device, no grad
    positions: torch.Tensor   # (n, n_ctx) where the context vectors go


def build_prompt_set(backbone, classnames: list[str], n_ctx: int, position: str, cut: bool = True) -> PromptSet:
    if position not in POSITIONS:
        raise BenchError(f"unknown class_token_position '{position}'; known: {', '.join(POSITIONS)}")
    x_ids = backbone.name_token_ids(PLACEHOLDER)
    if len(x_ids) != 1:
        raise BenchError(f"the placeholder '{PLACEHOLDER}' is not one token for this tokenizer")
    tokens = backbone.tokenize([prompt_string(c, n_ctx, position) for c in classnames])
    pos = torch.tensor([context_positions(len(backbone.name_token_ids(prompt_name(c))), n_ctx, position)
                        for c in classnames], dtype=torch.long).reshape(len(classnames), n_ctx)
    eot = tokens.argmax(dim=1)
    for i, c in enumerate(classnames):  # a prompt longer than the context length is truncated by the tokenizer
        p = pos[i]
        if len(p) and (int(p.max()) >= int(eot[i]) or not bool((tokens[i, p] == x_ids[0]).all())):
            raise BenchError(f"the prompt for class '{c}' with {n_ctx} context tokens does not fit the text "
                             f"encoder's context length {tokens.shape[1]}")
    if cut:
        tokens = tokens[:, : int(eot.max()) + 1]
    embeds = backbone.token_embedding(tokens)
    return PromptSet(tuple(classnames), tokens.to(embeds.device), embeds, pos.to(embeds.device))


def splice(prompts: PromptSet, ctx: torch.Tensor) -> torch.Tensor:
    """Word embeddings with the context vectors at the X positions.

    ``ctx`` (n_ctx, D) unified or (n, n_ctx, D) class-specific -> (n, L, D);
    ``ctx`` (G, 1 | n, n_ctx, D) one context per group (CoCoOp: per image) -> (G·n, L, D), group-major.
    """
    base, pos = prompts.embeds, prompts.positions
    n, L, D = base.shape
    k = pos.shape[1]
    ctx = ctx.to(base.dtype)
    if ctx.dim() <= 3:
        rows = torch.arange(n, device=base.device)[:, None].expand(n, k)
        out = base.clone()
        out[rows, pos] = ctx.expand(n, k, D)
        return out
    g = ctx.shape[0]
    out = base.unsqueeze(0).repeat(g, 1, 1, 1)
    gi = torch.arange(g, device=base.device)[:, None, None].expand(g, n, k)
    ri = torch.arange(n, device=base.device)[None, :, None].expand(g, n, k)
    out[gi, ri, pos.unsqueeze(0).expand(g, n, k)] = ctx.expand(g, n, k, D)
    return out.reshape(g * n, L, D)


class PromptLearner(nn.Module):
    """Learnable context vectors (the only parameters) + cached frozen prompt parts, for any class names.

    ``ctx_init`` (words): n_ctx becomes the number of their tokens and the context starts from their token
    embeddings (every class's context with ``csc``); otherwise N(0, 0.02²) from a generator seeded with ``seed``.
    ``cut``: run the text encoder only up to the last end-of-text token (exact; False only for checks/timing).
    """

    def __init__(self, backbone, classnames: list[str], n_ctx: int = 16, ctx_init: str = "",
                 position: str = "end", csc: bool = False, seed: int | None = 0, cut: bool = True):
        super().__init__()
        if backbone.ctx_dim is None:
            raise BenchError(f"{backbone.arch} has no CLIP-style token embedding: prompt methods need one")
        if position not in POSITIONS:
            raise BenchError(f"unknown class_token_position '{position}'; known: {', '.join(POSITIONS)}")
        self.backbone = backbone  # not a submodule: the frozen model never enters state_dict or the optimiser
        self.classnames = list(classnames)
        self.position = position
        self.csc = bool(csc)
        self.cut = bool(cut)
        self.ctx_init = (ctx_init or "").strip()
        if self.ctx_init:
            words = self.ctx_init.replace("_", " ")
            ids = backbone.name_token_ids(words)
            n_ctx = len(ids)
            tokens = backbone.tokenize([words])
            init = backbone.token_embedding(tokens)[0, 1 : 1 + n_ctx].detach().cpu()
            if self.csc:
                init = init.unsqueeze(0).repeat(len(self.classnames), 1, 1)
        else:
            n_ctx = int(n_ctx)
            if n_ctx < 1:
                raise BenchError(f"n_ctx must be >= 1 (got {n_ctx})")
            gen = torch.Generator().manual_seed(int(seed or 0))
            shape = (len(self.classnames), n_ctx, backbone.ctx_dim) if self.csc else (n_ctx, backbone.ctx_dim)
            init = torch.randn(shape, generator=gen) * 0.02
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(init.float().to(backbone.device))
        self._sets: dict[tuple[str, ...], PromptSet] = {}

    def info(self) -> dict:
        return {"n_ctx": self.n_ctx, "ctx_init": self.ctx_init or None, "class_token_position": self.position,
                "csc": self.csc,
                "prompt": prompt_string("{}", self.n_ctx, self.position).replace(PLACEHOLDER, "[V]")}

    def prompts(self, classnames: list[str]) -> PromptSet:
        key = tuple(classnames)
        ps = self._sets.get(key)
        if ps is None:
            if len(self._sets) >= 4:
                self._sets.pop(next(iter(self._sets)))
            ps = self._sets[key] = build_prompt_set(self.backbone, list(classnames), self.n_ctx, self.position, self.cut)
        return ps

    def class_context(self, classnames: list[str]) -> torch.Tensor:
        """The context used for these classes: (n_ctx, D), or (n, n_ctx, D) with csc (training classes only)."""
        if not self.csc:
            return self.ctx
        return self.ctx[match_classes(self.classnames, list(classnames), "a class-specific context").to(self.ctx.device)]

    def text_features(self, classnames: list[str], ctx: torch.Tensor | None = None) -> torch.Tensor:
        """(n, embed_dim) text features (not normalised) of the learned prompts, one encoder call."""
        ps = self.prompts(classnames)
        ctx = self.class_context(classnames) if ctx is None else ctx
        return self.backbone.encode_prompts(splice(ps, ctx), ps.tokens, cut=self.cut)

    def conditional_text_features(self, classnames: list[str], shift: torch.Tensor) -> torch.Tensor:
        """CoCoOp: context ``ctx + shift[g]`` per group (image) -> (G, n, embed_dim), one encoder call."""
        ps = self.prompts(classnames)
        ctx = self.class_context(classnames)
        ctx = ctx.unsqueeze(0) if ctx.dim() == 3 else ctx.unsqueeze(0).unsqueeze(0)  # (1, 1|n, n_ctx, D)
        ctx = ctx + shift[:, None, None, :].to(ctx.dtype)
        feats = self.backbone.encode_prompts(splice(ps, ctx), ps.tokens.repeat(shift.shape[0], 1), cut=self.cut)
        return feats.reshape(shift.shape[0], len(classnames), -1)


def learner_from_hparams(ctx, csc: bool = False) -> PromptLearner:
    hp = ctx.hparams
    learner = PromptLearner(ctx.backbone, ctx.classnames, n_ctx=int(hp.get("n_ctx", 16)),
                            ctx_init=str(hp.get("ctx_init") or ""),
                            position=str(hp.get("class_token_position", "end")), csc=csc, seed=ctx.seed)
    if learner.ctx_init and learner.n_ctx != int(hp.get("n_ctx", learner.n_ctx)):
        ctx.log(f"ctx_init '{learner.ctx_init}' sets n_ctx = {learner.n_ctx} (its token count); "
                f"n_ctx={hp.get('n_ctx')} is ignored, as in the reference")
    return learner
