"""The README's image-side example method is real code: registered from the README, run through the CLI."""

import re

import pytest

from bench.paths import repo_root
from bench.store import Store


@pytest.fixture
def clean_registry():
    from bench import registry

    yield
    registry._METHODS.pop("shallow_vpt", None)


def test_readme_image_side_example_runs_through_the_cli(tmp_path, tiny_ckpt, clean_registry, capsys):
    from bench.cli import main
    from bench.registry import get_method
    from bench.data.synth import make_dataset_tree

    text = (repo_root() / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if 'trains_on = "images"' in b)
    exec(compile(block, "README-image-example", "exec"), {})
    assert get_method("shallow_vpt").trains_on == "images"

    make_dataset_tree("eurosat", tmp_path / "data", n_classes=4, per_class=(6, 2, 5))
    code = main(["run", "--method", "shallow_vpt", "--protocol", "base2new", "--datasets", "eurosat",
                 "--seeds", "1", "--shots", "4", "--set", "epochs=2", "--backbone", "tiny-test",
                 "--pretrained", str(tiny_ckpt), "--data-root", str(tmp_path / "data"),
                 "--results", str(tmp_path / "res")])
    assert code == 0, capsys.readouterr().err
    (result,) = Store(tmp_path / "res").all_results()
    assert result["config"]["label"] == "shallow_vpt[epochs=2]"
    assert len(result["train_stats"]["loss"]) == 2
    assert {k: v["n_test"] for k, v in result["metrics"].items()} == {"eurosat:base": 10, "eurosat:new": 10}
