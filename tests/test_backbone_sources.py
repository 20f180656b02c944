"""Backbones from elsewhere: the model's own preprocessing config, users' model-config folders, hf-hub: names."""

import json
import os
from dataclasses import asdict

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from bench.model.backbone import create_backbone, eval_transform, eval_transform_from_cfg
from bench.cli import main
from bench.errors import BenchError


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(50, 70), (90, 40), (33, 33)]]


def _cfg(arch: str, tag: str | None = None, **kw) -> dict:
    """The preprocess config open_clip gives a model built from (arch, tag), without building it."""
    pp = asdict(PreprocessCfg())
    pp["size"] = open_clip.get_model_config(arch)["vision_cfg"]["image_size"]
    if tag:
        pp.update({k: v for k, v in open_clip.get_pretrained_cfg(arch, tag).items() if k in pp})
    pp.update(kw)
    return pp


def test_openai_test_transform_is_unchanged():
    """OpenAI weights: the transform from their config is exactly the fixed CLIP one (bicubic short side + crop)."""
    for arch in ("ViT-B-16", "RN50", "ViT-L-14-336"):
        pp = _cfg(arch, "openai")
        assert (pp["interpolation"], pp["resize_mode"]) == ("bicubic", "shortest")
        ours, fixed = eval_transform_from_cfg(pp), eval_transform(pp["size"], pp["mean"], pp["std"])
        assert repr(ours) == repr(fixed)  # same feature-cache keys as before
        for im in _images():
            assert torch.equal(ours(im), fixed(im))


@pytest.mark.parametrize("extra", [{"interpolation": "bilinear", "resize_mode": "squash"},
                                   {"resize_mode": "longest", "fill_color": 0},
                                   {"resize_mode": "shortest", "size": (40, 32)},
                                   {"interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}])
def test_test_transform_follows_the_preprocess_config_as_open_clip(extra):
    pp = _cfg("tiny-test", **extra)
    ours, theirs = eval_transform_from_cfg(pp), image_transform_v2(PreprocessCfg(**pp), is_train=False)
    for im in _images():
        assert torch.allclose(ours(im), theirs(im), atol=1e-6)


def test_backbone_uses_its_pretrained_tags_preprocessing():
    """A tag whose config says bilinear/squash gets that transform (the model is built without downloading)."""
    model = open_clip.create_model("tiny-test")
    open_clip.model.set_model_preprocess_cfg(model, _cfg("tiny-test", interpolation="bilinear", resize_mode="squash"))
    from bench.model.backbone import Backbone

    bb = Backbone(model, arch="tiny-test", pretrained=None, identity="x", device="cpu", precision="fp32")
    assert "Resize(size=(32, 32), interpolation=bilinear" in repr(bb.eval_transform)
    assert bb.preprocess_cfg["resize_mode"] == "squash"


def test_model_config_folder_from_option_and_environment(tmp_path, tiny_ckpt, capsys, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "my-tiny.json").write_text(json.dumps(open_clip.get_model_config("tiny-test")))
    monkeypatch.setenv("BENCH_MODEL_CONFIGS", "")
    assert main(["list", "backbones", "--model-configs", str(folder)]) == 0
    assert "my-tiny" in capsys.readouterr().out.split()
    assert str(folder) in os.environ["BENCH_MODEL_CONFIGS"].split(os.pathsep)  # SLURM tasks inherit it
    bb = create_backbone("my-tiny", str(tiny_ckpt))  # same layout as tiny-test: its weights load strictly
    assert bb.arch == "my-tiny" and bb.embed_dim == 64

    (folder / "broken.json").write_text(json.dumps({"embed_dim": 8}))
    assert main(["list", "backbones", "--model-configs", str(folder)]) == 2
    assert "broken.json is not an open_clip model config" in capsys.readouterr().err
    assert main(["list", "backbones", "--model-configs", str(tmp_path / "none")]) == 2
    assert "model-config folder not found" in capsys.readouterr().err


# --- hf-hub: a local Hugging Face cache, offline (conftest sets HF_HUB_OFFLINE=1) ---------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--someone--tiny-clip"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    pp = {"interpolation": "bilinear", "resize_mode": "squash", "mean": [0.5] * 3, "std": [0.25] * 3}
    (snap / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip.get_model_config("tiny-test"),
                                                            "preprocess_cfg": pp}))
    torch.manual_seed(3)
    model = open_clip.create_model("tiny-test")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snap / "open_clip_model.safetensors"))
    return model


def test_hf_hub_model_loads_from_the_cache_with_its_preprocessing(hub_cache):
    bb = create_backbone("hf-hub:someone/tiny-clip", None)
    assert bb.identity == f"hf-hub:someone/tiny-clip@{COMMIT[:12]}" and bb.embed_dim == 64
    assert torch.equal(bb.model.visual.conv1.weight, hub_cache.visual.conv1.weight)
    assert "Resize(size=(32, 32), interpolation=bilinear" in repr(bb.eval_transform)
    white = bb.eval_transform(Image.new("RGB", (40, 60), "white"))
    assert torch.allclose(white, torch.full_like(white, 2.0))  # (1 - 0.5) / 0.25
    feats = bb.encode_text(["a photo of a cat."])
    assert feats.shape == (1, 64)


def test_hf_hub_grid_and_errors(hub_cache, tmp_path, capsys):
    from bench.data.synth import make_dataset_tree

    make_dataset_tree("eurosat", tmp_path / "data", n_classes=3, per_class=(1, 1, 2))
    argv = ["run", "--method", "zeroshot", "--datasets", "eurosat", "--data-root", str(tmp_path / "data"),
            "--results", str(tmp_path / "res")]
    assert main([*argv, "--backbone", "hf-hub:someone/tiny-clip"]) == 0
    assert "1 ran, 0 failed" in capsys.readouterr().out
    from bench.store import Store

    (r,) = Store(tmp_path / "res").all_results()
    assert r["config"]["backbone"] == {"arch": "hf-hub:someone/tiny-clip", "pretrained": "hf-hub",
                                       "weights": "hf-hub:someone/tiny-clip"}

    assert main([*argv, "--backbone", "hf-hub:someone/absent", "--dry-run"]) == 0  # planning needs no download
    capsys.readouterr()
    assert main([*argv, "--backbone", "hf-hub:someone/absent"]) == 2
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if not ln.startswith("[bench ")] == [err.splitlines()[-1]]  # one line
    assert "could not load hf-hub:someone/absent from the Hugging Face Hub: offline (HF_HUB_OFFLINE)" in err
    assert main([*argv, "--backbone", "hf-hub:someone/tiny-clip", "--pretrained", "openai"]) == 2
    assert "brings its own weights" in capsys.readouterr().err
    with pytest.raises(BenchError, match="expected hf-hub:<org>/<repo>"):
        create_backbone("hf-hub:nothing", None)
