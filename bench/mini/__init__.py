"""The miniature world: a tiny CLIP pretrained on procedural image-caption pairs, and small downstream
datasets in CoOp's on-disk layout, so that the suite runs end to end on a laptop CPU with no downloads.

- ``bench.mini.render``: vectorised, seeded renderer of shapes (colour, shape, size, fill pattern,
  background, position, filled/outline/swatch style) and their captions.
- ``bench.mini.pretrain``: ``ensure_checkpoint() -> Path``: contrastive pretraining of the open_clip arch
  ``mini`` (bench/model_configs/mini.json) with open_clip's ``ClipLoss``; run once, cached at
  ``<cache_dir>/mini/<key>/mini_clip.pt`` (key = hash of every setting).
- ``bench.mini.build``: ``ensure_data(root=None) -> Path``: the mini datasets (specs ``datasets/mini_*.yaml``)
  written once under ``<cache_dir>/mini/data``.

The submodules are imported where used (not here), so ``python -m bench.mini.build`` / ``bench.mini.pretrain``
run without runpy's double-import warning.
"""
