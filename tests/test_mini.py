"""The miniature world (bench/mini): renderer, cached pretraining, datasets on disk, zero-shot sanity.

Uses the default checkpoint (the one ``bench demo`` uses: ~5 min on 2 cores to pretrain, reused from the
repository's cache when ``bench demo`` already made it) and writes the datasets into a temporary folder.
The last tests check the papers' findings through the CLI on each of the demo's seeds: few-shot (CoOp above
zero-shot on average and rising with shots, gaining most on the specialised dataset; the linear probe), base-to-new
(CoOp: base up, new down; KgCoOp's H above CoOp's) and domain shift (CoOp's gain shrinks off the source).
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


def test_specialist_pattern_words_are_rare_in_captions_and_name_the_textures_dataset():
    rng = np.random.default_rng(11)
    attrs = R.sample_attributes(rng, 40000, style=["swatch"])
    words = [set(c.strip(".").split()) for c in R.captions(attrs, rng)]
    special = set(R.SPECIALIST.values())
    share = np.mean([bool(w & special) for w in words])
    assert 0.3 * R.P_SPECIALIST < share < 3 * R.P_SPECIALIST, share  # rare, but seen
    assert np.mean([bool(w & set(R.PATTERNS[1:])) for w in words]) > 0.9  # the common words dominate
    assert B.DATASETS["mini_textures"].classnames == [R.SPECIALIST[p] for p in R.PATTERNS[1:]]


def test_a_larger_render_is_the_same_scene_in_finer_detail():
    """The datasets are written at 128 px; through the model's resize they must look like the 32-px
    pretraining renders of the same attributes (same rng stream), not like another domain."""
    imgs = {}
    for size, ss in ((32, 2), (B.IMAGE_SIZE, 1)):
        rng = np.random.default_rng(7)
        attrs = R.sample_attributes(rng, 48, image_size=size)
        imgs[size] = R.render(attrs, rng, image_size=size, supersample=ss)
    assert imgs[B.IMAGE_SIZE].shape == (48, B.IMAGE_SIZE, B.IMAGE_SIZE, 3)
    down = np.stack([np.asarray(Image.fromarray(x).resize((32, 32), Image.BICUBIC)) for x in imgs[B.IMAGE_SIZE]])
    diff = np.abs(down.astype(float) - imgs[32].astype(float)).mean(axis=(1, 2, 3))
    assert diff.max() < 12, diff  # measured ~3.7 on average (noise and anti-aliasing differ)
    other = np.abs(down.astype(float) - np.roll(imgs[32], 1, axis=0).astype(float)).mean(axis=(1, 2, 3))
    assert other.mean() > 4 * diff.mean()  # ... and not just similar to any image
    with pytest.raises(ValueError, match="multiple of 32"):
        R.render(R.sample_attributes(np.random.default_rng(0), 2, image_size=48), np.random.default_rng(0), image_size=48)


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
def _copy_from_repo_cache(path) -> None:
    """The checkpoint is keyed by every pretraining setting: if ``bench demo`` already trained this exact one
    into the repository's default cache (as .ci/run does before the tests), reuse it instead of spending
    another ~5 minutes. Otherwise the fixture pretrains it, as a user's first run does."""
    from bench.fileio import atomic_open
    from bench.paths import repo_root

    src = repo_root() / "cache" / "mini" / path.parent.name / P.CHECKPOINT_NAME
    if path.is_file() or not src.is_file() or src.resolve() == path.resolve():
        return
    for name in ("meta.json", P.CHECKPOINT_NAME):  # the checkpoint last: its presence means complete
        with atomic_open(path.parent / name) as fh:
            fh.write((src.parent / name).read_bytes())


def _copy_demo_results(store) -> int:
    """Like the checkpoint: when ``bench demo`` already ran these exact runs into the repository's default store
    (as .ci/run does before the tests), start the test store with its complete results, so `bench run` below
    finds them done instead of training them again. A run's hash covers the checkpoint's digest, the method's
    code and every hyperparameter (not the data folder: the mini datasets are keyed and rebuilt identically),
    so only results of this very code and world are reused; anything else is computed here."""
    from bench.paths import repo_root
    from bench.store import Store

    src = repo_root() / "results" / "runs"
    if not src.is_dir() or (src.resolve() == store.root.resolve()):
        return 0
    n = 0
    for r in Store(src).all_results():
        c = r["config"]
        if c.get("backbone", {}).get("arch") == "mini" and c.get("protocol") in ("fewshot", "base2new", "domain_shift"):
            store.write(r)
            n += 1
    return n


@pytest.fixture(scope="module")
def mini_ckpt():
    """The default mini CLIP (the one `bench demo` uses): the science below needs its full schedule."""
    _copy_from_repo_cache(P.checkpoint_path()[1])
    return P.ensure_checkpoint()


def test_checkpoint_is_cached_and_keyed(mini_ckpt, capfd):
    key, path = P.checkpoint_path()
    assert mini_ckpt == path and path.is_file()
    assert path.parent.name == key and len(key) == 12
    mtime = os.stat(path).st_mtime_ns
    capfd.readouterr()
    again = P.ensure_checkpoint()
    err = capfd.readouterr().err
    assert again == path and os.stat(path).st_mtime_ns == mtime  # loaded, not retrained
    assert "loading cached" in err and key in err and str(path) in err
    meta = json.loads((path.parent / "meta.json").read_text())
    assert P.cache_key(json.loads(json.dumps(meta["settings"]))) == key


def test_pretraining_is_seeded(tmp_path):
    """Same settings -> bit-identical weights; another seed -> other weights (a short schedule: plumbing)."""
    s = {**P.settings(), "steps": 3, "batch": 16, "warmup": 1}
    sd = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        meta = P.pretrain({**s, "seed": seed}, tmp_path / name / P.CHECKPOINT_NAME, threads=1)
        assert (tmp_path / name / "meta.json").is_file() and np.isfinite(meta["final_loss"])
        sd.append(torch.load(tmp_path / name / P.CHECKPOINT_NAME))
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])
    assert not all(torch.equal(sd[0][k], sd[2][k]) for k in sd[0])


def test_cache_key_covers_every_setting():
    s = P.settings()
    base = P.cache_key(s)
    for k, v in [("steps", s["steps"] + 1), ("lr", s["lr"] * 2), ("seed", 1), ("renderer_version", "x"),
                 ("batch", s["batch"] // 2), ("focus_captions", not s["focus_captions"])]:
        assert P.cache_key({**s, k: v}) != base, k
    cfg = json.loads(json.dumps(s["arch_config"]))
    cfg["vision_cfg"]["layers"] += 1
    assert P.cache_key({**s, "arch_config": cfg}) != base


def test_checkpoint_loads_with_open_clip(mini_ckpt):
    import open_clip

    P.register_arch()
    model = open_clip.create_model("mini", pretrained=str(mini_ckpt), require_pretrained=True)
    ls = model.logit_scale.exp().item()
    assert 1.0 < ls <= 100.0 + 1e-3
    n = sum(p.numel() for p in model.parameters())
    assert 2e6 < n < 12e6  # "a few million parameters"


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


def test_concurrent_commands_write_the_datasets_once(tmp_path):
    """Two `bench` commands started together on a fresh cache: one writes, the other waits and finds it."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "bench.mini.build", "--root", str(tmp_path)]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum("found complete" in e for e in errs) == 1 and sum("written in" in e for e in errs) == 1, errs
    assert (tmp_path / B.MARKER).read_text().strip() == B.data_key()
    spec = B.DATASETS["mini_patterns"]
    entries = json.loads((tmp_path / spec.dir / spec.split_file).read_text())["test"]
    assert all((tmp_path / spec.dir / "images" / rel).is_file() for rel, _, _ in entries)


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
                    assert im.format == "JPEG" and im.size == (B.IMAGE_SIZE,) * 2 and im.mode == "RGB"
        if spec.variant_of:
            assert raw["train"] == [] and raw["val"] == [] and spec.group == "mini_variant"
        else:
            counts = np.bincount([e[1] for e in raw["train"]], minlength=spec.num_classes)
            assert counts.min() >= 16  # 16 shots
            assert np.bincount([e[1] for e in raw["val"]]).min() >= 4
        splits = load_splits(spec, data_root)  # the suite's own loader reads it
        assert len(splits.classnames) == spec.num_classes == len(d.classes)
    source = next(s for s in specs if s.key == "mini_fabrics")
    assert set(source.domain_shift_targets) == {k for k, d in B.DATASETS.items() if d.variant_of == "mini_fabrics"}


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


def test_zero_shot_well_above_chance_on_every_mini_dataset(mini_ckpt, data_root):
    """Plain open_clip (not the harness): every mini dataset, the domain-shifted copies included."""
    import open_clip
    from bench.data import list_specs

    P.register_arch()
    model, _, preprocess = open_clip.create_model_and_transforms("mini", pretrained=str(mini_ckpt))
    model.eval()
    tokenizer = open_clip.get_tokenizer("mini")
    report = {}
    for spec in [s for g in MINI_GROUPS for s in list_specs(g)]:
        report[spec.key] = (_zero_shot(model, preprocess, tokenizer, data_root, spec), 1.0 / spec.num_classes)
    low = {k: f"{a:.2f} (chance {c:.2f})" for k, (a, c) in report.items() if a < 3 * c}
    assert not low, f"zero-shot below 3x chance: {low}"


# ------------------------------------------------------------------------------------------ the science
GENERIC = ("mini_patterns", "mini_fabrics")  # common words, the prompt matches the captions
SPECIALISED = "mini_textures"  # like DTD: the class names are words the captions rarely use
SEEDS = (1,)  # the demo's seeds: every finding must hold on each


@pytest.fixture(scope="module")
def mini_grid(mini_ckpt, data_root, tmp_path_factory):
    """The demo's grid through the CLI (reference recipes, 16 cached views):
    {(protocol, method, train dataset, shots, seed, eval): top1}."""
    from bench.cli import main
    from bench.store import Store

    res = tmp_path_factory.mktemp("mini_results")
    _copy_demo_results(Store(res))
    common = ["--preset", "mini", "--data-root", str(data_root), "--results", str(res), "--views", "16",
              "--seeds", ",".join(map(str, SEEDS))]
    assert main(["run", "--protocol", "fewshot", "--method", "zeroshot,linear_probe,coop", "--shots", "1,16",
                 *common]) == 0
    assert main(["run", "--protocol", "base2new", "--method", "zeroshot,coop,kgcoop", *common]) == 0
    assert main(["run", "--protocol", "domain_shift", "--method", "zeroshot,coop", *common]) == 0
    out: dict = {}
    for r in Store(res).all_results():
        c = r["config"]
        tr = c.get("train") or {}
        for ev, m in r["metrics"].items():
            out[(c["protocol"], c["method"], tr.get("dataset"), tr.get("shots") or 0, tr.get("seed"), ev)] = m["top1"]
    return out


def _fewshot(grid, method, shots, seed):
    """{dataset: top1} of one method, shot count and seed on the few-shot protocol (zero-shot: any seed)."""
    return {ev: v for (p, m, ds, k, s, ev), v in grid.items()
            if p == "fewshot" and m == method and (method == "zeroshot" or (k == shots and s == seed))}


def test_fewshot_no_dataset_is_saturated_or_near_chance(mini_grid):
    from bench.data import list_specs

    zs = _fewshot(mini_grid, "zeroshot", 0, None)
    chance = {s.key: 100.0 / s.num_classes for s in list_specs("mini")}
    assert set(zs) == set(chance)
    assert all(3 * chance[d] <= a <= 95 for d, a in zs.items()), zs  # room to learn everywhere


def test_fewshot_coop_beats_zero_shot_on_average_and_rises_with_shots(mini_grid):
    zs = np.mean(list(_fewshot(mini_grid, "zeroshot", 0, None).values()))
    for seed in SEEDS:
        one = np.mean(list(_fewshot(mini_grid, "coop", 1, seed).values()))
        sixteen = np.mean(list(_fewshot(mini_grid, "coop", 16, seed).values()))
        assert sixteen > zs + 3, (seed, zs, sixteen)  # a clear margin, as in the CoOp paper's average panel
        assert sixteen > one + 3, (seed, one, sixteen)


def test_fewshot_gain_largest_on_the_specialised_smallest_on_a_generic_dataset(mini_grid):
    zs = _fewshot(mini_grid, "zeroshot", 0, None)
    for seed in SEEDS:
        gain = {d: a - zs[d] for d, a in _fewshot(mini_grid, "coop", 16, seed).items()}
        assert max(gain, key=gain.get) == SPECIALISED, (seed, gain)
        assert min(gain, key=gain.get) in GENERIC, (seed, gain)


def test_fewshot_linear_probe_starts_below_zero_shot_and_rises_steeply(mini_grid):
    zs = _fewshot(mini_grid, "zeroshot", 0, None)
    for seed in SEEDS:
        one, sixteen = _fewshot(mini_grid, "linear_probe", 1, seed), _fewshot(mini_grid, "linear_probe", 16, seed)
        assert np.mean(list(one.values())) < np.mean(list(zs.values())) - 5, (seed, one, zs)
        assert all(sixteen[d] > one[d] + 10 for d in zs), (seed, one, sixteen)
        assert np.mean([sixteen[d] - one[d] for d in zs]) > 15, (seed, one, sixteen)


def test_domain_shift_coop_gain_shrinks_on_the_shifted_targets(mini_grid):
    from bench.data import get_spec

    src = "mini_fabrics"
    targets = get_spec(src).domain_shift_targets
    zs = {ev: v for (p, m, ds, k, s, ev), v in mini_grid.items() if p == "domain_shift" and m == "zeroshot"}
    for seed in SEEDS:
        coop = {ev: v for (p, m, ds, k, s, ev), v in mini_grid.items()
                if p == "domain_shift" and m == "coop" and s == seed}
        gain = {ev: coop[ev] - zs[ev] for ev in (src, *targets)}
        assert gain[src] > 3, (seed, gain)
        assert np.mean([gain[t] for t in targets]) < gain[src] / 2, (seed, gain)


def _base2new(grid, method, seed):
    """{dataset: (base top1, new top1)} of one method and seed on base-to-new (zero-shot: any seed)."""
    out: dict = {}
    for (p, m, ds, k, s, ev), v in grid.items():
        if p == "base2new" and m == method and (method == "zeroshot" or s == seed):
            dataset, part = ev.split(":")
            out.setdefault(dataset, {})[part] = v
    return {d: (v["base"], v["new"]) for d, v in out.items()}


def _avg_bnh(per_dataset):
    b = float(np.mean([x[0] for x in per_dataset.values()]))
    n = float(np.mean([x[1] for x in per_dataset.values()]))
    return b, n, 2 * b * n / (b + n)


def test_base2new_coop_learns_the_base_classes(mini_grid):
    zs = _base2new(mini_grid, "zeroshot", None)
    assert set(zs) == {"mini_patterns", "mini_fabrics", "mini_textures"}
    for seed in SEEDS:
        coop = _base2new(mini_grid, "coop", seed)
        assert set(coop) == set(zs)
        assert _avg_bnh(coop)[0] > _avg_bnh(zs)[0] + 5, (seed, coop, zs)  # measured: +13.3 on seed 1 (65.5 -> 78.8)


def test_base2new_coop_loses_new_classes_and_kgcoop_keeps_the_balance(mini_grid):
    """CoOp's context, tuned on the base half, falls below the hand-crafted prompt on the new half; KgCoOp, kept near
    the hand-crafted text features, ends with the better harmonic mean (CoCoOp, KgCoOp papers)."""
    zs = _avg_bnh(_base2new(mini_grid, "zeroshot", None))
    for seed in SEEDS:
        coop, kg = _avg_bnh(_base2new(mini_grid, "coop", seed)), _avg_bnh(_base2new(mini_grid, "kgcoop", seed))
        assert coop[1] < zs[1] - 3, (seed, coop, zs)
        assert kg[1] > coop[1] + 3 and kg[2] > coop[2], (seed, kg, coop)


IMAGE_SIDE = ("vpt_deep", "ivlp", "maple", "promptsrc")


def test_base2new_image_side_methods_learn_the_base_textures_and_lose_the_new_ones(mini_ckpt, data_root, tmp_path):
    """The methods that prompt the image encoder, trained through it on images (the streaming path, reference
    configs), on MiniTextures: each one's base accuracy above zero-shot's and its new-class accuracy below, on every
    seed (measured on seeds 1-3: base 48.8-61.3 vs 48.1, new 26.9-51.2 vs 60.0), as in the papers' base-to-new
    tables where prompts tuned on base classes lose ground on unseen ones."""
    from bench.cli import main
    from bench.registry import get_method
    from bench.store import Store

    assert all(get_method(m).trains_on == "images" for m in IMAGE_SIDE)
    common = ["--preset", "mini", "--data-root", str(data_root), "--results", str(tmp_path / "res"),
              "--datasets", "mini_textures", "--seeds", ",".join(map(str, SEEDS)), "--protocol", "base2new"]
    assert main(["run", "--method", ",".join(("zeroshot", *IMAGE_SIDE)), *common]) == 0
    got: dict = {}
    for r in Store(tmp_path / "res").all_results():
        c = r["config"]
        for ev, m in r["metrics"].items():
            got[(c["method"], c["train"]["seed"], ev.split(":")[1])] = m["top1"]
    zb, zn = got[("zeroshot", None, "base")], got[("zeroshot", None, "new")]
    for seed in SEEDS:
        base = {m: got[(m, seed, "base")] for m in IMAGE_SIDE}
        new = {m: got[(m, seed, "new")] for m in IMAGE_SIDE}
        assert all(b > zb for b in base.values()), (seed, zb, base)
        assert all(n < zn for n in new.values()), (seed, zn, new)
        assert np.mean(list(base.values())) > zb + 5 and np.mean(list(new.values())) < zn - 5, (seed, base, new)


ADAPTERS = ("linear_probe", "tip_adapter", "tip_adapter_f", "lp_pp", "zs_lp", "clap", "taskres")


@pytest.fixture(scope="module")
def adapter_grid(mini_ckpt, data_root, tmp_path_factory):
    """The probes and adapters on cached features, few-shot, shots 1, 4, 16, the demo's seed, through the CLI:
    {(method, shots): {dataset: top1}} (zero-shot under shots 0)."""
    from bench.cli import main
    from bench.store import Store

    res = tmp_path_factory.mktemp("mini_adapters")
    _copy_demo_results(Store(res))
    assert main(["run", "--protocol", "fewshot", "--method", ",".join(("zeroshot", *ADAPTERS)), "--shots", "1,4,16",
                 "--preset", "mini", "--data-root", str(data_root), "--results", str(res),
                 "--seeds", ",".join(map(str, SEEDS))]) == 0
    # Tip-Adapter-F's gain over Tip-Adapter at 16 shots is within seed noise here: its three seeds (cheap)
    assert main(["run", "--protocol", "fewshot", "--method", "tip_adapter,tip_adapter_f", "--shots", "16",
                 "--preset", "mini", "--data-root", str(data_root), "--results", str(res), "--seeds", "1,2,3"]) == 0
    out: dict = {}
    for r in Store(res).all_results():
        c = r["config"]
        if c["protocol"] != "fewshot":
            continue
        for ev, m in r["metrics"].items():
            out.setdefault((c["method"], c["train"]["shots"] or 0, c["train"]["seed"]), {})[ev] = m["top1"]
    return out


def _avg(g: dict, method: str, shots: int, seeds=SEEDS) -> float:
    """The 3-dataset average of a method at a shot count, averaged over ``seeds`` (zero-shot: no seed)."""
    cells = [g[(method, shots, None if method == "zeroshot" else seed)] for seed in seeds]
    assert all(len(c) == 3 for c in cells), cells
    return float(np.mean([np.mean(list(c.values())) for c in cells]))


def test_adapters_the_papers_effects_on_the_miniature_world(adapter_grid):
    """Measured on seeds 1-3 (README, "The adapter lineage on the miniature world"); asserted on the demo's seed
    (Tip-Adapter-F vs Tip-Adapter: on the three seeds' mean): Tip-Adapter at or above zero-shot on average at every
    shot count (its search keeps the zero-shot logits when the cache does not help the few-shot val) and
    Tip-Adapter-F at or above Tip-Adapter at 16 shots (Tip-Adapter paper, Figs. 4-5); LP++ far above the plain
    linear probe at 1 shot (LP++ paper); CLAP at or above ZS-LP at every shot count (CLAP paper); TaskRes above
    zero-shot at every shot count (TaskRes paper); every method better at 16 shots than at 1."""
    g = adapter_grid
    zs = _avg(g, "zeroshot", 0)
    for k in (1, 4, 16):
        assert _avg(g, "tip_adapter", k) >= zs - 1e-9, (k, _avg(g, "tip_adapter", k), zs)
        assert _avg(g, "clap", k) >= _avg(g, "zs_lp", k), (k, _avg(g, "clap", k), _avg(g, "zs_lp", k))
        assert _avg(g, "taskres", k) > zs, (k, _avg(g, "taskres", k), zs)
    three = (1, 2, 3)
    assert _avg(g, "tip_adapter_f", 16, three) >= _avg(g, "tip_adapter", 16, three), \
        (_avg(g, "tip_adapter_f", 16, three), _avg(g, "tip_adapter", 16, three))
    assert _avg(g, "lp_pp", 1) > _avg(g, "linear_probe", 1) + 5, (_avg(g, "lp_pp", 1), _avg(g, "linear_probe", 1))
    for m in ADAPTERS:  # more shots, more accuracy, for every method that learns from them
        assert _avg(g, m, 16) > _avg(g, m, 1), (m, _avg(g, m, 1), _avg(g, m, 16))


def test_clip_lora_learns_the_fabrics_at_four_shots(mini_ckpt, data_root, tmp_path):
    """CLIP-LoRA's reference recipe (rank 2 on q, k, v of both towers, 500 x shots iterations) on MiniFabrics at
    4 shots: far above zero-shot on every seed measured (79.6 / 80.0 / 80.0 vs 70.0; README, "CLIP-LoRA on the
    miniature world"), as in the paper, where it leads every few-shot method from 4 shots on. (At 1 shot it stays
    near or below zero-shot here: 61.1 vs 64.7 on average.) The most expensive test of the suite: 2,000 training
    iterations through both towers (0.07 s each on one quiet core)."""
    from bench.cli import main
    from bench.store import Store

    res = tmp_path / "res"
    assert main(["run", "--protocol", "fewshot", "--method", "zeroshot,clip_lora", "--datasets", "mini_fabrics",
                 "--shots", "4", "--preset", "mini", "--data-root", str(data_root), "--results", str(res),
                 "--seeds", ",".join(map(str, SEEDS))]) == 0
    got = {r["config"]["method"]: r["metrics"]["mini_fabrics"]["top1"] for r in Store(res).all_results()}
    assert got["clip_lora"] > got["zeroshot"] + 5, got
