"""Dataset specs (``datasets/*.yaml``: data, not code), the image item and the names every loader shares.

A :class:`DatasetSpec` is read from ``datasets/<key>.yaml``. ``list_specs`` reads every YAML file there;
``get_spec`` finds one by key (or by its reference / display name).
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from bench import paths
from bench.errors import BenchError

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
