"""TaskRes and CLIP-Adapter on the tiny random backbone, on CPU.

Each forward, loss and the trained quantity after real optimiser steps (TaskRes's residual after Adam steps,
CLIP-Adapter's MLP weights and output after SGD steps) is checked against an independent transcription of the
reference formulas written here (open_clip's own ``encode_text``, hand-written Adam / SGD); unseen class names
(TaskRes: zero residual = the zero-shot base classifier); learning on separable synthetic features; and one
end-to-end pass through ``bench.engine.runner.execute`` per protocol on a synthetic dataset tree.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from bench.registry import get_method
from methodkit import MemoryCheckpointer, Stop, make, train_data

NAMES = ["dog", "golden_retriever", "x-ray machine", "cat"]
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # bb and one_thread: tests/conftest.py


def feats(bb, n, seed):
    return 3 * torch.randn(n, bb.embed_dim, generator=torch.Generator().manual_seed(seed))


def ref_text(bb, template, names):
    """Unnormalised text features through open_clip's own encode_text (not the suite's prompt path)."""
    with torch.no_grad():
        tokens = bb.tokenize([template.format(n.replace("_", " ")) for n in names])
        return bb.model.encode_text(tokens).float()


def ref_logits(img, cls_rows, scale):
    return scale * (img / img.norm(dim=-1, keepdim=True)) @ (cls_rows / cls_rows.norm(dim=-1, keepdim=True)).t()


def ref_ce(logits, y):
    return (torch.logsumexp(logits, dim=1) - logits[torch.arange(len(y)), y]).mean()


# ------------------------------------------------------------------------------------------ TaskRes

IMAGENET_7 = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
              "a {} in a video game.", "art of the {}.", "a photo of the small {}."]


def test_taskres_defaults():
    tr = get_method("taskres")
    hp = tr.default_hparams("fewshot", "dtd", 1)
    assert (hp["alpha"], hp["lr"], hp["epochs"], hp["batch_size"], hp["weight_decay"], hp["warmup_epochs"],
            hp["warmup_lr"]) == (0.5, 2e-3, 100, 256, 5e-4, 1, 1e-5)
    assert tr.default_hparams("fewshot", "dtd", 8)["epochs"] == 200
    assert tr.default_hparams("fewshot", "oxford_flowers", 4)["alpha"] == 1.0
    assert tr.default_hparams("fewshot", "imagenet", 16)["lr"] == 2e-4
    assert tr.default_hparams("domain_shift", "imagenet", 16)["alpha"] == 0.5
    ca = get_method("clip_adapter").default_hparams("fewshot", "dtd", 1)
    assert (ca["ratio"], ca["reduction"], ca["lr"], ca["batch_size"], ca["epochs"]) == (0.2, 4, 2e-3, 32, 50)
    for m in ("taskres", "clip_adapter"):
        cls = get_method(m)
        assert set(cls.default_hparams("fewshot", "dtd", 16)) == set(cls.hparam_spec)
        assert set(cls.protocols) == {"fewshot", "base2new", "domain_shift", "cross_dataset"}
        hp = cls.default_hparams("fewshot", "dtd", 16)
        # CoOp's / Dassl's augmentation (RRC 0.08-1 + flip), one cached view per epoch; inductive
        assert cls.train_augmentation(hp) is None and cls.cached_views(hp) == hp["epochs"] and not cls.transductive


def test_taskres_base_features(bb):
    m = make(bb, "taskres", NAMES, template="{} texture.")
    assert torch.allclose(m.model.base, ref_text(bb, "{} texture.", NAMES), atol=TOL, rtol=0)
    # ImageNet: the 7 selected templates + "a photo of a {}.", averaged unnormalised; building twice does not grow it
    for _ in range(2):
        mi = make(bb, "taskres", NAMES, dataset="imagenet")
        expect = torch.stack([ref_text(bb, t, NAMES) for t in IMAGENET_7 + ["a photo of a {}."]]).mean(0)
        assert len(mi.train_templates) == 8
        assert (mi.model.base - expect).abs().max() <= TOL


def test_taskres_forward_loss_and_adam_steps_match_reference(bb):
    alpha, lr, wd, epochs = 0.5, 0.05, 5e-4, 3
    m = make(bb, "taskres", NAMES, alpha=alpha, lr=lr, weight_decay=wd, epochs=epochs, warmup_epochs=0,
             batch_size=256)
    y = torch.arange(len(NAMES)).repeat(3)
    views = [feats(bb, len(y), s) for s in (10, 11)]
    T = ref_text(bb, "a photo of a {}.", NAMES)
    scale = bb.logit_scale

    # forward and loss at a random residual
    x0 = 0.1 * torch.randn(T.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        m.model.residual.copy_(x0)
    expect = ref_logits(views[0], T + alpha * x0, scale)
    assert (m.logits(views[0], NAMES) - expect).abs().max() <= TOL
    assert abs(float(m.loss(views[0], y).detach()) - float(ref_ce(expect, y))) <= TOL

    # training from zeros: hand-written Adam (coupled L2 decay) over the Dassl schedule (cosine per epoch)
    with torch.no_grad():
        m.model.residual.zero_()
    stats = m.fit(train_data(views[0], y, views=views))
    x = torch.zeros_like(T)
    mom, var = torch.zeros_like(T), torch.zeros_like(T)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, epochs + 1):
        lr_t = lr * (1 + math.cos(math.pi * (t - 1) / epochs)) / 2
        xr = x.clone().requires_grad_(True)
        loss = ref_ce(ref_logits(views[(t - 1) % 2], T + alpha * xr, scale), y)
        (g,) = torch.autograd.grad(loss, xr)
        assert abs(float(loss.detach()) - stats["loss"][t - 1]) <= TOL
        g = g + wd * x
        mom = b1 * mom + (1 - b1) * g
        var = b2 * var + (1 - b2) * g * g
        x = x - lr_t * (mom / (1 - b1 ** t)) / ((var / (1 - b2 ** t)).sqrt() + eps)
    assert x.abs().max() > 0.01  # the steps did move it
    assert (m.model.residual.detach() - x).abs().max() <= TOL
    assert (m.logits(views[1], NAMES) - ref_logits(views[1], T + alpha * x, scale)).abs().max() <= TOL * 10


def test_taskres_unseen_classes_are_zero_shot(bb):
    m = make(bb, "taskres", NAMES[:3], lr=0.05, epochs=5, warmup_epochs=0)
    y = torch.arange(3).repeat(4)
    m.fit(train_data(feats(bb, len(y), 20), y))
    xt = feats(bb, 7, 21)
    zs = get_method("zeroshot")(m.ctx)
    new = ["cat", "zebra"]
    assert (m.logits(xt, new) - zs.logits(xt, new)).abs().max() <= TOL
    mixed = ["zebra", "dog", "cat", "x-ray machine"]
    out = m.logits(xt, mixed)
    trained = m.logits(xt, NAMES[:3])
    assert (out[:, [0, 2]] - zs.logits(xt, ["zebra", "cat"])).abs().max() <= TOL
    assert (out[:, [1, 3]] - trained[:, [0, 2]]).abs().max() <= TOL
    assert (trained - zs.logits(xt, NAMES[:3])).abs().max() > 0.01  # the trained classes did move
    # an evaluated dataset's template for unseen names (cross-dataset): "{} texture." on DTD
    m.ctx.templates["dtd"] = "{} texture."
    with m.ctx.evaluating("dtd"):
        assert (m.logits(xt, new) - ref_logits(xt, ref_text(bb, "{} texture.", new), bb.logit_scale)).abs().max() <= TOL
        assert m.template_info()["unseen_classes"]["templates"] == ["{} texture."]


# ------------------------------------------------------------------------------------------ CLIP-Adapter

def ref_adapter(f, w1, w2, r):
    return r * torch.relu(torch.relu(f @ w1.t()) @ w2.t()) + (1 - r) * f


def test_clip_adapter_forward_loss_and_sgd_steps_match_reference(bb):
    r, lr, wd, mu, epochs = 0.2, 0.05, 5e-4, 0.9, 3
    m = make(bb, "clip_adapter", NAMES, template="{} texture.", lr=lr, epochs=epochs, warmup_epochs=0,
             batch_size=64)
    fc1, fc2 = m.adapter.fc[0].weight, m.adapter.fc[2].weight
    assert fc1.shape == (bb.embed_dim // 4, bb.embed_dim) and fc2.shape == (bb.embed_dim, bb.embed_dim // 4)
    assert m.adapter.fc[0].bias is None and m.adapter.fc[2].bias is None
    w1, w2 = fc1.detach().clone(), fc2.detach().clone()
    w1_init = w1.clone()
    t = F.normalize(ref_text(bb, "{} texture.", NAMES), dim=-1)
    y = torch.arange(len(NAMES)).repeat(3)
    views = [feats(bb, len(y), s) for s in (30, 31)]
    scale = bb.logit_scale

    expect = ref_logits(ref_adapter(views[0], w1, w2, r), t, scale)
    assert (m.logits(views[0], NAMES) - expect).abs().max() <= TOL
    assert abs(float(m.loss(views[0], y).detach()) - float(ref_ce(expect, y))) <= TOL

    stats = m.fit(train_data(views[0], y, views=views))
    bufs = [torch.zeros_like(w1), torch.zeros_like(w2)]
    for e in range(epochs):
        lr_t = lr * (1 + math.cos(math.pi * e / epochs)) / 2
        a, b = w1.clone().requires_grad_(True), w2.clone().requires_grad_(True)
        loss = ref_ce(ref_logits(ref_adapter(views[e % 2], a, b, r), t, scale), y)
        assert abs(float(loss.detach()) - stats["loss"][e]) <= TOL
        grads = torch.autograd.grad(loss, [a, b])
        new = []
        for i, (w, g) in enumerate(zip((w1, w2), grads)):
            g = g + wd * w
            bufs[i] = g if e == 0 else mu * bufs[i] + g
            new.append(w - lr_t * bufs[i])
        w1, w2 = new
    assert (fc1.detach() - w1).abs().max() <= TOL and (fc2.detach() - w2).abs().max() <= TOL
    assert (w1 - w1_init).abs().max() > 1e-3  # the steps did move it
    with torch.no_grad():
        assert (m.adapter(views[1]) - ref_adapter(views[1], w1, w2, r)).abs().max() <= TOL
    assert (m.logits(views[1], NAMES) - ref_logits(ref_adapter(views[1], w1, w2, r), t, scale)).abs().max() <= TOL * 10


def test_clip_adapter_scores_any_class_names(bb):
    m = make(bb, "clip_adapter", NAMES[:2])
    xt = feats(bb, 5, 40)
    names = ["zebra", "dog", "x-ray machine"]
    t = F.normalize(ref_text(bb, "a photo of a {}.", names), dim=-1)
    with torch.no_grad():
        fp = m.adapter(xt)
    assert (m.logits(xt, names) - ref_logits(fp, t, bb.logit_scale)).abs().max() <= TOL
    # rows are independent of the batch
    assert (m.logits(xt[:2], names) - m.logits(xt, names)[:2]).abs().max() <= TOL
    # same seed, same initial adapter; another seed, another
    assert torch.equal(make(bb, "clip_adapter", NAMES).adapter.fc[0].weight, m.adapter.fc[0].weight)
    assert not torch.equal(make(bb, "clip_adapter", NAMES, seed=2).adapter.fc[0].weight, m.adapter.fc[0].weight)


# ------------------------------------------------------------------------------------------ learning

CLASSES = ["cat", "dog", "car", "tree", "boat", "house"]


@pytest.fixture(scope="module")
def task(bb):
    """Separable features: class c clusters around a random unit direction (unrelated to the text features)."""
    g = torch.Generator().manual_seed(5)
    centres = F.normalize(torch.randn(len(CLASSES), bb.embed_dim, generator=g), dim=-1)

    def sample(k):
        y = torch.arange(len(CLASSES)).repeat_interleave(k)
        return 5 * (centres[y] + 0.25 * torch.randn(len(y), bb.embed_dim, generator=g)), y

    return sample(16), sample(50)


@pytest.mark.parametrize("method,overrides", [
    ("taskres", dict(lr=0.05, epochs=100)),  # T rows have norm ~9 on the tiny model
    ("clip_adapter", dict(lr=1.0, epochs=60)),
])
def test_learns_on_separable_features(bb, task, method, overrides):
    (x, y), (xt, yt) = task
    m = make(bb, method, CLASSES, **overrides)
    acc0 = float((m.logits(xt, CLASSES).argmax(1) == yt).float().mean())
    stats = m.fit(train_data(x, y))
    acc = float((m.logits(xt, CLASSES).argmax(1) == yt).float().mean())
    assert acc >= 0.9 and acc >= acc0 + 0.3, (acc0, acc)
    assert stats["loss"][-1] < stats["loss"][0] - 0.2, stats["loss"]


# ------------------------------------------------------------------------------------------ seeds and resume

@pytest.mark.parametrize("method", ["taskres", "clip_adapter"])
def test_same_seed_same_model_and_preempted_training_resumes(bb, method):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, bb.embed_dim, generator=g), torch.arange(8) % 3
    views = [x, x + 0.1 * torch.randn(x.shape, generator=g), x - 0.1]
    xt = torch.randn(4, bb.embed_dim, generator=g)
    hp = dict(epochs=4, batch_size=4, lr=0.05)
    full = make(bb, method, ["a", "b", "c"], **hp)
    stats = full.fit(train_data(x, y, views=views))
    torch.manual_seed(77)  # the global stream must not matter
    again = make(bb, method, ["a", "b", "c"], **hp)
    again.fit(train_data(x, y, views=views))
    assert torch.equal(again.logits(xt, ["a", "b", "c"]), full.logits(xt, ["a", "b", "c"]))
    ck = MemoryCheckpointer(stop_at=2)
    first = make(bb, method, ["a", "b", "c"], **hp)
    first.ctx.checkpointer, first.ctx.checkpoint_every = ck, 1
    with pytest.raises(Stop):
        first.fit(train_data(x, y, views=views))
    ck.stop_at = None
    torch.manual_seed(123)
    second = make(bb, method, ["a", "b", "c"], seed=9, **hp)  # a fresh model (another init), the checkpoint restores
    second.ctx.checkpointer, second.ctx.checkpoint_every = ck, 1
    resumed = second.fit(train_data(x, y, views=views))
    assert resumed["loss"] == stats["loss"]
    assert torch.equal(second.logits(xt, ["a", "b", "c"]), full.logits(xt, ["a", "b", "c"]))


# ------------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("adapter-data")
    make_dataset_tree("caltech101", root, n_classes=4, per_class=(4, 2, 3))
    for key in ("imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"):
        make_dataset_tree(key, root, n_classes=8, per_class=(2, 0, 2))
    return root


E2E = [
    ("fewshot", "caltech101", "taskres", {"epochs": 2}),
    ("base2new", "caltech101", "taskres", {"epochs": 2}),
    ("domain_shift", "imagenet", "taskres", {"epochs": 2}),
    ("fewshot", "caltech101", "clip_adapter", {"epochs": 2}),
    ("base2new", "caltech101", "clip_adapter", {"epochs": 2}),
]


def test_end_to_end_through_the_runner(trees, tmp_path, tiny_backbone_spec):
    from bench.engine.runner import execute
    from bench.protocols import expand
    from bench.store import Store

    store = Store(tmp_path / "results")
    for protocol, dataset, method, overrides in E2E:
        (config,) = expand(protocol, [method], datasets=[dataset], shots=[2], seeds=[1], overrides=overrides,
                           backbone=tiny_backbone_spec, group="coop11", data_root=str(trees))
        result = execute(config, store)
        assert result["status"] == "complete", (protocol, method)
        metrics = result["metrics"]
        assert set(metrics) == {e["dataset"] if e["classes"] == "all" else f"{e['dataset']}:{e['classes']}"
                                for e in config["evals"]}
        for name, r in metrics.items():
            assert r["top1"] is not None and 0 <= r["top1"] <= 100, (method, name, r)
        assert len(result["train_stats"]["loss"]) == overrides["epochs"]
        if protocol == "base2new":
            assert len(metrics) == 2, metrics
        if protocol == "domain_shift":  # ImageNet-A/R: a subset of the training classes, selected by name
            assert metrics["imagenet_a"]["n_classes"] == 6 and metrics["imagenet"]["n_classes"] == 8
            assert len(result["templates"]["base_templates"]) == 8
