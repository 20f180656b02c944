"""A run's identity includes the data it read (issue 25, item 1): a result computed on a copy (fewer classes,
another split) is never reused for the real data, while results stay portable across data-root paths and results
stored by code before data fingerprints are still found complete."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.data import get_spec
from bench.store import Store, config_hash

RUN = ["--method", "coop", "--datasets", "dtd", "--shots", "2", "--seeds", "1", "--set", "epochs=2",
       "--backbone", "tiny-test"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """REAL: a 5-class DTD tree; COPY: the same tree with a split file that keeps its first 3 classes."""
    from bench.data.synth import make_dataset_tree

    base = tmp_path_factory.mktemp("roots")
    real = make_dataset_tree("dtd", base / "real", n_classes=5, per_class=(3, 1, 3), image_size=16)
    copy = base / "copy" / real.name
    shutil.copytree(real, copy)
    split = copy / get_spec("dtd").split_file
    d = json.loads(split.read_text())
    split.write_text(json.dumps({s: [e for e in items if e[1] < 3] for s, items in d.items()}))
    return {"real": base / "real", "copy": base / "copy"}


def _run(ckpt, results, data_root) -> str:
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", *RUN, "--pretrained", str(ckpt),
                           "--data-root", str(data_root), "--results", str(results)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _config(data_root):
    from bench.protocols import expand

    (config,) = expand("fewshot", ["coop"], datasets=["dtd"], shots=[2], seeds=[1], overrides={"epochs": 2},
                       backbone={"arch": "tiny-test", "pretrained": None, "weights": "random"},
                       data_root=str(data_root))
    return config


def test_a_result_of_other_data_is_not_reused(roots, tiny_ckpt, tmp_path):
    store = tmp_path / "res"
    assert "0 already complete, 1 ran" in _run(tiny_ckpt, store, roots["copy"])
    assert "0 already complete, 1 ran" in _run(tiny_ckpt, store, roots["real"])  # not the copy's result
    assert "1 already complete, 0 ran" in _run(tiny_ckpt, store, roots["real"])
    assert "0 already complete, 1 ran" in _run(tiny_ckpt, tmp_path / "alone", roots["real"])
    top1 = {}
    for name, folder in (("mixed", store), ("alone", tmp_path / "alone")):
        results = Store(folder).all_results()
        top1[name] = {r["config"]["data"]["dtd"]: r["metrics"]["dtd"]["top1"] for r in results}
    real_fp, copy_fp = _config(roots["real"])["data"]["dtd"], _config(roots["copy"])["data"]["dtd"]
    assert len(top1["mixed"]) == 2 and top1["mixed"][real_fp] == top1["alone"][real_fp]
    assert top1["mixed"][copy_fp] != top1["mixed"][real_fp]  # else the table below could not tell them apart
    table = subprocess.run([sys.executable, "-m", "bench.cli", "table", "--results", str(store), "--datasets", "dtd"],
                           capture_output=True, text=True, timeout=600)
    assert table.returncode == 0, table.stderr
    (row,) = [ln for ln in table.stdout.splitlines() if ln.startswith("| coop")]
    assert f"{top1['alone'][real_fp]:.2f}" in row and f"{top1['mixed'][copy_fp]:.2f}" not in row, table.stdout
    # without a data root (no fingerprint to plan with) `bench status` counts a result of the run on any data
    env = {k: v for k, v in os.environ.items() if k != "BENCH_DATA"}
    done = subprocess.run([sys.executable, "-m", "bench.cli", "status", *RUN, "--pretrained", str(tiny_ckpt),
                           "--results", str(tmp_path / "alone")], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert [ln.split()[-3:] for ln in done.stdout.splitlines() if "coop" in ln] == [["1", "0", "0"]], done.stdout


def test_identity_is_portable_across_data_root_paths(roots, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(roots["real"], moved)
    real, there, copy = _config(roots["real"]), _config(moved), _config(roots["copy"])
    assert real["data"] == there["data"] and config_hash(real) == config_hash(there)
    assert real["data"] != copy["data"] and config_hash(real) != config_hash(copy)


def test_a_result_stored_without_a_fingerprint_is_still_complete(roots, tmp_path):
    """Code before data fingerprints stored results at the hash of the config without ``data``: still found."""
    config = _config(roots["real"])
    legacy = {k: v for k, v in config.items() if k != "data"}
    assert config_hash(legacy) != config_hash(config)
    store = Store(tmp_path / "res")
    store.write({"status": "complete", "hash": config_hash(legacy), "config": legacy,
                 "metrics": {"dtd": {"top1": 50.0}}})
    assert store.is_complete(config) and store.load(config)["hash"] == config_hash(legacy)


def test_the_few_shot_record_is_redrawn_for_other_data(roots, tmp_path, monkeypatch):
    from bench import data

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    copy, real = data.load_splits("dtd", roots["copy"]), data.load_splits("dtd", roots["real"])
    path = data.record_sample(copy, 2, 1)
    assert data.read_sample(path)["data"] == data.fingerprint(copy)
    assert data.record_sample(real, 2, 1) == path
    assert data.read_sample(path)["data"] == data.fingerprint(real)
    assert {it.label for it in data.read_sample(path, splits=real)["train"]} == set(range(5))


def test_a_run_planned_on_other_data_is_refused(roots, tmp_path):
    """A planned config (e.g. a queued SLURM task) whose data changed since planning stores nothing: its result
    would be filed under the identity of data it did not read."""
    from bench.engine.runner import execute
    from bench.errors import BenchError

    config = {**_config(roots["copy"]), "data_root": str(roots["real"])}
    store = Store(tmp_path / "res")
    with pytest.raises(BenchError, match="dtd under .* is not the data this run was planned with"):
        execute(config, store)
    assert not store.is_complete(config) and not list((tmp_path / "res").rglob("*.json"))
