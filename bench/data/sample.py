"""Few-shot samples, their stored records, and the base/new class split (docs/protocol.md §2-§3).

* ``fewshot_sample`` is the reference's ``generate_fewshot_dataset`` (Dassl): a stream seeded with the
  run's seed right before sampling; items grouped by label in first-appearance order; ``random.sample``
  per class (all items when fewer than K); then, on the same stream, ``min(K, 4)`` per class for val.
  Datasets with ``has_val: false`` (ImageNet, test-only variants) sample train only.
* ``subsample_classes`` is the reference's base/new split (§2.3).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from bench import paths
from bench.data.loaders import Splits, _classnames_from, fingerprint
from bench.data.specs import SUBSAMPLE, DataNotFound, DatasetSpec, Item
from bench.errors import BenchError
from bench.fileio import atomic_open

# --------------------------------------------------------------------------------------------- few-shot


def _check_shots(shots) -> int:
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise BenchError(f"shots must be an integer >= 1 (got {shots!r}); zero-shot uses the full splits")
    return shots


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BenchError(f"seed must be an integer (got {seed!r})")
    return seed


def _sample_per_class(items: Sequence[Item], k: int, rng: random.Random) -> list[Item]:
    """Dassl's generate_fewshot_dataset for one source: group by label (first-appearance order), then
    ``random.sample(group, k)`` per class, or the whole group when it has fewer than k items."""
    groups: dict[int, list[Item]] = {}
    for it in items:
        groups.setdefault(it.label, []).append(it)
    out: list[Item] = []
    for group in groups.values():
        out.extend(rng.sample(group, k) if len(group) >= k else group)
    return out


def fewshot_sample(splits: Splits, shots: int, seed: int) -> dict[str, list[Item]]:
    """The reference's K-shot sample: ``{"train": [...], "val": [...]}``.

    A fresh ``random.Random(seed)`` gives exactly the stream of ``random.seed(seed)`` (the reference seeds
    the global generator at process start and nothing consumes it before sampling), without touching the
    global state. Train first (K per class), then val on the same stream (min(K, 4) per class). When
    ``spec.has_val`` is false (ImageNet: its val IS the test set) only train is sampled and ``val`` is [];
    the reference keeps ImageNet's full val (= test) there.
    """
    k = _check_shots(shots)
    rng = random.Random(_check_seed(seed))
    if not splits.train:
        raise BenchError(f"dataset {splits.spec.key} has no train split (test only): it cannot be few-shot sampled")
    train = _sample_per_class(splits.train, k, rng)
    val = _sample_per_class(splits.val, min(k, 4), rng) if splits.spec.has_val else []
    return {"train": train, "val": val}


def sample_file(dataset_key: str | DatasetSpec, shots: int, seed: int) -> Path:
    """``<cache>/samples/<key>/shot_{K}-seed_{S}.json``."""
    key = dataset_key.key if isinstance(dataset_key, DatasetSpec) else str(dataset_key)
    return paths.cache_dir() / "samples" / key / f"shot_{_check_shots(shots)}-seed_{_check_seed(seed)}.json"


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text.encode("utf-8"))


def _items_json(items: list[Item]) -> str:
    if not items:
        return "[]"
    return "[\n" + ",\n".join("    " + json.dumps(it.as_list(), ensure_ascii=False) for it in items) + "\n  ]"


def write_sample(splits: Splits, shots: int, seed: int, path: Path | str | None = None) -> Path:
    """Sample (``fewshot_sample``) and store as JSON with paths relative to the dataset root and the data's
    :func:`fingerprint` (atomic). Returns the file (default :func:`sample_file`)."""
    sample = fewshot_sample(splits, shots, seed)
    path = Path(path) if path else sample_file(splits.spec.key, shots, seed)
    text = ("{\n" f'  "dataset": {json.dumps(splits.spec.key)},\n  "data": {json.dumps(fingerprint(splits))},\n'
            f'  "shots": {shots},\n  "seed": {seed},\n'
            f'  "train": {_items_json(sample["train"])},\n  "val": {_items_json(sample["val"])}\n' "}\n")
    _atomic_write_text(path, text)
    return path


def read_sample(path: Path | str, splits: Splits | None = None, shots: int | None = None,
                seed: int | None = None) -> dict[str, Any]:
    """Read a sample file: ``{"dataset", "data", "shots", "seed", "train": [Item], "val": [Item]}`` (``data``:
    the fingerprint of the data it was drawn from; None in a file of older code). With
    ``splits`` (and/or shots/seed) it is checked against them: a stale file raises BenchError."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        out = {"dataset": d["dataset"], "data": d.get("data"), "shots": d["shots"], "seed": d["seed"],
               "train": [Item(str(p), int(y), str(c)) for p, y, c in d["train"]],
               "val": [Item(str(p), int(y), str(c)) for p, y, c in d.get("val") or []]}
    except FileNotFoundError:
        raise DataNotFound(f"few-shot sample not found: expected file {path}", path) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BenchError(f"cannot read few-shot sample {path}: {' '.join(str(e).split())}") from None
    for name, want in (("shots", shots), ("seed", seed), ("dataset", splits.spec.key if splits else None)):
        if want is not None and out[name] != want:
            raise BenchError(f"few-shot sample {path} has {name} {out[name]!r}, expected {want!r}")
    if splits is not None:
        for s in ("train", "val"):
            if not out[s]:
                continue
            known = set(getattr(splits, s))
            bad = next((it for it in out[s] if it not in known), None)
            if bad is not None:
                raise BenchError(f"few-shot sample {path} does not match the {s} split of {splits.root} "
                                 f"({bad.path} label {bad.label}); delete it to re-sample")
    return out


def record_sample(splits: Splits, shots: int, seed: int) -> Path:
    """The sample record of (dataset, K, seed) for these data: written on first use (like the reference's
    pickles) and drawn again when the stored one was drawn from other data (another fingerprint, or none)."""
    path = sample_file(splits.spec.key, shots, seed)
    try:
        current = path.is_file() and read_sample(path)["data"] == fingerprint(splits)
    except BenchError:
        current = False
    return path if current else write_sample(splits, shots, seed, path)


def get_sample(splits: Splits, shots: int, seed: int) -> dict[str, list[Item]]:
    """The stored sample for (dataset, K, seed) of these data (:func:`record_sample`)."""
    s = read_sample(record_sample(splits, shots, seed), splits=splits, shots=shots, seed=seed)
    return {"train": s["train"], "val": s["val"]}


# --------------------------------------------------------------------------------------------- base/new


class ClassSubset(NamedTuple):
    train: list[Item]
    val: list[Item]
    test: list[Item]
    classnames: list[str]


def subsample_classes(train: Sequence[Item] | Splits, val: Sequence[Item] | None = None,
                      test: Sequence[Item] | None = None, which: str = "all") -> ClassSubset:
    """Base-to-new class split (reference ``OxfordPets.subsample_classes``, docs/protocol.md §3).

    The label set comes from ``train`` (the few-shot sample; if train is empty, from val+test), sorted;
    m = ceil(n/2); ``base`` keeps the m lowest labels, ``new`` the rest; kept labels are remapped to
    0.. in sorted order and every list is filtered (order preserved). ``all`` returns the lists unchanged.
    Returns (train, val, test, classnames of the kept classes, index = new label).
    """
    if isinstance(train, Splits):
        train, val, test = train.train, train.val, train.test
    train, val, test = list(train), list(val or []), list(test or [])
    if which not in SUBSAMPLE:
        raise BenchError(f"unknown class subset '{which}'; known: {', '.join(SUBSAMPLE)}")
    names: dict[int, str] = {}
    for it in train + val + test:
        names.setdefault(it.label, it.classname)
    labels = sorted({it.label for it in (train or val + test)})
    if which == "all":
        classnames = _classnames_from([Item("", y, names[y]) for y in labels], "class subset")
        return ClassSubset(train, val, test, classnames)
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if which == "base" else labels[m:]
    relabel = {y: i for i, y in enumerate(selected)}

    def keep(items):
        return [Item(it.path, relabel[it.label], it.classname) for it in items if it.label in relabel]

    return ClassSubset(keep(train), keep(val), keep(test), [names[y] for y in selected])
