"""Reading a dataset's splits from its CoOp on-disk layout (docs/protocol.md §1, §10), and the data root.

``load_splits(spec, data_root)`` reads the dataset below ``data_root/spec.dir`` with one of four loaders:

- ``split_json``: CoOp's released ``split_zhou_<Name>.json`` (``{"train"|"val"|"test": [[rel, label,
  classname], ...]}``, paths relative to ``image_dir``). Missing or empty ``train``/``val`` lists are
  allowed (test-only variants, e.g. the miniature world's domain-shift sets).
- ``imagenet``: ``images/{train,val}/<wnid>/`` + ``classnames.txt``; label = index of the wnid in the
  SORTED list of train folders; test = the val folder and val = test. The reference lists the images of a
  folder with unsorted ``os.listdir``; this suite lists them sorted (portable; docs/protocol.md §10).
- ``fgvc_aircraft``: ``variants.txt`` + ``images_variant_{train,val,test}.txt`` (``imid variant name...``).
- ``imagenet_variant``: V2 (folders ``0..N-1`` = label, names in classnames.txt order) or Sketch/A/R
  (sorted wnid folders labelled ``0..n-1``, names looked up by wnid; files such as README.txt ignored).

``Item.path`` is always relative to the dataset root (``data_root/spec.dir``), with ``/`` separators.
``load_splits`` never stats image files (ImageNet has 1.3M). :func:`fingerprint` identifies what was read.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from bench.data.specs import SPLITS, DataNotFound, DatasetSpec, Item, get_spec
from bench.errors import BenchError


def resolve_data_root(given: str | Path | None = None, *, environ: bool = True,
                      required: bool = False) -> str | None:
    """The one data-root rule: ``given`` (``--data-root``, a config's ``data_root``), else $BENCH_DATA (unless
    ``environ`` is false), as an absolute resolved path (the form run configs record). None when there is none,
    or, when ``required``, a one-line BenchError."""
    value = given or (os.environ.get("BENCH_DATA") if environ else None)
    if not value:
        if required:
            raise BenchError("no data root: pass --data-root DIR (or set BENCH_DATA)")
        return None
    return str(Path(value).expanduser().resolve())


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


def check_fingerprints(planned: dict | None, data_root: str | Path) -> None:
    """Refuse (one-line BenchError) to run a config on data other than those it was planned with: ``planned`` is
    its ``data`` ({dataset: fingerprint}, :func:`bench.protocols.data_identity`; None in a config planned
    without a data root or by code before fingerprints: nothing to check). A queued SLURM task whose data
    changed since `bench run` planned it would otherwise store a result under the other data's identity."""
    for dataset, want in (planned or {}).items():
        have = data_fingerprint(dataset, data_root)
        if have != want:
            raise BenchError(f"dataset {dataset} under {data_root} is not the data this run was planned with "
                             f"(fingerprint {have}, planned {want}): run `bench run` again to plan it on these data")


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
