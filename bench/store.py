"""The results store: one JSON per run, named by the stable hash of its resolved config.

A result is written atomically (temporary file in the same folder, then ``os.replace``), so a killed run leaves
either no file or a complete one, and concurrent writers never interleave.  Only a file that parses and says
``"status": "complete"`` counts as done; anything else (a stray temp file, a failure record) is redone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bench.fileio import atomic_open
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
    with atomic_open(path) as fh:
        fh.write(json.dumps(data, indent=1, sort_keys=True).encode())


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
        """The complete result of this run, or None."""
        data = self._read(self.path_for(config))
        if data and data.get("status") == "complete" and data.get("hash") == config_hash(config):
            return data
        return None

    def is_complete(self, config: dict) -> bool:
        return self.load(config) is not None

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
        return self._read(self.failure_path(config))

    def all_results(self) -> list[dict]:
        """Every complete result in the store."""
        out = []
        for path in sorted(self.root.rglob("*.json")) if self.root.exists() else []:
            if path.name.endswith(".failed.json") or path.name.startswith("."):
                continue
            data = self._read(path)
            if data and data.get("status") == "complete":
                out.append(data)
        return out

    def current_results(self) -> list[dict]:
        """The complete results made by the current code of their method (what `bench status` counts as done).
        Results of edited methods are left out, with one log line; those of methods not loaded here are kept."""
        from collections import Counter

        from bench import log
        from bench.registry import code_version, find_method

        out, stale = [], Counter()
        for r in self.all_results():
            cls = find_method(r["config"].get("method", ""))
            if cls is not None and r["config"].get("code") != code_version(cls):
                stale[r["config"]["method"]] += 1
            else:
                out.append(r)
        if stale:
            log.info(f"left out {sum(stale.values())} result(s) made by an earlier version of the method's code "
                     f"({', '.join(f'{m}: {n}' for m, n in sorted(stale.items()))}); `bench run` redoes them")
        return out
