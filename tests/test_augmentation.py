"""A method's own training augmentation and number of cached views (Method.train_augmentation / cached_views):
validated before any work, recorded in the config, drawn by the feature cache with that crop scale, and shared
between methods that declare the same augmentation (CoOp's keeps its cache folder)."""

import textwrap

import pytest
import torch

from bench.errors import BenchError

USER = '''
import torch
from bench.api import Method, Param, register_method


class _Views(Method):
    hparam_spec = {"views": Param(int, min=1), "scale_lo": Param(float, min=0.0)}

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return {"views": 3, "scale_lo": 0.5}

    @classmethod
    def cached_views(cls, hparams):
        return hparams["views"]

    @classmethod
    def train_augmentation(cls, hparams):
        return {"crop_scale": (hparams["scale_lo"], 1.0)}

    def fit(self, train):
        self.seen = [train.view(v) for v in range(train.n_views)]
        return {"n_views": train.n_views}

    def logits(self, features, classnames):
        return features[:, : len(classnames)]


@register_method("aug_user_a")
class A(_Views):
    pass


@register_method("aug_user_b")
class B(_Views):
    pass
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt):
    from bench.cli import _weights_id
    from bench.data.synth import make_dataset_tree
    from bench.registry import load_methods_dir

    root = tmp_path_factory.mktemp("aug-data")
    make_dataset_tree("caltech101", root, n_classes=3, per_class=(2, 1, 2))
    folder = tmp_path_factory.mktemp("aug-methods")
    (folder / "aug_user.py").write_text(textwrap.dedent(USER))
    load_methods_dir(folder)
    return root, {"arch": "tiny-test", "pretrained": str(tiny_ckpt), "weights": _weights_id(str(tiny_ckpt))}


def _config(world, method, overrides=None, views=None):
    from bench.protocols import expand

    root, backbone = world
    (config,) = expand("fewshot", [method], datasets=["caltech101"], shots=[2], seeds=[1], backbone=backbone,
                       overrides=overrides or {}, views=views, data_root=str(root))
    return config


def test_declared_augmentation_and_views_reach_the_cache_and_are_shared(world):
    from bench.engine.runner import build_train_data, get_backbone
    from bench.features.keys import augment

    root, backbone = world
    a, b = _config(world, "aug_user_a"), _config(world, "aug_user_b")
    assert a["augmentation"] == {"crop_scale": [0.5, 1.0]} and a["views"] == 3
    assert _config(world, "aug_user_a", views=2)["views"] == 2  # --views caps it
    coop = _config(world, "coop")
    assert "augmentation" not in coop  # CoOp's augmentation: configs hash as before

    bb, cache = get_backbone(backbone)
    train_a, _ = build_train_data(a, bb, cache, str(root))
    views_a = [train_a.view(v) for v in range(3)]
    encoded = cache.encoded
    train_b, _ = build_train_data(b, bb, cache, str(root))
    assert all(torch.equal(train_b.view(v), views_a[v]) for v in range(3))
    assert cache.encoded == encoded  # the same augmentation: method B reuses A's views
    # another crop scale is another bank, drawn with that scale
    c = _config(world, "aug_user_a", overrides={"scale_lo": 0.9})
    train_c, _ = build_train_data(c, bb, cache, str(root))
    assert not torch.equal(train_c.view(0), views_a[0])
    assert cache.bank_dir(root / "caltech-101", "train", 0, 1, {"crop_scale": [0.9, 1.0]}) != \
        cache.bank_dir(root / "caltech-101", "train", 0, 1, {"crop_scale": [0.5, 1.0]})
    assert cache.transform_key("train", None) == cache.transform_key("train")
    # the cached view is exactly the declared transform's pixels through the encoder
    from PIL import Image

    from bench.data import fewshot_sample, load_splits

    splits = load_splits("caltech101", str(root))
    first = fewshot_sample(splits, 2, 1)["train"][0]
    tf = bb.train_transform_for({"crop_scale": [0.9, 1.0]})
    with Image.open(splits.root / first.path) as im:
        x = augment(im.convert("RGB"), tf, 1, first.path, 0)
    expected = bb.encode_image(x[None].to(bb.device)).cpu()
    assert torch.allclose(train_c.view(0)[0:1].cpu(), expected, atol=1e-5)


@pytest.mark.parametrize("bad", [{"crop_scale": (0.0, 1.0)}, {"crop_scale": (0.6, 0.5)}, {"scale": (0.5, 1.0)},
                                 "random_crop", {"crop_scale": "big"}])
def test_a_bad_declared_augmentation_is_refused_before_any_work(world, bad, monkeypatch):
    from bench.registry import get_method

    cls = get_method("aug_user_a")
    monkeypatch.setattr(cls, "train_augmentation", classmethod(lambda c, hp: bad))
    with pytest.raises(BenchError, match="aug_user_a: train_augmentation must return None or"):
        _config(world, "aug_user_a")


def test_a_method_trained_on_images_gets_its_stream_drawn_with_its_augmentation(world):
    from bench.engine.imagestream import build_image_train_data
    from bench.engine.runner import get_backbone
    from bench.features.keys import describe_transform

    root, backbone = world
    bb, _ = get_backbone(backbone)
    config = _config(world, "aug_user_a", overrides={"scale_lo": 0.9})
    data, _ = build_image_train_data(config, bb, str(root), workers=0)
    stream = data.loader(2).loader.dataset.transform
    assert describe_transform(stream) == describe_transform(bb.train_transform_for({"crop_scale": [0.9, 1.0]}))
    assert describe_transform(stream) != describe_transform(bb.train_transform)
    coop, _ = build_image_train_data(_config(world, "coop"), bb, str(root), workers=0)
    assert coop.loader(2).loader.dataset.transform is bb.train_transform
