"""LP++ (Huang, Shakeri, Dolz, Boudiaf, Bahig, Ben Ayed, CVPR 2024; ``FereshteShakeri/FewShot-CLIP-Strong-Baseline``
at f81054f; LP below): a linear probe on the frozen image features blended with the zero-shot text classifier
through learnable per-class multipliers, trained with closed-form step sizes.

What is learned (LP ``methods/linear_probe_p2.py:96,107``): a visual linear layer (W ∈ R^{C×D}, b ∈ R^C) and per-class
text multipliers α ∈ R^C.  Forward (``:127-129``): ``logits = W f + b + α_c · (f·t_c)``, ``f`` and ``t_c`` L2-normalised
CLIP features, no temperature.  Loss: cross-entropy, full batch.

Initialisation: W = per-class SUMS of the support features (``compute_centroids`` has its division commented out,
``methods/utils.py:121-124``, used at ``:94-97``); b keeps PyTorch's default ``nn.Linear`` initialisation (the layer is
built in ``fit`` from torch's CPU RNG seeded with the run seed, the state the harness's ``set_seed`` leaves before
``fit``, but independent of anything drawn before it); every α_c starts at
α₀ = 250 · mean_c(mean_{i∈c} f_i·t_c) (``calculate_init_alpha`` ``:24-30``, ``compute_centroids_alpha``
``methods/utils.py:96-108``).
Step sizes (``:16-22,32-39``): lr_W = 4N / λ_max(FᵀF) (``scipy.linalg.eigh``), lr_α = N / (4 · max_c Σ_i (f_i·t_c)²).
Optimisation (``:116-139``): W, b with ``SGD(lr_W, momentum 0.9)`` (no weight decay), one full-batch step per epoch for
``epochs`` = 300 (``configs/base.yaml:17``); α takes a plain step α -= lr_α · ∇α every ``alpha_every`` = 10 epochs.
The reference never zeroes α's gradient (its optimiser holds only the classifier, ``:116,133``), so each α step uses
the gradient ACCUMULATED since epoch 0: reproduced by default (``alpha_grad=accumulated``, the sum kept in a buffer
so that checkpoints carry it); ``alpha_grad=fresh`` uses the current epoch's gradient instead.
Text features: the dataset's single CoOp template (e.g. ``datasets/dtd.py:8``); ImageNet: the 7-template ensemble,
each normalised, averaged, re-normalised (``utils.py:35-52``, ``datasets/imagenet.py:178-184``).
Features: ONE augmented view per training image, ``RandomResizedCrop(scale=(0.5, 1))`` + flip (``main.py:69-79``):
``train_augmentation`` and ``cached_views`` declare it; only view 0 is read, whatever the run caches.
Training runs in the suite's :func:`fit` loop (checkpoints, preemption): a full-batch source in the set's own order
(one step per epoch), an optimiser factory holding only W and b, the α rule as its ``step_fn`` and the selection as
its ``on_epoch_end`` (the selected state in buffers, so that a resumed run selects the same epoch).
Selection (``:141-155``): validation accuracy after every epoch; the state of the last epoch with val ≥ best (best
starts at 0) is kept.  Without a validation split (ImageNet): the last epoch.

Defaults: the same on every dataset (the reference has no per-dataset setting; also used for any other dataset).

Deliberate differences from the reference:
* validation on the suite's min(K,4)-shot few-shot val split (the reference uses a K-shot val, ``main.py:94``), and
  on ImageNet the last epoch (the reference draws K-shot val images from the train split, ``datasets/imagenet.py:
  238-243``; the suite's few-shot sampling stays as it is);
* fp32 throughout (the reference trains the classifier and α in fp16, ``:96,107``); features are cached fp32;
* the number of classes is the run's label space (the reference infers N / shots), a class with fewer shots than
  K is simply summed over its images, and α₀ averages over the classes present;
* the loss scaler of fp16 backbones is not used: everything here is fp32 on cached features.

Protocols: few-shot and domain shift (ImageNet-A/R: rows of W, b, α and t selected by name).  W has rows only for the
training classes, so base-to-new and cross-dataset are refused (as in the reference, which has neither).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api import FullBatch, Method, Param, TrainData, fit, handcrafted_text_features, register_method
from ._prompts import match_classes
from ._templates import IMAGENET_TEMPLATES_SELECT

CROP_SCALE = (0.5, 1.0)
ALPHA_INIT_SCALE = 250.0


def lpp_text_features(backbone, templates: list[str], classnames: list[str]) -> torch.Tensor:
    """(C, D) LP++ text classifier: per template normalised, averaged, re-normalised (one template: normalised)."""
    feats = torch.stack([handcrafted_text_features(backbone, t, classnames) for t in templates]).mean(0)
    return F.normalize(feats, dim=-1)


def class_sums(f: torch.Tensor, y: torch.Tensor, n_cls: int) -> torch.Tensor:
    """(C, D) per-class sums of the rows of ``f`` (LP's centroids without the division)."""
    return F.one_hot(y, n_cls).to(f.dtype).t() @ f  # a matmul: deterministic on CUDA (index_add_ may not be)


def init_alpha(f: torch.Tensor, y: torch.Tensor, text: torch.Tensor) -> float:
    """α₀ = 250 · mean over the classes present of mean_{i∈c} f_i·t_c."""
    n_cls = text.shape[0]
    own = (f * text[y]).sum(-1).double()
    one_hot = F.one_hot(y, n_cls).double()
    sums, counts = one_hot.t() @ own, one_hot.sum(0)
    present = counts > 0
    return float(ALPHA_INIT_SCALE * (sums[present] / counts[present]).mean())


def step_sizes(f: torch.Tensor, text: torch.Tensor) -> tuple[float, float]:
    """(lr_W, lr_α) = (4N / λ_max(FᵀF), N / (4 · max_c Σ_i (f_i·t_c)²))."""
    from scipy.linalg import eigh

    n = f.shape[0]
    x = f.detach().double().cpu().numpy()
    lam_max = float(np.max(eigh(x.T @ x, eigvals_only=True)))
    proj = f.double() @ text.double().t()
    lr_alpha = n / (4.0 * float(proj.pow(2).sum(0).max()))
    return 4.0 * n / lam_max, lr_alpha


class LPPPModel(nn.Module):
    """W, b, α and the fixed text classifier; the running α-gradient sum, the step count and the selected state are
    buffers (checkpointed with the parameters)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, alpha0: float, text: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())
        self.alpha = nn.Parameter(torch.full((weight.shape[0],), float(alpha0), dtype=weight.dtype,
                                             device=weight.device))
        self.register_buffer("text", text.clone())
        self.register_buffer("alpha_grad", torch.zeros_like(self.alpha))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("best_weight", self.weight.detach().clone())
        self.register_buffer("best_bias", self.bias.detach().clone())
        self.register_buffer("best_alpha", self.alpha.detach().clone())
        self.register_buffer("best_acc", torch.full((), -1.0, dtype=torch.float64))
        self.register_buffer("best_epoch", torch.zeros((), dtype=torch.long))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """Normalised features (n, D) -> (n, C) logits."""
        return f @ self.weight.t() + self.bias + self.alpha * (f @ self.text.t())


@register_method("lp_pp")
class LPPP(Method):
    description = "LP++: linear probe + text classifier with per-class multipliers, closed-form step sizes"
    display_name = "LP++"
    color = "#E31A1C"
    marker = "d"
    linestyle = "-"
    order = 140
    protocols = ("fewshot", "domain_shift")
    hparam_spec = {
        "epochs": Param(int, min=1, help="full-batch training epochs (one step each)"),
        "alpha_every": Param(int, min=1, help="epochs between steps of the text multipliers alpha"),
        "alpha_grad": Param(str, choices=("accumulated", "fresh"),
                            help="alpha's step uses the gradient summed since epoch 0 (reference) or the current one"),
        "selection": Param(str, choices=("val", "last"),
                           help="last epoch with the best few-shot val accuracy (reference) or the last epoch"),
    }

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return {"epochs": 300, "alpha_every": 10, "alpha_grad": "accumulated", "selection": "val"}

    @classmethod
    def train_augmentation(cls, hparams):
        return {"crop_scale": CROP_SCALE}

    @classmethod
    def cached_views(cls, hparams):
        return 1

    def __init__(self, ctx):
        super().__init__(ctx)
        self.train_templates = (list(IMAGENET_TEMPLATES_SELECT) if ctx.dataset == "imagenet" else [ctx.template])
        self.model: LPPPModel | None = None

    def template_info(self) -> dict:
        return {"templates": self.train_templates, "text": "normalise-average-normalise; fixed at training",
                "classifier": "W f + b + alpha_c f.t_c"}

    def loss(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(f), y)

    def step(self, loss_fn, args, opt, scaler):
        """One full-batch step: SGD on W, b; α's gradient summed (or kept) and α stepped every ``alpha_every``."""
        m = self.model
        loss = loss_fn(*args)
        opt.zero_grad(set_to_none=True)
        m.alpha.grad = None
        loss.backward()
        opt.step()
        with torch.no_grad():
            if self.hp.get("alpha_grad", "accumulated") == "accumulated":
                m.alpha_grad += m.alpha.grad
            else:
                m.alpha_grad.copy_(m.alpha.grad)
            m.steps += 1
            if int(m.steps) % int(self.hp.get("alpha_every", 10)) == 0:
                m.alpha -= self.lr_alpha * m.alpha_grad
        m.alpha.grad = None
        return loss

    def fit(self, train: TrainData) -> dict:
        ctx, dev = self.ctx, torch.device(self.ctx.device)
        f = F.normalize(train.view(0).to(dev).float(), dim=-1)
        y = train.labels.to(dev)
        n_cls = len(ctx.classnames)
        text = lpp_text_features(ctx.backbone, self.train_templates, ctx.classnames).to(dev).float()
        with torch.random.fork_rng(devices=[]):  # PyTorch's default init from the CPU RNG seeded with the run seed
            torch.manual_seed(int(ctx.seed or 0))
            linear = nn.Linear(f.shape[1], n_cls, bias=True)
        alpha0 = init_alpha(f, y, text)
        lr_w, self.lr_alpha = step_sizes(f, text)
        self.model = LPPPModel(class_sums(f, y, n_cls), linear.bias.detach().to(dev).float(), alpha0, text)
        use_val = (self.hp.get("selection", "val") == "val" and train.val_features is not None
                   and len(train.val_features) > 0)
        if use_val:
            fv = F.normalize(train.val_features.to(dev).float(), dim=-1)
            yv = train.val_labels.to(dev)
        m = self.model

        def on_epoch_end(epoch: int) -> None:
            with torch.no_grad():
                acc = (100.0 * float((m(fv).argmax(-1) == yv).double().mean())) if use_val else 0.0
                if acc >= float(m.best_acc):
                    m.best_acc.fill_(acc)
                    m.best_epoch.fill_(epoch)
                    m.best_weight.copy_(m.weight)
                    m.best_bias.copy_(m.bias)
                    m.best_alpha.copy_(m.alpha)

        optimizer = lambda params: torch.optim.SGD([m.weight, m.bias], lr=lr_w, momentum=0.9)  # noqa: E731
        stats = fit(m, self.loss, FullBatch(f, y), ctx, epochs=int(self.hp["epochs"]),
                    optimizer=optimizer, step_fn=self.step, on_epoch_end=on_epoch_end)
        with torch.no_grad():
            m.weight.copy_(m.best_weight)
            m.bias.copy_(m.best_bias)
            m.alpha.copy_(m.best_alpha)
        stats.pop("loss_scale", None)  # fp32 throughout: the loss scaler is not used
        stats.update(alpha0=alpha0, lr_w=lr_w, lr_alpha=self.lr_alpha, n_views_used=1,
                     selection="val" if use_val else "last epoch (no few-shot val split)" if
                     self.hp.get("selection", "val") == "val" else "last epoch",
                     selected_epoch=int(m.best_epoch), alpha_mean=float(m.alpha.detach().mean()))
        if use_val:
            stats["val_acc"] = float(m.best_acc)
        return stats

    def logits(self, features, classnames):
        if self.model is None:
            raise RuntimeError("lp_pp: fit() first")
        m = self.model
        rows = match_classes(self.ctx.classnames, list(classnames), "LP++").to(m.weight.device)
        with torch.no_grad():
            f = F.normalize(features.to(m.weight.device).float(), dim=-1)
            return f @ m.weight[rows].t() + m.bias[rows] + m.alpha[rows] * (f @ m.text[rows].t())
