"""Downstream datasets of the miniature world, written once in CoOp's split_json layout.

``ensure_data(root=None)`` writes, under ``<cache_dir>/mini/data`` (or ``root``)::

    <root>/<dir>/images/<class_folder>/<n>.jpg        real JPEGs (IMAGE_SIZE px)
    <root>/<dir>/split_zhou_<Name>.json              {"train": [[relpath, label, classname], ...], "val": ..., "test": ...}

for every dataset in ``DATASETS`` (specs: ``datasets/<key>.yaml``, group ``mini`` / ``mini_variant``), and a
marker file ``.complete`` (holding the data key) last; a root whose marker matches is left alone. They
are small: a few seconds. ``render_split(key)`` gives the same images in memory (no JPEG).
``python -m bench.mini.build [--root DIR]`` does the same from a shell.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench import log
from bench.fileio import atomic_open, file_lock
from bench.paths import cache_dir

from . import render as R

MARKER = ".complete"
# Images are written at 128 px and shown to the 32-px model through its eval transform (resize + centre
# crop), as real photos are larger than CLIP's input: CoOp's training crops (down to 8 % of the area) then
# zoom into real detail instead of blowing up a few pixels. Measured on the mini CLIP: with 32-px files
# those blurry crops pulled 16-shot CoOp on MiniTextures from 42.5 % (no augmentation) to 31.9 %.
IMAGE_SIZE = 128
RENDER_CHUNK = 256
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class MiniDataset:
    key: str                 # = datasets/<key>.yaml
    name: str                # reference-style name (split_zhou_<name>.json)
    display_name: str
    template: str            # hand-crafted zero-shot prompt
    classes: tuple           # ((folder, classname, {attr: value name}), ...) in label order
    dist: dict               # distribution of the free attributes (see render.sample_attributes)
    per_class: tuple         # images per class (train, val, test)
    seed: int
    about: str
    variant_of: str | None = None
    domain_shift_targets: tuple = ()

    @property
    def dir(self) -> str:
        return self.key

    @property
    def split_file(self) -> str:
        return f"split_zhou_{self.name}.json"

    @property
    def classnames(self) -> list[str]:
        return [c[1] for c in self.classes]


def _one(attr: str, values: list[str]) -> tuple:
    return tuple((v, v, {attr: v}) for v in values)


# Every class is defined by what fills the frame (colour, pattern), never by an outline: CoOp's reference
# augmentation (random resized crops down to 8 % of the area, flips) keeps the class of every crop, as it
# does for most real photos (a crop of a cat is still a cat). Shapes are pretraining content only: a crop
# cuts a star into a triangle, so a dataset of shapes would punish the reference recipe, not the method.
_SWATCH = {"style": ["swatch"], "background": ["dark", "light", "gray"]}
FABRIC_COLORS = ["red", "orange", "yellow", "green", "blue", "purple"]
FABRIC_PATTERNS = ["striped", "checkered", "dotted", "zigzag"]
_FABRIC_CLASSES = tuple((f"{c}_{p}", f"{c} {p}", {"color": c, "pattern": p})
                        for c in FABRIC_COLORS for p in FABRIC_PATTERNS)
_FABRIC_TEMPLATE = "a photo of a {} fabric."
_OBJECT_DIST = {"style": ["filled"], "size": ["large"], "background": R.PRETRAIN_BACKGROUNDS}

DATASETS: dict[str, MiniDataset] = {}
for _d in [
    MiniDataset(
        key="mini_patterns", name="MiniPatterns", display_name="MiniPatterns",
        # not the captions' own form "a {} pattern." (zero-shot 87.8 %, above the ~74 % that CoOp's training on
        # zoomed crops reaches here) but a phrasing whose zero-shot accuracy (72 %) sits near what learned context
        # reaches, as a generic dataset's does in the CoOp paper
        template="a close-up of a {} pattern.",
        classes=_one("pattern", R.PATTERNS[1:]),
        dist=_SWATCH,
        per_class=(24, 8, 40), seed=102,
        about="generic: full-frame patterns at random scales (8 classes) named with the common words "
              "(striped, checkered, dotted, ...) of the captions"),
    MiniDataset(
        key="mini_fabrics", name="MiniFabrics", display_name="MiniFabrics",
        template=_FABRIC_TEMPLATE,
        classes=_FABRIC_CLASSES, dist={**_SWATCH, "pattern_scale": (0.6, 3.0)},
        per_class=(24, 8, 40), seed=103,
        about="fine-grained colour x pattern (24 classes, common words; base = first 12 = red/orange/yellow, "
              "new = the rest); the domain-shift source",
        domain_shift_targets=("mini_fabrics_objects", "mini_fabrics_zoomed", "mini_fabrics_patchwork")),
    MiniDataset(
        key="mini_textures", name="MiniTextures", display_name="MiniTextures",
        template="{} texture.",
        classes=tuple((R.SPECIALIST[p], R.SPECIALIST[p], {"pattern": p}) for p in R.PATTERNS[1:]),
        dist=_SWATCH,
        per_class=(24, 8, 40), seed=104,
        about="specialised, like DTD: the MiniPatterns images named with the specialists' words (banded, tartan, "
              "polka, ...) that only 0.3% of the pattern captions use: a weak hand-crafted prompt, where a "
              "learned context gains most"),
    # domain-shifted, test-only copies of mini_fabrics (same classes and template)
    MiniDataset(
        key="mini_fabrics_objects", name="MiniFabricsObjects", display_name="MiniFabrics-Objects",
        template=_FABRIC_TEMPLATE, classes=_FABRIC_CLASSES, dist=_OBJECT_DIST,
        per_class=(0, 0, 40), seed=105, variant_of="mini_fabrics",
        about="the fabrics cut into large shapes on plain backgrounds"),
    MiniDataset(
        key="mini_fabrics_zoomed", name="MiniFabricsZoomed", display_name="MiniFabrics-Zoomed",
        template=_FABRIC_TEMPLATE, classes=_FABRIC_CLASSES, dist={**_SWATCH, "pattern_scale": (3.0, 6.0)},
        per_class=(0, 0, 40), seed=106, variant_of="mini_fabrics",
        about="the fabrics magnified 3-6x (pretraining: 1-3x)"),
    MiniDataset(
        key="mini_fabrics_patchwork", name="MiniFabricsPatchwork", display_name="MiniFabrics-Patchwork",
        template=_FABRIC_TEMPLATE, classes=_FABRIC_CLASSES, dist={**_OBJECT_DIST, "background": ["patchwork"]},
        per_class=(0, 0, 40), seed=108, variant_of="mini_fabrics",
        about="the fabric shapes on a cluttered background of random coloured blocks (never seen in pretraining)"),
]:
    DATASETS[_d.key] = _d


def data_key() -> str:
    """Hash of everything that determines the written data (renderer version + dataset definitions)."""
    blob = json.dumps({"renderer": R.VERSION, "jpeg": [95, 0], "image_size": IMAGE_SIZE,
                       "datasets": {k: repr(d) for k, d in sorted(DATASETS.items())}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def render_split(key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images uint8 (n, IMAGE_SIZE, IMAGE_SIZE, 3), labels (n,))} for one dataset, deterministic; classes in label
    order within each split."""
    d = DATASETS[key]
    rng = np.random.default_rng(d.seed)
    out = {}
    for si, split in enumerate(SPLIT_NAMES):
        per = d.per_class[si]
        labels = np.repeat(np.arange(len(d.classes)), per)
        fixed: dict[str, np.ndarray] = {}
        for attr in {a for c in d.classes for a in c[2]}:
            vocab = R.VOCAB[attr]
            fixed[attr] = np.array([vocab.index(d.classes[y][2][attr]) for y in labels], dtype=np.int64)
        attrs = R.sample_attributes(rng, len(labels), image_size=IMAGE_SIZE, **{**d.dist, **fixed})
        images = np.zeros((len(labels), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        for i in range(0, len(labels), RENDER_CHUNK):  # bounded memory; the same rng stream in order
            part = {k: v[i:i + RENDER_CHUNK] for k, v in attrs.items()}
            images[i:i + RENDER_CHUNK] = R.render(part, rng, image_size=IMAGE_SIZE, supersample=1)
        out[split] = (images, labels)
    return out


def write_dataset(key: str, root: Path) -> dict:
    """Write one dataset's JPEGs and split JSON under root/<dir>; returns the split sizes."""
    d = DATASETS[key]
    base = root / d.dir
    if base.exists():
        shutil.rmtree(base)
    img_dir = base / "images"
    for folder, _, _ in d.classes:
        (img_dir / folder).mkdir(parents=True, exist_ok=True)
    counters = [0] * len(d.classes)
    split_json: dict[str, list] = {}
    for split, (images, labels) in render_split(key).items():
        entries = []
        for img, y in zip(images, labels):
            folder, classname, _ = d.classes[y]
            rel = f"{folder}/{counters[y]:04d}.jpg"
            counters[y] += 1
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95, subsampling=0)
            (img_dir / rel).write_bytes(buf.getvalue())
            entries.append([rel, int(y), classname])
        split_json[split] = entries
    (base / d.split_file).write_text(json.dumps(split_json) + "\n")
    return {s: len(v) for s, v in split_json.items()}


def ensure_data(root: Path | str | None = None) -> Path:
    """The data root holding every mini dataset (written once; skipped when its complete marker matches)."""
    root = Path(root) if root is not None else cache_dir() / "mini" / "data"
    key = data_key()
    marker = root / MARKER
    with file_lock(marker):  # concurrent commands must not rewrite the folders under each other
        if marker.is_file() and marker.read_text().strip() == key:
            log.info(f"mini datasets: found complete (key={key}) at {root}")
            return root
        t0 = time.time()
        marker.unlink(missing_ok=True)
        for k in DATASETS:
            sizes = write_dataset(k, root)
            log.info(f"mini datasets: wrote {k} {sizes}")
        with atomic_open(marker) as fh:
            fh.write((key + "\n").encode())
    log.info(f"mini datasets: {len(DATASETS)} written in {time.time() - t0:.1f}s (key={key}) at {root}")
    return root


def spec_yaml(key: str, order: int) -> str:
    """The text of ``datasets/<key>.yaml`` for a mini dataset (same schema as the real specs)."""
    d = DATASETS[key]
    n = len(d.classes)
    sizes = {s: n * k for s, k in zip(SPLIT_NAMES, d.per_class)}
    q = lambda t: json.dumps(t)  # noqa: E731  (a JSON string is a valid YAML scalar)
    lines = [
        f"# Miniature world (bench/mini): {d.about}.",
        "# Written by `python -m bench.mini.build` under <cache>/mini/data (generated from bench/mini/build.py:",
        "# edit DATASETS there and regenerate with `python -m bench.mini.build --write-specs`).",
        f"key: {d.key}",
        f"name: {d.name}",
        f"display_name: {d.display_name}",
        f"order: {order}",
        f"group: {'mini_variant' if d.variant_of else 'mini'}",
    ]
    if d.variant_of:
        lines.append(f"variant_of: {d.variant_of}")
    lines += [
        f"dir: {d.dir}",
        "loader: split_json",
        "image_dir: images",
        f"split_file: {d.split_file}",
        f"template: {q(d.template)}",
        f"num_classes: {n}",
        f"sizes: {{train: {sizes['train']}, val: {sizes['val']}, test: {sizes['test']}}}",
        f"has_val: {'false' if d.variant_of else 'true'}",
        f"domain_shift_targets: [{', '.join(d.domain_shift_targets)}]",
    ]
    return "\n".join(lines) + "\n"


def write_specs(specs_dir: Path | None = None) -> list[Path]:
    from bench.paths import DATASETS_DIR

    specs_dir = Path(specs_dir) if specs_dir else DATASETS_DIR
    out = []
    for i, key in enumerate(DATASETS):
        f = specs_dir / f"{key}.yaml"
        f.write_text(spec_yaml(key, order=100 + i))
        out.append(f)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.mini.build", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="data root (default: <cache>/mini/data)")
    ap.add_argument("--write-specs", action="store_true", help="(re)write datasets/mini_*.yaml from DATASETS")
    a = ap.parse_args(argv)
    if a.write_specs:
        for f in write_specs():
            print(f)
        return
    print(ensure_data(a.root))


if __name__ == "__main__":
    main()
