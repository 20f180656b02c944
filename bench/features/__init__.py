"""Cached image features of the frozen image encoder, shared by every process that uses one cache folder.

Key. A feature is stored under everything that could change its value, spelled the same in every process:

    <cache>/features/<backbone identity>/<precision>-<device type>-torch<version>/<transform>/<dataset root>/<bank>

- backbone identity: architecture + weights (open_clip tag, sha256 of the checkpoint file, or of random weights);
- numerics: the resolved precision (fp32, amp, bf16, fp16), the device type (``cpu``, or ``cuda-<GPU model>``)
  and the torch version: a bf16 GPU run and an fp32 CPU run never share a bank;
- transform: its parameters written out explicitly (:func:`describe_transform`: class names, sizes, scales,
  interpolation, mean/std, named functions; never ``repr`` with object addresses) + torchvision/Pillow versions;
- bank: ``eval``, or ``seed<S>-view<V>`` for augmented training view V of a run with seed S;
- within a bank each row is keyed by the image's path relative to its dataset root, its size and mtime.

Augmentation. View V of an image in a run with seed S is ``transform(image)`` with torch's RNG seeded by
:func:`view_seed` (S, relative path, V) -- see :func:`augment`. Two seeds of a run see different crops of an image,
two feature-cache methods of one seed the same crops (a paired comparison), in any process, cached or not.
Image-side methods (:mod:`bench.engine.imagestream`) do not read these views: their crops are drawn per epoch
from :func:`~bench.engine.imagestream.augmentation_seed` (S, relative path, epoch), the same for every image-side
method of one seed but not the crops the cache encodes. Both decode through :class:`bench.data.images.ImageFiles`.

Cold path. Missing features are computed in one pipeline per request: DataLoader workers (as many as the CPUs
this process may use, ``os.sched_getaffinity``) decode each image ONCE and draw all its missing views, the main
process encodes them in batches while the workers prepare the next, and each bank is written once (a segment
per view; larger than ``flush_mb`` only in chunks). :class:`TrainViews` fills all views of a training set on its
first miss, so a method that never reads views (linear probe) encodes none.

Storage and concurrency (no file locks needed; safe on NFS/Lustre where ``flock`` does not lock across nodes):
a bank is a folder of immutable segment files, each written to a temporary file and renamed into place (a torn
read is impossible) and holding a sha256 checksum of its keys and features, verified on load (a corrupt, zeroed
or non-finite segment is deleted and recomputed). Concurrent writers add segments; duplicates are harmless.
Before encoding, a process claims the missing set (:mod:`bench.claims`, the results store's protocol too); another
process needing the same set waits for it instead of encoding it twice (an abandoned claim is taken over). Temporary files of killed writers older than ``STALE_TMP_S`` are removed.

Memory. Banks read in this process are kept in an LRU store bounded by ``memory_mb`` (default 2048, or
``$BENCH_FEATURE_MEMORY_MB``); evicted banks are read back from disk when needed again.
"""


from bench.features.cache import FeatureCache, TrainViews
from bench.features.decode import ImageList
from bench.features.keys import (FORMAT, augment, default_workers, describe_transform, numerics_key, transform_key,
                                 view_seed)

__all__ = ["FORMAT", "FeatureCache", "ImageList", "TrainViews", "augment", "default_workers", "describe_transform",
           "numerics_key", "transform_key", "view_seed"]
