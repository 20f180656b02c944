"""bench.data + datasets/*.yaml + bench.data.synth: specs, loaders on real synthetic files, few-shot, base/new."""

from __future__ import annotations

import json
import os
import random
from collections import OrderedDict, defaultdict
from pathlib import Path

import pytest

from bench import data, paths
from bench.data import synth
from bench.data import Item
from bench.errors import BenchError

COOP11 = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
          "sun397", "dtd", "eurosat", "ucf101"]
VARIANTS = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
ALL = COOP11 + VARIANTS

# docs/datasets.md folder names, docs/protocol.md §4 CoOp templates
DIRS = {"imagenet": "imagenet", "caltech101": "caltech-101", "oxford_pets": "oxford_pets",
        "stanford_cars": "stanford_cars", "oxford_flowers": "oxford_flowers", "food101": "food-101",
        "fgvc_aircraft": "fgvc_aircraft", "sun397": "sun397", "dtd": "dtd", "eurosat": "eurosat", "ucf101": "ucf101",
        "imagenetv2": "imagenetv2", "imagenet_sketch": "imagenet-sketch", "imagenet_a": "imagenet-adversarial",
        "imagenet_r": "imagenet-rendition"}
TEMPLATES = {"oxford_pets": "a photo of a {}, a type of pet.", "oxford_flowers": "a photo of a {}, a type of flower.",
             "fgvc_aircraft": "a photo of a {}, a type of aircraft.", "dtd": "{} texture.",
             "eurosat": "a centered satellite photo of {}.", "food101": "a photo of {}, a type of food.",
             "ucf101": "a photo of a person doing {}."}

IMAGENET5 = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark"]
# class names a 5-class synthetic tree must produce, per the reference's rules (written out independently)
EXPECTED_NAMES = {
    "imagenet": IMAGENET5, "imagenetv2": IMAGENET5, "imagenet_sketch": IMAGENET5,
    "imagenet_a": ["tench", "great white shark", "tiger shark", "hammerhead shark"],  # subset, looked up by wnid
    "imagenet_r": ["tench", "great white shark", "tiger shark", "hammerhead shark"],
    "caltech101": ["face", "leopard", "motorbike", "accordion", "airplane"],
    "oxford_pets": ["abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle"],
    "stanford_cars": ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan",
                      "2008 Acura TL Type-S", "2012 Acura TSX Sedan"],
    "oxford_flowers": ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
                       "english marigold"],
    "food101": ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare"],
    "fgvc_aircraft": ["707-320", "737-400", "A300B4", "BAE 146-200", "Cessna 172"],
    "sun397": ["abbey", "airplane_cabin", "shop bakery", "exterior balcony", "interior balcony"],
    "dtd": ["banded", "blotchy", "braided", "bubbly", "bumpy"],
    "eurosat": ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings"],
    "ucf101": ["Apply_Eye_Makeup", "Apply_Lipstick", "Archery", "Baby_Crawling", "Balance_Beam"],
}
PER_CLASS = (6, 3, 4)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    synth.make_all(root, n_classes=5, per_class=PER_CLASS, seed=0, image_size=32)
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))


# --------------------------------------------------------------------------------------------- specs


def test_specs_schema():
    specs = {s.key: s for s in data.list_specs()}
    assert set(ALL) <= set(specs)
    assert [s.key for s in data.list_specs() if s.key in ALL] == ALL  # CoOp table order
    assert [s.key for s in data.list_specs("coop11")] == COOP11
    assert [s.key for s in data.list_specs("imagenet_variant")] == VARIANTS
    for k in ALL:
        s = specs[k]
        assert s.dir == DIRS[k]
        assert s.template == TEMPLATES.get(k, "a photo of a {}.")
        assert set(s.sizes) == {"train", "val", "test"} and s.sizes["test"] > 0
        assert s.domain_shift_targets == (tuple(VARIANTS) if k == "imagenet" else ())
        assert s.has_val == (k not in ["imagenet"] + VARIANTS)
        assert (s.variant_of == "imagenet") == (k in VARIANTS)
    assert specs["stanford_cars"].image_dir == ""
    assert specs["caltech101"].name == "Caltech101" and specs["dtd"].name == "DescribableTextures"
    assert specs["oxford_flowers"].display_name == "Flowers102"
    assert specs["imagenet_a"].num_classes == 200 and specs["caltech101"].num_classes == 100
    assert specs["food101"].sizes == {"train": 50500, "val": 20200, "test": 30300}
    assert not list(paths.DATASETS_DIR.glob("*.py"))  # datasets/ is data only


def test_get_spec_lookup_and_unknown():
    assert data.get_spec("caltech101").key == "caltech101"
    assert data.get_spec("DescribableTextures").key == "dtd"
    with pytest.raises(BenchError, match=r"unknown dataset 'nope'; known: .*caltech101"):
        data.get_spec("nope")


def test_prompts_helpers():
    assert data.class_names_for_prompt("Apply_Eye_Makeup") == "Apply Eye Makeup"
    assert data.get_spec("ucf101").prompts(["Apply_Eye_Makeup"]) == ["a photo of a person doing Apply Eye Makeup."]


# --------------------------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("key", ALL)
def test_every_spec_loads_from_synthetic_tree(synth_root, key):
    spec = data.get_spec(key)
    sp = data.load_splits(key, synth_root)
    assert sp.root == synth_root / DIRS[key]
    assert sp.classnames == EXPECTED_NAMES[key]
    n = len(EXPECTED_NAMES[key])
    tr, va, te = PER_CLASS
    if key in VARIANTS:
        assert (len(sp.train), len(sp.val), len(sp.test)) == (0, 0, n * te)
    elif key == "imagenet":
        assert len(sp.train) == n * tr and sp.val == sp.test and len(sp.test) == n * te
    else:
        assert (len(sp.train), len(sp.val), len(sp.test)) == (n * tr, n * va, n * te)
    for it in sp.train + sp.val + sp.test:
        assert not os.path.isabs(it.path) and "\\" not in it.path
        assert (sp.root / it.path).is_file(), it.path
        assert sp.classnames[it.label] == it.classname
    assert {it.label for it in sp.test} == set(range(n))
    if spec.loader == "split_json":  # JSON paths are relative to image_dir; Item paths to the dataset root
        raw = json.loads((sp.root / spec.split_file).read_text())
        assert [e[0] for e in raw["test"]] == [it.path[len(spec.image_dir) + 1 if spec.image_dir else 0:]
                                              for it in sp.test]
        first_seen = list(OrderedDict.fromkeys(e[1] for e in raw["train"]))
        assert first_seen != sorted(first_seen)  # interleaved: first-appearance order matters
    rep = data.check_dataset(key, synth_root)
    assert rep["status"] == "found" and rep["missing_files"] == 0 and rep["classes"] == n


def test_layout_details(synth_root):
    cal = data.load_splits("caltech101", synth_root)
    assert any(it.path.startswith("101_ObjectCategories/airplanes/image_") and it.classname == "airplane"
               for it in cal.train)
    assert (cal.root / "101_ObjectCategories" / "BACKGROUND_Google").is_dir()  # present on disk, not a class
    cars = data.load_splits("stanford_cars", synth_root)
    raw = json.loads((cars.root / "split_zhou_StanfordCars.json").read_text())
    assert all(e[0].startswith("cars_train/") for e in raw["train"] + raw["val"])
    assert all(e[0].startswith("cars_test/") for e in raw["test"])
    fg = data.load_splits("fgvc_aircraft", synth_root)
    assert all(it.path.startswith("images/") and it.path.endswith(".jpg") for it in fg.test)
    inet = data.load_splits("imagenet", synth_root)
    wnids = sorted(p.name for p in (inet.root / "images" / "train").iterdir())
    assert [it.path.split("/")[2] for it in inet.train] == sorted(it.path.split("/")[2] for it in inet.train)
    assert all(wnids[it.label] == it.path.split("/")[2] for it in inet.train + inet.test)
    assert not any(Path(it.path).name.startswith(".") for it in inet.train)  # .DS_Store is skipped
    assert inet.test[0].path.startswith("images/val/")


def test_imagenet_a_is_a_subset_labelled_by_sorted_wnid(synth_root):
    a = data.load_splits("imagenet_a", synth_root)
    lines = (a.root / "classnames.txt").read_text().splitlines()
    names = {ln.split(" ")[0]: " ".join(ln.split(" ")[1:]) for ln in lines}
    assert len(names) == 5  # the shared "1000-class" file
    folders = sorted(p.name for p in (a.root / "imagenet-a").iterdir() if p.is_dir())
    assert len(folders) == 4 and (a.root / "imagenet-a" / "README.txt").is_file()
    assert a.classnames == [names[w] for w in folders]
    assert all(it.path.split("/")[1] == folders[it.label] for it in a.test)
    v2 = data.load_splits("imagenetv2", synth_root)
    assert all(it.path.split("/")[1] == str(it.label) for it in v2.test)


# --------------------------------------------------------------------------------------------- few-shot


def reference_fewshot(train, val, shots, seed):
    """Independent re-implementation of Dassl's generate_fewshot_dataset as the CoOp datasets call it."""
    state = random.getstate()
    try:
        random.seed(seed)

        def generate(items, k):
            tracker = defaultdict(list)  # insertion-ordered: first appearance of each label
            for it in items:
                tracker[it.label].append(it)
            out = []
            for _label, group in tracker.items():
                out.extend(random.sample(group, k) if len(group) >= k else group)
            return out

        return generate(train, shots), generate(val, min(shots, 4))
    finally:
        random.setstate(state)


@pytest.fixture(scope="module")
def fewshot_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot")
    # class 1 has fewer train images (3) than K=4/8/16 and one val image; others vary
    pcs = [(20, 6, 2), (3, 1, 2), (17, 5, 2), (9, 4, 2), (16, 8, 2)]
    synth.make_dataset_tree("dtd", root, n_classes=5, per_class=pcs, seed=3, image_size=16)
    return data.load_splits("dtd", root)


def test_fewshot_matches_reference(fewshot_splits):
    sp = fewshot_splits
    assert list(OrderedDict.fromkeys(it.label for it in sp.train)) != [0, 1, 2, 3, 4]
    for shots in (1, 2, 4, 8, 16):
        for seed in (1, 2, 3):
            got = data.fewshot_sample(sp, shots, seed)
            ref_train, ref_val = reference_fewshot(sp.train, sp.val, shots, seed)
            assert got["train"] == ref_train and got["val"] == ref_val, (shots, seed)
            counts = defaultdict(int)
            for it in got["train"]:
                counts[it.label] += 1
            assert counts[1] == min(shots, 3)
            assert len(got["val"]) == sum(min(min(shots, 4), n) for n in (6, 1, 5, 4, 8))
    # the short class is taken whole, in split order
    assert [it for it in data.fewshot_sample(sp, 8, 1)["train"] if it.label == 1] == \
        [it for it in sp.train if it.label == 1]


def test_fewshot_deterministic_and_seed_dependent(fewshot_splits):
    sp = fewshot_splits
    a, b = data.fewshot_sample(sp, 4, 1), data.fewshot_sample(sp, 4, 1)
    assert a == b
    assert data.fewshot_sample(sp, 4, 2)["train"] != a["train"]
    random.seed(123)
    expected = random.random()
    random.seed(123)
    data.fewshot_sample(sp, 4, 1)
    assert random.random() == expected  # the global stream is untouched


def test_fewshot_first_appearance_order_matters(fewshot_splits):
    """Grouping by sorted label instead of first appearance gives other picks: the fixture detects it."""
    sp = fewshot_splits
    differs = False
    for seed in (1, 2, 3):
        rng = random.Random(seed)
        by_label = sorted({it.label for it in sp.train})
        alt = []
        for y in by_label:
            group = [it for it in sp.train if it.label == y]
            alt.extend(rng.sample(group, 4) if len(group) >= 4 else group)
        differs |= sorted(alt, key=lambda i: i.path) != sorted(data.fewshot_sample(sp, 4, seed)["train"],
                                                              key=lambda i: i.path)
    assert differs


def test_fewshot_errors_and_train_only(synth_root, fewshot_splits):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(BenchError, match="shots"):
            data.fewshot_sample(fewshot_splits, bad, 1)
    with pytest.raises(BenchError, match="no train split"):
        data.fewshot_sample(data.load_splits("imagenet_a", synth_root), 1, 1)
    inet = data.load_splits("imagenet", synth_root)
    s = data.fewshot_sample(inet, 2, 1)
    assert s["val"] == [] and len(s["train"]) == 10
    ref_train, _ = reference_fewshot(inet.train, [], 2, 1)
    assert s["train"] == ref_train


# --------------------------------------------------------------------------------------------- base/new


def test_subsample_classes_odd(fewshot_splits):
    sp = fewshot_splits
    shot = data.fewshot_sample(sp, 4, 1)
    base = data.subsample_classes(shot["train"], shot["val"], sp.test, which="base")
    new = data.subsample_classes(shot["train"], shot["val"], sp.test, which="new")
    assert base.classnames == ["banded", "blotchy", "braided"] and new.classnames == ["bubbly", "bumpy"]
    assert {it.label for it in base.train} == {0, 1, 2} and {it.label for it in new.test} == {0, 1}
    assert [it.path for it in base.test] == [it.path for it in sp.test if it.label < 3]  # order kept
    assert [it.path for it in new.train] == [it.path for it in shot["train"] if it.label >= 3]
    assert all(new.classnames[it.label] == it.classname for it in new.train + new.val + new.test)
    assert all(base.classnames[it.label] == it.classname for it in base.train + base.val + base.test)
    full = data.subsample_classes(sp, which="all")
    assert full.train == sp.train and full.classnames == sp.classnames
    assert data.subsample_classes(sp, which="new").classnames == ["bubbly", "bumpy"]
    with pytest.raises(BenchError, match="class subset"):
        data.subsample_classes(sp, which="half")


def test_subsample_label_set_comes_from_train():
    train = [Item("a", 2, "c2"), Item("b", 7, "c7"), Item("c", 4, "c4")]
    test = [Item("t0", 0, "c0"), Item("t4", 4, "c4"), Item("t7", 7, "c7"), Item("t2", 2, "c2")]
    base = data.subsample_classes(train, [], test, which="base")  # labels [2, 4, 7]: m = 2
    assert base.classnames == ["c2", "c4"] and [(i.path, i.label) for i in base.test] == [("t4", 1), ("t2", 0)]
    new = data.subsample_classes(train, [], test, which="new")
    assert new.classnames == ["c7"] and [(i.path, i.label) for i in new.test] == [("t7", 0)]


# --------------------------------------------------------------------------------------------- check


def test_missing_dataset(tmp_path):
    rep = data.check_dataset("caltech101", tmp_path / "nowhere")
    assert rep["status"] == "missing" and rep["expected"] == str(tmp_path / "nowhere" / "caltech-101")
    assert str(tmp_path / "nowhere" / "caltech-101") in rep["message"]
    with pytest.raises(BenchError) as e:
        data.load_splits("caltech101", tmp_path / "nowhere")
    assert str(e.value) == (f"dataset caltech101 not found: expected folder {tmp_path / 'nowhere' / 'caltech-101'}"
                            " (see `bench data check`)")
    assert "\n" not in str(e.value)


def test_half_copied_split_json(tmp_path):
    root = synth.make_dataset_tree("eurosat", tmp_path, n_classes=3, per_class=(3, 2, 2), image_size=16)
    sp = data.load_splits("eurosat", tmp_path)
    victims = [sp.val[1], sp.train[2], sp.test[0]]
    for it in victims:
        (root / it.path).unlink()
    rep = data.check_dataset("eurosat", tmp_path)
    assert rep["status"] == "incomplete" and rep["missing_files"] == 3
    assert rep["first_missing"] == str(root / sp.train[2].path)  # train, val, test order
    assert rep["first_missing"] in rep["message"]
    (root / "split_zhou_EuroSAT.json").write_text('{"train": [["AnnualCrop/Ann')  # half-copied JSON
    rep = data.check_dataset("eurosat", tmp_path)
    assert rep["status"] == "incomplete" and "split_zhou_EuroSAT.json" in rep["message"]
    (root / "split_zhou_EuroSAT.json").unlink()
    rep = data.check_dataset("eurosat", tmp_path)
    assert rep["status"] == "incomplete" and rep["expected"] == str(root / "split_zhou_EuroSAT.json")
    with pytest.raises(BenchError, match="expected file .*split_zhou_EuroSAT.json"):
        data.load_splits("eurosat", tmp_path)


def test_half_copied_imagenet_family(tmp_path):
    root = synth.make_dataset_tree("imagenet", tmp_path, n_classes=3, per_class=(2, 0, 1), image_size=16)
    for f in (root / "images" / "train" / "n01443537").iterdir():
        f.unlink()
    rep = data.check_dataset("imagenet", tmp_path)
    assert rep["status"] == "incomplete" and rep["first_missing"] == str(root / "images/train/n01443537")
    v2 = synth.make_dataset_tree("imagenetv2", tmp_path, n_classes=3, per_class=(0, 0, 1), image_size=16)
    for f in (v2 / "imagenetv2-matched-frequency-format-val" / "1").iterdir():
        f.unlink()
    (v2 / "imagenetv2-matched-frequency-format-val" / "1").rmdir()
    rep = data.check_dataset("imagenetv2", tmp_path)
    assert rep["status"] == "incomplete"
    assert rep["expected"] == str(v2 / "imagenetv2-matched-frequency-format-val" / "1")
    (root / "classnames.txt").unlink()
    with pytest.raises(BenchError, match=f"expected file {root / 'classnames.txt'}"):
        data.load_splits("imagenet", tmp_path)


def test_real_imagenet_size_shortfall_is_reported(tmp_path):
    root = synth.make_dataset_tree("imagenet_r", tmp_path, n_classes=5, per_class=(0, 0, 1), image_size=16)
    (root / ".synthetic").unlink()  # now it looks like a (badly) copied real ImageNet-R
    rep = data.check_dataset("imagenet_r", tmp_path)
    assert rep["status"] == "incomplete" and "4 of 200 class folders" in rep["message"]


def test_a_partial_copy_of_a_released_dataset_is_incomplete(tmp_path):
    """5 of DTD's 47 classes read fine but are not DTD: compared with the released sizes (datasets/dtd.yaml)."""
    root = synth.make_dataset_tree("dtd", tmp_path, n_classes=5, per_class=(2, 1, 2), image_size=16)
    assert data.check_dataset("dtd", tmp_path)["status"] == "found"  # a synthetic tree: sizes not compared
    (root / ".synthetic").unlink()  # now it looks like a (badly) copied real DTD
    rep = data.check_dataset("dtd", tmp_path)
    assert rep["status"] == "incomplete" and "5 of 47 classes" in rep["message"]
    assert "train: 10 of 2820 images" in rep["message"] and "test: 10 of 1692 images" in rep["message"]


@pytest.mark.parametrize("damage, needle", [
    (lambda d: d.update(test=[]), "test: 0 images"),
    (lambda d: d.update(train=[]), "train: 0 images"),
    (lambda d: d["train"].append(d["train"][0]), "train: 1 duplicate entries, first: "),
    (lambda d: d.update(test=[e for e in d["test"] if e[1] != 2]), "1 class(es) without test images, first: "),
])
def test_check_flags_splits_a_run_cannot_use(tmp_path, damage, needle):
    root = synth.make_dataset_tree("eurosat", tmp_path, n_classes=3, per_class=(2, 1, 2), image_size=16)
    split = root / "split_zhou_EuroSAT.json"
    d = json.loads(split.read_text())
    damage(d)
    split.write_text(json.dumps(d))
    rep = data.check_dataset("eurosat", tmp_path)
    assert rep["status"] == "incomplete" and needle in rep["message"], rep["message"]


def test_check_flags_undecodable_images(tmp_path):
    root = synth.make_dataset_tree("eurosat", tmp_path, n_classes=3, per_class=(2, 1, 2), image_size=16)
    bad = root / data.load_splits("eurosat", tmp_path).test[1].path
    bad.write_bytes(b"not an image at all")
    rep = data.check_dataset("eurosat", tmp_path)
    assert rep["status"] == "incomplete" and rep["undecodable_files"] == 1 and rep["missing_files"] == 0
    assert f"1 image file(s) cannot be decoded, first: {bad}" in rep["message"]
    assert data.check_dataset("eurosat", tmp_path, stat_files=False)["status"] == "found"


# --------------------------------------------------------------------------------------------- samples


def test_write_and_read_sample(fewshot_splits, tmp_path):
    sp = fewshot_splits
    path = data.write_sample(sp, 4, 2)
    assert path == data.sample_file("dtd", 4, 2) == tmp_path / "cache" / "samples" / "dtd" / "shot_4-seed_2.json"
    assert [p.name for p in path.parent.iterdir()] == ["shot_4-seed_2.json"]  # no temp file left
    raw = json.loads(path.read_text())
    assert set(raw) == {"dataset", "data", "shots", "seed", "train", "val"} and raw["data"] == data.fingerprint(sp)
    assert (raw["dataset"], raw["shots"], raw["seed"]) == ("dtd", 4, 2)
    assert all(not os.path.isabs(p) and p.startswith("images/") and (sp.root / p).is_file()
               for p, _, _ in raw["train"] + raw["val"])
    back = data.read_sample(path, splits=sp, shots=4, seed=2)
    assert back["train"] == data.fewshot_sample(sp, 4, 2)["train"]
    assert back["val"] == data.fewshot_sample(sp, 4, 2)["val"]
    assert data.get_sample(sp, 4, 2) == {"train": back["train"], "val": back["val"]}
    with pytest.raises(BenchError, match="seed"):
        data.read_sample(path, seed=3)
    raw["train"][0][1] = (raw["train"][0][1] + 1) % 5  # a stale sample: label no longer matches the split
    path.write_text(json.dumps(raw))
    with pytest.raises(BenchError, match="does not match"):
        data.read_sample(path, splits=sp)
    with pytest.raises(BenchError, match="shots"):
        data.sample_file("dtd", 0, 1)


# --------------------------------------------------------------------------------------------- mini-style specs


def test_custom_specs_with_test_only_variant(tmp_path):
    specs_dir = tmp_path / "specs"
    specs_dir.mkdir()
    common = ('loader: split_json\nimage_dir: images\ntemplate: "a photo of a {}."\nnum_classes: 4\n'
              "sizes: {train: 8, val: 4, test: 8}\n")
    (specs_dir / "mini_shapes.yaml").write_text(
        "key: mini_shapes\nname: MiniShapes\ndir: mini_shapes\ngroup: mini\nsplit_file: split.json\n"
        "domain_shift_targets: [mini_shapes_grey]\n" + common)
    (specs_dir / "mini_shapes_grey.yaml").write_text(
        "key: mini_shapes_grey\nname: MiniShapesGrey\ndir: mini_shapes_grey\ngroup: mini_variant\n"
        "variant_of: mini_shapes\nhas_val: false\nsplit_file: split.json\n" + common)
    specs = data.list_specs(specs_dir=specs_dir)
    assert [s.key for s in specs] == ["mini_shapes", "mini_shapes_grey"]
    assert [s.key for s in data.list_specs("mini_variant", specs_dir=specs_dir)] == ["mini_shapes_grey"]
    grey = specs[1]
    root = synth.make_dataset_tree(grey, tmp_path / "data", n_classes=4, per_class=(2, 2, 3), image_size=16)
    assert set(json.loads((root / "split.json").read_text())) == {"test"}
    sp = data.load_splits(grey, tmp_path / "data")
    assert (sp.train, sp.val, len(sp.test), sp.num_classes) == ([], [], 12, 4)
    (root / "split.json").write_text(json.dumps({"train": [], "val": None, "test": [["class_000/1.jpg", 0, "x"]]}))
    assert data.load_splits(grey, tmp_path / "data").classnames == ["x"]
    (root / "split.json").write_text(json.dumps({"test": [["a.jpg", 0, "x"], ["b.jpg", 0, "y"]]}))
    with pytest.raises(BenchError, match="two class names"):
        data.load_splits(grey, tmp_path / "data")
    (specs_dir / "broken.yaml").write_text("key: other\n")
    with pytest.raises(BenchError, match="broken.yaml"):
        data.list_specs(specs_dir=specs_dir)
