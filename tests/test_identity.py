"""Run identity: edited method code never reuses stale results, and `--views` is either the default or in the
label, so `bench status`, `bench run` and `bench table` agree on what is done."""

import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.store import Store, config_hash

METHOD = '''
import torch
from bench.method import Method
from bench.registry import register_method


@register_method("echo")
class Echo(Method):
    """Always predicts class PICK."""

    description = "constant"
    needs_training = False
    PICK = {pick}{extra}

    def logits(self, features, classnames):
        out = torch.zeros(len(features), len(classnames))
        out[:, self.PICK] = 1.0
        return out
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt):
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("data")
    make_dataset_tree("eurosat", root, n_classes=5, per_class=[(3, 1, 6)] + [(3, 1, 2)] * 4)
    return {"root": root, "ckpt": tiny_ckpt}


@pytest.fixture
def registry(monkeypatch):
    from bench import registry

    monkeypatch.setenv(registry.PATH_ENV, "")
    registry.list_methods()  # the built-ins, loaded once as in any process
    before = dict(registry._METHODS)
    yield registry
    registry._METHODS.clear()
    registry._METHODS.update(before)
    registry._DIRS_LOADED.clear()
    for name in [n for n in sys.modules if n.startswith("_bench_user_methods_")]:
        del sys.modules[name]


def _edit(registry, folder, **kw):
    """Write the method file and make this process see it as a new process would."""
    (folder / "echo.py").write_text(METHOD.format(**{"pick": 0, "extra": "", **kw}))
    registry._METHODS.pop("echo", None)
    registry._DIRS_LOADED.discard(str(folder.resolve()))
    for name in [n for n in sys.modules if n.startswith("_bench_user_methods_")]:
        del sys.modules[name]


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out, out.err


def test_edited_method_code_is_rerun_and_old_results_left_out(world, tmp_path, registry, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    args = ["--method", "echo", "--datasets", "eurosat", "--backbone", "tiny-test", "--pretrained", world["ckpt"],
            "--data-root", world["root"], "--results", tmp_path / "res", "--methods-dir", folder]

    _edit(registry, folder, pick=0)
    assert "0 already complete, 1 ran" in _cli(capsys, "run", *args)[0]
    assert "1 already complete, 0 ran" in _cli(capsys, "run", *args)[0]
    first = Store(tmp_path / "res").all_results()[0]

    _edit(registry, folder, pick=0, extra="  # a comment, formatting: the same code")
    assert "1 already complete, 0 ran" in _cli(capsys, "run", *args)[0]

    _edit(registry, folder, pick=1)  # changed behaviour
    status = _cli(capsys, "status", *args)[0]
    assert [ln.split()[-3:] for ln in status.splitlines() if "echo" in ln] == [["0", "1", "0"]]  # done missing failed
    assert "0 already complete, 1 ran" in _cli(capsys, "run", *args)[0]
    results = Store(tmp_path / "res").all_results()
    assert len(results) == 2
    new = next(r for r in results if r["hash"] != first["hash"])
    assert new["config"]["code"] != first["config"]["code"]
    old_top1, new_top1 = first["metrics"]["eurosat"]["top1"], new["metrics"]["eurosat"]["top1"]
    assert (old_top1, new_top1) == (pytest.approx(600 / 14), pytest.approx(200 / 14))  # class 0: 6 images, 1: 2

    # the table shows only the current code's number, and says that it left the other out
    out, err = _cli(capsys, "table", "--method", "echo", "--datasets", "eurosat", "--results", tmp_path / "res",
                    "--methods-dir", folder)
    row = next(ln for ln in out.splitlines() if ln.startswith("| echo"))
    assert f"{new_top1:.2f}" in row and f"{old_top1:.2f}" not in row
    assert "left out 1 result(s) made by an earlier version of the method's code (echo: 1)" in err

    _edit(registry, folder, pick=1, extra="\n    version = 2")  # an explicit version bump counts too
    assert "0 already complete, 1 ran" in _cli(capsys, "run", *args)[0]


def test_views_are_in_the_label_unless_default(world, tmp_path, capsys):
    args = ["--method", "coop", "--datasets", "eurosat", "--shots", "1", "--seeds", "1", "--set", "epochs=3",
            "--backbone", "tiny-test", "--pretrained", world["ckpt"], "--data-root", world["root"],
            "--results", tmp_path / "res"]
    assert "1 ran" in _cli(capsys, "run", *args, "--views", "2")[0]

    def done(*extra):
        out = _cli(capsys, "status", *args, *extra)[0]
        return {ln.split()[1]: int(ln.split()[3]) for ln in out.splitlines()[1:] if ln.startswith("fewshot")}

    assert done("--views", "2") == {"coop[epochs=3,views=2]": 1}
    assert done() == {"coop[epochs=3]": 0}  # one view per epoch: another run, and says so
    assert done("--views", "3") == {"coop[epochs=3]": 0}  # = epochs: the default, same label and hash
    assert "0 done, 1 to run" in _cli(capsys, "run", *args, "--dry-run")[0]
    table = _cli(capsys, "table", "--method", "coop", "--datasets", "eurosat", "--seeds", "1",
                 "--results", tmp_path / "res")[0]
    labels = [ln.split("|")[1].strip() for ln in table.splitlines() if ln.startswith("| coop")]
    assert labels == ["coop[epochs=3,views=2]"]


def test_preset_default_views_keep_the_plain_label(tiny_backbone_spec):
    from bench.protocols import expand

    kw = dict(datasets=["eurosat"], shots=[1], seeds=[1], backbone=tiny_backbone_spec)
    preset = expand("fewshot", ["coop", "zeroshot"], default_views=16, **kw)          # --preset mini
    explicit = expand("fewshot", ["coop", "zeroshot"], views=16, default_views=16, **kw)  # bench demo's --views 16
    assert [c["label"] for c in preset] == ["coop", "zeroshot"] and preset[0]["views"] == 16
    assert [config_hash(c) for c in preset] == [config_hash(c) for c in explicit]
    other = expand("fewshot", ["coop"], views=8, default_views=16, **kw)[0]
    assert other["label"] == "coop[views=8]" and config_hash(other) != config_hash(preset[0])
    plain = expand("fewshot", ["coop"], **kw)[0]
    assert plain["label"] == "coop" and plain["views"] == plain["hparams"]["epochs"]


def test_code_version_covers_helper_modules_and_ignores_comments(tmp_path, monkeypatch):
    from bench.registry import _normalised_source, code_version, get_method

    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text('"""doc"""\nx = 1  # note\n\n\ndef f():\n    """doc"""\n    return x\n')
    b.write_text("x = 1\ndef f():\n    return x\n")
    assert _normalised_source(a) == _normalised_source(b)
    b.write_text("x = 2\ndef f():\n    return x\n")
    assert _normalised_source(a) != _normalised_source(b)
    # CoOp's version covers the shared prompt-learner helpers it imports
    from bench import registry

    coop = get_method("coop")
    mods = [m.__name__ for m in registry._related_modules(sys.modules[coop.__module__])]
    assert mods == ["bench.methods._prompts", "bench.methods.coop"]
    assert code_version(coop) != code_version(get_method("kgcoop"))


def test_a_run_planned_with_other_code_is_refused(world, tmp_path, tiny_backbone_spec):
    from bench.errors import BenchError
    from bench.protocols import expand
    from bench.engine.runner import execute

    (config,) = expand("fewshot", ["zeroshot"], datasets=["eurosat"], backbone=tiny_backbone_spec,
                       data_root=str(world["root"]))
    config["code"] = "0123456789ab"  # planned (e.g. queued on SLURM) before the method was edited
    with pytest.raises(BenchError, match="the code of method zeroshot changed since this run was planned"):
        execute(config, Store(tmp_path / "res"))
    assert not Store(tmp_path / "res").all_results()


def test_edited_dataset_template_is_rerun_and_old_results_left_out(world, tmp_path, monkeypatch, capsys):
    """The hand-crafted prompt is part of a run's identity: a spec whose template was edited gets its runs redone,
    and the table leaves the old template's numbers out (with one line saying so)."""
    import shutil

    from bench import paths

    specs = tmp_path / "specs"
    shutil.copytree(paths.DATASETS_DIR, specs)
    monkeypatch.setattr(paths, "DATASETS_DIR", specs)
    args = ["--method", "zeroshot", "--datasets", "eurosat", "--backbone", "tiny-test", "--pretrained", world["ckpt"],
            "--data-root", world["root"], "--results", tmp_path / "res"]
    assert "0 already complete, 1 ran" in _cli(capsys, "run", *args)[0]
    assert "1 already complete, 0 ran" in _cli(capsys, "run", *args)[0]
    first = Store(tmp_path / "res").all_results()[0]
    assert first["config"]["templates"] == {"eurosat": "a centered satellite photo of {}."}

    spec = specs / "eurosat.yaml"
    spec.write_text(spec.read_text().replace("a centered satellite photo of {}.", "a satellite image of {}."))
    status = _cli(capsys, "status", *args)[0]
    assert [ln.split()[-3:] for ln in status.splitlines() if "zeroshot" in ln] == [["0", "1", "0"]]
    assert "0 already complete, 1 ran" in _cli(capsys, "run", *args)[0]
    results = Store(tmp_path / "res").all_results()
    assert len(results) == 2
    new = next(r for r in results if r["hash"] != first["hash"])
    assert new["config"]["templates"] == {"eurosat": "a satellite image of {}."}
    assert new["metrics"]["eurosat"]["templates"]["templates"] == ["a satellite image of {}."]  # what scored it
    _, err = _cli(capsys, "table", "--method", "zeroshot", "--datasets", "eurosat", "--results", tmp_path / "res")
    assert "left out 1 result(s) made with another hand-crafted template of eurosat" in err


# ---------------------------------------------------------------------------------------------------------------
# Results stored before a refactoring stay valid: the code versions and run hashes of the built-in methods, as the
# code before the built-ins moved into bench.methods computed them (a source edit that changes no number keeps
# them through bench.registry's record of equivalent sources; any other change must show up here).

GOLDEN_CODE = {
    "cocoop": "a62b802bd6e9", "coop": "2f7babe01757", "coop_csc": "1fd88305a99d", "ivlp": "7bdd0eccc660",
    "kgcoop": "df0e76cddc63", "linear_probe": "bd06866f3a96", "maple": "ac93ec87998a", "promptsrc": "35d54e4bc25e",
    "vpt_deep": "0fc0f77d1e1c", "zeroshot": "9725a2c0cda6",
}
GOLDEN_HASH = {  # fewshot, eurosat, 2 shots, seed 1, 2 views, tiny-test random weights
    "cocoop": "21d7762057a3c0fd", "coop": "06d20c5bb2d71a13", "coop_csc": "f61227d6a2c3bd2f",
    "ivlp": "854942c6ca125543", "kgcoop": "b24080e6ab6aa546", "linear_probe": "07abcfac7ba594b6",
    "maple": "9f87483c0795852c", "promptsrc": "46acc6475e731e5e", "vpt_deep": "bcfb815ac689d136",
    "zeroshot": "50d242b3695748ff",
}
TINY_RANDOM = {"arch": "tiny-test", "pretrained": None, "weights": "random"}
STORED = Path(__file__).parent / "data" / "store-v0"  # written by `bench run` of the code before the move


def test_built_in_code_versions_and_run_hashes_are_unchanged(tiny_backbone_spec):
    from bench.protocols import expand
    from bench.registry import code_version, get_method, list_methods, source_digest

    assert set(GOLDEN_CODE) <= set(list_methods())
    now = {n: code_version(get_method(n)) for n in GOLDEN_CODE}
    # a source revision that keeps every number bit-identical may keep its runs: methods/_same_code.py then
    # needs the line this message names (any other edit of a built-in must get new hashes: update GOLDEN_* then)
    assert now == GOLDEN_CODE, "revised built-in sources (registered name: {digest now: version before}): " + str(
        {n: {source_digest(get_method(n)): GOLDEN_CODE[n]} for n in GOLDEN_CODE if now[n] != GOLDEN_CODE[n]})
    configs = expand("fewshot", sorted(GOLDEN_HASH), datasets=["eurosat"], shots=[2], seeds=[1],
                     backbone=tiny_backbone_spec, data_root="/data", views=2)
    assert {c["method"]: config_hash(c) for c in configs} == GOLDEN_HASH


def test_a_result_stored_before_the_move_is_found_complete(world, tmp_path, capsys):
    import shutil

    from bench.protocols import expand

    shutil.copytree(STORED, tmp_path / "res")
    kw = dict(datasets=["eurosat"], shots=[1], seeds=[1], backbone={**TINY_RANDOM}, views=2)
    configs = (expand("fewshot", ["zeroshot"], **kw)
               + expand("fewshot", ["coop"], overrides={"epochs": 2}, **kw))
    assert all(Store(tmp_path / "res").is_complete(c) for c in configs)
    for method, extra in (("zeroshot", []), ("coop", ["--set", "epochs=2"])):
        out = _cli(capsys, "run", "--method", method, *extra, "--datasets", "eurosat", "--shots", "1",
                   "--seeds", "1", "--views", "2", "--backbone", "tiny-test", "--pretrained", "random",
                   "--data-root", world["root"], "--results", tmp_path / "res")[0]
        assert "1 already complete, 0 ran" in out
