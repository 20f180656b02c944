"""Small synthetic datasets with REAL JPEG files in each dataset's exact CoOp on-disk layout (for tests).

``make_dataset_tree("caltech101", root)`` writes ``root/caltech-101/101_ObjectCategories/<folder>/image_0001.jpg``
and ``root/caltech-101/split_zhou_Caltech101.json`` with the reference's class-name rules applied
(``airplanes`` -> ``airplane``); ImageNet gets ``images/{train,val}/<wnid>/`` + ``classnames.txt``;
FGVCAircraft ``images/<imid>.jpg`` + ``variants.txt`` + ``images_variant_*.txt``; the ImageNet variants their
folder layouts + a copy of ImageNet's ``classnames.txt``. Any other ``split_json`` spec (e.g. the miniature
world's) gets generic ``class_XXX/NNNNN.jpg`` folders (test only when the spec has ``variant_of``).

Images of different classes differ in colour and stripe orientation/frequency (plus noise), so small models
can learn them. ImageNet-family classes are drawn by wnid, so a class looks alike in ImageNet and in its
variants (the variants add a domain shift: sketch = grey, A = heavy noise, R = posterised, shifted hue).
Split JSON lists are shuffled, so labels appear interleaved ("first-appearance order" matters).

For the ImageNet family ``n_classes`` is the size of the shared ``classnames.txt`` (the "1000"); ImageNet-A/R
keep the subset of classes whose index i has ``i % 4 != 1`` (their "200"), labelled 0.. in sorted wnid order.
A hidden ``.synthetic`` marker (JSON) at the dataset root tells ``check_dataset`` not to compare sizes with
the released dataset.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from bench.data import SYNTHETIC_MARKER, DatasetSpec, get_spec, list_specs
from bench.errors import BenchError

PerClass = tuple[int, int, int]

# Real-looking class folders (in the order that gives the reference's labels), extended generically.
_CALTECH = ["Faces", "Leopards", "Motorbikes", "accordion", "airplanes", "anchor", "ant", "barrel", "bass",
            "beaver", "binocular", "bonsai"]  # sorted by code point, as sorted(listdir) is
_PETS = ["Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "Bengal",
         "Birman", "Bombay", "boxer", "British_Shorthair"]  # official class-id order (cats capitalised)
_CARS = ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan", "2008 Acura TL Type-S",
         "2012 Acura TSX Sedan", "2001 Acura Integra Type R", "2012 Acura ZDX Hatchback",
         "2012 Aston Martin V8 Vantage Convertible"]
_FLOWERS = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold",
            "tiger lily", "moon orchid", "bird of paradise"]
_FOOD = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad", "beignets",
         "bibimbap"]
_SUN = ["a/abbey", "a/airplane_cabin", "b/bakery/shop", "b/balcony/exterior", "b/balcony/interior", "c/castle",
        "d/dam", "e/elevator/door"]  # ClassName.txt order (without the leading /)
_DTD = ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked"]
_EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
            "Residential", "River", "SeaLake"]
_UCF = ["ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam", "BandMarching",
        "BaseballPitch", "Basketball"]
_AIRCRAFT = ["707-320", "737-400", "A300B4", "BAE 146-200", "Cessna 172", "DC-10", "F/A-18", "Falcon 2000",
             "Model B200", "Tu-134"]
_IMAGENET = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
             ("n01491361", "tiger shark"), ("n01494475", "hammerhead shark"), ("n01496331", "electric ray"),
             ("n01498041", "stingray"), ("n01514668", "rooster"), ("n01514859", "hen"), ("n01518878", "ostrich")]


def _names(base: list[str], n: int, fmt: str) -> list[str]:
    return list(base[:n]) + [fmt.format(i) for i in range(len(base), n)]


def imagenet_universe(n: int) -> list[tuple[str, str]]:
    """(wnid, name) of the synthetic ImageNet's n classes, in sorted-wnid order (= classnames.txt order)."""
    return _IMAGENET[:n] + [(f"n9{i:07d}", f"synthetic class {i}") for i in range(len(_IMAGENET), n)]


def ar_subset(n: int) -> list[int]:
    """Indices of the synthetic ImageNet classes present in ImageNet-A / -R (their "200 of 1000")."""
    return [i for i in range(n) if i % 4 != 1] if n >= 3 else list(range(n))


# --------------------------------------------------------------------------------------------- images


def render(visual_id: int, rng: np.random.Generator, size: int = 48, style: str = "photo") -> Image.Image:
    """A class-dependent image: hue and stripe angle/frequency from ``visual_id``, noise from ``rng``."""
    hue = (visual_id * 0.618033988749895) % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9)) * 255.0
    angle = np.deg2rad((visual_id * 47) % 180)
    freq = 2 + visual_id % 3
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    img = colour[None, None, :] * (0.45 + 0.55 * stripes[..., None]) * rng.uniform(0.85, 1.15)
    noise = 40.0 if style == "adversarial" else 12.0
    img = img + rng.normal(0.0, noise, img.shape)
    if style == "sketch":
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    elif style == "rendition":
        img = np.roll(img, 1, axis=2) // 64 * 64 + 32
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


class _Writer:
    def __init__(self, root: Path, seed: int, image_size: int):
        self.root, self.size = root, image_size
        self.rng = np.random.default_rng(seed)

    def image(self, rel: str, visual_id: int, style: str = "photo") -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        render(visual_id, self.rng, self.size, style).save(p, format="JPEG", quality=90)

    def text(self, rel: str, text: str) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------------------------- layouts


def _per_class(per_class, n: int) -> list[PerClass]:
    if len(per_class) == 3 and all(isinstance(v, int) for v in per_class):
        return [tuple(per_class)] * n
    if len(per_class) != n:
        raise BenchError(f"per_class needs one (train, val, test) per class: {n} expected, got {len(per_class)}")
    return [tuple(pc) for pc in per_class]


def _split_json_classes(key: str, n: int) -> list[tuple[str, str]]:
    """(folder or file stem or None, class name) per label, for the split_json datasets."""
    if key == "caltech101":
        folders = sorted(_names(_CALTECH, n, "class{:03d}"))
        ren = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
        return [(f, ren.get(f, f)) for f in folders]
    if key == "oxford_pets":
        return [(b, b.lower()) for b in _names(_PETS, n, "breed_{:03d}")]
    if key == "stanford_cars":
        return [("", c) for c in _names(_CARS, n, "2012 Synthetic Car {:03d}")]
    if key == "oxford_flowers":
        return [("", c) for c in _names(_FLOWERS, n, "flower {:03d}")]
    if key == "food101":
        return [(f, f) for f in sorted(_names(_FOOD, n, "food_{:03d}"))]
    if key == "sun397":
        out = []
        for c in _names(_SUN, n, "z/zone_{:03d}"):
            out.append((c, " ".join(c.split("/")[1:][::-1])))  # drop the letter folder, reverse, join
        return out
    if key == "dtd":
        return [(f, f) for f in sorted(_names(_DTD, n, "texture{:03d}"))]
    if key == "eurosat":
        ren = {"AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation":
               "Herbaceous Vegetation Land", "Highway": "Highway or Road", "Industrial": "Industrial Buildings",
               "Pasture": "Pasture Land", "PermanentCrop": "Permanent Crop Land", "Residential":
               "Residential Buildings", "River": "River", "SeaLake": "Sea or Lake"}
        folders = sorted(_names(_EUROSAT, n, "Zone{:03d}"))
        return [(f, ren.get(f, f)) for f in folders]
    if key == "ucf101":
        acts = _names(_UCF, n, "SyntheticAction{:03d}")
        return [(a, "_".join(_split_camel(a))) for a in acts]
    return [(f"class_{i:03d}", f"class_{i:03d}") for i in range(n)]


def _split_camel(s: str) -> list[str]:
    words, cur = [], ""
    for ch in s:
        if ch.isupper() and cur:
            words.append(cur)
            cur = ""
        cur += ch
    return words + ([cur] if cur else [])


def _make_split_json(spec: DatasetSpec, w: _Writer, n: int, pcs: list[PerClass], rnd: random.Random) -> None:
    key = spec.key
    classes = _split_json_classes(key, n)
    test_only = spec.variant_of is not None
    counter = {"n": 0}

    def nxt() -> int:
        counter["n"] += 1
        return counter["n"]

    def rel_for(label: int, folder: str, split: str, j: int) -> str:
        if key == "caltech101":
            return f"{folder}/image_{j:04d}.jpg"
        if key == "oxford_pets":
            return f"{folder}_{nxt()}.jpg"
        if key == "stanford_cars":
            return f"cars_{'test' if split == 'test' else 'train'}/{nxt():05d}.jpg"
        if key == "oxford_flowers":
            return f"image_{nxt():05d}.jpg"
        if key == "food101":
            return f"{folder}/{1000000 + nxt() * 37}.jpg"
        if key == "sun397":
            return f"{folder}/sun_{''.join(rnd.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(16))}.jpg"
        if key == "dtd":
            return f"{folder}/{folder}_{j:04d}.jpg"
        if key == "eurosat":
            return f"{folder}/{folder}_{j}.jpg"
        if key == "ucf101":
            return f"{'_'.join(_split_camel(folder))}/v_{folder}_g{8 + j // 4:02d}_c{1 + j % 4:02d}.jpg"
        return f"{folder}/{nxt():05d}.jpg"

    split = {"train": [], "val": [], "test": []}
    for label, ((folder, cname), pc) in enumerate(zip(classes, pcs)):
        j = 0
        for s, count in zip(("train", "val", "test"), pc):
            if test_only and s != "test":
                continue
            for _ in range(count):
                j += 1
                rel = rel_for(label, folder, s, j)
                w.image(f"{spec.image_dir}/{rel}" if spec.image_dir else rel, label)
                split[s].append([rel, label, cname])
    for s in split:
        rnd.shuffle(split[s])  # interleaved labels: first-appearance order != label order
    if test_only:
        split = {"test": split["test"]}
    w.text(spec.split_file, json.dumps(split, indent=4, separators=(",", ": ")))
    # generation-time files of the real layouts (not read by the loader, present for realism)
    if key == "caltech101":
        for ign in spec.ignored_folders:
            w.image(f"{spec.image_dir}/{ign}/image_0001.jpg", 999)
    elif key == "oxford_pets":
        w.text("annotations/trainval.txt", "".join(f"{f}_1 {i + 1} 1 1\n" for i, (f, _) in enumerate(classes)))
        w.text("annotations/test.txt", "")
    elif key == "stanford_cars":
        (w.root / "devkit").mkdir(parents=True, exist_ok=True)
    elif key == "oxford_flowers":
        w.text("cat_to_name.json", json.dumps({str(i + 1): c for i, (_, c) in enumerate(classes)}, indent=1))
    elif key == "food101":
        w.text("meta/classes.txt", "".join(f"{f}\n" for f, _ in classes))
    elif key == "sun397":
        w.text("ClassName.txt", "".join(f"/{f}\n" for f, _ in classes))
    elif key == "ucf101":
        w.text("ucfTrainTestlist/classInd.txt", "".join(f"{i + 1} {f}\n" for i, (f, _) in enumerate(classes)))


def _make_fgvc(spec: DatasetSpec, w: _Writer, n: int, pcs: list[PerClass], rnd: random.Random) -> None:
    variants = _names(_AIRCRAFT, n, "Variant-{:03d}")
    w.text(spec.variants_file, "".join(f"{v}\n" for v in variants))
    ids = rnd.sample(range(1000000, 2000000), sum(sum(pc) for pc in pcs))
    lines = {"train": [], "val": [], "test": []}
    for label, (v, pc) in enumerate(zip(variants, pcs)):
        for s, count in zip(("train", "val", "test"), pc):
            for _ in range(count):
                imid = f"{ids.pop():07d}"
                w.image(f"{spec.image_dir}/{imid}.jpg", label)
                lines[s].append(f"{imid} {v}\n")
    for s in lines:
        rnd.shuffle(lines[s])
        w.text(spec.split_files[s], "".join(lines[s]))


def _make_imagenet(spec: DatasetSpec, w: _Writer, n: int, pcs: list[PerClass], rnd: random.Random) -> None:
    uni = imagenet_universe(n)
    w.text(spec.classnames_file, "".join(f"{wn} {name}\n" for wn, name in uni))
    k = 0
    for i, ((wn, _), (tr, _va, te)) in enumerate(zip(uni, pcs)):
        for j in range(tr):
            w.image(f"{spec.train_dir}/{wn}/{wn}_{1000 + 7 * j}.JPEG", i)
        for _ in range(te):
            k += 1
            w.image(f"{spec.test_dir}/{wn}/ILSVRC2012_val_{k:08d}.JPEG", i)
    w.text(f"{spec.train_dir}/{uni[0][0]}/.DS_Store", "hidden files are not images")


def _make_variant(spec: DatasetSpec, w: _Writer, n: int, pcs: list[PerClass], rnd: random.Random) -> None:
    uni = imagenet_universe(n)
    w.text(spec.classnames_file, "".join(f"{wn} {name}\n" for wn, name in uni))
    base = spec.image_dir
    if spec.folder_labels == "index":  # V2
        for i, pc in enumerate(pcs):
            for j in range(pc[2]):
                h = hashlib.sha1(f"{i}-{j}".encode()).hexdigest()
                w.image(f"{base}/{i}/{h}.jpeg", i, "photo")
        return
    style = {"imagenet_sketch": "sketch", "imagenet_a": "adversarial", "imagenet_r": "rendition"}.get(spec.key, "photo")
    subset = spec.variant_of and get_spec(spec.variant_of).num_classes > spec.num_classes
    keep = ar_subset(n) if subset else list(range(n))  # ImageNet-A/R: the "200 of 1000"
    for i in keep:
        wn, name = uni[i]
        for j in range(pcs[i][2]):
            if style == "adversarial":
                rel = f"{base}/{wn}/{j:06d}_{name} _ {name}_0.{rnd.randrange(10**6):06d}.jpg"
            elif style == "rendition":
                rel = f"{base}/{wn}/art_{j}.jpg"
            else:
                rel = f"{base}/{wn}/sketch_{j}.JPEG"
            w.image(rel, i, style)
    if style in ("adversarial", "rendition"):
        w.text(f"{base}/README.txt", "synthetic stand-in; README.txt is ignored by the loader\n")


def make_dataset_tree(key: str, data_root: str | Path, n_classes: int = 5,
                      per_class: PerClass | Sequence[PerClass] = (6, 3, 4), seed: int = 0,
                      image_size: int = 48) -> Path:
    """Write a small synthetic copy of dataset ``key`` under ``data_root/spec.dir``; returns that folder.

    ``per_class`` is (train, val, test) images per class, or one such triple per class. ImageNet ignores
    the val count (its val folder is the test set); test-only variants use only the test count. An existing
    synthetic tree at the same place is replaced; a non-synthetic folder is never touched (BenchError).
    """
    spec = get_spec(key)
    if n_classes < 1:
        raise BenchError("n_classes must be >= 1")
    pcs = _per_class(per_class, n_classes)
    root = Path(data_root).expanduser() / spec.dir
    if root.exists():
        if not (root / SYNTHETIC_MARKER).is_file():
            raise BenchError(f"{root} exists and is not a synthetic tree; refusing to overwrite it")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    w = _Writer(root, seed, image_size)
    rnd = random.Random(seed)
    maker = {"split_json": _make_split_json, "fgvc_aircraft": _make_fgvc, "imagenet": _make_imagenet,
             "imagenet_variant": _make_variant}[spec.loader]
    maker(spec, w, n_classes, pcs, rnd)
    w.text(SYNTHETIC_MARKER, json.dumps({"key": spec.key, "n_classes": n_classes, "per_class": pcs,
                                          "seed": seed, "image_size": image_size}) + "\n")
    return root


def make_all(data_root: str | Path, keys: Sequence[str] | None = None, **kw) -> dict[str, Path]:
    """``make_dataset_tree`` for several datasets (default: the CoOp 11 and the 4 ImageNet variants)."""
    if keys is None:
        keys = [s.key for s in list_specs() if s.group in ("coop11", "imagenet_variant")]
    return {k: make_dataset_tree(k, data_root, **kw) for k in keys}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.data.synth DATA_ROOT``: write small synthetic datasets in CoOp's layout to try the
    suite on (``bench run --data-root DATA_ROOT ...``) without downloading anything."""
    import argparse
    import sys

    p = argparse.ArgumentParser(
        prog="python -m bench.data.synth",
        description="Write small synthetic datasets (real JPEGs, each dataset's exact CoOp on-disk layout and split "
                    "files) under DATA_ROOT, to try the suite on: bench run --data-root DATA_ROOT ... "
                    "The numbers mean nothing; the files, folders and flags are the real ones.")
    p.add_argument("data_root", metavar="DATA_ROOT", help="folder to write into (created if missing)")
    p.add_argument("--datasets", help="comma-separated dataset keys (default: the 11 CoOp datasets and the 4 "
                                      "ImageNet variants; see `bench list datasets`)")
    p.add_argument("--classes", type=int, default=5, help="classes per dataset (default 5)")
    p.add_argument("--per-class", default="6,3,4", metavar="TRAIN,VAL,TEST",
                   help="images per class in the train, val and test splits (default 6,3,4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the images and the split order (default 0)")
    p.add_argument("--image-size", type=int, default=48, help="image side in pixels (default 48)")
    args = p.parse_args(argv)
    try:
        try:
            per_class = tuple(int(x) for x in args.per_class.split(","))
        except ValueError:
            per_class = ()
        if len(per_class) != 3 or min(per_class) < 0:
            raise BenchError(f"bad --per-class {args.per_class!r}: expected three counts TRAIN,VAL,TEST, e.g. 6,3,4")
        if args.image_size < 8:
            raise BenchError(f"bad --image-size {args.image_size}: need at least 8 pixels")
        keys = [k.strip() for k in args.datasets.split(",")] if args.datasets is not None else None
        if keys is not None and not all(keys):
            raise BenchError(f"bad --datasets {args.datasets!r}: empty entry (expected e.g. caltech101,dtd)")
        for key in keys or []:
            get_spec(key)  # every key checked before anything is written
        written = make_all(args.data_root, keys, n_classes=args.classes, per_class=per_class, seed=args.seed,
                           image_size=args.image_size)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write under {args.data_root}: {e.strerror or e}", file=sys.stderr)
        return 2
    for key, folder in written.items():
        print(f"{key:18} {folder}")
    print(f"try: bench run --datasets {','.join(written)} --shots 1 --seeds 1 --data-root {args.data_root} "
          f"--dry-run  (then without --dry-run, with --method and --set METHOD.epochs=2 for a quick run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
