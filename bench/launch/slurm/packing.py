"""Packing runs into array tasks: short runs several per task, long ones alone, most expensive first.

A run's cost is the method's own estimate (:meth:`bench.method.Method.estimated_cost`); the harness knows no method
by name."""

from __future__ import annotations

import math

from bench.data import get_spec
from bench.errors import BenchError
from bench.registry import get_method


def train_size(config: dict) -> int:
    """Shots × training classes of a run (at least one shot; 1000 classes when the dataset is unknown here; half
    the classes, rounded up, for base or new classes)."""
    try:
        n_classes = get_spec(config["train"]["dataset"]).num_classes
    except BenchError:
        n_classes = 1000
    if config["train"].get("classes") in ("base", "new"):
        n_classes = math.ceil(n_classes / 2)
    return max(int(config["train"].get("shots") or 1), 1) * n_classes


def estimated_cost(config: dict) -> float:
    """A rough cost of a run, as its method estimates it (:meth:`bench.method.Method.estimated_cost`)."""
    return float(get_method(config["method"]).estimated_cost(config.get("hparams") or {}, train_size(config)))


def is_short(config: dict, max_cost: float) -> bool:
    """Whether a run is packed with others: its estimated cost is at most ``max_cost`` (0: always)."""
    return estimated_cost(config) <= max_cost


def pack(configs: list[dict], pack_size: int, max_cost: float) -> list[list[dict]]:
    """Array tasks: long runs one per task (most expensive first), short runs packed ``pack_size`` per task, grouped
    by backbone and dataset so a task loads its backbone and features once."""
    short = [c for c in configs if pack_size > 1 and is_short(c, max_cost)]
    short_ids = {id(c) for c in short}
    long = sorted((c for c in configs if id(c) not in short_ids), key=estimated_cost, reverse=True)
    short.sort(key=lambda c: (c["backbone"]["arch"], str(c["backbone"].get("weights")), c["train"]["dataset"],
                              c["method"], c["train"]["shots"], c["train"]["seed"] or 0))
    tasks = [[c] for c in long]
    tasks += [short[i : i + pack_size] for i in range(0, len(short), pack_size)]
    return tasks
