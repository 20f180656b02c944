"""``bench data check``: a report on one dataset copy that never raises for a missing or half-copied one."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from bench.data.loaders import Splits, _listdir_sorted, _root_of, load_splits
from bench.data.specs import SPLITS, SYNTHETIC_MARKER, DataNotFound, DatasetSpec, get_spec
from bench.log import progress

FOLDER_LOADERS = ("imagenet", "imagenet_variant")  # splits defined by folder listings, not by a list file


def check_dataset(spec: str | DatasetSpec, data_root: str | Path, stat_files: bool = True) -> dict:
    """A report on one dataset that never raises for a missing or half-copied copy.

    Keys: dataset, display_name, status ("found" | "missing" | "incomplete"), root, expected (the folder
    or file to provide), classes, expected_classes, images {train,val,test}, expected_images,
    missing_files, empty_files, undecodable_files, first_missing, message (one line), notes (list), synthetic.
    "incomplete" also covers a copy that reads but is not the dataset a run expects: an empty train or test
    split, duplicate entries in a split, classes without test images, and (not for a synthetic tree, see
    bench.data.synth) fewer classes or images than the released dataset has (``datasets/<key>.yaml``).
    With ``stat_files``, every image a list file (split_json, fgvc_aircraft) names is stat-ed and opened
    (undecodable files are flagged); folder-listing datasets (ImageNet and its variants) flag empty folders.
    """
    spec = get_spec(spec)
    root = _root_of(spec, data_root)
    rep: dict[str, Any] = {
        "dataset": spec.key, "display_name": spec.display_name, "status": "found", "root": str(root),
        "expected": str(root), "classes": None, "expected_classes": spec.num_classes,
        "images": {s: 0 for s in SPLITS}, "expected_images": dict(spec.sizes), "missing_files": 0,
        "empty_files": 0, "undecodable_files": 0, "first_missing": None, "message": "", "notes": [],
        "synthetic": False,
    }
    try:
        if not root.is_dir():
            rep.update(status="missing", message=f"not found: expected folder {root}")
            return rep
        rep["synthetic"] = (root / SYNTHETIC_MARKER).is_file()
    except OSError as e:
        rep.update(status="incomplete", message=f"cannot read {e.filename or root}: {e.strerror or type(e).__name__}")
        return rep
    try:
        splits = load_splits(spec, data_root)
    except DataNotFound as e:
        rep.update(status="incomplete", expected=e.path, first_missing=e.path, message=str(e))
        return rep
    except Exception as e:  # a corrupt copy must not crash `bench data check`
        rep.update(status="incomplete", message=" ".join(f"{e}".split()) or type(e).__name__)
        return rep
    rep["classes"] = splits.num_classes
    rep["images"] = {s: len(getattr(splits, s)) for s in SPLITS}
    problems = _split_problems(spec, splits, rep)
    if spec.loader in FOLDER_LOADERS:
        problems += _empty_folders(spec, splits, rep)
    elif stat_files:
        problems += _stat_items(splits, rep)
    if rep["synthetic"]:
        rep["notes"].append("synthetic tree (bench.data.synth)")
    else:
        problems += _size_problems(spec, rep)
    if problems:
        rep["status"] = "incomplete"
        if rep["first_missing"]:
            rep["expected"] = rep["first_missing"]
        rep["message"] = "incomplete: " + "; ".join(problems)
    else:
        rep["message"] = f"found: {rep['classes']} classes, " + ", ".join(f"{s} {rep['images'][s]}" for s in SPLITS)
    return rep


def _split_problems(spec: DatasetSpec, splits: Splits, rep: dict) -> list[str]:
    """Empty train (where the dataset has one) or test split, duplicate entries, classes without test images."""
    problems = []
    if not splits.train and spec.sizes.get("train", 0) > 0:
        problems.append("train: 0 images")
    if not splits.test:
        problems.append("test: 0 images")
    for s in SPLITS:
        counts = Counter(it.path for it in getattr(splits, s))
        dups = sorted(p for p, n in counts.items() if n > 1)
        if dups:
            problems.append(f"{s}: {sum(counts[p] - 1 for p in dups)} duplicate entries, first: {dups[0]}")
    overlap = {it.path for it in splits.train} & {it.path for it in splits.test}
    if overlap:
        rep["notes"].append(f"{len(overlap)} image(s) in both train and test, first: {min(overlap)}")
    if splits.test:
        tested = {it.label for it in splits.test}
        untested = [i for i in range(splits.num_classes) if i not in tested]
        if untested:
            problems.append(f"{len(untested)} class(es) without test images, first: '{splits.classnames[untested[0]]}'")
    return problems


def _size_problems(spec: DatasetSpec, rep: dict) -> list[str]:
    """Fewer classes or images than the released dataset: a partial copy (more: a note, e.g. a newer release)."""
    problems = []
    what = "class folders" if spec.loader in FOLDER_LOADERS else "classes"
    if rep["classes"] < spec.num_classes:
        problems.append(f"{rep['classes']} of {spec.num_classes} {what}")
    elif rep["classes"] > spec.num_classes:
        rep["notes"].append(f"{rep['classes']} classes, the released dataset has {spec.num_classes}")
    for s in SPLITS:
        n, want = rep["images"][s], spec.sizes.get(s, 0)
        if s == "val" and not spec.has_val:
            continue
        if n < want:
            problems.append(f"{s}: {n} of {want} images")
        elif n > want:
            rep["notes"].append(f"{s}: {n} images, the released split has {want}")
    return problems


def _decodes(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Exception:  # PIL raises many types for a non-image or a truncated file
        return False
    return True


def _stat_items(splits: Splits, rep: dict) -> list[str]:
    """Every listed image exists, is not empty and opens as an image."""
    todo = list(dict.fromkeys(it.path for s in SPLITS for it in getattr(splits, s)))
    first_bad = None
    for rel in progress(todo, desc=f"check {splits.spec.key}", unit="img"):
        path = splits.root / rel
        try:
            size = os.stat(path).st_size
        except OSError:
            rep["missing_files"] += 1
            rep["first_missing"] = rep["first_missing"] or str(path)
            continue
        if size == 0:
            rep["empty_files"] += 1
            rep["first_missing"] = rep["first_missing"] or str(path)
        elif not _decodes(path):
            rep["undecodable_files"] += 1
            first_bad = first_bad or str(path)
    problems = []
    if rep["missing_files"] or rep["empty_files"]:
        problems.append(f"{rep['missing_files']} of {len(todo)} image files missing"
                        + (f", {rep['empty_files']} empty" if rep["empty_files"] else "")
                        + f"; first: {rep['first_missing']}")
    if rep["undecodable_files"]:
        problems.append(f"{rep['undecodable_files']} image file(s) cannot be decoded, first: {first_bad}")
    return problems


def _empty_folders(spec: DatasetSpec, splits: Splits, rep: dict) -> list[str]:
    """ImageNet and its variants are folder listings: a class folder without images."""
    split = "train" if spec.loader == "imagenet" else "test"
    counts = [0] * splits.num_classes
    for it in getattr(splits, split):
        counts[it.label] += 1
    empty = [i for i, c in enumerate(counts) if c == 0]
    if not empty:
        return []
    if spec.folder_labels == "index":
        first = splits.root / spec.image_dir / str(empty[0])
    else:
        base = spec.train_dir if spec.loader == "imagenet" else spec.image_dir
        first = splits.root / base / _listdir_sorted(splits.root / base, dirs=True)[empty[0]]
    rep["first_missing"] = str(first)
    return [f"{len(empty)} empty class folder(s), first: {first}"]
