"""Every registered method is inductive: built-in ones, and a user's method loaded from a folder.

Each method is trained once through the runner's own path (``bench.engine.runner.train_run``, cheap epochs) on a
synthetic tree, then its test split is scored through ``bench.engine.runner.evaluate`` three ways:
(a) with the test items' labels permuted: every logit is unchanged (labels never reach a method);
(b) on a subset of the test split, in another order: each image's logits equal its logits when the whole split
    is scored (max |Δ| <= 1e-5), so nothing is learned from the other test images (no transduction).
A method that declares ``transductive = True`` is exempt from (b) and its rows are marked in tables; the user
method here that normalises with the test batch's statistics fails (b) — the check can fail.
"""

import dataclasses
import textwrap

import pytest
import torch

from bench.registry import get_method, list_methods

BUILTIN = list_methods()

INDUCTIVE_USER = '''
import torch
from bench.api import Method, Param, FeatureBatches, fit, handcrafted_text_features, register_method


@register_method("leak_user_probe")
class UserProbe(Method):
    """A user's linear head on cached features, initialised from the hand-crafted prompt, SGD on the views."""
    hparam_spec = {"epochs": Param(int, min=1)}

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return {"epochs": 2}

    def fit(self, train):
        text = handcrafted_text_features(self.ctx.backbone, self.ctx.template, self.ctx.classnames)
        self.head = torch.nn.Linear(text.shape[1], len(self.ctx.classnames))
        with torch.no_grad():
            self.head.weight.copy_(text)
            self.head.bias.zero_()
        loss = lambda x, y: torch.nn.functional.cross_entropy(self.head(x), y)  # noqa: E731
        return fit(self.head, loss, FeatureBatches(train, 4, self.ctx.seed, self.ctx.device), self.ctx,
                   epochs=int(self.hp["epochs"]), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))

    def logits(self, features, classnames):
        return self.head(features)
'''

TRANSDUCTIVE_USER = '''
import torch
from bench.api import Method, handcrafted_text_features, register_method


@register_method("leak_user_transductive")
class UserTransductive(Method):
    """Centres the test features on the mean of the evaluated batch: it uses the test set at evaluation."""
    needs_training = False
    transductive = True

    def logits(self, features, classnames):
        text = handcrafted_text_features(self.ctx.backbone, self.ctx.template, list(classnames))
        return (features - features.mean(0, keepdim=True)) @ text.t()
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt):
    from bench.cli import _weights_id
    from bench.data.synth import make_dataset_tree
    from bench.registry import load_methods_dir

    root = tmp_path_factory.mktemp("leak-data")
    make_dataset_tree("caltech101", root, n_classes=4, per_class=(3, 2, 5))
    folder = tmp_path_factory.mktemp("leak-methods")
    (folder / "user_probe.py").write_text(textwrap.dedent(INDUCTIVE_USER))
    (folder / "user_transductive.py").write_text(textwrap.dedent(TRANSDUCTIVE_USER))
    load_methods_dir(folder)
    backbone = {"arch": "tiny-test", "pretrained": str(tiny_ckpt), "weights": _weights_id(str(tiny_ckpt))}
    return root, backbone


def cheap(cls, hp: dict) -> dict:
    """Overrides that make a run cheap: every epoch / iteration count at its smallest sensible value."""
    out = {}
    for key, value in hp.items():
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if any(word in key for word in ("epoch", "iters", "iterations")):
            spec = cls.hparam_spec.get(key)
            out[key] = max(2, int(spec.min) if spec is not None and spec.min is not None else 1)
    return out


def scored(method: str, world):
    """(run, (root, items, names), logits of the whole test split) of one method trained through the runner."""
    from bench.engine.runner import _split_for, evaluate, train_run
    from bench.protocols import expand

    root, backbone = world
    cls = get_method(method)
    hp = cls.default_hparams("fewshot", "caltech101", 2)
    (config,) = expand("fewshot", [method], datasets=["caltech101"], shots=[2], seeds=[1], overrides=cheap(cls, hp),
                       backbone=backbone, views=2, data_root=str(root))
    run = train_run(config, str(root))
    split = _split_for(str(root), "caltech101", "all")
    with run.ctx.evaluating("caltech101"):
        full = evaluate(run, *split)
    return run, split, full


def check_inductive(method: str, world) -> tuple[bool, float]:
    """(a) holds (asserted); returns whether (b) holds and the largest |Δ| of the subset's logits."""
    from bench.engine.runner import evaluate

    run, (root, items, names), full = scored(method, world)
    assert full.shape == (len(items), len(names)) and torch.isfinite(full).all()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(names), generator=g).tolist()
    relabelled = [dataclasses.replace(it, label=perm[it.label], classname=names[perm[it.label]]) for it in items]
    with run.ctx.evaluating("caltech101"):
        permuted = evaluate(run, root, relabelled, names)
        subset_idx = list(range(len(items)))[::-3]  # every third image, in reverse order
        subset = evaluate(run, root, [items[i] for i in subset_idx], names)
    assert torch.equal(permuted, full), f"{method}: predictions depend on the test labels"
    delta = float((subset - full[subset_idx]).abs().max())
    return delta <= 1e-5, delta


@pytest.mark.parametrize("method", BUILTIN)
def test_every_builtin_method_is_inductive(method, world):
    assert not get_method(method).transductive, f"{method} declares itself transductive"
    ok, delta = check_inductive(method, world)
    assert ok, f"{method}: a test image's logits change with the other test images scored (max |Δ| {delta:.2e})"


def test_a_user_method_is_checked_too_and_a_transductive_one_is_caught_and_marked(world, tmp_path, capsys):
    from bench.cli import main

    assert "leak_user_probe" in list_methods() and "leak_user_transductive" in list_methods()
    ok, delta = check_inductive("leak_user_probe", world)
    assert ok, delta
    ok, delta = check_inductive("leak_user_transductive", world)
    assert not ok and delta > 1e-3  # the check fails for a method that uses the test batch
    # declared, it is run and its rows are marked in tables
    root, backbone = world
    args = ["--backbone", "tiny-test", "--pretrained", backbone["pretrained"], "--data-root", str(root),
            "--results", str(tmp_path / "res"), "--datasets", "caltech101", "--method", "leak_user_transductive"]
    assert main(["run", *args]) == 0
    assert main(["table", "--results", str(tmp_path / "res"), "--method", "leak_user_transductive"]) == 0
    out = capsys.readouterr().out
    assert "transductive: uses the unlabelled test images at evaluation" in out
