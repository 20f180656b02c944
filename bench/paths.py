"""Where things live: the repository, the cache, the results store."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASETS_DIR = REPO_ROOT / "datasets"


def repo_root() -> Path:
    return REPO_ROOT


def cache_dir() -> Path:
    """Feature caches, few-shot samples, miniature-world data and checkpoints ($BENCH_CACHE or <repo>/cache)."""
    return Path(os.environ.get("BENCH_CACHE", REPO_ROOT / "cache")).expanduser()


def results_dir() -> Path:
    """The results store: one JSON per run ($BENCH_RESULTS or <repo>/results/runs)."""
    return Path(os.environ.get("BENCH_RESULTS", REPO_ROOT / "results" / "runs")).expanduser()
