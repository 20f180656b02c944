"""Deep prompts in both towers (bench/prompted.py) against open_clip's own forward passes.

The independent re-implementation of the insertion rules uses hooks on open_clip's modules and then calls the
model's unmodified ``encode_image`` / ``encode_text``: prompts appended at ``ln_pre``'s input, tokens replaced
at each deeper block's input, layer-0 text prompts written into the token embedding's output.
"""

import json

import open_clip
import pytest
import torch

from bench.model.backbone import create_backbone
from bench.errors import BenchError
from bench.model.prompted import encode_image, encode_text

DEEP = {  # 3 blocks per tower (so "below a depth" leaves a block untouched); vision width != text width
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 48, "layers": 3, "head_width": 24},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}
RESNET = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    (d / "tiny-deep.json").write_text(json.dumps(DEEP))
    (d / "tiny-resnet.json").write_text(json.dumps(RESNET))
    open_clip.add_model_config(d)
    bb = create_backbone("tiny-deep", None)
    # Random init leaves every LayerNorm at weight 1, bias 0 (scale- and shift-invariant): give them random affine
    # parameters so that an insertion at the wrong side of a LayerNorm changes the output.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in bb.model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=gen))
    return bb


def images(n=3, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def prompts(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.5


def reference_image(bb, imgs, first, deep):
    """open_clip's encode_image with hooks: append at ln_pre's input, replace the last k before block i."""
    v, k, hooks = bb.model.visual, first.shape[0], []
    hooks.append(v.ln_pre.register_forward_pre_hook(
        lambda mod, args: (torch.cat([args[0], first.expand(args[0].shape[0], k, -1)], dim=1),)))
    for i, p in enumerate(deep, start=1):
        hooks.append(v.transformer.resblocks[i].register_forward_pre_hook(
            lambda mod, args, p=p: (torch.cat([args[0][:, :-k], p.expand(args[0].shape[0], k, -1)], dim=1),)))
    try:
        with torch.no_grad():
            return bb.model.encode_image(imgs)
    finally:
        for h in hooks:
            h.remove()


def reference_text(bb, tokens, first, deep):
    """open_clip's encode_text (full context, no cut) with hooks writing positions 1..k."""
    m, k, hooks = bb.model, first.shape[0], []

    def put(x, p):
        x = x.clone()
        x[:, 1:1 + k] = p
        return x

    hooks.append(m.token_embedding.register_forward_hook(lambda mod, args, out: put(out, first)))
    for i, p in enumerate(deep, start=1):
        hooks.append(m.transformer.resblocks[i].register_forward_pre_hook(
            lambda mod, args, p=p: (put(args[0], p),)))
    try:
        with torch.no_grad():
            return m.encode_text(tokens)
    finally:
        for h in hooks:
            h.remove()


def spliced(bb, tokens, first):
    e = bb.token_embedding(tokens)
    e[:, 1:1 + first.shape[0]] = first
    return e


def test_no_prompts_equal_open_clip(deep):
    x = images()
    assert (encode_image(deep, x) - deep.encode_image(x)).abs().max() <= 1e-5
    tokens = deep.tokenize(["a photo of a dog.", "a small red car on a road."])
    with torch.no_grad():
        want = deep.model.encode_text(tokens)
    for cut in (True, False):
        got = encode_text(deep, deep.token_embedding(tokens), tokens, cut=cut)
        assert (got - want).abs().max() <= 1e-5


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_vision_prompts_follow_the_insertion_rules(deep, depth):
    x, k, w = images(), 4, 48
    first = prompts((k, w), 1)
    layers = [prompts((k, w), 10 + i) for i in range(depth - 1)]
    got = encode_image(deep, x, first, layers)
    want = reference_image(deep, x, first, layers)
    assert (got - want).abs().max() <= 1e-5
    assert (got - deep.encode_image(x)).abs().max() > 1e-3  # the prompts do change the features


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_text_prompts_follow_the_insertion_rules(deep, depth):
    tokens = deep.tokenize(["a photo of a dog.", "a photo of a small red car."])
    k, d = 2, 64
    first = prompts((k, d), 2)
    layers = [prompts((k, d), 20 + i) for i in range(depth - 1)]
    want = reference_text(deep, tokens, first, layers)
    for cut in (True, False):
        got = encode_text(deep, spliced(deep, tokens, first), tokens, layers, cut=cut)
        assert (got - want).abs().max() <= 1e-5
    plain = encode_text(deep, deep.token_embedding(tokens), tokens)
    assert (plain - want).abs().max() > 1e-3


def test_only_prompts_and_projections_train_and_frozen_weights_stay(deep):
    before = {k: v.clone() for k, v in deep.model.state_dict().items()}
    torch.manual_seed(0)
    ctx = torch.nn.Parameter(torch.randn(2, 64) * 0.02)
    text_deep = [torch.nn.Parameter(torch.randn(2, 64) * 0.02) for _ in range(2)]
    proj = torch.nn.Linear(64, 48)  # MaPLe-style coupling: vision prompts = proj(text prompts)
    params = [ctx, *text_deep, *proj.parameters()]
    opt = torch.optim.SGD(params, lr=0.1)
    tokens = deep.tokenize(["a photo of a dog.", "a photo of a cat."])
    labels = torch.tensor([0, 1, 0])
    for _ in range(2):
        t = encode_text(deep, spliced(deep, tokens, ctx), tokens, text_deep)
        v = encode_image(deep, images(), proj(ctx), [proj(p) for p in text_deep])
        loss = torch.nn.functional.cross_entropy(v @ t.t(), labels)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        assert all(p.grad is None for p in deep.model.parameters())
        opt.step()
    after = deep.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_non_vit_tower_is_refused_in_one_line(deep):
    rn = create_backbone("tiny-resnet", None)
    with pytest.raises(BenchError, match="tiny-resnet has a ModifiedResNet image tower") as e:
        encode_image(rn, images(1), prompts((2, 8), 0))
    assert "\n" not in str(e.value)
    with pytest.raises(BenchError, match="3 vision prompt layers|4 vision prompt layers"):
        encode_image(deep, images(1), prompts((2, 48), 0), [prompts((2, 48), i) for i in range(3)])
