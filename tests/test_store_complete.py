"""A result counts as done only when it can be shown (issue 25, item 2): finite metrics for every evaluation its
config asked for, nothing else; `bench run`, `status` and `table` count the same files; an evaluation over zero
images is refused before any work; what a table groups by comes from the hashed config, not the stored label."""

import json
import math
import subprocess
import sys

import pytest

from bench.data import get_spec
from bench.store import Store, config_hash, derived_label, result_problem

RUN = ["--method", "zeroshot", "--datasets", "dtd", "--backbone", "tiny-test"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from bench.data.synth import make_dataset_tree

    base = tmp_path_factory.mktemp("complete")
    make_dataset_tree("dtd", base / "data", n_classes=4, per_class=(2, 1, 2), image_size=16)
    return base / "data"


def _cli(*argv, timeout=600):
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout)


def _stored(results) -> list:
    return [json.loads(p.read_text()) for p in sorted(results.rglob("*.json")) if not p.name.startswith(".")]


def test_a_split_without_test_images_is_refused_before_any_work(world, tiny_ckpt, tmp_path):
    data = tmp_path / "notest"
    import shutil

    shutil.copytree(world, data)
    split = data / get_spec("dtd").dir / get_spec("dtd").split_file
    d = json.loads(split.read_text())
    split.write_text(json.dumps({"train": d["train"], "val": d["val"]}))  # no "test" list
    results = tmp_path / "res"
    done = _cli("run", *RUN, "--pretrained", tiny_ckpt, "--data-root", data, "--results", results)
    assert done.returncode != 0
    assert "nan" not in done.stdout + done.stderr and "Traceback" not in done.stderr
    assert "dtd" in done.stderr and "no test images" in done.stderr, done.stderr
    assert not [r for r in _stored(results) if r.get("status") == "complete"]


@pytest.fixture(scope="module")
def stored(world, tiny_ckpt, tmp_path_factory):
    """A store with one complete zero-shot result, made by the real CLI."""
    results = tmp_path_factory.mktemp("store") / "res"
    done = _cli("run", *RUN, "--pretrained", tiny_ckpt, "--data-root", world, "--results", results)
    assert done.returncode == 0, done.stderr
    (path,) = [p for p in results.rglob("*.json") if not p.name.startswith(".")]
    return {"results": results, "path": path, "good": json.loads(path.read_text())}


BROKEN = {
    "nan top1": lambda r: r["metrics"]["dtd"].update(top1=math.nan),
    "empty metrics": lambda r: r.update(metrics={}),
    "metrics under another dataset": lambda r: r.update(metrics={"eurosat": r["metrics"].pop("dtd")}),
    "an extra evaluation": lambda r: r["metrics"].update(eurosat=dict(r["metrics"]["dtd"])),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_result_that_cannot_be_shown_is_not_done_anywhere(stored, tiny_ckpt, world, name):
    bad = json.loads(json.dumps(stored["good"]))
    BROKEN[name](bad)
    assert result_problem(stored["good"]) is None and result_problem(bad) is not None
    stored["path"].write_text(json.dumps(bad))
    try:
        status = _cli("status", *RUN, "--pretrained", tiny_ckpt, "--data-root", world, "--results",
                      stored["results"], "--json")
        assert status.returncode == 0, status.stderr
        assert Store(stored["results"]).all_results() == []  # what `bench table` reads
        rows = json.loads(status.stdout)["rows"]
        assert rows and sum(r["done"] for r in rows) == 0 and sum(r["missing"] for r in rows) == 1, rows
        rerun = _cli("run", *RUN, "--pretrained", tiny_ckpt, "--data-root", world, "--results", stored["results"])
        assert rerun.returncode == 0 and "0 already complete, 1 ran" in rerun.stdout, rerun.stdout + rerun.stderr
        assert result_problem(json.loads(stored["path"].read_text())) is None
    finally:
        stored["path"].write_text(json.dumps(stored["good"]))


def test_a_hand_edited_label_does_not_move_a_run(stored):
    good = stored["good"]
    edited = json.loads(json.dumps(good))
    edited["config"]["label"] = "coop[epochs=2]"
    assert edited["hash"] == config_hash(edited["config"])  # the label is not part of the identity...
    stored["path"].write_text(json.dumps(edited))
    try:  # ...so the table must not group by it
        (r,) = Store(stored["results"]).all_results()
        assert r["config"]["label"] == "zeroshot" == derived_label(edited["config"])
    finally:
        stored["path"].write_text(json.dumps(good))
    views = {"method": "coop", "overrides": {"epochs": 2}, "views": 8, "label": "coop[epochs=2,views=8]"}
    assert derived_label(views) == "coop[epochs=2,views=8]"  # a label the config gives is kept


def test_status_without_grid_flags_shows_what_the_store_holds(stored):
    """A store of another backbone's results (tiny-test, one dataset, zero-shot) is shown as done, not as the
    default ViT-B-16/openai grid's "0 done" everywhere."""
    status = _cli("status", "--results", stored["results"], "--json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)["rows"]
    assert rows == [{"protocol": "fewshot", "label": "zeroshot", "dataset": "dtd", "done": 1, "missing": 0,
                     "failed": 0}], rows
