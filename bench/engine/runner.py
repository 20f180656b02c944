"""Executing one run: backbone + data + few-shot sample + cached features -> method.fit -> logits -> metrics -> store.

Knows nothing method-specific and nothing about SLURM: the launcher calls :func:`execute` for each config.
"""

from __future__ import annotations

import os
import platform
import random
import resource
import socket
import subprocess
import time
import traceback
from dataclasses import dataclass

import numpy as np
import torch

from bench import log
from bench.errors import BenchError
from bench.features import FeatureCache
from bench.method import Checkpointer, Context, TrainData, Unsupported
from bench.paths import in_checkout, repo_root
from bench.store import Store, config_hash, eval_name
from bench.engine.loop import deterministic_cuda

_BACKBONES: dict = {}
_CACHES: dict = {}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def get_backbone(spec: dict, precision: str = "auto", device: str | None = None):
    """One backbone (and one feature cache) per process and configuration."""
    from bench.model.backbone import create_backbone

    device = device or default_device()
    key = (spec["arch"], spec["pretrained"], precision, device)
    if key not in _BACKBONES:
        log.info(f"loading backbone {spec['arch']} ({spec['pretrained']}) on {device}")
        _BACKBONES[key] = create_backbone(spec["arch"], spec["pretrained"], device=device, precision=precision)
        _CACHES[key] = FeatureCache(_BACKBONES[key])
    return _BACKBONES[key], _CACHES[key]


def set_seed(seed: int | None) -> None:
    seed = int(seed or 0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def metrics(logits: torch.Tensor, labels: torch.Tensor, classnames: list[str]) -> dict:
    """Top-1 (micro) accuracy, per-class accuracy and macro-F1 (Dassl's: over the labels present), in percent."""
    pred = logits.argmax(dim=1).cpu().numpy()
    y = labels.cpu().numpy()
    per_class, f1 = {}, []
    for c in np.unique(y):
        mask = y == c
        per_class[classnames[int(c)]] = float(100.0 * (pred[mask] == c).mean())
        tp = int((pred[mask] == c).sum())  # F1 = 2TP / (2TP + FP + FN), 0 when undefined (as scikit-learn)
        denom = 2 * tp + int((pred[~mask] == c).sum()) + int(mask.sum()) - tp
        f1.append(2 * tp / denom if denom else 0.0)
    return {
        "top1": float(100.0 * (pred == y).mean()) if len(y) else float("nan"),
        "per_class": per_class,
        "macro_f1": float(100.0 * np.mean(f1)) if len(y) else float("nan"),
        "n_test": int(len(y)),
        "n_classes": len(classnames),
    }


def environment(device: str | None = None) -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "torchvision", "open_clip_torch", "numpy", "scikit-learn", "submitit", "clip-prompt-bench"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    try:
        if not in_checkout():  # an installed wheel: no commit of ours (and never the user's own repository's)
            raise OSError
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_root(),
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    device = str(device or default_device())
    if device.startswith("cuda") and torch.cuda.is_available():
        device = torch.cuda.get_device_name(torch.device(device))  # the run's device, not device 0
    else:
        device = f"cpu ({platform.processor() or platform.machine()})"
    return {
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": commit,
        "git_dirty": dirty,
        "device": device,
        "torch_threads": torch.get_num_threads(),  # CPU numbers depend on it in their last bits (bench.launch.threads)
        "hostname": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }


def _peak_memory_mb(device: str) -> dict:
    out = {"host_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.startswith("cuda"):
        out["gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    return out


def _split_for(data_root, dataset: str, classes: str):
    """(dataset root, items, classnames) of one test split restricted to all/base/new classes."""
    from bench.data import load_splits, subsample_classes

    splits = load_splits(dataset, data_root)
    if classes == "all":
        return splits.root, splits.test, splits.classnames
    sub = subsample_classes(splits.train, splits.val, splits.test, classes)
    return splits.root, sub.test, sub.classnames


def require_test_images(data_root, dataset: str, classes: str = "all") -> None:
    """One line when the test split (restricted to all/base/new classes) holds no image: nothing to evaluate on
    (an accuracy over zero images would be stored as NaN). Used by the runner and by `bench run`'s preflight."""
    if not _split_for(data_root, dataset, classes)[1]:
        which = "" if classes == "all" else f" of the {classes} classes"
        raise BenchError(f"dataset {dataset} under {data_root}: its split lists no test images{which} (nothing to "
                         f"evaluate on; `bench data check --datasets {dataset}` shows the split sizes)")


def _on_device(view, dev):
    return lambda v: view(v).to(dev)


def build_train_data(config: dict, backbone, cache: FeatureCache, data_root):
    """Few-shot sample (the suite's shared, reference-identical picks) -> class subsample -> cached features."""
    from bench.data import fewshot_sample, load_splits, record_sample, subsample_classes

    from bench.data import require_train_images

    tr = config["train"]
    splits = load_splits(tr["dataset"], data_root)
    require_train_images(splits)
    sample = fewshot_sample(splits, tr["shots"], tr["seed"])
    record_sample(splits, tr["shots"], tr["seed"])  # the record users can diff against the reference's picks
    train, val, _, names = subsample_classes(sample["train"], sample["val"], [], tr["classes"])
    root = splits.root
    paths = [it.path for it in train]
    dev = backbone.device  # every tensor of TrainData lives on the run's device (as the features given to logits)
    labels = torch.tensor([it.label for it in train], dtype=torch.long, device=dev)
    n_views = int(config.get("views") or 1)
    data = TrainData(
        labels=labels,
        # keyed by (augmentation, seed, image, view): methods declaring the same augmentation share views
        view=_on_device(cache.views(root, paths, seed=tr["seed"], n_views=n_views,
                                    augmentation=config.get("augmentation")), dev),
        n_views=n_views,
        eval_features=cache.get(root, paths, "eval").to(dev),
        val_features=cache.get(root, [it.path for it in val], "eval").to(dev) if val else None,
        val_labels=torch.tensor([it.label for it in val], dtype=torch.long, device=dev) if val else None,
    )
    return data, names


_WARNED_SHOTS: set = set()


def images_used(labels: torch.Tensor, classnames: list[str], train: dict) -> dict:
    """The training images actually used per class (a class with fewer than K images uses all it has, as the
    reference does); warns once per (dataset, shots) when that is fewer than the requested shots."""
    counts = torch.bincount(labels.cpu(), minlength=len(classnames)).tolist()
    short = [c for c, n in zip(classnames, counts) if n < train["shots"]]
    if short and (train["dataset"], train["shots"]) not in _WARNED_SHOTS:
        _WARNED_SHOTS.add((train["dataset"], train["shots"]))
        log.info(f"warning: {train['dataset']}: {len(short)} of {len(classnames)} classes have fewer than "
                 f"{train['shots']} training images (min {min(counts)}); all of theirs are used and the result "
                 f"records the number per class")
    return {"shots_requested": train["shots"], "min_per_class": min(counts) if counts else 0,
            "max_per_class": max(counts) if counts else 0, "per_class": dict(zip(classnames, counts))}


def label_space(config: dict, data_root) -> list[str]:
    from bench.data import load_splits, subsample_classes

    tr = config["train"]
    splits = load_splits(tr["dataset"], data_root)
    if tr["classes"] == "all":
        return splits.classnames
    return subsample_classes(splits.train, splits.val, splits.test, tr["classes"]).classnames


@dataclass
class TrainedRun:
    """A method trained for one config, ready to score test splits (:func:`train_run`, :func:`evaluate`)."""

    cls: type
    method: object
    ctx: Context
    backbone: object
    cache: FeatureCache
    images: bool                     # the method scores images (trains_on = "images"), else cached features
    stats: dict
    train_s: float
    train_images: dict | None

    def describe(self) -> dict:
        return getattr(self.method, "template_info", lambda: {"template": self.ctx.template})()


def train_run(config: dict, data_root, checkpointer: Checkpointer | None = None, checkpoint_every: int = 0,
              device: str | None = None) -> TrainedRun:
    """Build the config's method on its backbone and few-shot data and fit it (nothing of any test split is read:
    the method sees test images only in :func:`evaluate`)."""
    from bench.data import get_spec
    from bench.registry import get_method

    cls = get_method(config["method"])
    backbone, cache = get_backbone(config["backbone"], config.get("precision", "auto"), device)
    if backbone.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(backbone.device))
    tr = config["train"]
    spec = get_spec(tr["dataset"])
    set_seed(tr["seed"])
    train_images = None
    images = getattr(cls, "trains_on", "features") == "images"
    if cls.needs_training and images:
        from bench.engine.imagestream import build_image_train_data

        train, classnames = build_image_train_data(config, backbone, data_root)
        train_images = images_used(train.labels, classnames, tr)
    elif cls.needs_training:
        train, classnames = build_train_data(config, backbone, cache, data_root)
        train_images = images_used(train.labels, classnames, tr)
    else:
        train, classnames = None, label_space(config, data_root)
    ctx = Context(backbone=backbone, classnames=classnames, template=spec.template,
                  dataset=tr["dataset"], hparams=dict(config["hparams"]),
                  seed=tr["seed"], protocol=config["protocol"], checkpointer=checkpointer or Checkpointer(),
                  checkpoint_every=checkpoint_every, log=log.info,
                  templates={d: get_spec(d).template for d in [tr["dataset"], *(e["dataset"] for e in config["evals"])]})
    method = cls(ctx)
    set_seed(tr["seed"])
    t_fit = time.time()
    stats = method.fit(train) if train is not None else {}
    return TrainedRun(cls, method, ctx, backbone, cache, images, stats, time.time() - t_fit, train_images)


def evaluate(run: TrainedRun, root, items: list, classnames: list[str]) -> torch.Tensor:
    """(len(items), len(classnames)) logits of a test split's items (test transform) scored by the trained method.

    The method gets the images (or their cached features) and the class names, never the items' labels; called
    inside ``run.ctx.evaluating(dataset)`` by the runner. ``Unsupported`` passes through."""
    with torch.no_grad():
        if run.images:  # the method sees test images (test transform), streamed in batches
            from bench.engine.imagestream import stream_logits

            return stream_logits(run.method, run.backbone, root, [it.path for it in items], classnames)
        feats = run.cache.get(root, [it.path for it in items], "eval")
        return run.method.logits(feats.to(run.backbone.device), classnames)


def execute(config: dict, store: Store | None = None, checkpointer: Checkpointer | None = None,
            checkpoint_every: int = 0, device: str | None = None) -> dict:
    """Run one config end to end and write its result; returns the result (or the stored one if complete)."""
    from bench.data import check_fingerprints, resolve_data_root
    from bench.registry import code_version, get_method

    store = store or Store()
    done = store.load(config)
    if done is not None:
        return done
    data_root = resolve_data_root(config.get("data_root"), environ=False, required=True)
    check_fingerprints(config.get("data"), data_root)
    cls = get_method(config["method"])
    if config.get("code", code_version(cls)) != code_version(cls):  # e.g. a queued SLURM task after an edit
        raise BenchError(f"the code of method {config['method']} changed since this run was planned: run "
                         f"`bench run` again to plan it with the current code")
    for ev in config["evals"]:  # an evaluation over no images has no accuracy: refuse before any work
        require_test_images(data_root, ev["dataset"], ev["classes"])
    t0 = time.time()
    determinism = deterministic_cuda() if str(device or default_device()).startswith("cuda") else None
    run = train_run(config, data_root, checkpointer or Checkpointer(), checkpoint_every, device)
    backbone, ctx, tr = run.backbone, run.ctx, config["train"]
    evaluations = {}
    t_eval = time.time()
    for ev in config["evals"]:
        name = eval_name(ev)
        root, items, names = _split_for(data_root, ev["dataset"], ev["classes"])
        labels = torch.tensor([it.label for it in items], dtype=torch.long)
        with ctx.evaluating(ev["dataset"]):  # hand-crafted prompts: the evaluated dataset's template
            used = run.describe()
            try:
                logits = evaluate(run, root, items, names)
            except Unsupported as e:
                evaluations[name] = {"top1": None, "unsupported": str(e), **ev, "templates": used}
                continue
        evaluations[name] = {**metrics(logits, labels, names), **ev, "templates": used}
        log.info(f"{config['label']} {tr['dataset']} shots={tr['shots']} seed={tr['seed']} -> {name}: "
                 f"top1 {evaluations[name]['top1']:.2f}%")
    stats, train_time, train_images = run.stats, run.train_s, run.train_images
    if run.cls.transductive:  # tables mark it (table_note)
        stats = {**stats, "table_note": "; ".join(filter(None, [
            "transductive: uses the unlabelled test images at evaluation", stats.get("table_note")]))}
    result = {
        "status": "complete",
        "hash": config_hash(config),
        "config": config,
        "metrics": evaluations,
        "train_stats": stats,
        "train_images": train_images,
        "templates": run.describe(),  # as trained; each evaluation records the templates that scored it
        "backbone_resolved": {"arch": backbone.arch, "identity": backbone.identity, "precision": backbone.precision,
                              "device": backbone.device, "deterministic": determinism},
        "time": {"total_s": time.time() - t0, "train_s": train_time, "eval_s": time.time() - t_eval},
        "memory": _peak_memory_mb(backbone.device),
        "environment": environment(backbone.device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    store.write(result)
    (checkpointer or Checkpointer()).clear()
    return result


def execute_safely(config: dict, store: Store, **kw) -> dict | None:
    """Like :func:`execute`, but a failing run is recorded (never losing other results) and returns None."""
    from bench.fileio import DiskFull
    from bench.store import StoreError

    try:
        return execute(config, store, **kw)
    except (DiskFull, StoreError):
        raise  # nothing more can be written: the grid stops with one line, results so far kept
    except BenchError as e:
        store.write_failure(config, str(e))
        log.info(f"FAILED {config['label']} {config['train']['dataset']}: {e}")
    except Exception as e:  # noqa: BLE001 - recorded with its traceback, the grid goes on
        store.write_failure(config, f"{type(e).__name__}: {e}", {"traceback": traceback.format_exc()})
        log.info(f"FAILED {config['label']} {config['train']['dataset']}: {type(e).__name__}: {e}")
    return None
