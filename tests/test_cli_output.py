"""What users read and publish: quiet logs, JSON output, one flag grammar, sweeps, method display attributes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


from bench.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*argv, env=None, timeout=300):
    full = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, argv)], capture_output=True, text=True,
                          env=full, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("data")
    for key in ("caltech101", "dtd"):
        make_dataset_tree(key, root, n_classes=4, per_class=(2, 2, 3))
    return root


def test_a_small_grid_through_the_cli_prints_no_warning_and_no_false_statement(data_root, tiny_ckpt, tmp_path):
    """1-shot linear probe (scikit-learn warns: more classes than half the samples) from a checkpoint (open_clip
    says 'initialized randomly' before the weights are loaded): neither reaches the user."""
    res = tmp_path / "res"
    common = ["--datasets", "caltech101,dtd", "--backbone", "tiny-test", "--pretrained", tiny_ckpt,
              "--data-root", data_root, "--results", res]
    done = cli("run", "--method", "zeroshot,linear_probe", "--shots", "1", "--seeds", "1,2", *common)
    assert done.returncode == 0, done.stderr
    for text in (done.stderr, done.stdout):
        assert "Warning" not in text and "initialized randomly" not in text, text
    assert "6 runs: 0 already complete, 6 ran, 0 failed" in done.stdout
    quiet = cli("-q", "run", "--method", "zeroshot,linear_probe", "--shots", "1", "--seeds", "1,2", *common)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr              # -q: nothing but the summary
    table = cli("table", "--results", res, "--seeds", "1,2", "--format", "json", "--datasets", "caltech101,dtd")
    assert table.returncode == 0 and "Warning" not in table.stderr, table.stderr
    recs = json.loads(table.stdout)["tables"][0]["records"]
    assert {r["method"] for r in recs} == {"zeroshot", "linear_probe"}


def test_set_sweep_expands_to_one_labelled_set_of_runs_per_value(tmp_path, capsys):
    argv = ["run", "--method", "coop", "--datasets", "caltech101", "--shots", "1", "--seeds", "1,2", "--backbone",
            "tiny-test", "--pretrained", "none", "--results", tmp_path, "--dry-run", "--json"]
    assert main([str(a) for a in argv + ["--set", "n_ctx=2,4"]]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [(r["label"], r["overrides"], r["seed"]) for r in runs] == [
        ("coop[n_ctx=2]", {"n_ctx": 2}, 1), ("coop[n_ctx=2]", {"n_ctx": 2}, 2),
        ("coop[n_ctx=4]", {"n_ctx": 4}, 1), ("coop[n_ctx=4]", {"n_ctx": 4}, 2)]
    assert len({r["hash"] for r in runs}) == 4
    # two swept keys: the product; a quoted value keeps its comma
    assert main([str(a) for a in argv + ["--set", "n_ctx=2,4", "--set", "epochs=1,3", "--set",
                                         'ctx_init="a, b"']]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert len({r["label"] for r in runs}) == 4 and all(r["overrides"]["ctx_init"] == "a, b" for r in runs)
    assert main([str(a) for a in argv + ["--set", "n_ctx=2,,4"]]) == 2
    assert "empty value in the sweep" in capsys.readouterr().err


def test_json_for_list_status_and_dry_run(tmp_path, capsys):
    assert main(["list", "methods", "--json"]) == 0
    methods = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert methods["coop"]["display_name"] == "CoOp" and methods["zeroshot"]["order"] == 0
    assert main(["list", "protocols", "--json"]) == 0
    assert [p["name"] for p in json.loads(capsys.readouterr().out)][0] == "fewshot"
    grid = ["--method", "zeroshot,coop", "--datasets", "caltech101", "--shots", "1", "--seeds", "1",
            "--backbone", "tiny-test", "--pretrained", "none", "--results", str(tmp_path)]
    assert main(["status", *grid, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert {(r["label"], r["missing"], r["done"]) for r in st["rows"]} == {("zeroshot", 1, 0), ("coop", 1, 0)}
    assert {r["state"] for r in st["runs"]} == {"missing"}
    assert main(["run", *grid, "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert (dry["total"], dry["done"], dry["todo"]) == (2, 0, 2)


def test_old_flag_spellings_work_with_a_deprecation_note(data_root, tmp_path, capsys):
    env_cache = os.environ["BENCH_CACHE"]
    assert env_cache  # the sample is written under the test session's cache
    assert main(["data", "sample", "--dataset", "dtd", "--shots", "1", "--seed", "1", "--data-root",
                 str(data_root)]) == 0
    out = capsys.readouterr()
    assert "--dataset is deprecated; use --datasets" in out.err and "--seed is deprecated; use --seeds" in out.err
    assert main(["data", "sample", "--datasets", "dtd,caltech101", "--shots", "1,2", "--seeds", "1",
                 "--data-root", str(data_root)]) == 0
    assert len(capsys.readouterr().out.split()) == 4                         # 2 datasets x 2 shot counts
    assert main(["table", "--group", "mini", "--results", str(tmp_path / "none")]) == 2
    assert "--group is deprecated; use --preset" in capsys.readouterr().err


def test_table_infers_the_dataset_group_from_the_store(tmp_path):
    from bench.report.query import infer_preset
    from bench.store import config_hash, write_json_atomic

    def put(dataset):
        config = {"protocol": "fewshot", "method": "zeroshot", "label": "zeroshot",
                  "train": {"dataset": dataset, "shots": 0}}
        write_json_atomic(tmp_path / "zeroshot" / dataset / "x.json", {
            "status": "complete", "hash": config_hash(config), "config": config, "metrics": {}})

    assert infer_preset(str(tmp_path)) is None
    put("mini_patterns")
    assert infer_preset(str(tmp_path)) == "mini" and infer_preset(str(tmp_path), "base2new") is None
    put("caltech101")
    assert infer_preset(str(tmp_path)) == "coop11"


def test_method_display_defaults_are_deterministic_and_per_class():
    from bench import registry
    from bench.method import DEFAULT_MARKERS, DEFAULT_PALETTE, Method, default_display
    from bench.registry import get_method, register_method

    base = get_method("coop")
    try:
        @register_method("zz_user_method")
        class UserMethod(Method):
            pass

        @register_method("zz_user_coop")
        class UserCoOp(base):
            marker = "X"

        assert UserMethod.display_name == "zz_user_method" and UserMethod.order == 1000
        assert UserMethod.color in DEFAULT_PALETTE and UserMethod.marker in DEFAULT_MARKERS
        assert UserMethod.linestyle == "-"
        assert default_display("zz_user_method") == {a: getattr(UserMethod, a) for a in default_display("x")}
        # a subclass of a registered method gets its own look, not its parent's (except what it sets)
        assert UserCoOp.marker == "X" and UserCoOp.order == 1000 and UserCoOp.display_name == "zz_user_coop"
        assert base.display_name == "CoOp" and base.order == 20
    finally:
        registry._METHODS.pop("zz_user_method", None)
        registry._METHODS.pop("zz_user_coop", None)
    # the same name gives the same colour in another process (no salted hash())
    code = "from bench.method import default_display; print(default_display('zz_user_method')['color'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO, PYTHONHASHSEED="123"), cwd=REPO).stdout.strip()
    assert out == default_display("zz_user_method")["color"]
    looks = {m: get_method(m) for m in ("zeroshot", "linear_probe", "coop", "coop_csc", "cocoop", "kgcoop")}
    assert [c.order for c in looks.values()] == [0, 10, 20, 25, 30, 40]
    assert len({c.color for c in looks.values()}) == len({(c.marker) for c in looks.values()}) == 6


def test_kgcoop_templates_live_with_the_method():
    from pathlib import Path

    from bench.data import get_spec
    from bench.methods.kgcoop import KGCOOP_TEMPLATES, kgcoop_template

    assert kgcoop_template("dtd", get_spec("dtd").template) == "a photo of a {}, a type of texture."
    assert kgcoop_template("caltech101", get_spec("caltech101").template) == "a photo of a {}."
    assert set(KGCOOP_TEMPLATES) <= {p.stem for p in (Path(REPO) / "datasets").glob("*.yaml")}
    assert not [p for p in (Path(REPO) / "datasets").glob("*.yaml") if "kgcoop" in p.read_text()]


def _dry(capsys, *argv) -> list[dict]:
    base = ["run", "--datasets", "caltech101", "--shots", "1,2", "--seeds", "1", "--backbone", "tiny-test",
            "--pretrained", "none", "--dry-run", "--json"]
    assert main([*base, *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out)["runs"]


def test_an_override_equal_to_the_default_is_the_default_run(capsys, tmp_path):
    """--set epochs=50 where 50 is coop's 1-shot default, and --precision fp32 on the CPU (what auto means
    there): the default run's label and hash, not a new label that redoes identical work. Only the 2-shot runs
    (default epochs 100) get the label."""
    default = {(r["shots"], r["hash"]) for r in _dry(capsys, "--method", "coop", "--results", tmp_path)}
    runs = _dry(capsys, "--method", "coop", "--set", "epochs=50", "--results", tmp_path, "--device", "cpu",
                "--precision", "fp32")
    by_shots = {r["shots"]: r for r in runs}
    assert (1, by_shots[1]["hash"]) in default and by_shots[1]["label"] == "coop" and by_shots[1]["overrides"] == {}
    assert by_shots[2]["label"] == "coop[epochs=50]" and (2, by_shots[2]["hash"]) not in default


def test_set_can_be_scoped_to_one_method(capsys, tmp_path):
    """--method zeroshot,coop --set coop.epochs=2: coop gets it, zeroshot (which has no epochs) is the plain run,
    with the same hash as without the flag; an unscoped key every method lacks is still refused."""
    scoped = _dry(capsys, "--method", "zeroshot,coop", "--set", "coop.epochs=2", "--results", tmp_path)
    alone = _dry(capsys, "--method", "coop", "--set", "epochs=2", "--results", tmp_path)
    zs = _dry(capsys, "--method", "zeroshot", "--results", tmp_path)
    assert {r["hash"] for r in scoped} == {r["hash"] for r in alone + zs}
    assert sorted({r["label"] for r in scoped}) == ["coop[epochs=2]", "zeroshot"]
    assert main(["run", "--method", "zeroshot,coop", "--set", "epochs=2", "--datasets", "caltech101",
                 "--backbone", "tiny-test", "--pretrained", "none", "--dry-run"]) == 2
    assert "scope a key to one method" in capsys.readouterr().err


def test_expand_refuses_a_method_that_does_not_support_the_protocol():
    from bench.errors import BenchError
    from bench.protocols import expand

    with pytest.raises(BenchError, match="linear_probe does not support protocol base2new"):
        expand("base2new", ["linear_probe"], datasets=["caltech101"], backbone={"arch": "tiny-test",
                                                                               "pretrained": None, "weights": "random"})


def test_one_key_value_parser_for_set_and_slurm():
    from bench.launch.slurm import load_profile
    from bench.protocols import parse_sweep, parse_value

    assert [parse_value(t) for t in ("4", "0.002", "true", "null", "a photo of a", "[1, 2]")] == [
        4, 0.002, True, None, "a photo of a", "[1, 2]"]
    assert parse_value("[1, 2]", scalar=False) == [1, 2] and parse_value("", empty="") == ""
    assert parse_sweep(["lr=0.001", "coop.epochs=2,4"]) == [{"lr": 0.001, "coop.epochs": 2},
                                                            {"lr": 0.001, "coop.epochs": 4}]
    prof = load_profile(None, ["partition=gpu", "gpus=2", "sbatch.mail-type=END"])
    assert prof["partition"] == "gpu" and prof["gpus"] == 2 and prof["sbatch"]["mail-type"] == "END"
