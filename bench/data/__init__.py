"""Datasets: specs (``datasets/*.yaml``), CoOp on-disk layouts, class names, few-shot samples, base/new.

Everything here follows docs/protocol.md §1-§3 (and §10 for the deliberate differences). The modules:

* :mod:`bench.data.specs` - ``DatasetSpec`` (``datasets/<key>.yaml``), ``list_specs``, ``get_spec``, ``Item``.
* :mod:`bench.data.loaders` - ``load_splits`` (four on-disk layouts), ``Splits``, ``fingerprint`` (what a run's
  identity records of its data), ``resolve_data_root`` (the one data-root rule).
* :mod:`bench.data.check` - ``check_dataset`` (`bench data check`; stats files, never raises).
* :mod:`bench.data.sample` - few-shot samples and their records, ``subsample_classes`` (base/new).
* :mod:`bench.data.synth` - synthetic CoOp-layout trees to try the suite on.
"""

from bench.data.check import check_dataset
from bench.data.loaders import (Splits, check_fingerprints, data_fingerprint, fingerprint, load_splits,
                                require_train_images, resolve_data_root)
from bench.data.sample import (ClassSubset, fewshot_sample, get_sample, read_sample, record_sample, sample_file,
                               subsample_classes, write_sample)
from bench.data.specs import (GROUPS, LOADERS, SPLITS, SUBSAMPLE, SYNTHETIC_MARKER, DataNotFound, DatasetSpec, Item,
                              class_names_for_prompt, get_spec, list_specs)

__all__ = [
    "GROUPS", "LOADERS", "SPLITS", "SUBSAMPLE", "SYNTHETIC_MARKER", "ClassSubset", "DataNotFound", "DatasetSpec",
    "Item", "Splits", "check_dataset", "check_fingerprints", "class_names_for_prompt", "data_fingerprint",
    "fewshot_sample", "fingerprint", "get_sample", "get_spec", "list_specs", "load_splits", "read_sample", "record_sample",
    "require_train_images", "resolve_data_root", "sample_file", "subsample_classes", "write_sample",
]
