"""bench.model.backbone on the tiny project architectures: CPU, random or locally saved weights, no network."""

import hashlib

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from bench.model.backbone import Backbone, create_backbone, read_checkpoint, resolve_arch
from bench.errors import BenchError

TEXTS = ["a photo of a dog.", "x", "a photo of a very small red triangle on a dark noisy background."]


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    torch.manual_seed(0)
    return create_backbone("tiny-test", None)


def _tiny_checkpoint(path, seed=1, **save_extra):
    torch.manual_seed(seed)
    model = open_clip.create_model("tiny-test", None)
    state = {**model.state_dict(), **save_extra}
    torch.save(state, path)
    return model


# --- text encoder on prompt embeddings ---------------------------------------------------------------------

@pytest.mark.parametrize("cut", [True, False])
def test_encode_prompts_matches_open_clip_encode_text(tiny, cut):
    tokens = tiny.tokenize(TEXTS)
    with torch.no_grad():
        ref = tiny.model.encode_text(tokens)
        out = tiny.encode_prompts(tiny.token_embedding(tokens), tokens, cut=cut)
    assert out.dtype == torch.float32 and out.shape == (3, tiny.embed_dim)
    assert (out - ref).abs().max().item() <= 1e-5


def test_encode_prompts_without_causal_mask_would_differ():
    # a model of its own: the shared module-scoped one is never mutated (patching an nn.Module buffer and
    # undoing the patch can delete the buffer under some pytest versions)
    torch.manual_seed(0)
    own = create_backbone("tiny-test", None)
    tokens = own.tokenize(TEXTS)
    with torch.no_grad():
        ref = own.model.encode_text(tokens)
        own.model.attn_mask = torch.zeros_like(own.model.attn_mask)  # bidirectional attention
        out = own.encode_prompts(own.token_embedding(tokens), tokens, cut=False)
    assert (out - ref).abs().max().item() > 1e-3


def test_encode_text_is_normalised_batched_encode_text(tiny):
    ref = torch.nn.functional.normalize(tiny.model.encode_text(tiny.tokenize(TEXTS)), dim=-1)
    out = tiny.encode_text(TEXTS, batch_size=2)
    assert out.shape == (3, tiny.embed_dim) and not out.requires_grad
    assert (out - ref).abs().max().item() <= 1e-5
    assert torch.allclose(out.norm(dim=-1), torch.ones(3))
    assert tiny.encode_text([]).shape == (0, tiny.embed_dim)


def test_gradients_reach_prompt_embeddings_only(tiny):
    tokens = tiny.tokenize(["X X X X a dog."])
    ctx = torch.zeros(1, 4, tiny.ctx_dim, requires_grad=True)
    base = tiny.token_embedding(tokens)
    prompt = torch.cat([base[:, :1], ctx, base[:, 5:]], dim=1)
    tiny.encode_prompts(prompt, tokens).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny.model.parameters())
    assert not tiny.model.training and not any(m.training for m in tiny.model.modules())


def test_tokens_and_attributes(tiny):
    tokens = tiny.tokenize(["a dog"])
    assert tokens.shape == (1, 32) and tokens.dtype == torch.long
    assert tiny.name_token_ids("a dog") == tokens[0, 1:3].tolist()
    assert (tiny.image_size, tiny.context_length, tiny.ctx_dim, tiny.embed_dim) == (32, 32, 64, 64)
    assert tiny.identity.startswith("tiny-test@random-") and tiny.precision == "fp32" and tiny.device == "cpu"
    assert tiny.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)


def test_mini_config_registered():
    assert {"tiny-test", "mini"} <= set(open_clip.list_models())
    assert open_clip.get_tokenizer("mini").context_length == 32
    mini = create_backbone("mini", None)
    assert (mini.image_size, mini.context_length, mini.ctx_dim, mini.embed_dim) == (32, 32, 128, 128)
    assert mini.encode_image(torch.zeros(2, 3, 32, 32)).shape == (2, 128)


def test_bf16_autocast_returns_float32_close_to_fp32(tiny):
    torch.manual_seed(0)
    bf16 = create_backbone("tiny-test", None, precision="bf16")
    images = torch.randn(2, 3, 32, 32)
    out = bf16.encode_image(images)
    assert out.dtype == torch.float32
    assert torch.allclose(out, tiny.encode_image(images), atol=0.1)


# --- QuickGELU resolution ----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,tag,expected", [
    ("ViT-B-16", "openai", ("ViT-B-16-quickgelu", False)),
    ("ViT-B-16-quickgelu", "openai", ("ViT-B-16-quickgelu", False)),
    ("RN50", "openai", ("RN50-quickgelu", False)),
    ("ViT-B-32", "laion400m_e32", ("ViT-B-32-quickgelu", False)),  # the tag's cfg says quick_gelu
    ("ViT-B-16", "laion2b_s34b_b88k", ("ViT-B-16", False)),
    ("RN50", None, ("RN50", False)),
])
def test_resolve_arch_for_tags(arch, tag, expected):
    assert resolve_arch(arch, tag) == expected


def test_resolve_arch_for_openai_files():
    assert resolve_arch("ViT-L-14", "/ckpt/ViT-L-14.pt", quick_gelu=True) == ("ViT-L-14-quickgelu", False)
    assert resolve_arch("tiny-test", None, quick_gelu=True) == ("tiny-test", True)  # no twin: forced


def test_openai_tag_builds_quickgelu_arch_and_reports_download_failure(monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("no network")
    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(BenchError, match=r"could not download the weights for RN50-quickgelu 'openai'.*HF_HUB_OFFLINE"):
        create_backbone("RN50", "openai")


# --- local checkpoints -------------------------------------------------------------------------------------

def test_local_checkpoint_loads_weights_and_hash_identity(tmp_path):
    path = tmp_path / "tiny.pt"
    source = _tiny_checkpoint(path)
    bb = create_backbone("tiny-test", str(path))
    for (name, a), b in zip(source.state_dict().items(), bb.model.state_dict().values()):
        assert torch.equal(a, b), name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert bb.identity == f"tiny-test@sha256:{digest}" and bb.pretrained == str(path)
    assert not bb.force_quick_gelu
    assert all(not p.requires_grad for p in bb.model.parameters())


def test_openai_state_dict_gets_quickgelu(tmp_path):
    path = tmp_path / "openai_style.pt"
    _tiny_checkpoint(path, input_resolution=torch.tensor(32), context_length=torch.tensor(32),
                     vocab_size=torch.tensor(49408))
    bb = create_backbone("tiny-test", str(path))
    assert bb.force_quick_gelu and bb.identity.startswith("tiny-test+quickgelu@sha256:")
    assert isinstance(bb.model.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_read_as_openai(tmp_path):
    torch.manual_seed(2)
    model = open_clip.create_model("tiny-test", None)
    path = tmp_path / "jit.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    state, openai = read_checkpoint(path)
    assert openai and torch.equal(state["text_projection"], model.text_projection)


def test_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(3)
    model = open_clip.create_model("tiny-test", None)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    bb = create_backbone("tiny-test", str(path))
    assert torch.equal(bb.model.token_embedding.weight, model.token_embedding.weight)


def test_pretrained_mini_resolves_to_the_mini_checkpoint(tmp_path, monkeypatch):
    import bench.mini.pretrain
    torch.manual_seed(4)
    model = open_clip.create_model("mini", None)
    path = tmp_path / "mini_clip.pt"
    torch.save(model.state_dict(), path)
    monkeypatch.setattr(bench.mini.pretrain, "ensure_checkpoint", lambda: path)
    bb = create_backbone("mini", "mini")
    assert bb.pretrained == "mini" and bb.identity.startswith("mini@sha256:")
    assert torch.equal(bb.model.text_projection, model.text_projection)


# --- errors ------------------------------------------------------------------------------------------------

def test_unknown_architecture():
    with pytest.raises(BenchError, match=r"'ViT-Q-99'.*not an open_clip architecture.*bench list backbones"):
        create_backbone("ViT-Q-99", None)


def test_unknown_tag_lists_known_tags():
    with pytest.raises(BenchError, match=r"unknown pretrained tag 'laion9b' for RN50.*openai"):
        create_backbone("RN50", "laion9b")


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "missing.pt"
    with pytest.raises(BenchError, match="checkpoint not found") as e:
        create_backbone("tiny-test", str(path))
    assert str(path) in str(e.value)
    with pytest.raises(BenchError, match="not a file"):
        create_backbone("tiny-test", str(tmp_path) + "/")


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(BenchError, match="cannot read checkpoint") as e:
        create_backbone("tiny-test", str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "tiny.pt"
    _tiny_checkpoint(path)
    with pytest.raises(BenchError, match="does not fit architecture mini") as e:
        create_backbone("mini", str(path))
    assert str(path) in str(e.value)


def test_text_tower_without_token_embedding_is_rejected_for_prompts(monkeypatch):
    torch.manual_seed(0)
    bb = create_backbone("tiny-test", None)
    del bb.model.token_embedding  # stands in for a Hugging Face text tower
    tokens = bb.tokenize(["a dog"])
    with pytest.raises(BenchError, match="prompt methods need a CLIP-style text transformer"):
        bb.token_embedding(tokens)
    with pytest.raises(BenchError, match="Hugging Face"):
        bb.encode_prompts(torch.zeros(1, 32, 64), tokens)
    assert bb.encode_image(torch.zeros(1, 3, 32, 32)).shape == (1, 64)


def test_bad_precision():
    with pytest.raises(BenchError, match="unknown precision 'fp8'"):
        create_backbone("tiny-test", None, precision="fp8")


# --- transforms --------------------------------------------------------------------------------------------

def test_transforms(tiny):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8), mode="L")  # grayscale -> RGB
    a, b = tiny.eval_transform(image), tiny.eval_transform(image)
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    torch.manual_seed(0)
    c, d = tiny.train_transform(image), tiny.train_transform(image)
    assert c.shape == d.shape == (3, 32, 32) and not torch.equal(c, d)
    # Normalize uses the model's mean/std (CLIP's for these configs)
    white = tiny.eval_transform(Image.new("RGB", (40, 40), "white"))
    expected = (1 - torch.tensor(open_clip.OPENAI_DATASET_MEAN)) / torch.tensor(open_clip.OPENAI_DATASET_STD)
    assert torch.allclose(white[:, 0, 0], expected, atol=1e-5)
