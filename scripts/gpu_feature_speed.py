"""Images/s of feature extraction (decode + transform + encode into the feature cache), with and without
DataLoader workers, on a generated dataset of real JPEG files. Part of scripts/gpu-smoke.sh; runs on CPU too.

    python scripts/gpu_feature_speed.py [--images 1000] [--backbone ViT-B-16] [--device cuda] [--out speed.json]

Random backbone weights (nothing is downloaded): the speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=256, help="side of the generated JPEGs (px)")
    p.add_argument("--backbone", default="ViT-B-16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", default=None, help="comma-separated worker counts (default: 0, the cache's default, "
                                                    "and all CPUs this process may use)")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)

    from bench.model.backbone import create_backbone
    from bench.data import load_splits
    from bench.features import FeatureCache
    from bench.data.synth import make_dataset_tree

    tmp = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    n_classes = 10
    per = max(1, args.images // n_classes)
    t0 = time.time()
    make_dataset_tree("eurosat", tmp / "data", n_classes=n_classes, per_class=(per, 1, 1), image_size=args.image_size)
    splits = load_splits("eurosat", tmp / "data")
    paths = [it.path for it in splits.train]
    print(f"{len(paths)} JPEGs of {args.image_size}px generated in {time.time() - t0:.1f} s", flush=True)

    logging.disable(logging.WARNING)  # open_clip's "no pretrained weights loaded": random weights on purpose
    try:
        bb = create_backbone(args.backbone, None, device=args.device, precision=args.precision)
    finally:
        logging.disable(logging.NOTSET)
    default_workers = FeatureCache(bb, root=tmp / "probe").workers
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    if args.workers:
        counts = [int(w) for w in args.workers.split(",")]
    else:
        counts = sorted({0, default_workers, max(0, min(16, allowed - 1))})
    warm = FeatureCache(bb, root=tmp / "warm", batch_size=args.batch_size, workers=0)
    warm.get(splits.root, paths[: args.batch_size], "eval")  # CUDA context, kernels, cuDNN: not timed
    out = {"backbone": bb.identity.split("@")[0], "device": str(bb.device), "precision": bb.precision,
           "gpu": torch.cuda.get_device_name(torch.device(bb.device)) if bb.device.startswith("cuda") else None,
           "images": len(paths), "image_size": args.image_size, "batch_size": args.batch_size,
           "cpus_allowed": allowed, "cache_default_workers": default_workers, "runs": []}
    for transform in ("eval", "train"):
        for w in counts:
            cache = FeatureCache(bb, root=tmp / f"features-{transform}-{w}", batch_size=args.batch_size, workers=w)
            sync(bb.device)
            t0 = time.perf_counter()
            feats = cache.get(splits.root, paths, transform, 0)
            sync(bb.device)
            dt = time.perf_counter() - t0
            assert feats.shape[0] == len(paths) and cache.encoded == len(paths)
            run = {"transform": transform, "workers": w, "seconds": round(dt, 3),
                   "images_per_s": round(len(paths) / dt, 1)}
            out["runs"].append(run)
            print(f"feature extraction ({transform:5} transform), {w:2d} workers: {run['images_per_s']:8.1f} images/s "
                  f"({dt:.2f} s for {len(paths)} images)", flush=True)
    base = {r["transform"]: r["images_per_s"] for r in out["runs"] if r["workers"] == 0}
    best = max(out["runs"], key=lambda r: r["images_per_s"])
    speedup = best["images_per_s"] / base[best["transform"]]
    print(f"fastest: {best['workers']} workers ({best['transform']}), {speedup:.1f}x "
          f"the 0-worker speed; {bb.device} {out['gpu'] or ''} {bb.precision}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
