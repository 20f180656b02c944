"""The README's "Adding a method" example is real code: one file, registered by name, runs through the harness."""

import re

import pytest
import torch
import torch.nn.functional as F

from bench.paths import repo_root
from bench.protocols import expand
from bench.runner import execute
from bench.store import Store


@pytest.fixture
def clean_registry():
    from bench import registry

    yield
    registry._METHODS.pop("prototype", None)  # keep the example out of the other tests' registry


def test_readme_example_method_runs(tmp_path, tiny_backbone_spec, clean_registry):
    from bench.registry import get_method, list_methods
    from bench.synth import make_dataset_tree

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
    from bench.runner import build_train_data, get_backbone, _split_for

    bb, cache = get_backbone(tiny_backbone_spec)
    train, names = build_train_data(grid[0], bb, cache, str(tmp_path / "data"))
    protos = torch.stack([F.normalize(train.eval_features, dim=-1)[train.labels == c].mean(0) for c in range(4)])
    root, items, _ = _split_for(str(tmp_path / "data"), "eurosat", "all")
    feats = cache.get(root, [it.path for it in items], "eval")
    pred = (F.normalize(feats, dim=-1) @ F.normalize(protos, dim=-1).t()).argmax(1)
    labels = torch.tensor([it.label for it in items])
    assert m["top1"] == 100.0 * (pred == labels).float().mean().item()
