"""The trained methods (linear probe, CoOp, CoOp-CSC, CoCoOp, KgCoOp) on the tiny random backbone, on CPU.

Prompt assembly is checked token by token against the tokenizer; the losses against independent formulas; the
linear probe's C search against a literal re-implementation of the reference loop; learning on separable
synthetic features (class means are text features of a hidden context, so prompts can express them); and one
end-to-end pass per protocol through ``bench.engine.runner.execute`` on synthetic dataset trees.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.method import Unsupported
from bench.registry import get_method
from bench.methods._prompts import PromptLearner, splice
from methodkit import MemoryCheckpointer, Stop, make, train_data

NAMES = ["dog", "golden_retriever", "x-ray machine"]  # multi-token names; "x" is also the placeholder's token
TRAINED = ["coop", "coop_csc", "cocoop", "kgcoop"]


pytestmark = pytest.mark.usefixtures("one_thread")  # bb and one_thread: tests/conftest.py


# ------------------------------------------------------------------------------------------ prompt assembly

EQUIVALENT = {  # n_ctx = 5: middle puts 5 // 2 = 2 before the name, 3 after
    "end": ["X X X X X dog.", "X X X X X golden retriever.", "X X X X X x-ray machine."],
    "middle": ["X X dog X X X.", "X X golden retriever X X X.", "X X x-ray machine X X X."],
    "front": ["dog X X X X X.", "golden retriever X X X X X.", "x-ray machine X X X X X."],
}


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_prompt_assembly_matches_tokenizer(bb, position):
    strings = EQUIVALENT[position]
    full = bb.tokenize(strings)
    # the placeholder positions, found independently: where "Z" instead of "X" changes the token ids
    other = bb.tokenize([s.replace("X", "Z") for s in strings])
    x_positions = [torch.nonzero(full[i] != other[i]).flatten().tolist() for i in range(len(strings))]
    assert all(len(p) == 5 for p in x_positions)

    learner = PromptLearner(bb, NAMES, n_ctx=5, position=position, seed=3)
    ps = learner.prompts(NAMES)
    L = ps.tokens.shape[1]
    assert L == int(full.argmax(dim=1).max()) + 1  # cut right after the last end-of-text token
    assert torch.equal(ps.tokens, full[:, :L]) and not full[:, L:].any()
    assert ps.positions.tolist() == x_positions

    embeds = splice(ps, learner.ctx)
    words = bb.token_embedding(full[:, :L])
    for i in range(len(NAMES)):
        others = [j for j in range(L) if j not in x_positions[i]]
        assert torch.equal(embeds[i, x_positions[i]], learner.ctx.detach())  # ctx row m at the m-th X
        assert torch.equal(embeds[i, others], words[i, others])  # everything else: the words' embeddings

    manual = words.clone()
    for i in range(len(NAMES)):
        manual[i, x_positions[i]] = learner.ctx.detach()
    manual_full = torch.cat([manual, bb.token_embedding(full)[:, L:]], dim=1)
    with torch.no_grad():
        assert torch.allclose(learner.text_features(NAMES), bb.encode_prompts(manual_full, full, cut=False),
                              atol=1e-5)


def test_ctx_init_from_words(bb):
    learner = PromptLearner(bb, NAMES, n_ctx=16, ctx_init="a photo of a", seed=0)
    assert learner.n_ctx == 4 and learner.ctx.shape == (4, bb.ctx_dim)
    tokens = bb.tokenize(["a photo of a"])
    assert torch.equal(learner.ctx.detach(), bb.token_embedding(tokens)[0, 1:5])
    with torch.no_grad():  # initialised from the words, the prompt IS "a photo of a <name>."
        ref = bb.encode_text([f"a photo of a {n.replace('_', ' ')}." for n in NAMES], normalize=False)
        assert torch.allclose(learner.text_features(NAMES), ref, atol=1e-5)


def test_csc_has_one_context_per_class(bb):
    learner = PromptLearner(bb, NAMES, n_ctx=4, csc=True, seed=0)
    assert learner.ctx.shape == (len(NAMES), 4, bb.ctx_dim)
    assert not torch.equal(learner.ctx[0], learner.ctx[1])
    ps = learner.prompts(NAMES)
    embeds = splice(ps, learner.class_context(NAMES))
    for i in range(len(NAMES)):
        assert torch.equal(embeds[i, ps.positions[i]], learner.ctx[i].detach())
    # a subset by name uses the named classes' own contexts
    sub = ["x-ray machine", "dog"]
    with torch.no_grad():
        assert torch.allclose(learner.text_features(sub), learner.text_features(NAMES)[[2, 0]], atol=1e-5)
    with pytest.raises(Unsupported):
        learner.text_features(["unicorn"])
    # the gradient of one class's loss reaches only that class's context
    learner.text_features(["golden_retriever"]).sum().backward()
    g = learner.ctx.grad.abs().sum(dim=(1, 2))
    assert g[1] > 0 and g[0] == 0 and g[2] == 0


def test_method_logits_for_new_classes_and_subsets(bb):
    feats = torch.randn(5, bb.embed_dim)
    for name in ["coop", "cocoop", "kgcoop"]:  # a unified context scores any class names
        m = make(bb, name, NAMES)
        out = m.logits(feats, ["unicorn", "dog"])
        assert out.shape == (5, 2) and torch.allclose(out[:, 1], m.logits(feats, NAMES)[:, 0], atol=1e-4)
    csc = make(bb, "coop_csc", NAMES)
    assert torch.allclose(csc.logits(feats, ["x-ray machine", "dog"]), csc.logits(feats, NAMES)[:, [2, 0]], atol=1e-5)
    with pytest.raises(Unsupported):
        csc.logits(feats, ["dog", "unicorn"])


def test_cocoop_prompts_are_per_image(bb):
    m = make(bb, "cocoop", NAMES)
    net, learner = m.net, m.net.learner
    x = torch.randn(3, bb.embed_dim)
    with torch.no_grad():
        shift = net.meta_net(F.normalize(x, dim=-1))
        ps = learner.prompts(NAMES)
        embeds = splice(ps, learner.ctx.detach()[None, None] + shift[:, None, None, :])  # (3·n, L, D), image-major
        n = len(NAMES)
        for g in range(3):
            for c in range(n):
                assert torch.allclose(embeds[g * n + c, ps.positions[c]], learner.ctx + shift[g], atol=0)
        batched = learner.conditional_text_features(NAMES, shift)
        assert not torch.allclose(batched[0], batched[1], atol=1e-4)  # each image has its own prompts
        for g in range(3):  # one encoder call for all images = one call per image
            assert torch.allclose(batched[g], learner.conditional_text_features(NAMES, shift[g : g + 1])[0], atol=1e-5)
        full = m.logits(x, NAMES)
        m.eval_prompts_per_chunk = 4  # one image per chunk
        assert torch.allclose(m.logits(x, NAMES), full, atol=1e-5)
        f = F.normalize(x, dim=-1)
        expected = bb.logit_scale * torch.einsum("be,bne->bn", f, F.normalize(batched, dim=-1))
        assert torch.allclose(full, expected, atol=1e-4)


def test_cut_text_encoder_matches_uncut(bb):
    cut = PromptLearner(bb, NAMES, n_ctx=8, position="middle", seed=5, cut=True)
    uncut = PromptLearner(bb, NAMES, n_ctx=8, position="middle", seed=5, cut=False)
    assert cut.prompts(NAMES).tokens.shape[1] < uncut.prompts(NAMES).tokens.shape[1] == bb.context_length
    with torch.no_grad():
        assert (cut.text_features(NAMES) - uncut.text_features(NAMES)).abs().max() <= 1e-5
        shift = torch.randn(2, bb.ctx_dim) * 0.1
        a, b = cut.conditional_text_features(NAMES, shift), uncut.conditional_text_features(NAMES, shift)
        assert (a - b).abs().max() <= 1e-5
    cut.text_features(NAMES).sum().backward()
    uncut.text_features(NAMES).sum().backward()
    # The gradients are large (max ~230 on this model) and the two encoders sum over sequences of different
    # lengths, so they differ by fp32 rounding: measured 6e-5 absolute, 2.6e-7 (about 2 ulp) relative to the
    # largest gradient. Compare relative to that scale (1e-6 of it, ~8 ulp); a real difference (a misplaced
    # context token, a wrong mask) changes gradients by orders of magnitude more.
    scale = float(uncut.ctx.grad.abs().max())
    assert scale > 1.0
    torch.testing.assert_close(cut.ctx.grad, uncut.ctx.grad, rtol=1e-5, atol=1e-6 * scale)


# ------------------------------------------------------------------------------------------ losses

def test_kgcoop_loss_equals_independent_formula(bb):
    names = ["cat", "dog", "sea_lion", "car"]
    m = make(bb, "kgcoop", names)
    assert m.hp["kg_weight"] == 8.0 and m.learner.n_ctx == 4
    with torch.no_grad():
        m.learner.ctx.add_(torch.randn(m.learner.ctx.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    x, y = torch.randn(6, bb.embed_dim), torch.tensor([0, 1, 2, 3, 0, 2])
    loss = m.loss(x, y).detach()

    # independently: prompts from the equivalent strings, the uncut encoder, the templates' features
    strings = [f"X X X X {n.replace('_', ' ')}." for n in names]
    tokens = bb.tokenize(strings)
    embeds = bb.token_embedding(tokens)
    embeds[:, 1:5] = m.learner.ctx.detach()
    w = F.normalize(bb.encode_prompts(embeds, tokens, cut=False), dim=-1)
    w_clip = F.normalize(bb.encode_text([f"a photo of a {n.replace('_', ' ')}." for n in names]), dim=-1)
    logits = bb.logit_scale * F.normalize(x, dim=-1) @ w.t()
    ce = F.cross_entropy(logits, y)
    W = 8.0
    expected = ce + W * (1 - (w * w_clip).sum(dim=1).mean())
    assert abs(float(loss) - float(expected)) < 1e-4
    as_l2 = ce + (W / 2) * ((w - w_clip) ** 2).sum(dim=1).mean()
    assert abs(float(loss) - float(as_l2)) < 1e-4
    assert float(loss) > float(ce) + 1e-3  # the knowledge term is really there

    coop = make(bb, "coop", names, protocol="base2new")  # same context and prompts, no knowledge term
    with torch.no_grad():
        coop.learner.ctx.copy_(m.learner.ctx)
    assert abs(float(coop.loss(x, y).detach()) - float(ce)) < 1e-4


@pytest.mark.parametrize("method", TRAINED)
def test_gradients_reach_only_learnable_parameters(bb, method):
    names = ["cat", "dog", "car"]
    m = make(bb, method, names, epochs=2, batch_size=4, lr=0.01)
    module = m.net if method == "cocoop" else m.learner
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    learn_before = {k: v.detach().clone() for k, v in module.named_parameters()}
    expected = {"ctx"} if method != "cocoop" else {"learner.ctx", "meta_net.0.weight", "meta_net.0.bias",
                                                   "meta_net.2.weight", "meta_net.2.bias"}
    assert {k for k, p in module.named_parameters() if p.requires_grad} == expected
    assert set(module.state_dict()) == expected  # the frozen backbone is not part of the module
    x = torch.randn(8, bb.embed_dim)
    y = torch.arange(8) % 3
    stats = m.fit(train_data(x, y))
    assert len(stats["loss"]) == 2
    after = bb.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in bb.model.parameters())
    assert all(not torch.equal(learn_before[k], v) for k, v in module.named_parameters())


# ------------------------------------------------------------------------------------------ linear probe

def _reference_search(xtr, ytr, xval, yval, steps=8):
    """The reference loop (CoOp lpclip/linear_probe.py) written out again, returning the final C."""
    from sklearn.linear_model import LogisticRegression

    def acc(C):
        clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=C).fit(xtr, ytr)  # l2 is the default penalty
        return sum(clf.predict(xval) == yval) / len(yval), clf

    search = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    accs = [acc(c)[0] for c in search]
    c_peak = search[int(np.argmax(accs))]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    for _ in range(steps):
        (a_l, clf_l), (a_r, clf_r) = acc(c_left), acc(c_right)
        if a_l < a_r:
            c_final, clf = c_right, clf_r
            c_left, c_right = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_right)
        else:
            c_final, clf = c_left, clf_l
            c_right, c_left = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final, clf


def test_linear_probe_c_search_matches_reference(bb):
    import warnings

    g = torch.Generator().manual_seed(7)
    means = torch.randn(4, 8, generator=g)

    def sample(k):
        y = torch.arange(4).repeat_interleave(k)
        return means[y] + 1.3 * torch.randn(len(y), 8, generator=g), y

    (x, y), (xv, yv), (xt, yt) = sample(4), sample(3), sample(30)
    names = ["a", "b", "c", "d"]
    m = make(bb, "linear_probe", names)
    stats = m.fit(train_data(x, y, xv, yv))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c_ref, clf = _reference_search(x.double().numpy(), y.numpy(), xv.double().numpy(), yv.numpy())
    assert stats["c_search"] == "val" and len(stats["sweep"]) == 7 and len(stats["steps"]) == 8
    assert stats["C"] == c_ref  # bit-identical C
    logits = m.logits(xt, names)
    assert np.array_equal(logits.argmax(1).numpy(), clf.predict(xt.double().numpy()))
    assert np.allclose(logits.numpy(), clf.decision_function(xt.double().numpy()), atol=1e-4)
    # a subset of the training classes by name = column selection; unknown classes are refused
    assert torch.equal(m.logits(xt, ["d", "b"]), logits[:, [3, 1]])
    with pytest.raises(Unsupported):
        m.logits(xt, ["a", "zebra"])


def test_linear_probe_without_val_split(bb):
    g = torch.Generator().manual_seed(3)
    means = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(3).repeat_interleave(8)
    x = means[y] + torch.randn(len(y), 8, generator=g)
    m = make(bb, "linear_probe", ["a", "b", "c"])
    stats = m.fit(train_data(x, y))
    assert stats["c_search"].startswith("holdout (12 of 24")
    y1 = torch.arange(3)
    stats = make(bb, "linear_probe", ["a", "b", "c"]).fit(train_data(means[y1], y1))
    assert stats["c_search"].startswith("default") and stats["C"] == 1.0
    stats = make(bb, "linear_probe", ["a", "b", "c"], C=0.5).fit(train_data(x, y))
    assert stats["c_search"] == "fixed" and stats["C"] == 0.5


# ------------------------------------------------------------------------------------------ learning

CLASSES = ["cat", "dog", "car", "tree", "boat", "house", "bird", "fish"]


@pytest.fixture(scope="module")
def task(bb):
    """Separable features: class c's mean is the (centred) text feature of a hidden random context for c."""
    with torch.no_grad():
        hidden = PromptLearner(bb, CLASSES, n_ctx=4, seed=999)
        t = F.normalize(hidden.text_features(CLASSES, torch.randn(4, bb.ctx_dim,
                                                                  generator=torch.Generator().manual_seed(1)) * 0.5), dim=-1)
        centres = F.normalize(t - t.mean(0), dim=-1)
    g = torch.Generator().manual_seed(2)

    def sample(k):
        y = torch.arange(len(CLASSES)).repeat_interleave(k)
        return 5 * (centres[y] + 2.5 / 8 * torch.randn(len(y), bb.embed_dim, generator=g)), y

    test = sample(100)
    shots = {}
    for k in (1, 16):
        x, y = sample(k)
        xv, yv = sample(min(k, 4))
        shots[k] = train_data(x, y, xv, yv)
    return shots, test


LEARNING = {  # the tiny random model needs a larger step than CLIP's 0.002
    "coop": dict(lr=0.02, epochs=50),
    "kgcoop": dict(lr=0.02, epochs=50, batch_size=32, n_ctx=16, ctx_init="", kg_weight=0.5),
    "cocoop": dict(lr=0.02, epochs=4),
    "linear_probe": {},
}


@pytest.mark.parametrize("method", list(LEARNING))
def test_more_shots_learn_more(bb, task, method):
    shots, (xt, yt) = task
    acc, losses = {}, {}
    for k in (1, 16):
        m = make(bb, method, CLASSES, shots=k, **LEARNING[method])
        stats = m.fit(shots[k])
        acc[k] = float((m.logits(xt, CLASSES).argmax(1) == yt).float().mean())
        losses[k] = stats.get("loss")
    assert acc[16] >= acc[1] + 0.08 and acc[16] > 0.6, acc
    if method != "linear_probe":
        for k in (1, 16):
            assert losses[k][-1] < losses[k][0] - 0.1, (k, losses[k][0], losses[k][-1])


@pytest.mark.parametrize("method", TRAINED + ["linear_probe"])
def test_same_seed_same_logits(bb, method):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9, bb.embed_dim, generator=g), torch.arange(9) % 3
    views = [x, x + 0.1 * torch.randn(x.shape, generator=g)]
    xt = torch.randn(4, bb.embed_dim, generator=g)
    hp = {} if method == "linear_probe" else dict(epochs=3, batch_size=4)
    out = []
    for i in range(2):
        torch.manual_seed(100 + i)  # the global stream must not matter
        m = make(bb, method, ["a", "b", "c"], seed=4, **hp)
        m.fit(train_data(x, y, x[:3], y[:3], views=views))
        out.append(m.logits(xt, ["a", "b", "c"]))
    assert torch.equal(out[0], out[1])
    if method in ("coop", "coop_csc"):  # random init: another seed, another context
        other = make(bb, method, ["a", "b", "c"], seed=5, **hp)
        other.fit(train_data(x, y, views=views))
        assert not torch.equal(other.logits(xt, ["a", "b", "c"]), out[0])


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_preempted_training_resumes_to_the_same_model(bb, method):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, bb.embed_dim, generator=g), torch.arange(8) % 3
    views = [x, x + 0.1 * torch.randn(x.shape, generator=g), x - 0.1]
    xt = torch.randn(4, bb.embed_dim, generator=g)
    hp = dict(epochs=4, batch_size=4, lr=0.01)
    full = make(bb, method, ["a", "b", "c"], **hp)
    stats = full.fit(train_data(x, y, views=views))
    ck = MemoryCheckpointer(stop_at=2)
    first = make(bb, method, ["a", "b", "c"], **hp)
    first.ctx.checkpointer, first.ctx.checkpoint_every = ck, 1
    with pytest.raises(Stop):
        first.fit(train_data(x, y, views=views))
    ck.stop_at = None
    torch.manual_seed(123)  # a new process: another global stream, a freshly initialised model
    second = make(bb, method, ["a", "b", "c"], seed=9, **hp)
    second.ctx.checkpointer, second.ctx.checkpoint_every = ck, 1
    resumed = second.fit(train_data(x, y, views=views))
    assert resumed["loss"] == stats["loss"]
    assert torch.equal(second.logits(xt, ["a", "b", "c"]), full.logits(xt, ["a", "b", "c"]))


# ------------------------------------------------------------------------------------------ defaults

def test_default_hparams_per_protocol():
    coop = get_method("coop")
    assert [coop.default_hparams("fewshot", "caltech101", k)["epochs"] for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert coop.default_hparams("fewshot", "imagenet", 16)["epochs"] == 50
    few = coop.default_hparams("fewshot", "dtd", 4)
    assert (few["n_ctx"], few["ctx_init"], few["class_token_position"], few["batch_size"], few["lr"]) == (16, "", "end", 32, 0.002)
    for p in ("base2new", "domain_shift", "cross_dataset"):
        hp = coop.default_hparams(p, "dtd", 16)
        assert (hp["n_ctx"], hp["ctx_init"], hp["epochs"]) == (4, "a photo of a", 200)
        assert coop.default_hparams(p, "imagenet", 16)["epochs"] == 50
    assert get_method("coop_csc").default_hparams("fewshot", "dtd", 1) == coop.default_hparams("fewshot", "dtd", 1)
    assert get_method("coop_csc").protocols == ("fewshot", "domain_shift")
    for p in ("fewshot", "base2new", "domain_shift", "cross_dataset"):
        cc = get_method("cocoop").default_hparams(p, "imagenet", 16)
        assert (cc["n_ctx"], cc["ctx_init"], cc["batch_size"], cc["epochs"], cc["lr"]) == (4, "a photo of a", 1, 10, 0.002)
        kg = get_method("kgcoop").default_hparams(p, "dtd", 16)  # schedule per protocol: tests/test_fidelity.py
        assert (kg["n_ctx"], kg["ctx_init"], kg["kg_weight"]) == (4, "a photo of a", 8.0)
    for name in TRAINED:
        hp = get_method(name).default_hparams("fewshot", "dtd", 16)
        assert (hp["momentum"], hp["weight_decay"], hp["warmup_epochs"], hp["warmup_lr"]) == (0.9, 5e-4, 1, 1e-5)
    assert get_method("linear_probe").protocols == ("fewshot", "domain_shift")


# ------------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("method-data")
    make_dataset_tree("caltech101", root, n_classes=4, per_class=(4, 2, 3))
    for key in ("imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"):
        make_dataset_tree(key, root, n_classes=8, per_class=(2, 0, 2))
    return root


E2E = [
    ("fewshot", "caltech101", "coop", {"epochs": 2}),
    ("fewshot", "caltech101", "coop_csc", {"epochs": 2}),
    ("fewshot", "caltech101", "kgcoop", {"epochs": 2}),
    ("fewshot", "caltech101", "cocoop", {"epochs": 1}),
    ("fewshot", "caltech101", "linear_probe", {}),
    ("base2new", "caltech101", "cocoop", {"epochs": 1}),
    ("domain_shift", "imagenet", "coop_csc", {"epochs": 2}),
    ("domain_shift", "imagenet", "linear_probe", {}),
]


def test_end_to_end_through_the_runner(trees, tmp_path, tiny_backbone_spec):
    from bench.protocols import expand
    from bench.engine.runner import execute
    from bench.store import Store

    store = Store(tmp_path / "results")
    for protocol, dataset, method, overrides in E2E:
        (config,) = expand(protocol, [method], datasets=[dataset], shots=[2], seeds=[1], overrides=overrides,
                           backbone=tiny_backbone_spec, group="coop11", data_root=str(trees))
        result = execute(config, store)
        assert result["status"] == "complete"
        metrics = result["metrics"]
        assert set(metrics) == {e["dataset"] if e["classes"] == "all" else f"{e['dataset']}:{e['classes']}"
                                for e in config["evals"]}
        for name, r in metrics.items():
            assert r["top1"] is not None and 0 <= r["top1"] <= 100, (method, name, r)
        if protocol == "domain_shift":  # ImageNet-A/R: a subset of the training classes, scored by name
            assert metrics["imagenet_a"]["n_classes"] == 6 and metrics["imagenet"]["n_classes"] == 8
        if method != "linear_probe":
            assert len(result["train_stats"]["loss"]) == overrides["epochs"]
            assert result["templates"]["n_ctx"] == config["hparams"]["n_ctx"]
        else:
            # ImageNet samples no few-shot val: C is searched on held-out training shots
            assert result["train_stats"]["c_search"].startswith("val" if dataset == "caltech101" else "holdout")


def test_perf_command_runs(capsys, caplog):
    import logging

    from bench.cli import main

    code = main(["perf", "--classes", "2", "--shots", "2", "--epochs", "1", "--text-classes", "3", "--reps", "1", "--no-grid",
                 "--workers", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "epoch speed-up" in out and "max |cut - uncut|" in out
    assert "image-side speed-up" in out and "deep text prompts" in out
    # no stray library warning (open_clip's "initialized randomly" for the fixture's deliberately random weights)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
