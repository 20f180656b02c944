"""The image-side input path (bench/engine/imagestream.py) and the deep-prompt methods through the real runner."""

import pytest
import torch

from bench.protocols import expand
from bench.engine.runner import execute, get_backbone
from bench.engine.checkpoint import FileCheckpointer
from bench.store import Store

IMAGE_METHODS = ["vpt_deep", "ivlp", "maple", "promptsrc"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt):
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("data")
    make_dataset_tree("eurosat", root, n_classes=4, per_class=(6, 2, 5))
    return {"root": root, "ckpt": tiny_ckpt}


def grid(world, method, protocol="base2new", seeds=(1,), **overrides):
    backbone = {"arch": "tiny-test", "pretrained": str(world["ckpt"])}
    return expand(protocol, [method], datasets=["eurosat"], shots=[4], seeds=list(seeds), overrides=overrides,
                  backbone=backbone, data_root=str(world["root"]))


class StopAfter(FileCheckpointer):
    """Saves like the SLURM checkpointer, then 'kills' the run after the k-th save."""

    def __init__(self, path, stop_after):
        super().__init__(path)
        self.stop_after, self.saves = stop_after, 0

    def save(self, state):
        super().save(state)
        self.saves += 1
        if self.saves == self.stop_after:
            raise KeyboardInterrupt("preempted")


def test_killed_image_run_resumes_to_identical_metrics(world, tmp_path):
    # PromptSRC: frozen features of the same batch, a GPA aggregate in the checkpoint, 2 DataLoader workers.
    import os
    os.environ["BENCH_WORKERS"] = "2"
    try:
        (config,) = grid(world, "promptsrc", epochs=4, text_depth=2, vision_depth=2)
        full = execute(config, Store(tmp_path / "a"))
        store = Store(tmp_path / "b")
        ck = StopAfter(tmp_path / "run.ckpt.pt", stop_after=2)
        with pytest.raises(KeyboardInterrupt):
            execute(config, store, checkpointer=ck, checkpoint_every=1)
        assert ck.path.exists() and store.load(config) is None
        assert torch.load(ck.path, weights_only=True)["epoch"] == 2
        ck.stop_after = -1
        resumed = execute(config, store, checkpointer=ck, checkpoint_every=1)
    finally:
        os.environ.pop("BENCH_WORKERS")
    assert not ck.path.exists()  # cleared once the result is stored
    assert ck.saves == 4  # epochs 1, 2, then 3 and the end of training (4) after resuming at 2 (not 1, 2 again)
    assert resumed["train_stats"]["loss"] == full["train_stats"]["loss"]
    for name, m in full["metrics"].items():
        assert resumed["metrics"][name]["top1"] == m["top1"]
        assert resumed["metrics"][name]["per_class"] == m["per_class"]


def test_stream_is_seeded_per_run_and_independent_of_workers(world):
    from bench.engine.imagestream import build_image_train_data

    (config,) = grid(world, "ivlp")
    bb, _ = get_backbone(config["backbone"], device="cpu")

    def epoch(cfg, e, workers):
        data, _ = build_image_train_data(cfg, bb, world["root"], workers=workers)
        return [(b.images.clone(), b.labels.clone(), b.frozen.clone()) for b in data.loader(4).epoch(e)]

    a0, b0 = epoch(config, 0, 0), epoch(config, 0, 2)
    assert len(a0) == 2  # 8 base images (4 shots x 2 base classes), batch 4
    for (xa, ya, fa), (xb, yb, fb) in zip(a0, b0):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.allclose(fa, bb.encode_image(xa))  # frozen features of the very same augmented images
    a1 = epoch(config, 1, 0)
    assert not torch.equal(a0[0][0], a1[0][0])  # a fresh augmentation every epoch
    (other,) = grid(world, "ivlp", seeds=(2,))
    assert not torch.equal(a0[0][0], epoch(other, 0, 0)[0][0])  # and per run seed


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_image_methods_run_and_train_only_their_prompts(world, tmp_path, method):
    from bench.data import get_spec
    from bench.engine.imagestream import build_image_train_data
    from bench.engine.runner import set_seed
    from bench.method import Context
    from bench.registry import get_method

    (config,) = grid(world, method, epochs=2)
    result = execute(config, Store(tmp_path))
    assert set(result["metrics"]) == {"eurosat:base", "eurosat:new"}
    assert all(0 <= m["top1"] <= 100 and m["n_test"] == 10 for m in result["metrics"].values())
    assert len(result["train_stats"]["loss"]) == 2

    # the run's training again, by the runner's steps, to look at the tensors: every prompt tensor moved, the
    # backbone (parameters and buffers) did not, and the method holds no other trainable tensor
    bb, _ = get_backbone(config["backbone"], device="cpu")
    frozen = {k: v.clone() for k, v in bb.model.state_dict().items()}
    set_seed(1)
    train, classnames = build_image_train_data(config, bb, world["root"])
    ctx = Context(backbone=bb, classnames=classnames, template=get_spec("eurosat").template, dataset="eurosat",
                  hparams=dict(config["hparams"]), seed=1, protocol="base2new")
    m = get_method(method)(ctx)
    prompts = {n: p.detach().clone() for n, p in m.prompts.named_parameters()}
    assert prompts and all(p.requires_grad for p in m.prompts.parameters())
    set_seed(1)
    assert m.fit(train)["loss"] == result["train_stats"]["loss"]  # the same training as the run's
    moved = {n for n, p in m.prompts.named_parameters() if not torch.equal(prompts[n], p.detach())}
    assert moved == set(prompts)
    assert all(torch.equal(frozen[k], v) for k, v in bb.model.state_dict().items())
    trainable = {id(p) for v in vars(m).values() if isinstance(v, torch.nn.Module) for p in v.parameters()
                 if p.requires_grad}
    assert trainable == {id(p) for p in m.prompts.parameters()}


def test_reference_defaults_per_protocol():
    from bench.registry import get_method

    maple = get_method("maple")
    hp = maple.default_hparams("base2new", "dtd", 16)
    assert {k: hp[k] for k in ("n_ctx_text", "text_depth", "lr", "epochs", "batch_size")} == \
        {"n_ctx_text": 2, "text_depth": 9, "lr": 0.0035, "epochs": 5, "batch_size": 4}
    assert {k: maple.default_hparams("cross_dataset", "imagenet", 16)[k] for k in ("text_depth", "lr", "epochs")} \
        == {"text_depth": 3, "lr": 0.0026, "epochs": 2}
    src = get_method("promptsrc")
    hp = src.default_hparams("base2new", "dtd", 16)
    assert (hp["n_ctx_text"], hp["n_ctx_vision"], hp["text_depth"], hp["epochs"], hp["gpa_mean"], hp["gpa_std"]) \
        == (4, 4, 9, 20, 15.0, 1.0)
    assert src.default_hparams("fewshot", "dtd", 16)["gpa_mean"] == 45.0
    assert src.default_hparams("fewshot", "sun397", 16)["gpa_mean"] == 30.0
    for name in IMAGE_METHODS:
        cls = get_method(name)
        assert cls.trains_on == "images"
        for protocol in cls.protocols:
            assert set(cls.default_hparams(protocol, "dtd", 16)) <= set(cls.hparam_spec)
