"""The miniature world (bench/mini): renderer, cached pretraining, datasets on disk, zero-shot sanity.

Uses the fast checkpoint (``ensure_checkpoint(fast=True)``, trained once into the cache, ~1 min on 2 cores
the first time) and writes the datasets into a temporary folder.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench.mini import build as B
from bench.mini import pretrain as P
from bench.mini import render as R

MINI_GROUPS = ("mini", "mini_variant")


# ------------------------------------------------------------------------------------------ renderer
def test_render_is_deterministic_per_seed_and_batched():
    imgs, attrs, caps = R.render_batch(64, seed=3)
    assert imgs.shape == (64, 32, 32, 3) and imgs.dtype == np.uint8
    assert len(caps) == 64 and all(isinstance(c, str) and c.endswith(".") for c in caps)
    assert all(len(attrs[a]) == 64 for a in ("color", "shape", "size", "pattern", "background", "style"))
    imgs2, attrs2, caps2 = R.render_batch(64, seed=3)
    assert np.array_equal(imgs, imgs2) and caps == caps2
    imgs3, _, caps3 = R.render_batch(64, seed=4)
    assert not np.array_equal(imgs, imgs3)
    assert imgs.std() > 20  # not blank


def test_render_respects_fixed_attributes_and_vocabularies():
    rng = np.random.default_rng(0)
    n = len(R.COLOR_NAMES)
    a = R.sample_attributes(rng, n, color=np.arange(n), shape=["circle"], size=["large"], pattern=["solid"],
                            background=["gray"], style=["filled"])
    imgs = R.render(a, rng)
    assert (a["shape"] == R.SHAPES.index("circle")).all()
    centre = imgs[:, 14:18, 14:18].reshape(n, -1, 3).mean(1)  # the filled circle covers the centre
    ref = np.array([R.COLORS[c] for c in R.COLOR_NAMES], dtype=float)
    assert np.abs(centre - ref).max() < 45  # colour (with jitter) is drawn where the shape is
    with pytest.raises(ValueError):
        R.sample_attributes(rng, 4, color=["ultraviolet"])


def test_captions_fit_the_context_and_name_the_attributes():
    import open_clip

    P.register_arch()
    _, attrs, caps = R.render_batch(256, seed=5)
    tok = open_clip.get_tokenizer("mini")
    ids = tok(caps)
    assert int((ids != 0).sum(1).max()) < ids.shape[1]  # nothing truncated
    vocab = set(R.COLOR_NAMES) | set(R.SHAPES) | set(R.PATTERNS)
    assert all(any(w.strip(".,") in vocab for w in c.split()) for c in caps)
    # the shape word is never the bare "a photo of a <shape>." form (that prompt is off the caption distribution)
    assert not any(c == f"a photo of a {s}." for c in caps for s in R.SHAPES)


# ------------------------------------------------------------------------------------------ checkpoint
@pytest.fixture(scope="module")
def fast_ckpt():
    return P.ensure_checkpoint(fast=True)


def test_checkpoint_is_cached_and_keyed(fast_ckpt, capfd):
    key, path = P.checkpoint_path(fast=True)
    assert fast_ckpt == path and path.is_file()
    assert path.parent.name == key and len(key) == 12
    assert P.checkpoint_path(fast=False)[0] != key  # the default schedule has its own key
    mtime = os.stat(path).st_mtime_ns
    capfd.readouterr()
    again = P.ensure_checkpoint(fast=True)
    err = capfd.readouterr().err
    assert again == path and os.stat(path).st_mtime_ns == mtime  # loaded, not retrained
    assert "loading cached" in err and key in err and str(path) in err
    meta = json.loads((path.parent / "meta.json").read_text())
    assert meta["settings"]["steps"] == P.settings(fast=True)["steps"]


def test_cache_key_covers_every_setting():
    s = P.settings()
    base = P.cache_key(s)
    for k, v in [("steps", s["steps"] + 1), ("lr", s["lr"] * 2), ("seed", 1), ("renderer_version", "x"),
                 ("batch", s["batch"] // 2)]:
        assert P.cache_key({**s, k: v}) != base, k
    cfg = json.loads(json.dumps(s["arch_config"]))
    cfg["vision_cfg"]["layers"] += 1
    assert P.cache_key({**s, "arch_config": cfg}) != base


def test_checkpoint_loads_with_open_clip(fast_ckpt):
    import open_clip

    P.register_arch()
    model = open_clip.create_model("mini", pretrained=str(fast_ckpt), require_pretrained=True)
    ls = float(model.logit_scale.exp())
    assert 1.0 < ls <= 100.0 + 1e-3


# ------------------------------------------------------------------------------------------ datasets
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return B.ensure_data(tmp_path_factory.mktemp("mini_data"))


def test_datasets_written_once(data_root, capfd):
    marker = data_root / B.MARKER
    assert marker.read_text().strip() == B.data_key()
    mtime = os.stat(marker).st_mtime_ns
    capfd.readouterr()
    assert B.ensure_data(data_root) == data_root
    assert os.stat(marker).st_mtime_ns == mtime and "found complete" in capfd.readouterr().err


def test_specs_are_generated_from_the_definitions():
    from bench.paths import DATASETS_DIR

    for i, key in enumerate(B.DATASETS):
        f = DATASETS_DIR / f"{key}.yaml"
        assert f.is_file(), f"missing {f}: run python -m bench.mini.build --write-specs"
        assert f.read_text() == B.spec_yaml(key, order=100 + i), f"{f} is stale: python -m bench.mini.build --write-specs"


def test_datasets_in_coop_layout(data_root):
    from bench.data import list_specs, load_splits

    specs = [s for g in MINI_GROUPS for s in list_specs(g)]
    assert {s.key for s in specs} == set(B.DATASETS)
    for spec in specs:
        d = B.DATASETS[spec.key]
        raw = json.loads((data_root / spec.dir / spec.split_file).read_text())
        assert set(raw) == {"train", "val", "test"}
        for split in ("train", "val", "test"):
            entries = raw[split]
            assert len(entries) == spec.sizes[split]
            for rel, label, name in entries[:: max(1, len(entries) // 50)]:
                assert isinstance(rel, str) and isinstance(label, int) and name == d.classes[label][1]
                assert rel.startswith(d.classes[label][0] + "/") and rel.endswith(".jpg")
                f = data_root / spec.dir / spec.image_dir / rel
                with Image.open(f) as im:
                    assert im.format == "JPEG" and im.size == (32, 32) and im.mode == "RGB"
        if spec.variant_of:
            assert raw["train"] == [] and raw["val"] == [] and spec.group == "mini_variant"
        else:
            counts = np.bincount([e[1] for e in raw["train"]], minlength=spec.num_classes)
            assert counts.min() >= 16  # 16 shots
            assert np.bincount([e[1] for e in raw["val"]]).min() >= 4
        splits = load_splits(spec, data_root)  # the suite's own loader reads it
        assert len(splits.classnames) == spec.num_classes == len(d.classes)
    objects = next(s for s in specs if s.key == "mini_objects")
    assert set(objects.domain_shift_targets) == {k for k, d in B.DATASETS.items() if d.variant_of == "mini_objects"}


# ------------------------------------------------------------------------------------------ zero-shot
def _zero_shot(model, preprocess, tokenizer, root, spec):
    raw = json.loads((root / spec.dir / spec.split_file).read_text())["test"]
    names = [B.DATASETS[spec.key].classes[i][1] for i in range(spec.num_classes)]
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokenizer([spec.template.format(n.replace("_", " ")) for n in names])), dim=-1)
        feats = []
        for i in range(0, len(raw), 256):
            batch = []
            for rel, _, _ in raw[i:i + 256]:
                with Image.open(root / spec.dir / spec.image_dir / rel) as im:
                    batch.append(preprocess(im.convert("RGB")))
            feats.append(F.normalize(model.encode_image(torch.stack(batch)), dim=-1))
    pred = (torch.cat(feats) @ text.T).argmax(-1).numpy()
    return float((pred == np.array([e[1] for e in raw])).mean())


@pytest.mark.xfail(reason="open (issue 6): mini_textures zero-shot sits near chance with the current pretraining",
                   strict=False)
def test_zero_shot_well_above_chance_on_every_mini_dataset(fast_ckpt, data_root):
    import open_clip
    from bench.data import list_specs

    P.register_arch()
    model, _, preprocess = open_clip.create_model_and_transforms("mini", pretrained=str(fast_ckpt))
    model.eval()
    tokenizer = open_clip.get_tokenizer("mini")
    report = {}
    for spec in [s for g in MINI_GROUPS for s in list_specs(g)]:
        report[spec.key] = (_zero_shot(model, preprocess, tokenizer, data_root, spec), 1.0 / spec.num_classes)
    low = {k: f"{a:.2f} (chance {c:.2f})" for k, (a, c) in report.items() if a < 3 * c}
    assert not low, f"zero-shot below 3x chance: {low}"
