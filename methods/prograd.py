"""ProGrad (Zhu et al., ICCV 2023, "Prompt-aligned Gradient for Prompt Tuning"): CoOp's unified context, trained
with cross-entropy whose gradient is stripped of the part that conflicts with the zero-shot CLIP teacher.

Sources: the authors' repository github.com/BeierZhu/Prompt-align at 1b76203 (``ProGrad.public/`` and its modified
Dassl, ``Dassl.ProGrad.pytorch/``); ``prograd.py`` is ``ProGrad.public/trainers/prograd.py``, ``trainer.py`` is
``Dassl.ProGrad.pytorch/dassl/engine/trainer.py``.

What is learned: CoOp's context ``ctx``, 16 vectors shared by every class (``CSC False``), class token at the end
(``scripts/prograd.sh``; ``prograd.py:66-198``).  Initialisation (``CTX_INIT: True`` in every ProGrad config,
``configs/trainers/ProGrad/*.yaml:37``; ``prograd.py:78-95``): the dataset's ProGrad template
(:data:`PROGRAD_TEMPLATES`, ``prograd.py:201-217``) minus its trailing ``" {}."`` is the prefix; w = its number of
space-separated WORDS; ``ctx`` starts as zeros with its last w slots set to the word embeddings of the prefix's first
w tokens.  The prompt of class c is the token sequence of ``"X .. X <prefix> <name>."`` (16 - w X's) with positions
1..16 replaced by ``ctx`` (``prograd.py:94-95,114,124-126``).  Where the prefix has more tokens than words (a comma
is its own token: "a type of pet, a photo of a" is 8 words, 9 tokens), its last tokens fall after the 16 context
slots and stay FIXED words in front of the class name; this file reproduces that exactly (the initial prompt reads
"<8 zero vectors> a type of pet , a photo of | a <name>.", with "a" frozen).

Forward (student): CoOp's ``logit_scale · cos(image, text of the learned prompts)`` (``prograd.py:262-277``); it
scores any class names (the shared context is applied to new names, as in CoOp).

Loss: teacher = frozen zero-shot CLIP with the same ProGrad template, on the same augmented view
(``prograd.py:220-249,375-377``): here ``logit_scale · cos(f, t_hand)`` of the cached view's feature f.
``L_ce = CE(z, y)``; ``L_kl = mean_i Σ_c −softmax(z_zs/T)_c · log_softmax(z/T)_c · T²`` (``prograd.py:280-293``,
T = 1: ``configs/trainers/ProGrad/*.yaml:26``).

Gradient step (``trainer.py:311-349``), :func:`prograd_step`: backward L_kl -> g_kl; zero; backward L_ce -> g_ce;
per parameter tensor, if cos(g_ce, g_kl) < 0 then ``g = g_ce − λ (g_ce · ĝ_kl) ĝ_kl`` (ĝ = g / ‖g‖), else g_ce;
then the optimiser step (weight decay is added by SGD after the projection, as in the reference).  λ = 1.0
(``train.py:115``, ``scripts/prograd.sh:15``), 0.8 for 8 and 16 shots on oxford_flowers, dtd and eurosat
(``README.md:52``; few-shot protocol only: ``scripts/base2new_train_prograd.sh:15`` keeps 1.0).

Optimisation: SGD lr 0.002, momentum 0.9, weight decay 5e-4, batch 32, 1 warm-up epoch at a constant 1e-5, cosine
(``configs/trainers/ProGrad/rn50*.yaml:1-22``; Dassl ``defaults.py``); 50 epochs for 1 shot, 100 for 2 and 4, 200 for
8 and 16 (``README.md:54-58``); ImageNet 50 (``scripts/eval.sh:26`` ``--load-epoch 50``, ``README.md:132``).
The last epoch is used (``FINAL_MODEL last_step``): nothing is selected, so the validation split is not read.
Augmentation: the suite's CoOp augmentation (the default ``train_augmentation``: RandomResizedCrop scale 0.08-1 +
flip, as Dassl's ``transforms.py:220``), one cached view per epoch (the default ``cached_views``).

Defaults per protocol (the suite's protocols, not the reference's; docs/protocol.md):

=============  =====================================================================================================
fewshot        as above, at the run's shots.
base2new       the few-shot recipe at the protocol's shots (16 -> 200 epochs, ImageNet 50), λ 1.0.  The reference's
               base-to-new is RN50, 4 shots, ``rn50_ep100`` (``scripts/base2new_train_prograd.sh:10-15``); the
               suite's base-to-new samples 16 shots, and its own few-shot schedule at 16 shots is 200 epochs.
domain_shift,  the few-shot recipe at the protocol's shots on the source (ImageNet: 50 epochs), λ 1.0.  The
cross_dataset  reference evaluates 4-shot ImageNet prompts (``scripts/eval.sh:8,26``); it has no cross-dataset script.
=============  =====================================================================================================

Deliberate differences from the reference:
- precision: the suite's policy (fp32 on CPU; on GPU fp16 autocast through the frozen encoders with fp32 ``ctx`` and
  a loss scaler).  The reference trains an fp16 student (``PREC fp16``, ``train.py:98``, no loss scaling) against an
  fp32 teacher (``prograd.py:225``); here the teacher's text features come from the same backbone at the run's
  precision.  With a loss scaler both losses are backpropagated scaled, the gradients are unscaled BEFORE the
  projection, and an overflow in either gradient skips the step (the scaler's usual rule).
- the teacher's image feature is the cached view's feature (the suite's augmented views are cached; the reference
  encodes each online crop twice, fp16 for the student and fp32 for the teacher);
- datasets ProGrad has no template for (e.g. the miniature world's mini_patterns, mini_fabrics, mini_textures) use
  the generic ``"a photo of a {}."`` (ProGrad's own entry for ImageNet, Caltech101, SUN397, StanfordCars);
- ``train_stats["loss"]`` is the per-epoch mean of L_ce (the reference logs L_ce and L_kl separately).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.api import (BenchError, FeatureBatches, Method, Param, cosine_logits, fit, handcrafted_text_features,
                       prompt_name, register_method, sgd, warmup_cosine)
from ._prompts import (OPTIM_SPEC, PLACEHOLDER, PromptLearner, PromptSet, coop_fewshot_epochs, optim_defaults,
                       optim_kwargs)

# ProGrad's CUSTOM_TEMPLATES (prograd.py:201-217), under the suite's dataset keys.
PROGRAD_TEMPLATES = {
    "oxford_pets": "a type of pet, a photo of a {}.",
    "oxford_flowers": "a type of flower, a photo of a {}.",
    "fgvc_aircraft": "a type of aircraft, a photo of a {}.",
    "dtd": "a texture of {}.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a type of food, a photo of {}.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}
GENERIC_TEMPLATE = "a photo of a {}."  # any other dataset (the miniature world's, synthetic trees)
LAMBDA_08 = ("oxford_flowers", "dtd", "eurosat")  # README.md:52: λ = 0.8 at 8 and 16 shots


def prograd_template(dataset: str) -> str:
    return PROGRAD_TEMPLATES.get(dataset, GENERIC_TEMPLATE)


def template_prefix(template: str) -> str:
    """The words before the class name: ``template`` minus its trailing ``" {}."`` (prograd.py:80)."""
    t = template.strip()
    if t == "{}.":
        return ""
    if not t.endswith(" {}.") or t.count("{}") != 1:
        raise BenchError(f"ProGrad template {template!r} must end with ' {{}}.' (the class name last, as in "
                         f"ProGrad's templates) and contain '{{}}' once")
    return t[: -len(" {}.")].replace("_", " ")


def prograd_lambda(protocol: str, dataset: str, shots: int) -> float:
    return 0.8 if protocol == "fewshot" and dataset in LAMBDA_08 and int(shots) >= 8 else 1.0


class ProGradPromptLearner(PromptLearner):
    """A unified ``end`` context of ``n_ctx`` vectors initialised as in ProGrad (zeros + the prefix's embeddings)."""

    def __init__(self, backbone, classnames: list[str], n_ctx: int, template: str):
        super().__init__(backbone, classnames, n_ctx=n_ctx, ctx_init="", position="end", csc=False, seed=0)
        self.template = template
        self.prefix = template_prefix(template)
        self.n_words = len(self.prefix.split(" ")) if self.prefix else 0  # words, not tokens (prograd.py:82)
        if self.n_words > self.n_ctx:
            raise BenchError(f"ProGrad: n_ctx={self.n_ctx} is smaller than the {self.n_words} words of the "
                             f"template prefix '{self.prefix}' (prograd.py:84)")
        init = torch.zeros(self.n_ctx, backbone.ctx_dim)
        if self.n_words:
            emb = backbone.token_embedding(backbone.tokenize([self.prefix]))[0].detach().cpu()
            init[self.n_ctx - self.n_words:] = emb[1 : 1 + self.n_words]
        with torch.no_grad():
            self.ctx.copy_(init.to(self.ctx.device))

    def prompt_text(self, classname: str) -> str:
        head = " ".join([PLACEHOLDER] * (self.n_ctx - self.n_words))
        return " ".join(w for w in (head, self.prefix, prompt_name(classname)) if w) + "."

    def info(self) -> dict:
        tail = len(self.backbone.name_token_ids(self.prefix)) - self.n_words if self.prefix else 0
        init = (f"zeros, the last {self.n_words} from the first {self.n_words} tokens of '{self.prefix}'"
                if self.prefix else "zeros")
        prompt = " ".join(["[V]"] * self.n_ctx) + (f" <last {tail} token(s) of '{self.prefix}', fixed>" if tail else "")
        return {"n_ctx": self.n_ctx, "class_token_position": "end", "csc": False, "prograd_template": self.template,
                "ctx_init": init, "fixed_prefix_tokens": tail, "prompt": prompt + " {}."}

    def prompts(self, classnames: list[str]) -> PromptSet:
        key = tuple(classnames)
        ps = self._sets.get(key)
        if ps is None:
            if len(self._sets) >= 4:
                self._sets.pop(next(iter(self._sets)))
            ps = self._sets[key] = self._build(list(classnames))
        return ps

    def _build(self, classnames: list[str]) -> PromptSet:
        bb = self.backbone
        tokens = bb.tokenize([self.prompt_text(c) for c in classnames])
        eot = tokens.argmax(dim=1)
        n_x = self.n_ctx - self.n_words
        x_id = bb.name_token_ids(PLACEHOLDER)
        for i, c in enumerate(classnames):
            if int(eot[i]) <= self.n_ctx or (n_x and not bool((tokens[i, 1 : 1 + n_x] == x_id[0]).all())):
                raise BenchError(f"the ProGrad prompt for class '{c}' with {self.n_ctx} context tokens does not fit "
                                 f"the text encoder's context length {tokens.shape[1]}")
        if self.cut:
            tokens = tokens[:, : int(eot.max()) + 1]
        embeds = bb.token_embedding(tokens)
        pos = torch.arange(1, 1 + self.n_ctx).unsqueeze(0).repeat(len(classnames), 1)
        return PromptSet(tuple(classnames), tokens.to(embeds.device), embeds, pos.to(embeds.device))


def prograd_kl(student: torch.Tensor, teacher: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """``mean_i Σ_c −softmax(teacher/T) · log_softmax(student/T) · T²`` (prograd.py:288-291)."""
    return (-F.softmax(teacher / T, dim=-1) * F.log_softmax(student / T, dim=-1) * T * T).sum(1).mean()


def project_conflicting(grads: list[torch.Tensor | None], kl_grads: list[torch.Tensor | None],
                        lam: float) -> list[torch.Tensor | None]:
    """Per tensor: ``g − λ (g·ĝ_kl) ĝ_kl`` where ``g·g_kl < 0`` (cos < 0), else ``g`` (trainer.py:336-345)."""
    out = []
    for g, k in zip(grads, kl_grads):
        if g is None or k is None:
            out.append(g)
            continue
        k_hat = k / torch.linalg.vector_norm(k).clamp_min(1e-30)  # a zero g_kl gives dot 0: no projection
        dot = torch.dot(g.flatten(), k_hat.flatten())
        coef = torch.where(dot < 0, lam * dot, torch.zeros_like(dot))
        out.append(g - coef * k_hat)
    return out


def prograd_step(lam: float):
    """The ``step_fn`` of :func:`bench.api.fit`: ``loss_fn(*args)`` returns ``(L_ce, L_kl)``; one projected step.
    Returns L_ce."""

    def step(loss_fn, args, opt, scaler):
        ce, kl = loss_fn(*args)
        params = [p for group in opt.param_groups for p in group["params"]]
        scale = (lambda t: t) if scaler is None else scaler.scale
        opt.zero_grad(set_to_none=True)
        scale(kl).backward(retain_graph=True)
        kl_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
        opt.zero_grad(set_to_none=True)
        scale(ce).backward()
        if scaler is not None:
            # an overflow in g_kl must skip the step as one in g_ce does: make it visible to unscale_'s inf check
            for p, k in zip(params, kl_grads):
                if p.grad is not None and k is not None:
                    p.grad.add_(torch.where(torch.isfinite(k), torch.zeros_like(k), k))
            scaler.unscale_(opt)  # g_ce unscaled in place (and checked)
            inv = 1.0 / scaler.get_scale()
            kl_grads = [None if k is None else k * inv for k in kl_grads]
        new = project_conflicting([p.grad for p in params], kl_grads, float(lam))
        for p, g in zip(params, new):
            if g is not None:
                p.grad = g
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        return ce.detach()

    return step


@register_method("prograd")
class ProGrad(Method):
    description = "ProGrad, CoOp context (16, zeros + ProGrad template) with CE gradients projected off the zero-shot KL"
    display_name = "ProGrad"
    color = "#6A3D9A"
    marker = "p"
    linestyle = "-"
    order = 160
    protocols = ("fewshot", "base2new", "domain_shift", "cross_dataset")
    hparam_spec = {
        "n_ctx": Param(int, min=1, help="learnable context vectors (the template prefix fills the last ones)"),
        "template": Param(str, help="ProGrad's hand-written template ending in ' {}.': the context's initial "
                                    "words and the zero-shot teacher's prompt"),
        "lambda": Param(float, min=0.0, help="strength of the projection of the CE gradient (LOSS.LAMBDA)"),
        "temperature": Param(float, min=1e-6, help="KL temperature T (LOSS.T)"),
        **OPTIM_SPEC,
    }

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return {"n_ctx": 16, "template": prograd_template(dataset), "lambda": prograd_lambda(protocol, dataset, shots),
                "temperature": 1.0, **optim_defaults(coop_fewshot_epochs(dataset, shots), 32)}

    def __init__(self, ctx):
        super().__init__(ctx)
        self.template = str(self.hp.get("template") or prograd_template(ctx.dataset))
        self.learner = ProGradPromptLearner(ctx.backbone, ctx.classnames, int(self.hp.get("n_ctx", 16)), self.template)

    def template_info(self) -> dict:
        return {**self.learner.info(), "lambda": float(self.hp.get("lambda", 1.0)),
                "temperature": float(self.hp.get("temperature", 1.0))}

    def teacher_text(self) -> torch.Tensor:
        """The zero-shot teacher's classifier: the training classes in the ProGrad template (L2-normalised)."""
        return handcrafted_text_features(self.ctx.backbone, self.template, self.ctx.classnames)

    def losses(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_ce, L_kl) on a batch of one cached view."""
        scale = self.ctx.backbone.logit_scale
        with torch.no_grad():
            teacher = cosine_logits(features, self.teacher_text().to(features.device), scale)
        student = cosine_logits(features, self.learner.text_features(self.ctx.classnames), scale)
        return F.cross_entropy(student, labels), prograd_kl(student, teacher, float(self.hp.get("temperature", 1.0)))

    def fit(self, train):
        o = optim_kwargs(self.hp)
        data = FeatureBatches(train, o["batch_size"], self.ctx.seed, self.ctx.device)
        stats = fit(self.learner, self.losses, data, self.ctx, epochs=o["epochs"],
                    optimizer=sgd(o["lr"], o["momentum"], o["weight_decay"]),
                    schedule=warmup_cosine(o["lr"], o["epochs"], o["warmup_epochs"], o["warmup_lr"]),
                    step_fn=prograd_step(float(self.hp.get("lambda", 1.0))))
        return stats

    def logits(self, features, classnames):
        with torch.no_grad():
            text = self.learner.text_features(list(classnames))
            return cosine_logits(features.to(self.learner.ctx.device), text, self.ctx.backbone.logit_scale)
