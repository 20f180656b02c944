"""LP++ (``lp_pp``), CLAP (``clap``) and ZS-LP (``zs_lp``) on the tiny random backbone, on CPU.

Each method is checked against an independent transcription, written here in the reference code's own terms, of
its initialisation, step sizes / multipliers, loss and training steps (LP++: ``methods/linear_probe_p2.py`` and
``methods/utils.py`` of FereshteShakeri/FewShot-CLIP-Strong-Baseline; CLAP: ``trainers/adapters.py`` of
jusiro/CLAP), on tiny-model image features; then a cheap learning test on separable synthetic features, and one
end-to-end pass per protocol through ``bench.engine.runner.execute`` on synthetic dataset trees.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import BenchError
from bench.method import Unsupported
from bench.registry import get_method
import methodkit as mk
from methodkit import MemoryCheckpointer, Stop, train_data

NAMES = ["dog", "golden_retriever", "x-ray machine"]
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # bb and one_thread: tests/conftest.py


def make(bb, method, names, shots=4, **kw):
    """The hparams of 4 shots by default."""
    return mk.make(bb, method, names, shots=shots, **kw)


def image_features(bb, n, seed):
    """Features of random images through the tiny CLIP (not normalised)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, bb.image_size, bb.image_size, generator=g)
    return bb.encode_image(images)


def maxdiff(a, b):
    return float((torch.as_tensor(a).detach().double() - torch.as_tensor(b).detach().double()).abs().max())


# ------------------------------------------------------------------------------------------ LP++

def reference_lpp(features, labels, val_features, val_labels, text_weights, epochs, seed, zero_alpha_grad=False):
    """LP++ as linear_probe_p2.py writes it (fp32 here): returns the classifier state, α and the epoch recorded at
    the last val >= best, plus (α₀, lr_W, lr_α).  ``features`` normalised (N, D); ``text_weights`` (D, C)."""
    from scipy.linalg import eigh

    n_cls = text_weights.shape[1]
    torch.manual_seed(seed)
    classifier = nn.Linear(features.shape[1], n_cls, bias=True)
    one_hot = F.one_hot(labels, n_cls).float()                                      # get_one_hot
    classifier.weight.data = one_hot.t() @ features                                 # compute_centroids: no division
    ff_t = (features.T @ features).double().numpy()
    lr_w = 4 * features.shape[0] / max(eigh(ff_t)[0])                               # calculate_lr_w
    z = features @ text_weights
    alpha_tilde = (one_hot * z / one_hot.sum(0, keepdim=True)).sum(0)              # compute_centroids_alpha
    alpha_init = torch.mean(250 * alpha_tilde.double())                             # calculate_init_alpha
    alpha_vec = (alpha_init * torch.ones(1, n_cls)).float().requires_grad_(True)
    lr_alpha = features.shape[0] / (max(torch.sum(torch.pow(z, 2), dim=0)) * 4)   # calculate_lr_alpha
    optimizer = torch.optim.SGD(classifier.parameters(), lr_w, momentum=0.9)
    best_acc, kept = 0.0, None
    for epoch in range(epochs):
        logits = classifier(features) + torch.ones(features.shape[0], 1) @ alpha_vec * (features @ text_weights)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        if zero_alpha_grad:
            alpha_vec.grad = None
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 10 == 0:
            alpha_vec.data -= lr_alpha * alpha_vec.grad.data
        with torch.no_grad():
            logits_val = classifier(val_features) + torch.ones(val_features.shape[0], 1) @ alpha_vec * (
                val_features @ text_weights)
            acc_val = np.mean(logits_val.argmax(dim=1).numpy() == val_labels.numpy()) * 100.0
        if acc_val >= best_acc:
            best_acc = acc_val
            kept = (classifier.weight.detach().clone(), classifier.bias.detach().clone(),
                    alpha_vec.detach().clone()[0], epoch)
    return kept, (float(alpha_init), float(lr_w), float(lr_alpha))


@pytest.fixture(scope="module")
def lpp_task(bb):
    y = torch.arange(12) % 3
    x = image_features(bb, 12, 1)
    xv, yv = image_features(bb, 6, 2), torch.arange(6) % 3
    xt = image_features(bb, 5, 3)
    return x, y, xv, yv, xt


@pytest.mark.parametrize("alpha_grad", ["accumulated", "fresh"])
def test_lp_pp_matches_reference(bb, lpp_task, alpha_grad):
    x, y, xv, yv, xt = lpp_task
    epochs = 25  # α steps at epochs 10 and 20
    m = make(bb, "lp_pp", NAMES, epochs=epochs, alpha_grad=alpha_grad)
    stats = m.fit(train_data(x, y, xv, yv))
    f, fv, ft = (F.normalize(t, dim=-1) for t in (x, xv, xt))
    text = F.normalize(bb.encode_text([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]), dim=-1)
    (w, b, alpha, epoch), (alpha0, lr_w, lr_alpha) = reference_lpp(
        f, y, fv, yv, text.t(), epochs, seed=1, zero_alpha_grad=alpha_grad == "fresh")
    assert abs(stats["alpha0"] - alpha0) <= TOL * max(1.0, abs(alpha0))
    assert abs(stats["lr_w"] - lr_w) <= TOL * lr_w and abs(stats["lr_alpha"] - lr_alpha) <= TOL * lr_alpha
    assert stats["selected_epoch"] == epoch + 1 and stats["selection"] == "val"
    assert maxdiff(m.model.weight, w) <= TOL * max(1.0, float(w.abs().max()))
    assert maxdiff(m.model.bias, b) <= TOL and maxdiff(m.model.alpha, alpha) <= TOL * max(1.0, abs(alpha0))
    ref_logits = ft @ w.t() + b + alpha * (ft @ text.t())
    assert maxdiff(m.logits(xt, NAMES), ref_logits) <= TOL * max(1.0, float(ref_logits.abs().max()))
    assert len(stats["loss"]) == epochs


def test_lp_pp_init_and_one_step(bb, lpp_task):
    """Initialisation (class sums, α₀, PyTorch's default bias), closed-form steps and the first SGD step."""
    from bench.methods.lp_pp import LPPPModel, class_sums, init_alpha, step_sizes

    x, y, *_ = lpp_task
    f = F.normalize(x, dim=-1)
    text = F.normalize(torch.randn(3, x.shape[1], generator=torch.Generator().manual_seed(5)), dim=-1)
    sums = torch.stack([f[y == c].sum(0) for c in range(3)])
    assert maxdiff(class_sums(f, y, 3), sums) <= TOL
    alpha0 = 250 * np.mean([float((f[y == c] @ text[c]).mean()) for c in range(3)])
    assert abs(init_alpha(f, y, text) - alpha0) <= TOL * abs(alpha0)
    lr_w, lr_alpha = step_sizes(f, text)
    lam = float(np.linalg.eigvalsh((f.T @ f).double().numpy()).max())
    assert abs(lr_w - 4 * 12 / lam) <= TOL * lr_w
    assert abs(lr_alpha - 12 / (4 * max(float(((f @ text[c]) ** 2).sum()) for c in range(3)))) <= TOL * lr_alpha
    # the bias: nn.Linear's default init under the run seed
    m = make(bb, "lp_pp", NAMES, epochs=1, seed=7, selection="last")
    m.fit(train_data(x, y))
    torch.manual_seed(7)
    expected_bias = nn.Linear(x.shape[1], 3).bias.detach()
    # one step by hand: SGD with momentum 0.9 (first step: the plain gradient), α untouched before epoch 10
    w0 = sums.clone().requires_grad_(True)
    b0 = expected_bias.clone().requires_grad_(True)
    text_m = m.model.text
    loss = F.cross_entropy(f @ w0.t() + b0 + init_alpha(f, y, text_m) * (f @ text_m.t()), y)
    gw, gb = torch.autograd.grad(loss, (w0, b0))
    lr_w = step_sizes(f, text_m)[0]
    assert maxdiff(m.model.weight, sums - lr_w * gw) <= TOL * float(sums.abs().max())
    assert maxdiff(m.model.bias, expected_bias - lr_w * gb) <= TOL
    a0 = init_alpha(f, y, text_m)
    assert maxdiff(m.model.alpha, torch.full((3,), a0)) <= TOL * max(1.0, abs(a0))
    assert isinstance(m.model, LPPPModel)


def test_lp_pp_without_val_keeps_last_epoch_and_selects_rows_by_name(bb, lpp_task):
    x, y, xv, yv, xt = lpp_task
    m = make(bb, "lp_pp", NAMES, epochs=4)
    stats = m.fit(train_data(x, y))
    assert stats["selected_epoch"] == 4 and stats["selection"].startswith("last epoch")
    full = m.logits(xt, NAMES)
    assert torch.allclose(m.logits(xt, [NAMES[2], NAMES[0]]), full[:, [2, 0]])
    with pytest.raises(Unsupported):
        m.logits(xt, ["cat"])
    assert torch.allclose(m.logits(xt[:2], NAMES), full[:2])  # row i depends on row i only


def test_lp_pp_reads_only_view_zero_and_declares_its_views(bb, lpp_task):
    x, y, xv, yv, xt = lpp_task
    cls = get_method("lp_pp")
    hp = cls.default_hparams("fewshot", "dtd", 16)
    assert cls.train_augmentation(hp) == {"crop_scale": (0.5, 1.0)} and cls.cached_views(hp) == 1
    assert hp == {"epochs": 300, "alpha_every": 10, "alpha_grad": "accumulated", "selection": "val"}
    assert set(hp) <= set(cls.hparam_spec) and cls.protocols == ("fewshot", "domain_shift")
    outs = []
    for views in ([x], [x, x + 1.0]):
        m = make(bb, "lp_pp", NAMES, epochs=3)
        m.fit(train_data(x, y, xv, yv, views=views))
        outs.append(m.logits(xt, NAMES))
    assert torch.equal(outs[0], outs[1])
    inet = make(bb, "lp_pp", NAMES, dataset="imagenet", epochs=1)
    assert len(inet.template_info()["templates"]) == 7


# ------------------------------------------------------------------------------------------ CLAP / ZS-LP

def reference_clap(views, labels, base_text_features, logit_scale, lrs, constraint):
    """CLAP's ADAPTER trainer (adapters.py) on a bank smaller than one batch (every epoch is one step on the whole
    bank): λ from the zero-shot logits of all views, CE + mean(λ ||W − T||²), SGD momentum 0.9, wd 0."""
    features_train = torch.cat(views)
    labels_train = labels.repeat(len(views))

    def forward_lp(features, prototypes):
        image_features_norm = features / features.norm(dim=-1, keepdim=True)
        prototypes_norm = prototypes / prototypes.norm(dim=-1, keepdim=True)
        return image_features_norm @ prototypes_norm.t() * logit_scale

    logits_zs = forward_lp(features_train, base_text_features)
    labels_one_hot = F.one_hot(labels_train)
    alpha_constraint = torch.diag(torch.softmax(logits_zs, -1).t() @ labels_one_hot.to(torch.float32)) / \
        labels_one_hot.sum(0)
    prototypes = nn.Parameter(base_text_features.clone())
    optim = torch.optim.SGD([prototypes], lr=lrs[0], momentum=0.9, weight_decay=0.0)
    losses = []
    for lr in lrs:
        for g in optim.param_groups:
            g["lr"] = lr
        loss = F.cross_entropy(forward_lp(features_train, prototypes), labels_train)
        if constraint:
            loss = loss + torch.mean(alpha_constraint * (prototypes - base_text_features.clone()).pow(2).sum(-1))
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    return prototypes.detach(), alpha_constraint, losses


@pytest.fixture(scope="module")
def clap_task(bb):
    y = torch.arange(12) % 3
    views = [image_features(bb, 12, 10 + v) for v in range(3)]
    xt = image_features(bb, 5, 3)
    return views, y, xt


@pytest.mark.parametrize("method", ["clap", "zs_lp"])
def test_clap_matches_reference(bb, clap_task, method):
    views, y, xt = clap_task
    epochs, lr = 3, 0.1
    m = make(bb, method, NAMES, epochs=epochs, views=3)
    stats = m.fit(train_data(views[0], y, views=views))
    T = bb.encode_text([f"a photo of a {n.replace('_', ' ')}." for n in NAMES], normalize=False)
    # Dassl: 1 constant warm-up epoch at 1e-5, then CosineAnnealingLR(T_max = max_epoch) stepped per epoch
    lrs = [1e-5] + [lr * (1 + math.cos(math.pi * k / epochs)) / 2 for k in range(epochs - 1)]
    W, lam, losses = reference_clap(views, y, T, bb.logit_scale, lrs, constraint=method == "clap")
    assert maxdiff(m.model.text, T) <= TOL
    if method == "clap":
        assert maxdiff(m.model.lam, lam) <= TOL
        assert stats["lambda_mean"] == pytest.approx(float(lam.mean()), abs=TOL)
    else:
        assert "lambda_mean" not in stats
    assert stats["n_views_used"] == 3 and stats["steps_per_epoch"] == 1
    assert maxdiff(stats["loss"], losses) <= TOL * max(1.0, max(losses))
    assert maxdiff(m.model.prototypes, W) <= TOL * max(1.0, float(W.abs().max()))
    ref = bb.logit_scale * F.normalize(xt, dim=-1) @ F.normalize(W, dim=-1).t()
    assert maxdiff(m.logits(xt, NAMES), ref) <= TOL * max(1.0, float(ref.abs().max()))


def test_clap_loss_and_one_step(bb, clap_task):
    """The penalty is squared L2 on unnormalised prototypes; ZS-LP is CLAP without it; one SGD step by hand."""
    views, y, _ = clap_task
    losses = {}
    for method in ("clap", "zs_lp"):
        m = make(bb, method, NAMES, epochs=1, views=3, warmup_epochs=0)  # epoch 0: lr 0.1 (cosine start)
        m.fit(train_data(views[0], y, views=views))
        losses[method] = m
    T = losses["clap"].model.text
    lam = losses["clap"].model.lam
    f, yy = torch.cat(views), y.repeat(3)
    W = (T + 0.01 * torch.randn(T.shape, generator=torch.Generator().manual_seed(3))).requires_grad_(True)
    ce = F.cross_entropy(bb.logit_scale * F.normalize(f, dim=-1) @ F.normalize(W, dim=-1).t(), yy)
    pen = (lam * ((W - T) ** 2).sum(-1)).mean()
    for method, expected in (("clap", ce + pen), ("zs_lp", ce)):
        m = losses[method]
        with torch.no_grad():
            m.model.prototypes.copy_(W)
        assert abs(float(m.loss(f, yy).detach()) - float(expected.detach())) <= TOL
    # the one step both took, from T: W1 = T − 0.1 · ∇(loss at T) (first momentum step is the gradient)
    for method in ("clap", "zs_lp"):
        W0 = T.clone().requires_grad_(True)
        loss = F.cross_entropy(bb.logit_scale * F.normalize(f, dim=-1) @ F.normalize(W0, dim=-1).t(), yy)
        (g,) = torch.autograd.grad(loss, W0)  # the penalty's gradient is 0 at W = T
        m = make(bb, method, NAMES, epochs=1, views=3, warmup_epochs=0)
        m.fit(train_data(views[0], y, views=views))
        assert maxdiff(m.model.prototypes, T - 0.1 * g) <= TOL


def test_clap_lambda_is_the_zero_shot_true_class_probability(bb, clap_task):
    from bench.methods.clap import true_class_multipliers

    views, y, _ = clap_task
    f, yy = torch.cat(views), y.repeat(3)
    T = torch.randn(3, f.shape[1], generator=torch.Generator().manual_seed(8))
    p = torch.softmax(bb.logit_scale * F.normalize(f, dim=-1) @ F.normalize(T, dim=-1).t(), -1)
    expected = torch.tensor([float(p[yy == c, c].mean()) for c in range(3)])
    assert maxdiff(true_class_multipliers(f, yy, T, bb.logit_scale), expected) <= TOL


def test_pooled_batches_epoch_size_and_seeding():
    from bench.api import PooledBatches

    feats = torch.arange(2000, dtype=torch.float32)[:, None]
    labels = torch.arange(2000)
    small = PooledBatches(feats, labels, n_images=100, batch_size=256, seed=3)  # 100 images x 20 views
    assert len(small) == 1
    (batch,) = list(small.epoch(0, 0, lambda: None))
    assert batch[1] == 256 and len(set(batch[0][1].tolist())) == 256
    big = PooledBatches(feats, labels, n_images=600, batch_size=256, seed=3)
    assert len(big) == 2
    e0 = [b[0][1] for b in big.epoch(0, 0, lambda: None)]
    assert len(set(torch.cat(e0).tolist())) == 512
    state = big.state(boundary=True)
    e1 = [b[0][1] for b in big.epoch(1, 0, lambda: None)]
    again = PooledBatches(feats, labels, n_images=600, batch_size=256, seed=3)
    again.load_state(state)
    assert all(torch.equal(a, b) for a, b in zip(e1, [b[0][1] for b in again.epoch(1, 0, lambda: None)]))
    tiny = PooledBatches(feats[:30], labels[:30], n_images=10, batch_size=256, seed=0)
    assert [n for _, n in tiny.epoch(0, 0, lambda: None)] == [30]


def test_clap_declarations_and_names(bb, clap_task):
    views, y, xt = clap_task
    for name in ("clap", "zs_lp"):
        cls = get_method(name)
        hp = cls.default_hparams("fewshot", "dtd", 16)
        assert (hp["epochs"], hp["batch_size"], hp["lr"], hp["momentum"], hp["weight_decay"], hp["warmup_epochs"],
                hp["warmup_lr"], hp["views"]) == (300, 256, 0.1, 0.9, 0.0, 1, 1e-5, 20)
        assert cls.cached_views(hp) == 20 and cls.train_augmentation(hp) is None
        assert set(hp) <= set(cls.hparam_spec)
        assert cls.protocols == ("fewshot", "base2new", "domain_shift", "cross_dataset")
    assert get_method("clap").constrained and not get_method("zs_lp").constrained
    m = make(bb, "clap", NAMES, epochs=2, views=5)  # only 3 views cached: uses 3
    stats = m.fit(train_data(views[0], y, views=views))
    assert stats["n_views_used"] == 3
    full = m.logits(xt, NAMES)
    assert torch.allclose(m.logits(xt, [NAMES[1]]), full[:, [1]])
    # a name never trained on: its zero-shot prototype from the evaluated dataset's template (DTD: "{} texture.")
    with m.ctx.evaluating("dtd"):
        mixed = m.logits(xt, ["cat", NAMES[2], "red car"])
        assert m.template_info()["unseen_classes"] == {"zero-shot prototypes": ["{} texture."]}
    zs = bb.encode_text(["cat texture.", "red car texture."], normalize=False)
    ref = bb.logit_scale * F.normalize(xt, dim=-1) @ F.normalize(zs, dim=-1).t()
    assert maxdiff(mixed[:, [0, 2]], ref) <= TOL and torch.allclose(mixed[:, 1], full[:, 2])
    assert torch.allclose(m.logits(xt[:2], ["cat", NAMES[0]]), m.logits(xt, ["cat", NAMES[0]])[:2])
    inet = make(bb, "clap", NAMES, dataset="imagenet")
    assert inet.template_info()["templates"][-1] == "a photo of a {}." and len(inet.template_info()["templates"]) == 8
    from bench.methods.clap import zero_shot_prototypes

    tpl = inet.template_info()["templates"]
    manual = torch.stack([bb.encode_text([t.format(n.replace("_", " ")) for n in NAMES], normalize=False)
                          for t in tpl]).mean(0)
    assert maxdiff(zero_shot_prototypes(bb, tpl, NAMES), manual) <= TOL


# ------------------------------------------------------------------------------------------ resume

@pytest.mark.parametrize("method,hp", [("lp_pp", dict(epochs=23)),  # stops at 12: α-gradient sum and best state
                                       ("clap", dict(epochs=5, batch_size=4, views=3)),  # 3 steps per epoch
                                       ("zs_lp", dict(epochs=5, batch_size=4, views=3))])
def test_preempted_training_resumes_to_the_same_model(bb, lpp_task, clap_task, method, hp):
    views, y, xt = clap_task
    xv, yv = lpp_task[2], lpp_task[3]
    data = lambda: train_data(views[0], y, xv, yv, views=views)  # noqa: E731
    full = make(bb, method, NAMES, **hp)
    stats = full.fit(data())
    stop = 12 if method == "lp_pp" else 2
    ck = MemoryCheckpointer(stop_at=stop)
    first = make(bb, method, NAMES, **hp)
    first.ctx.checkpointer, first.ctx.checkpoint_every = ck, 1
    with pytest.raises(Stop):
        first.fit(data())
    ck.stop_at = None
    torch.manual_seed(123)
    second = make(bb, method, NAMES, seed=9, **hp)  # another seed: everything seeded comes from the checkpoint
    second.ctx.checkpointer, second.ctx.checkpoint_every = ck, 1
    resumed = second.fit(data())
    assert resumed["loss"] == stats["loss"]
    assert torch.equal(second.logits(xt, NAMES), full.logits(xt, NAMES))
    if method == "lp_pp":
        assert resumed["selected_epoch"] == stats["selected_epoch"]


# ------------------------------------------------------------------------------------------ learning

def test_learning_beats_zero_shot(bb):
    """Separable synthetic features (class means unrelated to the tiny model's text): every method must beat its
    zero-shot start on held-out samples."""
    g = torch.Generator().manual_seed(0)
    names = ["a", "b", "c", "d"]
    means = 3 * F.normalize(torch.randn(4, bb.embed_dim, generator=g), dim=-1)

    def draw(n):
        y = torch.arange(n) % 4
        return means[y] + 0.5 * torch.randn(n, bb.embed_dim, generator=g) / math.sqrt(bb.embed_dim) * 4, y

    (x, y), (xv, yv), (xt, yt) = draw(32), draw(8), draw(200)
    views = [x] + [draw(32)[0] for _ in range(2)]
    text = bb.encode_text([f"a photo of a {n}." for n in names])
    zs = float((F.normalize(xt, dim=-1) @ text.t()).argmax(1).eq(yt).float().mean())
    shift = {}
    for method, hp in (("lp_pp", dict(epochs=30)), ("clap", dict(epochs=30, views=3)),
                       ("zs_lp", dict(epochs=30, views=3))):
        m = make(bb, method, names, **hp)
        stats = m.fit(train_data(x, y, xv, yv, views=views))
        acc = float(m.logits(xt, names).argmax(1).eq(yt).float().mean())
        assert acc > max(zs + 0.3, 0.8), (method, zs, acc)
        shift[method] = stats.get("prototype_shift")
    assert shift["clap"] < shift["zs_lp"]  # the penalty holds CLAP's prototypes nearer the zero-shot ones


# ------------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("lpclap-data")
    make_dataset_tree("caltech101", root, n_classes=4, per_class=(4, 2, 3))
    for key in ("imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"):
        make_dataset_tree(key, root, n_classes=8, per_class=(2, 0, 2))
    return root


E2E = [
    ("fewshot", "caltech101", "lp_pp", {"epochs": 3}),
    ("fewshot", "caltech101", "clap", {"epochs": 2, "views": 2}),
    ("fewshot", "caltech101", "zs_lp", {"epochs": 2, "views": 2}),
    ("domain_shift", "imagenet", "lp_pp", {"epochs": 3}),
    ("domain_shift", "imagenet", "clap", {"epochs": 2, "views": 2}),
    ("base2new", "caltech101", "zs_lp", {"epochs": 2, "views": 2}),  # new classes: zero-shot prototypes
]


def test_end_to_end_through_the_runner(trees, tmp_path, tiny_backbone_spec):
    from bench.engine.runner import execute
    from bench.protocols import expand
    from bench.store import Store

    store = Store(tmp_path / "results")
    for protocol, dataset, method, overrides in E2E:
        (config,) = expand(protocol, [method], datasets=[dataset], shots=[2], seeds=[1], overrides=overrides,
                           backbone=tiny_backbone_spec, group="coop11", data_root=str(trees))
        if method == "lp_pp":  # one view per image, RandomResizedCrop (0.5, 1) + flip
            assert config["views"] == 1 and config["augmentation"] == {"crop_scale": [0.5, 1.0]}
        else:  # the views CLAP pools, the suite's CoOp augmentation
            assert config["views"] == overrides["views"] and "augmentation" not in config
        result = execute(config, store)
        assert result["status"] == "complete", (method, result.get("error"))
        metrics = result["metrics"]
        for name, r in metrics.items():
            assert r["top1"] is not None and 0 <= r["top1"] <= 100, (method, name, r)
        stats = result["train_stats"]
        assert len(stats["loss"]) == overrides["epochs"]
        if protocol == "domain_shift":
            assert metrics["imagenet_a"]["n_classes"] == 6 and metrics["imagenet"]["n_classes"] == 8
        if protocol == "base2new":
            assert set(metrics) == {"caltech101:base", "caltech101:new"}, sorted(metrics)
        if method == "lp_pp":
            assert stats["selection"] == ("val" if dataset == "caltech101" else "last epoch (no few-shot val split)")
        else:
            assert stats["n_views_used"] == 2
    for protocol in ("base2new", "cross_dataset"):  # LP++'s W has rows for the training classes only
        with pytest.raises(BenchError, match=f"does not support protocol {protocol}"):
            expand(protocol, ["lp_pp"], datasets=["caltech101"], shots=[2], seeds=[1],
                   backbone=tiny_backbone_spec, group="coop11", data_root=str(trees))
