"""The results store: one JSON per run, named by the stable hash of its resolved config.

A result is written atomically (temporary file in the same folder, then ``os.replace``), so a killed run leaves
either no file or a complete one, and concurrent writers never interleave.  Only a file that parses and says
``"status": "complete"`` counts as done; anything else (a stray temp file, a failure record) is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from numbers import Real
from pathlib import Path

from bench import claims, log
from bench.errors import BenchError
from bench.fileio import DiskFull, atomic_open, clean_stale_temps
from bench.paths import results_dir

# Keys of a run config that do not change its numbers (where data lives, which device ran it).
NON_IDENTITY_KEYS = ("data_root", "device", "label")


def config_hash(config: dict) -> str:
    """Stable hash of everything that determines a run's numbers (canonical JSON, sorted keys)."""
    ident = {k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS}
    bb = ident.get("backbone")
    if isinstance(bb, dict) and "weights" in bb:  # weights are identified by content digest or tag, not by path
        ident["backbone"] = {k: v for k, v in bb.items() if k != "pretrained"}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def write_json_atomic(path: Path, data: dict) -> None:
    try:
        with atomic_open(path) as fh:
            fh.write(json.dumps(data, indent=1, sort_keys=True).encode())
    except DiskFull:
        raise
    except OSError as e:  # read-only folder, a file where a folder should be, ...
        raise StoreError(f"cannot write {path}: {e.strerror or type(e).__name__}") from None


def _changed_template(config: dict) -> str | None:
    """The first dataset whose template in ``config`` differs from its current spec (None: all current, or a
    dataset this process has no spec for)."""
    from bench.data import get_spec

    for dataset, template in (config.get("templates") or {}).items():
        try:
            current = get_spec(dataset).template
        except BenchError:
            continue
        if current != template:
            return dataset
    return None


def legacy_fallback(store: "Store", config: dict) -> dict:
    """The config whose stored result stands for ``config`` when none is stored at its own hash (else ``config``).

    With a data fingerprint (``data``): the same config without it, a result written by code before fingerprints
    (counted: there is nothing to verify its data against). Without one (no data root given, e.g. `bench status`
    without --data-root): a complete result of this run on any data."""
    path = store.path_for(config)
    if path.exists():
        return config
    if "data" in config:
        legacy = {k: v for k, v in config.items() if k != "data"}
        return legacy if store.path_for(legacy).exists() else config
    want = config_hash(config)
    for other in sorted(path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.json")):
        data = store._read(other) if not other.name.endswith(".failed.json") else None
        cfg = data.get("config") if isinstance(data, dict) and data.get("status") == "complete" else None
        if isinstance(cfg, dict) and "data" in cfg and config_hash({k: v for k, v in cfg.items() if k != "data"}) == want:
            return cfg
    return config


class StoreError(BenchError):
    """The results store cannot be written: nothing more can be stored, so the grid stops (results kept)."""


def _is_number(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def eval_name(ev: dict) -> str:
    """The key of one evaluation in a result's metrics: the dataset, or ``dataset:base`` / ``dataset:new``."""
    return ev["dataset"] if ev.get("classes", "all") == "all" else f"{ev['dataset']}:{ev['classes']}"


def method_label(method: str, overrides: dict) -> str:
    """A run's label: the method, with the hyperparameters set on the command line, e.g. ``coop[epochs=2]``."""
    if not overrides:
        return method
    return method + "[" + ",".join(f"{k}={v}" for k, v in sorted(overrides.items())) + "]"


def derived_label(cfg: dict) -> str:
    """The label a result is shown under, from its hashed config (the stored ``label`` is not hashed, so a
    hand-edited one must not move a run to another row): the stored label when the config's method and overrides
    (and its views) give it, else the method with its overrides."""
    method, overrides = cfg.get("method", ""), cfg.get("overrides") or {}
    if not isinstance(overrides, dict):
        overrides = {}
    allowed = {method_label(method, overrides)}
    if cfg.get("views") is not None:
        allowed.add(method_label(method, {**overrides, "views": cfg["views"]}))
    return cfg["label"] if cfg.get("label") in allowed else method_label(method, overrides)


def result_problem(data, config: dict | None = None) -> str | None:
    """Why ``data`` (a parsed result file) is not a valid complete result, or None when it is one."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    if data.get("status") != "complete":
        return f"status is {data.get('status')!r}, not 'complete'"
    cfg = data.get("config")
    if not isinstance(cfg, dict):
        return "no config object"
    tr = cfg.get("train")
    if not isinstance(cfg.get("method"), str) or not isinstance(cfg.get("protocol"), str) or not isinstance(tr, dict):
        return "config lacks method, protocol or train"
    if not isinstance(tr.get("dataset"), str) or not (tr.get("shots") is None or isinstance(tr.get("shots"), int)):
        return "config.train lacks dataset or shots"
    try:
        h = config_hash(cfg)
    except (TypeError, ValueError):
        return "config is not hashable"
    if data.get("hash") != h:
        return "its hash does not match its config"
    if config is not None and h != config_hash(config):
        return "it belongs to another config"
    metrics = data.get("metrics")
    if not isinstance(metrics, dict):
        return "metrics is not an object"
    evals = cfg.get("evals")
    if evals is not None:  # every evaluation the run was asked for, and nothing else
        if not isinstance(evals, list) or not all(isinstance(e, dict) and "dataset" in e for e in evals):
            return "config.evals is not a list of evaluations"
        want = [eval_name(e) for e in evals]
        missing, extra = [n for n in want if n not in metrics], sorted(set(metrics) - set(want))
        if missing or extra:
            return (f"metrics for {', '.join(missing)} missing" if missing else
                    f"metrics for {', '.join(extra)}, which the run was not asked to evaluate")
    for name, m in metrics.items():
        if not isinstance(m, dict):
            return f"metrics[{name!r}] is not an object"
        top1 = m.get("top1")
        if top1 is None and "unsupported" not in m:
            return f"metrics[{name!r}] has no top1"
        if top1 is not None and (not _is_number(top1) or not 0 <= top1 <= 100):  # NaN fails both comparisons
            return f"metrics[{name!r}].top1 is not a percentage ({top1!r})"
        if m.get("macro_f1") is not None and not _is_number(m["macro_f1"]):
            return f"metrics[{name!r}].macro_f1 is not a number"
        pc = m.get("per_class")
        if pc is not None and (not isinstance(pc, dict) or not all(_is_number(v) for v in pc.values())):
            return f"metrics[{name!r}].per_class is not an object of numbers"
    return None


_REPORTED: set = set()


def _report_invalid(path: Path, why: str) -> None:
    if str(path) not in _REPORTED:
        _REPORTED.add(str(path))
        log.info(f"warning: invalid result file {path} ({why}): not counted as done; `bench run` redoes it")


class Store:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else results_dir()

    def path_for(self, config: dict) -> Path:
        train = config["train"]
        tag = f"shots{train['shots']}-seed{train['seed']}" if train.get("seed") is not None else "noseed"
        return self.root / config["method"] / train["dataset"] / f"{tag}-{config_hash(config)}.json"

    def failure_path(self, config: dict) -> Path:
        return self.path_for(config).with_suffix(".failed.json")

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            with open(path) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def load(self, config: dict) -> dict | None:
        """The complete result of this run, or None (an invalid file is reported once, by path, and not used)."""
        config = legacy_fallback(self, config)
        path = self.path_for(config)
        if not path.exists():
            return None
        data = self._read(path)
        why = "not readable JSON" if data is None else result_problem(data, config)
        if why is not None:
            _report_invalid(path, why)
            return None
        return data

    def is_complete(self, config: dict) -> bool:
        return self.load(config) is not None

    def pending(self, grid: list[dict]) -> list[dict]:
        """The runs of ``grid`` without a complete result here (missing or failed), in grid order."""
        return [c for c in grid if not self.is_complete(c)]

    def write(self, result: dict) -> Path:
        path = self.path_for(result["config"])
        write_json_atomic(path, result)
        self.failure_path(result["config"]).unlink(missing_ok=True)
        return path

    def write_failure(self, config: dict, error: str, extra: dict | None = None) -> Path:
        path = self.failure_path(config)
        write_json_atomic(path, {"status": "failed", "hash": config_hash(config), "config": config,
                                 "error": error, **(extra or {})})
        return path

    def failure(self, config: dict) -> dict | None:
        """The failure record of this run, or None (an invalid one is reported once, by path)."""
        path = self.failure_path(config)
        if not path.exists():
            return None
        data = self._read(path)
        if not isinstance(data, dict) or not isinstance(data.get("error", ""), str):
            _report_invalid(path, "not a failure record")
            return None
        return data

    def all_results(self) -> list[dict]:
        """Every valid complete result in the store (invalid files are reported once each, by path)."""
        out = []
        for path in sorted(self.root.rglob("*.json")) if self.root.is_dir() else []:
            if path.name.endswith(".failed.json") or path.name.startswith("."):
                continue
            data = self._read(path)
            why = "not readable JSON" if data is None else result_problem(data)
            if why is None:
                data["config"]["label"] = derived_label(data["config"])
                out.append(data)
            else:
                _report_invalid(path, why)
        return out

    def current_results(self) -> list[dict]:
        """The complete results made by the current code of their method (what `bench status` counts as done).
        Results of edited methods are left out, with one log line; those of methods not loaded here are kept."""
        from collections import Counter

        from bench import log
        from bench.registry import code_version, find_method

        out, stale, prompts = [], Counter(), Counter()
        for r in self.all_results():
            cls = find_method(r["config"].get("method", ""))
            if cls is not None and r["config"].get("code") != code_version(cls):
                stale[r["config"]["method"]] += 1
            elif (d := _changed_template(r["config"])) is not None:
                prompts[d] += 1
            else:
                out.append(r)
        if stale:
            log.info(f"left out {sum(stale.values())} result(s) made by an earlier version of the method's code "
                     f"({', '.join(f'{m}: {n}' for m, n in sorted(stale.items()))}); `bench run` redoes them")
        if prompts:
            log.info(f"left out {sum(prompts.values())} result(s) made with another hand-crafted template of "
                     f"{', '.join(sorted(prompts))} than its dataset spec holds now; `bench run` redoes them")
        return out

    # ---- before a grid runs: a writable store without leftovers ----------------------------------------------

    def check_writable(self) -> None:
        """One-line BenchError unless the store is (or can be made) a writable folder: checked before any work."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise StoreError(f"results store {root} is not a folder")
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=root, prefix=".write-test.", suffix=".tmp")
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise StoreError(f"results store {root} is not writable: {e.strerror or type(e).__name__}") from None

    def clean_stale(self, max_age_s: float = 900.0) -> int:
        """Remove temporary files that killed writers left (untouched for ``max_age_s``); returns how many."""
        removed = clean_stale_temps(self.root, max_age_s)
        if removed:
            log.info(f"removed {len(removed)} stale temporary file(s) of interrupted writers under {self.root}")
        return len(removed)

    # ---- claims: concurrent commands on one store execute each run once ---------------------------------------

    def claim_path(self, config: dict) -> Path:
        return self.path_for(config).with_suffix(".claim")

    def claim_holder(self, config: dict) -> dict | None:
        """The live claim on this run (pid, host, time), or None when unclaimed or abandoned."""
        return claims.holder(self.claim_path(config))

    def claim(self, config: dict) -> "claims.Claim | None":
        """Claim this run for this process (:mod:`bench.claims`), taking over an abandoned claim; None when another
        live process holds it."""
        path = self.claim_path(config)
        try:
            return claims.acquire(path)
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror or type(e).__name__}") from None
