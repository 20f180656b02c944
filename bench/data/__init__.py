"""Datasets: specs (``datasets/*.yaml``), CoOp on-disk layouts, class names, few-shot samples, base/new.

Everything here follows docs/protocol.md §1-§3 (and §10 for the deliberate differences):

* A :class:`DatasetSpec` is read from ``datasets/<key>.yaml`` (data, not code). ``list_specs`` reads every
  YAML file there; ``get_spec`` finds one by key (or by its reference / display name).
* ``load_splits(spec, data_root)`` reads the dataset below ``data_root/spec.dir`` with one of four loaders:

  - ``split_json``: CoOp's released ``split_zhou_<Name>.json`` (``{"train"|"val"|"test": [[rel, label,
    classname], ...]}``, paths relative to ``image_dir``). Missing or empty ``train``/``val`` lists are
    allowed (test-only variants, e.g. the miniature world's domain-shift sets).
  - ``imagenet``: ``images/{train,val}/<wnid>/`` + ``classnames.txt``; label = index of the wnid in the
    SORTED list of train folders; test = the val folder and val = test. The reference lists the images of a
    folder with unsorted ``os.listdir``; this suite lists them sorted (portable; docs/protocol.md §10).
  - ``fgvc_aircraft``: ``variants.txt`` + ``images_variant_{train,val,test}.txt`` (``imid variant name...``).
  - ``imagenet_variant``: V2 (folders ``0..N-1`` = label, names in classnames.txt order) or Sketch/A/R
    (sorted wnid folders labelled ``0..n-1``, names looked up by wnid; files such as README.txt ignored).

* ``Item.path`` is always relative to the dataset root (``data_root/spec.dir``), with ``/`` separators.
  ``load_splits`` never stats image files (ImageNet has 1.3M); ``check_dataset`` does, and never raises
  for a missing or half-copied dataset.
* ``fewshot_sample`` is the reference's ``generate_fewshot_dataset`` (Dassl): a stream seeded with the
  run's seed right before sampling; items grouped by label in first-appearance order; ``random.sample``
  per class (all items when fewer than K); then, on the same stream, ``min(K, 4)`` per class for val.
  Datasets with ``has_val: false`` (ImageNet, test-only variants) sample train only.
* ``subsample_classes`` is the reference's base/new split (§2.3).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import posixpath
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import yaml

from bench import paths
from bench.errors import BenchError
from bench.fileio import atomic_open

LOADERS = ("split_json", "imagenet", "fgvc_aircraft", "imagenet_variant")
GROUPS = ("coop11", "imagenet_variant", "mini", "mini_variant")
SPLITS = ("train", "val", "test")
SUBSAMPLE = ("all", "base", "new")
SYNTHETIC_MARKER = ".synthetic"  # written by bench.data.synth at a synthetic dataset's root (hidden: never listed)


# --------------------------------------------------------------------------------------------- items


@dataclass(frozen=True, slots=True)
class Item:
    """One image: ``path`` relative to the dataset root (``/`` separators), 0-based ``label``, ``classname``
    as stored by the reference (underscores kept; see :func:`class_names_for_prompt`)."""

    path: str
    label: int
    classname: str

    def as_list(self) -> list:
        return [self.path, self.label, self.classname]


def class_names_for_prompt(name: str) -> str:
    """The reference inserts class names into prompts with ``_`` replaced by a space."""
    return name.replace("_", " ")


class DataNotFound(BenchError):
    """A dataset folder or file is missing. ``path`` is the exact path that was expected."""

    def __init__(self, message: str, path: Path | str):
        super().__init__(message)
        self.path = str(path)


# --------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class DatasetSpec:
    """One ``datasets/<key>.yaml`` (the YAML keys are these field names; unknown keys land in ``extra``).
    Required: key, name, dir, loader, template, group, num_classes; the loader's own fields (split_file;
    classnames_file/train_dir/test_dir; variants_file/split_files; folder_labels) as commented below."""

    key: str                      # CLI name (= YAML file stem)
    name: str                     # reference cfg DATASET.NAME, e.g. "DescribableTextures"
    display_name: str             # table name, e.g. "DTD", "Flowers102"
    dir: str                      # folder under the data root, e.g. "caltech-101"
    loader: str                   # split_json | imagenet | fgvc_aircraft | imagenet_variant
    template: str                 # CoOp zero-shot CUSTOM_TEMPLATES entry (docs/protocol.md §4)
    group: str                    # coop11 | imagenet_variant | mini | mini_variant
    num_classes: int              # of the real (released) dataset
    sizes: dict = field(default_factory=dict, compare=False)  # {"train","val","test"} of the released split
    domain_shift_targets: tuple = ()
    has_val: bool = True          # False: val is not sampled (ImageNet: val = test; test-only variants)
    order: int = 1000             # table order (CoOp's dataset order for the 11 + 4)
    variant_of: str | None = None
    image_dir: str = ""           # relative to the dataset root; "" = the root itself (StanfordCars)
    split_file: str | None = None            # split_json
    classnames_file: str | None = None       # imagenet, imagenet_variant
    train_dir: str | None = None             # imagenet
    test_dir: str | None = None              # imagenet
    variants_file: str | None = None         # fgvc_aircraft
    split_files: dict = field(default_factory=dict, compare=False)     # fgvc_aircraft: split -> list file
    folder_labels: str | None = None         # imagenet_variant: "index" (V2) | "wnid_sorted" (Sketch/A/R)
    ignored_folders: tuple = ()              # generation-time facts (documentation and bench.data.synth only)
    classname_map: dict = field(default_factory=dict, compare=False)   # generation-time folder -> name
    source: str | None = None                # the YAML file it came from
    extra: dict = field(default_factory=dict, compare=False)           # any other YAML keys

    def prompts(self, classnames: Iterable[str]) -> list[str]:
        """The dataset's hand-crafted prompt for each class name (``_`` -> space)."""
        return [self.template.format(class_names_for_prompt(c)) for c in classnames]


_SPEC_FIELDS = {f.name for f in dataclasses.fields(DatasetSpec)} - {"source", "extra"}
_REQUIRED = ("key", "name", "dir", "loader", "template", "group", "num_classes")


def _spec_from_dict(d: Any, source: Path) -> DatasetSpec:
    try:
        return _spec_from_dict_unchecked(d, source)
    except (TypeError, ValueError, AttributeError) as e:
        raise BenchError(f"dataset spec {source}: invalid field value ({' '.join(str(e).split())})") from None


def _spec_from_dict_unchecked(d: Any, source: Path) -> DatasetSpec:
    where = f"dataset spec {source}"
    if not isinstance(d, dict):
        raise BenchError(f"{where}: expected a YAML mapping")
    missing = [k for k in _REQUIRED if d.get(k) in (None, "")]
    if missing:
        raise BenchError(f"{where}: missing field(s) {', '.join(missing)}")
    if d["key"] != source.stem:
        raise BenchError(f"{where}: key '{d['key']}' must equal the file name '{source.stem}'")
    if d["loader"] not in LOADERS:
        raise BenchError(f"{where}: unknown loader '{d['loader']}'; known: {', '.join(LOADERS)}")
    if d["group"] not in GROUPS:
        raise BenchError(f"{where}: unknown group '{d['group']}'; known: {', '.join(GROUPS)}")
    if "{}" not in str(d["template"]):
        raise BenchError(f"{where}: template must contain '{{}}'")
    kw = {k: v for k, v in d.items() if k in _SPEC_FIELDS}
    kw["extra"] = {k: v for k, v in d.items() if k not in _SPEC_FIELDS}
    kw["source"] = str(source)
    kw = {k: v for k, v in kw.items() if v is not None or k in ("variant_of", "split_file")}
    kw.setdefault("display_name", d["name"])
    kw["image_dir"] = "" if kw.get("image_dir") in (None, ".", "./") else str(kw["image_dir"]).strip("/")
    kw["dir"] = str(kw["dir"])
    kw["num_classes"] = int(kw["num_classes"])
    kw["sizes"] = {s: int((kw.get("sizes") or {}).get(s) or 0) for s in SPLITS}
    kw["domain_shift_targets"] = tuple(kw.get("domain_shift_targets") or ())
    kw["ignored_folders"] = tuple(kw.get("ignored_folders") or ())
    kw["classname_map"] = dict(kw.get("classname_map") or {})
    kw["split_files"] = dict(kw.get("split_files") or {})
    kw["has_val"] = bool(kw.get("has_val", True))
    kw["order"] = int(kw.get("order", 1000))
    loader = kw["loader"]
    if loader == "split_json" and not kw.get("split_file"):
        raise BenchError(f"{where}: loader split_json needs split_file")
    if loader in ("imagenet", "imagenet_variant"):
        kw.setdefault("classnames_file", "classnames.txt")
    if loader == "imagenet":
        kw.setdefault("train_dir", posixpath.join(kw["image_dir"] or "images", "train"))
        kw.setdefault("test_dir", posixpath.join(kw["image_dir"] or "images", "val"))
    if loader == "fgvc_aircraft":
        kw.setdefault("variants_file", "variants.txt")
        if sorted(kw["split_files"]) != sorted(SPLITS):
            raise BenchError(f"{where}: loader fgvc_aircraft needs split_files for train, val and test")
    if loader == "imagenet_variant" and kw.get("folder_labels") not in ("index", "wnid_sorted"):
        raise BenchError(f"{where}: loader imagenet_variant needs folder_labels: index | wnid_sorted")
    return DatasetSpec(**kw)


_SPEC_CACHE: dict[str, tuple[tuple, list[DatasetSpec]]] = {}


def _read_specs(specs_dir: Path) -> list[DatasetSpec]:
    files = sorted(specs_dir.glob("*.yaml"))
    stamp = tuple((str(f), f.stat().st_mtime_ns) for f in files)
    hit = _SPEC_CACHE.get(str(specs_dir))
    if hit and hit[0] == stamp:
        return hit[1]
    specs = []
    for f in files:
        try:
            d = yaml.safe_load(f.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise BenchError(f"dataset spec {f}: invalid YAML ({' '.join(str(e).split())})") from None
        specs.append(_spec_from_dict(d, f))
    keys = {s.key for s in specs}
    for s in specs:
        bad = [t for t in s.domain_shift_targets if t not in keys]
        if s.variant_of and s.variant_of not in keys:
            bad.append(s.variant_of)
        if bad:
            raise BenchError(f"dataset spec {s.source}: unknown dataset(s) {', '.join(bad)}")
    specs.sort(key=lambda s: (s.order, s.key))
    _SPEC_CACHE[str(specs_dir)] = (stamp, specs)
    return specs


def list_specs(group: str | None = None, specs_dir: Path | str | None = None) -> list[DatasetSpec]:
    """Every ``datasets/*.yaml`` (table order), optionally only one group."""
    specs = _read_specs(Path(specs_dir) if specs_dir else paths.DATASETS_DIR)
    if group is None:
        return list(specs)
    if group not in GROUPS:
        raise BenchError(f"unknown dataset group '{group}'; known: {', '.join(GROUPS)}")
    return [s for s in specs if s.group == group]


def get_spec(key: str | DatasetSpec, specs_dir: Path | str | None = None) -> DatasetSpec:
    """The spec for a key (also accepts the reference name or display name, case-insensitively)."""
    if isinstance(key, DatasetSpec):
        return key
    specs = list_specs(specs_dir=specs_dir)
    for s in specs:
        if s.key == key:
            return s
    low = str(key).lower()
    for s in specs:
        if low in (s.key.lower(), s.name.lower(), s.display_name.lower()):
            return s
    raise BenchError(f"unknown dataset '{key}'; known: {', '.join(s.key for s in specs)}")


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    """``data_root`` if given, else $BENCH_DATA, else $DATA (CoOp's variable)."""
    value = data_root or os.environ.get("BENCH_DATA") or os.environ.get("DATA")
    if not value:
        raise BenchError("no data root: pass --data-root or set BENCH_DATA")
    return Path(value).expanduser()


# --------------------------------------------------------------------------------------------- splits


@dataclass
class Splits:
    """A loaded dataset: items per split and the class names (index = label)."""

    spec: DatasetSpec
    root: Path
    train: list[Item]
    val: list[Item]
    test: list[Item]
    classnames: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def abspath(self, item: Item | str) -> Path:
        return self.root / (item.path if isinstance(item, Item) else item)

    def subsample(self, which: str) -> "Splits":
        """A copy restricted to the base or new classes (labels remapped), §2.3."""
        sub = subsample_classes(self.train, self.val, self.test, which=which)
        return dataclasses.replace(self, train=sub.train, val=sub.val, test=sub.test, classnames=sub.classnames)


def _root_of(spec: DatasetSpec, data_root) -> Path:
    return Path(data_root).expanduser() / spec.dir


def _need(path: Path, spec: DatasetSpec, folder: bool) -> Path:
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        what = "folder" if folder else "file"
        raise DataNotFound(f"dataset {spec.key} incomplete: expected {what} {path} (see `bench data check`)", path)
    return path


def load_splits(spec_or_key: str | DatasetSpec, data_root: str | Path) -> Splits:
    """Read a dataset's train/val/test items and class names. Raises :class:`BenchError` (one line naming
    the exact expected folder or file) when something is missing. Image files are not checked here."""
    spec = get_spec(spec_or_key)
    root = _root_of(spec, data_root)
    loader = {"split_json": _load_split_json, "imagenet": _load_imagenet,
              "fgvc_aircraft": _load_fgvc, "imagenet_variant": _load_variant}[spec.loader]
    try:
        if not root.is_dir():
            raise DataNotFound(f"dataset {spec.key} not found: expected folder {root} (see `bench data check`)", root)
        train, val, test, classnames = loader(spec, root)
    except OSError as e:  # unreadable folder or file (permissions, I/O error): one line naming it
        where = e.filename or root
        raise BenchError(f"dataset {spec.key}: cannot read {where}: {e.strerror or type(e).__name__}") from None
    return Splits(spec=spec, root=root, train=train, val=val, test=test, classnames=classnames)


_FINGERPRINTS: dict[tuple[str, str], str] = {}


def fingerprint(splits: Splits) -> str:
    """What identifies the data a run reads, independent of where it lives: a digest of the class list and of
    every split's items (paths relative to the dataset root, labels, class names) as :func:`load_splits` read
    them: the split file's content, or the sorted folder listing that defines ImageNet's and its variants'
    splits. No image is read. Cached per (dataset, dataset folder) for the process."""
    key = (splits.spec.key, str(Path(splits.root).resolve()))
    if key not in _FINGERPRINTS:
        h = hashlib.sha256(json.dumps(splits.classnames, ensure_ascii=False).encode())
        for s in SPLITS:
            h.update(f"\n{s}".encode())
            for it in getattr(splits, s):
                h.update(("\n" + json.dumps(it.as_list(), ensure_ascii=False)).encode())
        _FINGERPRINTS[key] = "sha256:" + h.hexdigest()[:16]
    return _FINGERPRINTS[key]


def data_fingerprint(spec_or_key: str | DatasetSpec, data_root: str | Path) -> str:
    """:func:`fingerprint` of a dataset below ``data_root`` (read once per process; BenchError when unreadable)."""
    spec = get_spec(spec_or_key)
    hit = _FINGERPRINTS.get((spec.key, str(_root_of(spec, data_root).resolve())))
    return hit or fingerprint(load_splits(spec, data_root))


def require_train_images(splits: Splits) -> None:
    """Every class needs at least one training image: a class without one would be missing from the trained
    label space (the linear probe could never predict it; prompt learners would train on fewer classes)."""
    have = {it.label for it in splits.train}
    missing = [i for i in range(splits.num_classes) if i not in have]
    if missing and splits.train:
        names = ", ".join(f"'{splits.classnames[i]}'" for i in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise BenchError(f"dataset {splits.spec.key}: {len(missing)} class(es) have no training image ({names}); "
                         f"every class needs at least one")


def _join(image_dir: str, rel: str) -> str:
    return posixpath.join(image_dir, rel) if image_dir else rel


def _contained(image_dir: str, rel: str, where: str) -> str:
    """``image_dir/rel`` if it stays inside the dataset root, else a one-line BenchError naming the entry.

    The check is on the path as written (absolute paths and ``..`` escaping the root are refused); symbolic links inside the dataset root are followed as the data's owner laid them out."""
    joined = _join(image_dir, rel)
    norm = posixpath.normpath(joined)
    if (not rel or rel.startswith("/") or "\0" in rel or posixpath.isabs(joined)
            or norm == ".." or norm.startswith("../") or norm == "."):
        raise BenchError(f"{where}: image path {rel!r} is not inside the dataset root")
    return joined


def _classnames_from(items: Iterable[Item], source) -> list[str]:
    """Class names indexed by label, from (label, classname) pairs (the reference uses train's pairs)."""
    names: dict[int, str] = {}
    for it in items:
        prev = names.setdefault(it.label, it.classname)
        if prev != it.classname:
            raise BenchError(f"{source}: label {it.label} has two class names '{prev}' and '{it.classname}'")
    if not names:
        return []
    if min(names) < 0:
        raise BenchError(f"{source}: negative label {min(names)}")
    gaps = [i for i in range(max(names) + 1) if i not in names]
    if gaps:
        raise BenchError(f"{source}: labels are not contiguous (no item has label {gaps[0]})")
    return [names[i] for i in range(len(names))]


def _load_split_json(spec: DatasetSpec, root: Path):
    f = _need(root / spec.split_file, spec, folder=False)
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"cannot read split file {f}: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise BenchError(f"split file {f}: expected an object with train/val/test lists")
    out = {}
    for s in SPLITS:
        entries = data.get(s) or []
        if not isinstance(entries, list):
            raise BenchError(f"split file {f}: {s!r} must be a list of [relative_path, int_label, classname] "
                             f"entries, not {type(entries).__name__} {entries!r:.40}")
        items = []
        for i, e in enumerate(entries):
            if (not isinstance(e, (list, tuple)) or len(e) != 3 or not isinstance(e[0], str)
                    or not isinstance(e[1], int) or isinstance(e[1], bool) or not isinstance(e[2], str)):
                raise BenchError(f"split file {f}: {s}[{i}] is not [relative_path, int_label, classname]: {e!r:.80}")
            items.append(Item(_contained(spec.image_dir, e[0], f"split file {f}: {s}[{i}]"), e[1], e[2]))
        out[s] = items
    if not any(out.values()):
        raise BenchError(f"split file {f}: train, val and test are all empty")
    classnames = _classnames_from(out["train"] + out["val"] + out["test"], f)
    return out["train"], out["val"], out["test"], classnames


def _listdir_sorted(folder: Path, dirs: bool) -> list[str]:
    """Non-hidden entries of a folder, sorted (the reference's listdir_nohidden, but always sorted)."""
    with os.scandir(folder) as it:
        names = [e.name for e in it if not e.name.startswith(".") and (e.is_dir() if dirs else not e.is_dir())]
    return sorted(names)


def _read_wnid_names(f: Path) -> dict[str, str]:
    """classnames.txt: one ``<wnid> <class name words...>`` per line, in file order."""
    names = {}
    for line in f.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split(" ")
        if parts[0]:
            names[parts[0]] = " ".join(parts[1:])
    if not names:
        raise BenchError(f"class-name file {f} is empty")
    return names


def _folder_items(base: Path, rel_base: str, folder: str, label: int, classname: str) -> list[Item]:
    rel = posixpath.join(rel_base, folder)
    return [Item(f"{rel}/{n}", label, classname) for n in _listdir_sorted(base / folder, dirs=False)]


def _load_imagenet(spec: DatasetSpec, root: Path):
    cn_file = _need(root / spec.classnames_file, spec, folder=False)
    names = _read_wnid_names(cn_file)
    train_dir = _need(root / spec.train_dir, spec, folder=True)
    test_dir = _need(root / spec.test_dir, spec, folder=True)
    wnids = _listdir_sorted(train_dir, dirs=True)  # label = index in the sorted train folders
    if not wnids:
        raise DataNotFound(f"dataset {spec.key} incomplete: no class folders in {train_dir}", train_dir)
    unknown = [w for w in wnids if w not in names]
    if unknown:
        raise BenchError(f"class folder {train_dir / unknown[0]} has no line in {cn_file}")
    label_of = {w: i for i, w in enumerate(wnids)}
    classnames = [names[w] for w in wnids]
    train = []
    for w in wnids:
        train += _folder_items(train_dir, spec.train_dir, w, label_of[w], names[w])
    test = []
    for w in _listdir_sorted(test_dir, dirs=True):
        if w not in label_of:
            raise BenchError(f"{test_dir / w} has no matching class folder in {train_dir}")
        test += _folder_items(test_dir, spec.test_dir, w, label_of[w], names[w])
    return train, test, test, classnames  # val = test (the reference passes val=test)


def _load_fgvc(spec: DatasetSpec, root: Path):
    vfile = _need(root / spec.variants_file, spec, folder=False)
    classnames = [ln.strip() for ln in vfile.read_text(encoding="utf-8").splitlines() if ln.strip()]
    label_of = {c: i for i, c in enumerate(classnames)}
    out = {}
    for s in SPLITS:
        f = _need(root / spec.split_files[s], spec, folder=False)
        items = []
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.strip().split(" ")
            if not parts[0]:
                continue
            cname = " ".join(parts[1:])
            if cname not in label_of:
                raise BenchError(f"{f} line {n}: variant '{cname}' is not in {vfile}")
            items.append(Item(_contained(spec.image_dir, parts[0] + ".jpg", f"{f} line {n}"), label_of[cname], cname))
        out[s] = items
    return out["train"], out["val"], out["test"], classnames


def _load_variant(spec: DatasetSpec, root: Path):
    cn_file = _need(root / spec.classnames_file, spec, folder=False)
    names = _read_wnid_names(cn_file)
    image_dir = _need(root / spec.image_dir, spec, folder=True)
    test, classnames = [], []
    if spec.folder_labels == "index":  # ImageNetV2: folder "i" = label i = i-th line of classnames.txt
        for label, name in enumerate(names.values()):
            _need(image_dir / str(label), spec, folder=True)
            test += _folder_items(image_dir, spec.image_dir, str(label), label, name)
            classnames.append(name)
    else:  # Sketch / A / R: sorted wnid folders get labels 0..n-1, names looked up by wnid
        wnids = _listdir_sorted(image_dir, dirs=True)
        if not wnids:
            raise DataNotFound(f"dataset {spec.key} incomplete: no class folders in {image_dir}", image_dir)
        for label, w in enumerate(wnids):
            if w not in names:
                raise BenchError(f"class folder {image_dir / w} has no line in {cn_file}")
            test += _folder_items(image_dir, spec.image_dir, w, label, names[w])
            classnames.append(names[w])
    return [], [], test, classnames


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


def format_check(rep: dict) -> str:
    """One line per dataset for `bench data check`."""
    return f"{rep['dataset']:<16} {rep['status']:<10} {rep['message'] or rep['expected']}"


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
