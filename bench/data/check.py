"""``bench data check``: a report on one dataset copy that never raises for a missing or half-copied one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.data.loaders import Splits, _listdir_sorted, _root_of, load_splits
from bench.data.specs import SPLITS, SYNTHETIC_MARKER, DataNotFound, DatasetSpec, get_spec

# --------------------------------------------------------------------------------------------- check


def check_dataset(spec: str | DatasetSpec, data_root: str | Path, stat_files: bool = True) -> dict:
    """A report on one dataset that never raises for a missing or half-copied copy.

    Keys: dataset, display_name, status ("found" | "missing" | "incomplete"), root, expected (the folder
    or file to provide), classes, expected_classes, images {train,val,test}, expected_images,
    missing_files, empty_files, first_missing, message (one line), notes (list), synthetic (bool).
    For split_json/fgvc datasets every listed image is stat-ed; for folder-listing datasets (ImageNet and
    its variants) the class and image counts are compared with the released sizes instead.
    """
    spec = get_spec(spec)
    root = _root_of(spec, data_root)
    rep: dict[str, Any] = {
        "dataset": spec.key, "display_name": spec.display_name, "status": "found", "root": str(root),
        "expected": str(root), "classes": None, "expected_classes": spec.num_classes,
        "images": {s: 0 for s in SPLITS}, "expected_images": dict(spec.sizes), "missing_files": 0,
        "empty_files": 0, "first_missing": None, "message": "", "notes": [], "synthetic": False,
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
    if spec.loader in ("split_json", "fgvc_aircraft"):
        if stat_files:
            _stat_items(splits, rep)
    else:
        _check_listing(spec, splits, rep)
    if not rep["synthetic"]:
        if rep["classes"] != spec.num_classes:
            rep["notes"].append(f"{rep['classes']} classes, the released dataset has {spec.num_classes}")
        for s in SPLITS:
            if rep["images"][s] != spec.sizes.get(s, 0) and not (s == "val" and not spec.has_val):
                rep["notes"].append(f"{s}: {rep['images'][s]} images, the released split has {spec.sizes.get(s, 0)}")
    else:
        rep["notes"].append("synthetic tree (bench.data.synth)")
    if rep["status"] == "found":
        rep["message"] = f"found: {rep['classes']} classes, " + ", ".join(
            f"{s} {rep['images'][s]}" for s in SPLITS)
    return rep


def _stat_items(splits: Splits, rep: dict) -> None:
    from bench.log import progress

    seen = set()
    todo = []
    for s in SPLITS:
        for it in getattr(splits, s):
            if it.path not in seen:
                seen.add(it.path)
                todo.append(it.path)
    for rel in progress(todo, desc=f"check {splits.spec.key}", unit="img"):
        try:
            size = os.stat(splits.root / rel).st_size
        except OSError:
            rep["missing_files"] += 1
            if rep["first_missing"] is None:
                rep["first_missing"] = str(splits.root / rel)
            continue
        if size == 0:
            rep["empty_files"] += 1
            if rep["first_missing"] is None:
                rep["first_missing"] = str(splits.root / rel)
    if rep["missing_files"] or rep["empty_files"]:
        rep["status"] = "incomplete"
        rep["expected"] = rep["first_missing"]
        rep["message"] = (f"incomplete: {rep['missing_files']} of {len(todo)} image files missing"
                          + (f", {rep['empty_files']} empty" if rep["empty_files"] else "")
                          + f"; first: {rep['first_missing']}")


def _check_listing(spec: DatasetSpec, splits: Splits, rep: dict) -> None:
    """ImageNet and its variants are folder listings: flag empty class folders and (real data) short counts."""
    split = "train" if spec.loader == "imagenet" else "test"
    counts = [0] * splits.num_classes
    for it in getattr(splits, split):
        counts[it.label] += 1
    empty = [i for i, c in enumerate(counts) if c == 0]
    problems = []
    if empty:
        if spec.folder_labels == "index":
            first = splits.root / spec.image_dir / str(empty[0])
        else:
            base = spec.train_dir if spec.loader == "imagenet" else spec.image_dir
            first = splits.root / base / _listdir_sorted(splits.root / base, dirs=True)[empty[0]]
        rep["first_missing"] = str(first)
        problems.append(f"{len(empty)} empty class folder(s), first: {first}")
    if spec.loader == "imagenet":
        test_labels = {it.label for it in splits.test}
        if len(test_labels) < splits.num_classes:
            problems.append(f"{splits.num_classes - len(test_labels)} class(es) have no folder in "
                            f"{splits.root / spec.test_dir}")
    if not rep["synthetic"]:
        if splits.num_classes < spec.num_classes:
            problems.append(f"{splits.num_classes} of {spec.num_classes} class folders")
        for s in ("train", "test"):
            n, want = rep["images"][s], spec.sizes.get(s, 0)
            if n < want:
                problems.append(f"{s}: {n} of {want} images")
    if problems:
        rep["status"] = "incomplete"
        if rep["first_missing"]:
            rep["expected"] = rep["first_missing"]
        rep["message"] = "incomplete: " + "; ".join(problems)
