"""Where things live: the shipped data (dataset specs, published numbers, SLURM profiles), the cache, the results.

Shipped data is read from the checkout's folders (``datasets/``, ``results/reference/``, ``slurm/``) when run from
a source checkout, and from the package (``bench/_data/<name>``, placed there by the wheel build, see
pyproject.toml) when installed. ``datasets/`` is never an importable package: it would shadow Hugging Face's.

Writable locations, first match wins:

* cache (features, few-shot samples, the miniature world): ``$BENCH_CACHE``; ``<checkout>/cache`` in a checkout;
  else the per-user cache folder ``$XDG_CACHE_HOME/clip-prompt-bench`` (``~/.cache/clip-prompt-bench``).
* results store: ``$BENCH_RESULTS``; ``<checkout>/results/runs``; else
  ``$XDG_DATA_HOME/clip-prompt-bench/runs`` (``~/.local/share/clip-prompt-bench/runs``).
* figures: ``<checkout>/results/figures``; else ``$XDG_DATA_HOME/clip-prompt-bench/figures``.
"""

import os
import sys
from importlib import resources
from pathlib import Path

APP = "clip-prompt-bench"
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
# Shipped data: folder in a checkout -> folder inside the package of an installed wheel.
_CHECKOUT_DATA = {"datasets": "datasets", "reference": "results/reference", "slurm": "slurm"}


def repo_root() -> Path:
    return REPO_ROOT


def in_checkout() -> bool:
    """Whether bench runs from a source checkout (editable install or PYTHONPATH), not from an installed wheel."""
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "datasets").is_dir()


def resource_dir(name: str) -> Path:
    """A folder of shipped data: 'datasets' (specs), 'reference' (published numbers), 'slurm' (profiles)."""
    if name not in _CHECKOUT_DATA:
        raise KeyError(name)
    packaged = Path(str(resources.files("bench").joinpath("_data", name)))
    if packaged.is_dir():
        return packaged
    return REPO_ROOT / _CHECKOUT_DATA[name]


def _user_dir(kind: str) -> Path:
    """Per-user folders without a dependency: XDG on Linux, ~/Library on macOS, %LOCALAPPDATA% on Windows."""
    home = Path.home()
    if sys.platform == "darwin":
        base = home / "Library" / ("Caches" if kind == "cache" else "Application Support")
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return base / APP / kind
    else:
        var, default = ("XDG_CACHE_HOME", ".cache") if kind == "cache" else ("XDG_DATA_HOME", ".local/share")
        base = Path(os.environ.get(var) or home / default)
    return base / APP


def cache_dir() -> Path:
    """Feature caches, few-shot samples, miniature-world data and checkpoints (see the module docstring)."""
    if os.environ.get("BENCH_CACHE"):
        return Path(os.environ["BENCH_CACHE"]).expanduser()
    return REPO_ROOT / "cache" if in_checkout() else _user_dir("cache")


def results_dir() -> Path:
    """The results store: one JSON per run (see the module docstring)."""
    if os.environ.get("BENCH_RESULTS"):
        return Path(os.environ["BENCH_RESULTS"]).expanduser()
    return REPO_ROOT / "results" / "runs" if in_checkout() else _user_dir("data") / "runs"


def figures_dir() -> Path:
    """Where `bench plot` writes figures by default."""
    return REPO_ROOT / "results" / "figures" if in_checkout() else _user_dir("data") / "figures"


DATASETS_DIR = resource_dir("datasets")
