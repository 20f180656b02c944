"""The image-feature cache: one key in every process, seeded augmentation, integrity, concurrency, memory."""

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench.features import FeatureCache, augment, default_workers, describe_transform, transform_key

HEAVY = ("pandas", "seaborn", "sklearn", "scipy", "matplotlib")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from bench.data import load_splits
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("data")
    make_dataset_tree("eurosat", root, n_classes=3, per_class=(4, 2, 4))
    splits = load_splits("eurosat", root)
    return {"root": root, "splits": splits, "paths": [it.path for it in splits.train]}


@pytest.fixture(scope="module")
def bb(tiny_ckpt):
    from bench.model.backbone import create_backbone

    return create_backbone("tiny-test", str(tiny_ckpt))


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_second_process_encodes_and_writes_nothing(data, tiny_ckpt, tmp_path):
    """Two fresh `bench run` processes on one cache: the second serves every feature from the first's files."""
    env = {**os.environ, "BENCH_CACHE": str(tmp_path / "cache"), "BENCH_FEATURE_STATS": str(tmp_path / "stats")}
    code = ("import sys; from bench.cli import main; rc = main(sys.argv[1:]); "
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules)); sys.exit(rc)")
    snapshots, stats = [], []
    for i in range(2):
        cmd = [sys.executable, "-c", code, "run", "--method", "coop", "--datasets", "eurosat",
               "--shots", "2", "--seeds", "1", "--set", "epochs=2", "--backbone", "tiny-test", "--pretrained",
               str(tiny_ckpt), "--data-root", str(data["root"]), "--results", str(tmp_path / f"res{i}")]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "HEAVY []" in done.stdout  # no pandas / scikit-learn / seaborn on the run path
        snapshots.append(_files(tmp_path / "cache" / "features"))
        lines = [json.loads(ln) for ln in (tmp_path / "stats").read_text().splitlines()]
        stats.append(lines[-1])
    first, second = stats
    assert first["encoded"] > 0 and first["files_written"] > 0
    assert second["encoded"] == 0 and second["files_written"] == 0
    # coop: 2 augmented views + eval features of train, val and test; all hits the second time
    n_train, n_test = 3 * 2, 3 * 4
    assert second["hits"] >= 2 * n_train + n_train + n_test
    assert snapshots[0] == snapshots[1]  # nothing new written, nothing rewritten
    r = [json.loads(next((tmp_path / f"res{i}").rglob("*.json")).read_text())["metrics"] for i in range(2)]
    assert r[0] == r[1]


def test_seeds_see_different_crops_methods_of_a_seed_the_same(data, bb, tmp_path):
    from bench.engine.runner import build_train_data

    def views(method, seed, cache):
        config = {"method": method, "views": 2, "train": {"dataset": "eurosat", "shots": 2, "seed": seed,
                                                         "classes": "all"}}
        train, _ = build_train_data(config, bb, cache, data["root"])
        return [train.view(v) for v in range(2)]

    cache = FeatureCache(bb, root=tmp_path / "a")
    coop1, kg1 = views("coop", 1, cache), views("kgcoop", 1, FeatureCache(bb, root=tmp_path / "b"))
    for v in range(2):
        assert torch.equal(coop1[v], kg1[v])  # two methods of seed 1, computed in separate caches: same crops
    # two seeds on the same images: different crops, hence different features, image by image
    paths, root = data["paths"], data["splits"].root
    s1, s2 = cache.views(root, paths, 1, 2), cache.views(root, paths, 2, 2)
    for v in range(2):
        assert not (s1(v) - s2(v)).abs().amax(dim=1).lt(1e-6).any()
    # the pixels themselves: the seed changes the crop of one and the same image, the method never enters
    rel = data["paths"][0]
    img = Image.open(data["splits"].root / rel).convert("RGB")
    a, b, c = (augment(img, bb.train_transform, s, rel, 0) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    state = torch.get_rng_state()
    augment(img, bb.train_transform, 3, rel, 5)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched


def test_fp32_and_bf16_features_land_in_different_banks(data, tiny_ckpt, tmp_path):
    from bench.model.backbone import create_backbone

    paths, root = data["paths"], data["splits"].root
    fp32 = FeatureCache(create_backbone("tiny-test", str(tiny_ckpt), precision="fp32"), root=tmp_path)
    bf16 = FeatureCache(create_backbone("tiny-test", str(tiny_ckpt), precision="bf16"), root=tmp_path)
    assert fp32.bank_dir(root, "eval") != bf16.bank_dir(root, "eval")
    a = fp32.get(root, paths, "eval")
    b = bf16.get(root, paths, "eval")
    assert fp32.encoded == bf16.encoded == len(paths)  # bf16 did not read the fp32 bank
    assert not torch.equal(a, b)
    assert torch.equal(FeatureCache(bf16.backbone, root=tmp_path).get(root, paths, "eval"), b)


def test_transform_key_is_explicit_and_follows_parameters(bb):
    import torchvision.transforms as T

    text = json.dumps(describe_transform(bb.train_transform))
    assert " at 0x" not in text and "RandomResizedCrop" in text and "0.08" in text and "BICUBIC" in text
    other = T.Compose([t if not isinstance(t, T.RandomResizedCrop) else
                       T.RandomResizedCrop(t.size, scale=(0.5, 1.0), interpolation=t.interpolation)
                       for t in bb.train_transform.transforms])
    size = bb.image_size
    assert transform_key("train", bb.train_transform, size) != transform_key("train", other, size)
    assert transform_key("train", bb.train_transform, size) != transform_key("eval", bb.eval_transform, size)


def test_worker_count_follows_cpu_affinity(monkeypatch, bb):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert default_workers("cuda") == 5  # a GPU encodes: every allowed CPU decodes
    assert default_workers("cpu") == 4 and FeatureCache(bb).workers == 4  # one CPU left to the encoder
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert default_workers("cuda") == default_workers("cpu") == 0


def _only_segment(cache, root) -> Path:
    (seg,) = cache.bank_dir(root, "eval").glob("*.pt")
    return seg


@pytest.mark.parametrize("recompute_checksum", [False, True])
def test_zeroed_bank_is_detected_and_recomputed(data, bb, tmp_path, recompute_checksum, capsys):
    from bench.features.segments import _checksum

    paths, root = data["paths"], data["splits"].root
    good = FeatureCache(bb, root=tmp_path).get(root, paths, "eval")
    seg = _only_segment(FeatureCache(bb, root=tmp_path), root)
    d = torch.load(seg, weights_only=True)
    d["feats"] = torch.zeros_like(d["feats"])  # right shape, wrong content
    if recompute_checksum:
        d["checksum"] = _checksum(d["keys"], d["feats"])
    torch.save(d, seg)
    cache = FeatureCache(bb, root=tmp_path)
    again = cache.get(root, paths, "eval")
    assert cache.encoded == len(paths) and torch.equal(again, good)
    assert ("all-zero" if recompute_checksum else "checksum mismatch") in capsys.readouterr().err


def test_stale_temp_files_of_killed_writers_are_removed(data, bb, tmp_path):
    paths, root = data["paths"], data["splits"].root
    cache = FeatureCache(bb, root=tmp_path)
    cache.get(root, paths[:2], "eval")
    folder = cache.bank_dir(root, "eval")
    stale, fresh = folder / ".abc.pt.x1.tmp", folder / ".abc.pt.x2.tmp"
    stale.write_bytes(b"half a bank")
    fresh.write_bytes(b"a writer at work")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    FeatureCache(bb, root=tmp_path).get(root, paths, "eval")
    assert not stale.exists() and fresh.exists()


def _encode_in_child(args):
    root, folder, paths, ckpt = args
    from bench.model.backbone import create_backbone

    torch.set_num_threads(1)
    cache = FeatureCache(create_backbone("tiny-test", ckpt), root=folder, workers=0)
    cache.get(root, paths, "eval")
    return cache.encoded


def test_concurrent_processes_encode_missing_images_once(data, tiny_ckpt, tmp_path):
    paths, root = data["paths"] * 1, data["splits"].root
    paths = [it.path for it in data["splits"].test] + paths
    with mp.get_context("fork").Pool(2) as pool:
        encoded = pool.map(_encode_in_child, [(root, tmp_path, paths, str(tiny_ckpt))] * 2)
    assert sorted(encoded) == [0, len(paths)]
    assert not any((tmp_path).rglob("*.claim"))


def test_cached_pixels_are_the_public_augmentation(data, bb, tmp_path):
    """The cache's batched uint8 path gives exactly the pixels of augment() / the eval transform per image."""
    paths, root = data["paths"], data["splits"].root
    cache = FeatureCache(bb, root=tmp_path, workers=0)
    got = cache.views(root, paths, 7, 3)(2)
    imgs = [Image.open(root / p).convert("RGB") for p in paths]
    x = torch.stack([augment(im, bb.train_transform, 7, p, 2) for im, p in zip(imgs, paths)])
    assert torch.allclose(got, bb.encode_image(x), atol=1e-6)
    x = torch.stack([bb.eval_transform(im) for im in imgs])
    assert torch.allclose(cache.get(root, paths, "eval"), bb.encode_image(x), atol=1e-6)


def test_memory_store_is_bounded(data, bb, tmp_path):
    paths, root = data["paths"], data["splits"].root
    ref = FeatureCache(bb, root=tmp_path / "ref").views(root, paths, 1, 6)
    expected = [ref(v) for v in range(6)]
    per_bank = len(paths) * bb.embed_dim * 4 + 100 * len(paths)
    cache = FeatureCache(bb, root=tmp_path / "ref", memory_mb=2.5 * per_bank / 2**20)
    views = cache.views(root, paths, 1, 6)
    for _ in range(2):
        for v in range(6):
            assert torch.equal(views(v), expected[v])
            assert len(cache._banks) <= 2
    assert cache.encoded == 0


def test_a_claim_of_a_killed_process_is_taken_over_at_once(tmp_path, tiny_ckpt):
    """A `bench run` killed while encoding (SIGKILL, OOM) leaves its claim marker behind: the next command on this
    host takes it over at once instead of waiting for it to go stale (minutes), while a live holder is waited for."""
    import socket

    from bench.model.backbone import create_backbone
    from bench.features import FeatureCache

    cache = FeatureCache(create_backbone("tiny-test", str(tiny_ckpt), precision="fp32"), root=tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = cache.base() / "claims"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "x.claim"
    path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "time": 0}))
    claim = cache._claim("x")
    assert claim is not None and json.loads(path.read_text())["pid"] == os.getpid()
    assert cache._claim("x") is None  # held by a live process (this one): wait
    path.write_text(json.dumps({"pid": int(dead.stdout), "host": "another-host", "time": 0}))
    assert cache._claim("x") is None  # another host's process cannot be checked: only age frees it
    past = time.time() - 3600
    os.utime(path, (past, past))
    again = cache._claim("x")  # ... not refreshed for an hour: abandoned
    assert again is not None
    again.release()
    claim.release()
    assert not path.exists()


def test_a_segment_copied_into_another_views_bank_is_not_used(data, bb, tmp_path, capsys):
    """A valid segment moved into another bank (here: view 0's features into view 1's folder) passes every
    content check; it names the bank it was written for, so it is removed and the view recomputed."""
    paths, root = data["paths"], data["splits"].root
    cache = FeatureCache(bb, root=tmp_path)
    fresh = cache.views(root, paths, seed=1, n_views=2)
    want0, want1 = fresh(0), fresh(1)
    assert not torch.equal(want0, want1)
    (seg0,) = cache.bank_dir(root, "train", view=0, seed=1).glob("*.pt")
    (seg1,) = cache.bank_dir(root, "train", view=1, seed=1).glob("*.pt")
    seg1.unlink()
    seg1.write_bytes(seg0.read_bytes())  # same keys (the images), other view's crops
    again = FeatureCache(bb, root=tmp_path).views(root, paths, seed=1, n_views=2)
    assert torch.equal(again(1), want1) and torch.equal(again(0), want0)
    assert "written for another bank" in capsys.readouterr().err
