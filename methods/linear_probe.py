"""Linear-probe CLIP (CoOp's ``lpclip``; docs/protocol.md, "Linear probe").

Multinomial L2 logistic regression (scikit-learn, lbfgs, max_iter 1000) on the frozen, L2-UNnormalised image
features of the few-shot training images (test transform).  The inverse regularisation C is searched as the
reference does on the few-shot validation split: a sweep over 1e6, 1e4, ..., 1e-6 (first best on ties), then
8 steps that each fit both ends of [0.1·C*, 10·C*], keep the better end (the left one on ties) and halve the
interval at its geometric midpoint (the reference's log10/power arithmetic, so the C values are bit-identical).
The classifier of the last chosen C is the final model.

Datasets without a few-shot validation split (ImageNet, whose reference "val" is the test set) hold out
min(4, n_c // 2) training images per class (seeded) for the search and refit the chosen C on all of them; with a
single shot per class nothing can be held out and C = 1 (scikit-learn's default).  The statistics say which.
(The reference's lpclip searches C on test images there; the suite never does: docs/protocol.md.)

``logits`` scores the training classes or any subset of them by name (column selection: ImageNet-A/R's 200
classes); other class names raise ``Unsupported``.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import torch

from bench.api import BenchError, Method, Param, TrainData, register_method
from ._prompts import match_classes

SEARCH_INIT = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
DEFAULT_C = 1.0


def logistic_regression(C: float, max_iter: int = 1000):
    """``LogisticRegression(solver="lbfgs", max_iter, penalty="l2", C)`` on any scikit-learn version."""
    from sklearn.linear_model import LogisticRegression

    kw = {"solver": "lbfgs", "max_iter": int(max_iter), "C": float(C)}
    if inspect.signature(LogisticRegression).parameters["penalty"].default == "deprecated":
        kw["l1_ratio"] = 0.0  # scikit-learn >= 1.8: the L2 penalty without the deprecated argument
    else:
        kw["penalty"] = "l2"
    return LogisticRegression(**kw)


def fit_classifier(x: np.ndarray, y: np.ndarray, C: float, max_iter: int = 1000):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # few-shot data has few samples per class by design (1 shot: as many classes as samples)
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%",
                                category=UserWarning)
        return logistic_regression(C, max_iter).fit(x, y)


def search_c(score, steps: int = 8) -> tuple[float, dict]:
    """The reference's C search; ``score(C)`` -> validation accuracy. Returns (chosen C, history)."""
    sweep = [(c, score(c)) for c in SEARCH_INIT]
    c_peak = SEARCH_INIT[int(np.argmax([a for _, a in sweep]))]
    c_final = c_peak
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    history = []
    for _ in range(int(steps)):
        acc_left, acc_right = score(c_left), score(c_right)
        if acc_left < acc_right:
            c_final = c_right
            new_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            new_right = np.log10(c_right)
        else:
            c_final = c_left
            new_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            new_left = np.log10(c_left)
        history.append({"c_left": float(c_left), "acc_left": float(acc_left), "c_right": float(c_right),
                        "acc_right": float(acc_right), "chosen": float(c_final)})
        c_left, c_right = np.power(10, new_left), np.power(10, new_right)
    return float(c_final), {"sweep": [{"C": float(c), "acc": float(a)} for c, a in sweep], "steps": history}


def holdout_split(labels: np.ndarray, seed: int, per_class: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices): min(per_class, n_c // 2) seeded picks per class are held out."""
    rng = np.random.default_rng(int(seed))
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(per_class, len(idx) // 2)
        if k:
            held.extend(rng.choice(idx, size=k, replace=False).tolist())
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


@register_method("linear_probe")
class LinearProbe(Method):
    description = "linear probe: L2 logistic regression on frozen image features, C searched on the few-shot val"
    display_name = "Linear probe CLIP"
    color = "#0072B2"
    marker = "s"
    linestyle = ":"
    order = 10
    protocols = ("fewshot", "domain_shift")
    hparam_spec = {
        "max_iter": Param(int, min=1, help="lbfgs iterations"),
        "search_steps": Param(int, min=0, help="bisection steps of the C search"),
        "C": Param(float, min=1e-12, nullable=True, help="inverse L2 regularisation strength > 0; null: searched"),
        "c_search_without_val": Param(str, choices=("holdout",),
                                      help="where C is searched when the dataset has no few-shot val split"),
    }

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return {"max_iter": 1000, "search_steps": 8, "C": None, "c_search_without_val": "holdout"}

    def template_info(self) -> dict:
        return {"text": None, "classifier": "logistic regression on image features (no prompts)"}

    def fit(self, train: TrainData) -> dict:
        max_iter = int(self.hp.get("max_iter", 1000))
        x = train.eval_features.detach().cpu().double().numpy()
        y = train.labels.cpu().numpy()
        fits: dict[tuple, object] = {}

        def scorer(xf, yf, xv, yv, key):
            def score(C):
                if (key, C) not in fits:
                    fits[(key, C)] = fit_classifier(xf, yf, C, max_iter)
                return float(np.mean(fits[(key, C)].predict(xv) == yv))
            return score

        stats: dict = {}
        mode = self.hp.get("c_search_without_val", "holdout")
        if mode != "holdout":
            raise BenchError(f"c_search_without_val must be holdout (got {mode!r}): C is never searched on test "
                             "images")
        if self.hp.get("C") is not None:
            C, stats["c_search"] = float(self.hp["C"]), "fixed"
        elif train.val_features is not None and len(train.val_features):
            xv = train.val_features.detach().cpu().double().numpy()
            yv = train.val_labels.cpu().numpy()
            C, hist = search_c(scorer(x, y, xv, yv, "val"), int(self.hp.get("search_steps", 8)))
            stats.update(c_search="val", **hist)
        else:
            fit_idx, held = holdout_split(y, self.ctx.seed or 0)
            if len(held):
                C, hist = search_c(scorer(x[fit_idx], y[fit_idx], x[held], y[held], "holdout"),
                                   int(self.hp.get("search_steps", 8)))
                stats.update(c_search=f"holdout ({len(held)} of {len(y)} training images)", **hist)
            else:
                C, stats["c_search"] = DEFAULT_C, "default (no validation split, one shot per class)"
        clf = fits.get(("val", C))
        if clf is None:
            clf = fit_classifier(x, y, C, max_iter)
        self.classes = clf.classes_.astype(int)
        coef, bias = np.asarray(clf.coef_, dtype=np.float64), np.asarray(clf.intercept_, dtype=np.float64)
        if coef.shape[0] == 1 and len(self.classes) == 2:  # binary: scikit-learn keeps one row (class 1 vs 0)
            coef, bias = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([np.zeros_like(bias), bias])
        n_cls = len(self.ctx.classnames)
        weight = np.zeros((n_cls, coef.shape[1]))
        b = np.full(n_cls, -np.inf)  # a class absent from the training labels can never win
        weight[self.classes], b[self.classes] = coef, bias
        self.weight, self.bias = torch.from_numpy(weight), torch.from_numpy(b)
        stats.update(C=float(C), train_acc=100.0 * float(np.mean(clf.predict(x) == y)),
                     n_iter=int(np.max(clf.n_iter_)))
        return stats

    def logits(self, features, classnames):
        idx = match_classes(self.ctx.classnames, list(classnames), "the linear probe")
        w, b = self.weight[idx].to(features.device), self.bias[idx].to(features.device)
        return (features.double() @ w.t() + b).float()
