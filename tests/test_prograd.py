"""ProGrad (methods/prograd.py) on the tiny random backbone, on CPU.

Parity against independent transcriptions, written out here from the authors' code (BeierZhu/Prompt-align at
1b76203): the prompt construction and context initialisation (``prograd.py:78-126``: zeros + the prefix's first
w = #words token embeddings, the rest of the prefix fixed after the context), the soft cross-entropy "KL" loss
(``prograd.py:285-293``), and the projected gradient step (``Dassl.ProGrad.pytorch/dassl/engine/trainer.py:311-349``)
with g_ce and g_kl from ``torch.autograd.grad`` on the transcribed losses, on both branches (cos < 0 and cos >= 0).
Also: λ = 0 is a plain CE step, the fp16 loss-scaler path, defaults, a learning check and an end-to-end run
through the runner (fewshot and base2new).
"""

import pytest
import torch
import torch.nn.functional as F

from bench.engine.loop import gradient_step
from bench.errors import BenchError
from bench.registry import get_method
import methodkit as mk
from methodkit import MemoryCheckpointer, Stop, train_data

NAMES = ["dog", "golden_retriever", "x-ray machine"]
PETS = "a type of pet, a photo of a {}."


pytestmark = pytest.mark.usefixtures("one_thread")  # bb and one_thread: tests/conftest.py


def make(bb, names=NAMES, dataset="oxford_pets", protocol="fewshot", shots=16, seed=1, **overrides):
    """ProGrad; every keyword is an hparam override, ``template`` included (ProGrad's own template hparam: the
    Context's template stays "a photo of a {}.")."""
    return mk.make(bb, "prograd", names, protocol, shots, seed, dataset=dataset, hparams=overrides)


# ------------------------------------------------------------------------ transcriptions of the reference

def ref_prompt_parts(bb, names, template, n_ctx):
    """prograd.py:78-95 and :112-126, line by line: (initial ctx, tokens, token_prefix, token_suffix)."""
    ctx_init = template.replace(" {}.", "").replace("_", " ")
    prompt_n_ctx = len(ctx_init.split(" "))
    embedding = bb.token_embedding(bb.tokenize([ctx_init]))
    ctx_vectors = torch.zeros(n_ctx, bb.ctx_dim)
    ctx_vectors[n_ctx - prompt_n_ctx:, :] = embedding[0, 1:1 + prompt_n_ctx, :]
    prompt_prefix = " ".join(["X"] * (n_ctx - prompt_n_ctx))
    prompt_prefix = f"{prompt_prefix} {ctx_init}"
    prompts = [prompt_prefix + " " + n.replace("_", " ") + "." for n in names]
    tokenized = bb.tokenize(prompts)
    emb = bb.token_embedding(tokenized)
    return ctx_vectors, tokenized, emb[:, :1, :], emb[:, 1 + n_ctx:, :]


def ref_text(bb, ctx, tokenized, prefix, suffix):
    """PromptLearner.forward ('end') + TextEncoder (prograd.py:134-150, :51-63), over the full context length."""
    n = tokenized.shape[0]
    prompts = torch.cat([prefix, ctx.unsqueeze(0).expand(n, -1, -1), suffix], dim=1)
    return bb.encode_prompts(prompts, tokenized, cut=False)


def ref_losses(bb, ctx, parts, feats, labels, names, template, T=1.0):
    """Student and zero-shot teacher logits (prograd.py:240-277), ProGradLoss (prograd.py:285-293)."""
    _, tokenized, prefix, suffix = parts
    text = ref_text(bb, ctx, tokenized, prefix, suffix)
    img = feats / feats.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    stu = bb.logit_scale * img @ text.t()
    with torch.no_grad():
        zs = bb.encode_text([template.format(n.replace("_", " ")) for n in names], normalize=False)
        zs = zs / zs.norm(dim=-1, keepdim=True)
        tea = bb.logit_scale * img @ zs.t()
    xe = F.cross_entropy(stu, labels)
    kl = (-F.softmax(tea / T, dim=-1) * F.log_softmax(stu / T, -1) * T * T).sum(1).mean()
    return xe, kl, tea


def ref_projected_grad(bb, ctx0, parts, feats, labels, names, template, lam):
    """trainer.py:311-345 with autograd.grad: g_kl, then g_ce, then the projection if cos < 0."""
    ctx = ctx0.detach().clone().requires_grad_(True)
    xe, kl, _ = ref_losses(bb, ctx, parts, feats, labels, names, template)
    b_grad, = torch.autograd.grad(kl, ctx, retain_graph=True)
    a_grad, = torch.autograd.grad(xe, ctx)
    b_grad_norm = b_grad / torch.linalg.norm(b_grad)
    a_grad_norm = a_grad / torch.linalg.norm(a_grad)
    cos = torch.dot(a_grad_norm.flatten(), b_grad_norm.flatten())
    if cos < 0:
        g = a_grad - lam * torch.dot(a_grad.flatten(), b_grad_norm.flatten()) * b_grad_norm
    else:
        g = a_grad
    return g, float(cos), a_grad


# ------------------------------------------------------------------------ prompt construction and init

@pytest.mark.parametrize("template, words, fixed", [(PETS, 8, 1), ("a texture of {}.", 3, 0),
                                                      ("a type of food, a photo of {}.", 7, 1)])
def test_ctx_init_and_prompt_match_the_reference(bb, template, words, fixed):
    m = make(bb, template=template)
    ref_ctx, tokenized, prefix, suffix = ref_prompt_parts(bb, NAMES, template, 16)
    ctx = m.learner.ctx.detach()
    assert ctx.shape == (16, bb.ctx_dim)
    assert torch.equal(ctx, ref_ctx)
    assert not ctx[: 16 - words].any()  # zeros, then the prefix's first `words` token embeddings
    prefix_words = template.replace(" {}.", "")
    emb = bb.token_embedding(bb.tokenize([prefix_words]))[0]
    assert torch.equal(ctx[16 - words:], emb[1:1 + words])
    info = m.template_info()
    assert info["fixed_prefix_tokens"] == fixed and info["prograd_template"] == template
    ps = m.learner.prompts(NAMES)
    L = ps.tokens.shape[1]
    assert torch.equal(ps.tokens, tokenized[:, :L]) and not tokenized[:, L:].any()
    assert ps.positions.tolist() == [list(range(1, 17))] * len(NAMES)
    with torch.no_grad():
        ours = m.learner.text_features(NAMES)
        ref = ref_text(bb, ctx, tokenized, prefix, suffix)
        assert (ours - ref).abs().max() <= 1e-5
        # unseen class names: the same construction
        new = ["unicorn", "tabby_cat"]
        parts = ref_prompt_parts(bb, new, template, 16)
        assert (m.learner.text_features(new) - ref_text(bb, ctx, *parts[1:])).abs().max() <= 1e-5


def test_bad_templates_and_contexts_are_refused(bb):
    with pytest.raises(BenchError, match="must end with"):
        make(bb, template="a photo of a {} fabric.")
    with pytest.raises(BenchError, match="smaller than"):
        make(bb, template=PETS, n_ctx=4)
    m = make(bb, template="{}.", n_ctx=2)  # no prefix: all-zero context
    assert not m.learner.ctx.detach().any() and m.template_info()["ctx_init"] == "zeros"


def test_defaults(bb):
    cls = get_method("prograd")
    assert cls.protocols == ("fewshot", "base2new", "domain_shift", "cross_dataset")
    for shots, epochs in [(1, 50), (2, 100), (4, 100), (8, 200), (16, 200)]:
        hp = cls.default_hparams("fewshot", "caltech101", shots)
        assert hp["epochs"] == epochs and hp["lambda"] == 1.0
        assert (hp["n_ctx"], hp["lr"], hp["batch_size"], hp["momentum"], hp["weight_decay"], hp["warmup_epochs"],
                hp["warmup_lr"], hp["temperature"]) == (16, 0.002, 32, 0.9, 5e-4, 1, 1e-5, 1.0)
    for d in ("oxford_flowers", "dtd", "eurosat"):
        assert [cls.default_hparams("fewshot", d, k)["lambda"] for k in (1, 2, 4, 8, 16)] == [1.0] * 3 + [0.8] * 2
        assert cls.default_hparams("base2new", d, 16)["lambda"] == 1.0
    assert cls.default_hparams("fewshot", "oxford_pets", 4)["template"] == PETS
    assert cls.default_hparams("fewshot", "dtd", 4)["template"] == "a texture of {}."
    assert cls.default_hparams("fewshot", "mini_textures", 4)["template"] == "a photo of a {}."
    assert cls.default_hparams("base2new", "dtd", 16)["epochs"] == 200
    assert cls.default_hparams("domain_shift", "imagenet", 16)["epochs"] == 50
    assert set(cls.default_hparams("cross_dataset", "imagenet", 16)) == set(cls.hparam_spec)


# ------------------------------------------------------------------------ losses and the projected step

def test_kl_loss_formula():
    from bench.methods.prograd import prograd_kl

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    p = F.softmax(t, -1)
    # the soft cross-entropy = KL(p || q) + H(p), averaged over the batch
    kl = F.kl_div(F.log_softmax(s, -1), p, reduction="batchmean") - (p * p.log()).sum(1).mean()
    assert abs(float(prograd_kl(s, t)) - float(kl)) <= 1e-5
    T = 2.0
    manual = sum(-sum(float(F.softmax(t[i] / T, 0)[c]) * float(F.log_softmax(s[i] / T, 0)[c]) for c in range(5))
                 for i in range(6)) / 6 * T * T
    assert abs(float(prograd_kl(s, t, T)) - manual) <= 1e-5


def _batch(bb, m, agree, seed=1, n=12):
    """Features near the teacher's class texts, labelled as the zero-shot teacher says (its argmax: CE and KL
    gradients agree) or against it (its argmin: they conflict)."""
    g = torch.Generator().manual_seed(seed)
    text = m.teacher_text()
    feats = 3 * text[torch.arange(n) % len(text)] + 0.5 * torch.randn(n, bb.embed_dim, generator=g)
    with torch.no_grad():
        tea = bb.logit_scale * F.normalize(feats, dim=-1) @ text.t()
    return feats, (tea.argmax(1) if agree else tea.argmin(1))


@pytest.mark.parametrize("agree, lam", [(False, 1.0), (False, 0.8), (True, 1.0)])
def test_projected_step_matches_the_reference(bb, agree, lam):
    from bench.methods.prograd import prograd_step

    m = make(bb, template=PETS)
    with torch.no_grad():  # away from the special initial point
        m.learner.ctx.add_(0.02 * torch.randn(m.learner.ctx.shape, generator=torch.Generator().manual_seed(5)))
    ctx0 = m.learner.ctx.detach().clone()
    feats, labels = _batch(bb, m, agree)
    parts = ref_prompt_parts(bb, NAMES, PETS, 16)
    g_ref, cos, g_ce = ref_projected_grad(bb, ctx0, parts, feats, labels, NAMES, PETS, lam)
    assert (cos < 0) == (not agree), cos  # both branches are exercised
    if not agree:
        assert (g_ref - g_ce).abs().max() > 1e-3  # the projection changed something

    opt = torch.optim.SGD([m.learner.ctx], lr=0.1)
    loss = prograd_step(lam)(m.losses, (feats, labels), opt, None)
    xe, _, _ = ref_losses(bb, ctx0, parts, feats, labels, NAMES, PETS)
    assert abs(float(loss) - float(xe)) <= 1e-5
    assert (m.learner.ctx.grad - g_ref).abs().max() <= 1e-5
    assert (m.learner.ctx.detach() - (ctx0 - 0.1 * g_ref)).abs().max() <= 1e-5
    # the projected gradient no longer conflicts with g_kl (λ = 1: orthogonal to it)
    if not agree and lam == 1.0:
        ctx = ctx0.clone().requires_grad_(True)
        _, kl, _ = ref_losses(bb, ctx, parts, feats, labels, NAMES, PETS)
        g_kl, = torch.autograd.grad(kl, ctx)
        assert abs(float(F.cosine_similarity(g_ref.flatten(), g_kl.flatten(), dim=0))) < 1e-4


def test_projection_is_per_tensor():
    from bench.methods.prograd import project_conflicting

    a = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0]), None]
    b = [torch.tensor([-1.0, 1.0]), torch.tensor([1.0, 0.0]), torch.zeros(2), torch.ones(2)]
    out = project_conflicting(a, b, 1.0)
    assert torch.allclose(out[0], torch.tensor([0.5, 0.5]))  # conflicting: projected onto b's normal plane
    assert torch.equal(out[1], a[1]) and torch.equal(out[2], a[2]) and out[3] is None  # cos >= 0, zero g_kl
    half = project_conflicting(a[:1], b[:1], 0.5)[0]
    assert torch.allclose(half, torch.tensor([0.75, 0.25]))


def test_lambda_zero_is_a_plain_ce_step(bb):
    from bench.methods.prograd import prograd_step

    feats, labels = _batch(bb, make(bb), agree=False)
    m1, m2 = make(bb, **{"lambda": 0.0}), make(bb)
    opt1 = torch.optim.SGD([m1.learner.ctx], lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt2 = torch.optim.SGD([m2.learner.ctx], lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        prograd_step(0.0)(m1.losses, (feats, labels), opt1, None)
        gradient_step(lambda f, y: m2.losses(f, y)[0], (feats, labels), opt2, None)
    assert (m1.learner.ctx - m2.learner.ctx).abs().max() <= 1e-6
    assert not torch.equal(m1.learner.ctx, make(bb).learner.ctx)


def test_loss_scaler_unscales_before_projecting(bb):
    from bench.methods.prograd import prograd_step

    m1, m2 = make(bb), make(bb)
    feats, labels = _batch(bb, m1, agree=False)
    opt1 = torch.optim.SGD([m1.learner.ctx], lr=0.1)
    opt2 = torch.optim.SGD([m2.learner.ctx], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    prograd_step(1.0)(m1.losses, (feats, labels), opt1, None)
    prograd_step(1.0)(m2.losses, (feats, labels), opt2, scaler)
    assert (m1.learner.ctx - m2.learner.ctx).abs().max() <= 1e-6
    # an overflow in the KL gradient skips the step and lowers the scale
    before = m2.learner.ctx.detach().clone()

    def overflowing(f, y):
        ce, kl = m2.losses(f, y)
        return ce, kl * float("inf")

    prograd_step(1.0)(overflowing, (feats, labels), opt2, scaler)
    assert torch.equal(m2.learner.ctx.detach(), before) and scaler.get_scale() < 2.0 ** 12


# ------------------------------------------------------------------------ training

def test_fit_learns_and_only_the_context_changes(bb):
    """Separable features whose class means are the text features of a hidden context (so a prompt can express
    them, as in tests/test_methods.py): training must raise accuracy well above the initial prompt's."""
    from bench.methods._prompts import PromptLearner

    names = ["cat", "dog", "car", "tree", "boat", "house", "bird", "fish"]
    with torch.no_grad():
        hidden = PromptLearner(bb, names, n_ctx=4, seed=999)
        t = F.normalize(hidden.text_features(names, torch.randn(4, bb.ctx_dim,
                                                                generator=torch.Generator().manual_seed(1)) * 0.5), dim=-1)
        centres = F.normalize(t - t.mean(0), dim=-1)
    g = torch.Generator().manual_seed(2)

    def sample(k):
        y = torch.arange(len(names)).repeat_interleave(k)
        return 5 * (centres[y] + 2.5 / 8 * torch.randn(len(y), bb.embed_dim, generator=g)), y

    (x, y), (xt, yt) = sample(16), sample(50)
    m = make(bb, names, dataset="caltech101", epochs=40, lr=0.02)
    before_model = {k: v.clone() for k, v in bb.model.state_dict().items()}
    acc0 = float((m.logits(xt, names).argmax(1) == yt).float().mean())
    stats = m.fit(train_data(x, y, views=[x, x + 0.05 * torch.randn(x.shape, generator=g)]))
    acc1 = float((m.logits(xt, names).argmax(1) == yt).float().mean())
    assert len(stats["loss"]) == 40 and stats["loss"][-1] < stats["loss"][0] - 0.1, stats["loss"]
    assert acc1 >= acc0 + 0.15 and acc1 > 0.6, (acc0, acc1)
    assert all(torch.equal(before_model[k], v) for k, v in bb.model.state_dict().items())
    assert {k for k, p in m.learner.named_parameters() if p.requires_grad} == {"ctx"}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("prograd-data")
    make_dataset_tree("caltech101", root, n_classes=4, per_class=(4, 2, 3))
    return root


@pytest.mark.parametrize("protocol", ["fewshot", "base2new"])
def test_end_to_end_through_the_runner(trees, tmp_path, tiny_backbone_spec, protocol):
    from bench.engine.runner import execute
    from bench.protocols import expand
    from bench.store import Store

    (config,) = expand(protocol, ["prograd"], datasets=["caltech101"], shots=[2], seeds=[1], overrides={"epochs": 2},
                       backbone=tiny_backbone_spec, group="coop11", data_root=str(trees))
    assert config["hparams"]["template"] == "a photo of a {}." and config["hparams"]["lambda"] == 1.0
    result = execute(config, Store(tmp_path / "results"))
    assert result["status"] == "complete"
    assert set(result["metrics"]) == {e["dataset"] if e["classes"] == "all" else f"{e['dataset']}:{e['classes']}"
                                      for e in config["evals"]}
    for name, r in result["metrics"].items():
        assert r["top1"] is not None and 0 <= r["top1"] <= 100, (name, r)
    if protocol == "base2new":
        assert any(k.endswith(":new") for k in result["metrics"])
    assert len(result["train_stats"]["loss"]) == 2
    assert result["templates"]["n_ctx"] == 16 and result["templates"]["prograd_template"] == "a photo of a {}."


def test_preempted_training_resumes_to_the_same_context(bb):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, bb.embed_dim, generator=g), torch.arange(8) % 3
    views = [x, x + 0.1 * torch.randn(x.shape, generator=g), x - 0.1]
    hp = dict(epochs=4, batch_size=4, lr=0.01)
    full = make(bb, **hp)
    stats = full.fit(train_data(x, y, views=views))
    ck = MemoryCheckpointer(stop_at=2, quiet=True)
    first = make(bb, **hp)
    first.ctx.checkpointer, first.ctx.checkpoint_every = ck, 1
    with pytest.raises(Stop):
        first.fit(train_data(x, y, views=views))
    ck.stop_at = None
    second = make(bb, **hp)
    second.ctx.checkpointer, second.ctx.checkpoint_every = ck, 1
    resumed = second.fit(train_data(x, y, views=views))
    assert resumed["loss"] == stats["loss"]
    assert torch.equal(second.learner.ctx, full.learner.ctx)
