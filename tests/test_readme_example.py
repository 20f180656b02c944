"""The README's "Adding a method" example is real code: one file, registered by name, runs through the harness."""

import re
import sys

import pytest
import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.paths import repo_root
from bench.protocols import expand
from bench.engine.runner import execute
from bench.store import Store


@pytest.fixture
def clean_registry():
    from bench import registry

    yield
    registry._METHODS.pop("prototype", None)  # keep the example out of the other tests' registry


def test_readme_example_method_runs(tmp_path, tiny_backbone_spec, clean_registry):
    from bench.registry import get_method, list_methods
    from bench.data.synth import make_dataset_tree

    text = (repo_root() / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "register_method" in b)
    exec(compile(block, "README-example", "exec"), {})
    assert "prototype" in list_methods() and get_method("prototype").description

    make_dataset_tree("eurosat", tmp_path / "data", n_classes=4, per_class=(6, 2, 5))
    grid = expand("fewshot", ["prototype"], datasets=["eurosat"], shots=[4], seeds=[1],
                  overrides={"alpha": 1.0}, backbone=tiny_backbone_spec, data_root=str(tmp_path / "data"))
    assert len(grid) == 1 and grid[0]["label"] == "prototype[alpha=1.0]"
    result = execute(grid[0], Store(tmp_path / "res"))
    m = result["metrics"]["eurosat"]
    assert m["n_test"] == 20 and 0 <= m["top1"] <= 100

    # alpha=1: nearest class mean of the cached few-shot features, recomputed here from the runner's own pieces
    from bench.engine.runner import build_train_data, get_backbone, _split_for

    bb, cache = get_backbone(tiny_backbone_spec)
    train, names = build_train_data(grid[0], bb, cache, str(tmp_path / "data"))
    protos = torch.stack([F.normalize(train.eval_features, dim=-1)[train.labels == c].mean(0) for c in range(4)])
    root, items, _ = _split_for(str(tmp_path / "data"), "eurosat", "all")
    feats = cache.get(root, [it.path for it in items], "eval")
    pred = (F.normalize(feats, dim=-1) @ F.normalize(protos, dim=-1).t()).argmax(1)
    labels = torch.tensor([it.label for it in items])
    assert m["top1"] == 100.0 * (pred == labels).float().mean().item()


# ------------------------------------------------------------------------------------------ methods from outside

def _readme_block() -> str:
    text = (repo_root() / "README.md").read_text()
    return next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "register_method" in b)


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as a new process sees it; user methods and $BENCH_METHODS_PATH are undone afterwards."""
    from bench import registry

    monkeypatch.setenv(registry.PATH_ENV, "")
    registry.list_methods()  # the built-ins, loaded once as in any process
    before = dict(registry._METHODS)
    dirs, mods = set(registry._DIRS_LOADED), set(sys.modules)
    yield registry
    registry._METHODS.clear()
    registry._METHODS.update(before)
    registry._DIRS_LOADED.clear()
    registry._DIRS_LOADED.update(dirs)
    for name in set(sys.modules) - mods:
        if name.startswith("_bench_user_methods_") or name.startswith("plugged_pkg"):
            del sys.modules[name]


@pytest.fixture(scope="module")
def all_data(tmp_path_factory):
    from bench.data.synth import make_all

    root = tmp_path_factory.mktemp("data")
    make_all(root, n_classes=4, per_class=(2, 1, 3))  # the 11 datasets and ImageNet's 4 variants, tiny
    return root


def test_readme_method_from_a_folder_runs_every_protocol_through_the_cli(tmp_path, all_data, tiny_ckpt,
                                                                         fresh_registry, capsys):
    from bench.cli import main

    folder = tmp_path / "my_methods"
    folder.mkdir()
    (folder / "prototype.py").write_text(_readme_block())
    common = ["--backbone", "tiny-test", "--pretrained", tiny_ckpt, "--data-root", all_data, "--shots", "2",
              "--seeds", "1", "--results", tmp_path / "res", "--methods-dir", folder]
    cls = None
    for protocol in ("fewshot", "base2new", "domain_shift", "cross_dataset"):
        datasets = ["--datasets", "eurosat"] if protocol in ("fewshot", "base2new") else []
        argv = ["run", "--protocol", protocol, "--method", "prototype,zeroshot", *datasets, *common]
        assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
        assert "0 failed" in capsys.readouterr().out
        cls = cls or fresh_registry.get_method("prototype")
        assert protocol in cls.protocols
        assert main([str(a) for a in ["table", "--protocol", protocol, *datasets, "--seeds", "1",
                                      "--results", tmp_path / "res", "--methods-dir", folder]]) == 0
        assert "prototype" in capsys.readouterr().out
    results = Store(tmp_path / "res").all_results()
    by = {(r["config"]["method"], r["config"]["protocol"]): r["metrics"] for r in results}
    assert len(by) == 8
    assert len(by[("prototype", "cross_dataset")]) == 11 and len(by[("prototype", "domain_shift")]) == 5
    for metrics in by.values():
        assert all(0 <= m["top1"] <= 100 and not m.get("unsupported") for m in metrics.values())
    # classes never trained on keep the zero-shot text weights: new classes score as zero-shot CLIP does
    assert by[("prototype", "base2new")]["eurosat:new"]["per_class"] == \
        by[("zeroshot", "base2new")]["eurosat:new"]["per_class"]
    assert by[("prototype", "cross_dataset")]["dtd"]["per_class"] == by[("zeroshot", "cross_dataset")]["dtd"]["per_class"]


def test_method_folder_from_the_environment_with_a_helper_sibling(tmp_path, fresh_registry, monkeypatch):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "_helpers.py").write_text("ALPHA = 0.25\n")
    (folder / "blend.py").write_text(
        "from _helpers import ALPHA\nfrom bench.method import Method\nfrom bench.registry import register_method\n\n"
        "@register_method('blend')\nclass Blend(Method):\n    description = 'x'\n    needs_training = False\n\n"
        "    @classmethod\n    def default_hparams(cls, protocol, dataset, shots):\n        return {'alpha': ALPHA}\n")
    monkeypatch.setenv(fresh_registry.PATH_ENV, str(folder))
    monkeypatch.setattr(fresh_registry, "_loaded", False)
    assert "blend" in fresh_registry.list_methods() and "coop" in fresh_registry.list_methods()
    cls = fresh_registry.get_method("blend")
    assert cls.default_hparams("fewshot", "x", 0) == {"alpha": 0.25}
    version = fresh_registry.code_version(cls)
    # the helper sibling is part of the method's code version
    related = [m.__name__ for m in fresh_registry._related_modules(sys.modules[cls.__module__])]
    assert "_helpers" in related, related
    assert version == fresh_registry.code_version(cls)


def test_broken_method_file_is_one_line(tmp_path, fresh_registry, capsys):
    from bench.cli import main

    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "broken.py").write_text("import torch\n\nx = 1\nraise RuntimeError('no good\\nat all')\n")
    assert main(["list", "methods", "--methods-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{folder / 'broken.py'}:4: RuntimeError: no good at all" in err
    assert main(["list", "methods", "--methods-dir", str(tmp_path / "nope")]) == 2
    assert "methods folder not found" in capsys.readouterr().err


def test_entry_point_methods_are_registered(tmp_path, fresh_registry, monkeypatch):
    site = tmp_path / "site"
    (site / "plugged_pkg").mkdir(parents=True)
    (site / "plugged_pkg" / "__init__.py").write_text(
        "from bench.method import Method\n\nclass Plugged(Method):\n    description = 'from a package'\n"
        "    needs_training = False\n")
    info = site / "plugged_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugged-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clip_prompt_bench.methods]\nplugged = plugged_pkg:Plugged\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(fresh_registry, "_loaded", False)
    assert "plugged" in fresh_registry.list_methods()
    assert fresh_registry.get_method("plugged").name == "plugged"

    (info / "entry_points.txt").write_text("[clip_prompt_bench.methods]\nbroken = plugged_pkg:Missing\n")
    fresh_registry._METHODS.pop("plugged")
    monkeypatch.setattr(fresh_registry, "_loaded", False)
    with pytest.raises(BenchError, match="cannot load method entry point broken = plugged_pkg:Missing "
                                         r"\(package plugged-pkg"):
        fresh_registry.list_methods()


# ------------------------------------------------------------------ method files written against the old imports

OLD_PATHS = {"Method": "bench.method", "Param": "bench.method", "cosine_logits": "bench.method",
             "handcrafted_text_features": "bench.method", "register_method": "bench.registry",
             "fit_epochs": "bench.train", "fit_image_epochs": "bench.imagestream", "encode_image": "bench.prompted"}

OLD_FEATURE_METHOD = '''
import torch
import torch.nn.functional as F

from bench.method import Method, Param, cosine_logits, handcrafted_text_features
from bench.registry import register_method
from bench.train import fit_epochs


@register_method("old_residual")
class OldResidual(Method):
    """A learned residual on the zero-shot text classifier, trained with the feature loop."""

    description = "zero-shot text weights + a learned residual"
    hparam_spec = {"epochs": Param(int, min=1), "lr": Param(float, min=0)}

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return {"epochs": 2, "lr": 0.5}

    def __init__(self, ctx):
        super().__init__(ctx)
        text = handcrafted_text_features(ctx.backbone, ctx.template, ctx.classnames)
        self.residual = torch.nn.Parameter(torch.zeros_like(text))

    def weights(self, classnames):
        text = handcrafted_text_features(self.ctx.backbone, self.ctx.template, classnames)
        seen = [self.ctx.classnames.index(c) if c in self.ctx.classnames else None for c in classnames]
        return torch.stack([t + self.residual[i] if i is not None else t for t, i in zip(text, seen)])

    def fit(self, train):
        loss = lambda f, y: F.cross_entropy(cosine_logits(f, self.weights(self.ctx.classnames), 10.0), y)
        return fit_epochs(torch.nn.ParameterList([self.residual]), loss, train, self.ctx,
                          epochs=self.hp["epochs"], batch_size=4, lr=self.hp["lr"])

    def logits(self, features, classnames):
        with torch.no_grad():
            return cosine_logits(features, self.weights(classnames), self.ctx.backbone.logit_scale)
'''


def _with_old_imports(block: str) -> str:
    """The README's example with its ``from bench.api import ...`` line split over the modules that held those
    names before bench.api existed (bench.method, bench.registry, bench.train, bench.imagestream, bench.prompted)."""
    line = next(ln for ln in block.splitlines() if ln.startswith("from bench.api import "))
    names = [n.strip() for n in line[len("from bench.api import "):].split(",")]
    old = "\n".join(f"from {OLD_PATHS[n]} import {n}" for n in names)
    return block.replace(line, old)


def test_method_folder_written_against_the_old_imports_runs_unchanged(tmp_path, tiny_ckpt, fresh_registry, capsys):
    from bench.cli import main
    from bench.data.synth import make_dataset_tree

    folder = tmp_path / "old_methods"
    folder.mkdir()
    (folder / "old_residual.py").write_text(OLD_FEATURE_METHOD)
    text = (repo_root() / "README.md").read_text()
    image_block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if 'trains_on = "images"' in b)
    (folder / "old_vpt.py").write_text(_with_old_imports(image_block).replace('"shallow_vpt"', '"old_vpt"'))
    assert "from bench.prompted import encode_image" in (folder / "old_vpt.py").read_text()

    make_dataset_tree("eurosat", tmp_path / "data", n_classes=3, per_class=(4, 1, 3))
    argv = ["run", "--method", "old_residual,old_vpt", "--datasets", "eurosat", "--shots", "2", "--seeds", "1",
            "--set", "epochs=2", "--backbone", "tiny-test", "--pretrained", tiny_ckpt,
            "--data-root", tmp_path / "data", "--results", tmp_path / "res", "--methods-dir", folder]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert "2 ran, 0 failed" in capsys.readouterr().out
    results = {r["config"]["method"]: r for r in Store(tmp_path / "res").all_results()}
    assert set(results) == {"old_residual", "old_vpt"}
    for r in results.values():
        assert len(r["train_stats"]["loss"]) == 2 and r["metrics"]["eurosat"]["n_test"] == 9
