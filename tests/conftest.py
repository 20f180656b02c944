"""Test isolation: every test session gets its own cache and results store (never the repository's)."""

import os
import tempfile

import pytest
import torch

_SESSION_DIR = tempfile.mkdtemp(prefix="bench-tests-")
os.environ.setdefault("BENCH_CACHE", os.path.join(_SESSION_DIR, "cache"))
os.environ.setdefault("BENCH_RESULTS", os.path.join(_SESSION_DIR, "results"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
torch.set_num_threads(1)  # small models: one thread is fastest and avoids oversubscription

TINY = {"arch": "tiny-test", "pretrained": None, "weights": "random"}


@pytest.fixture
def tiny_backbone_spec():
    return dict(TINY)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A saved tiny-test checkpoint with fixed weights: the same model in every process (CLI, SLURM jobs)."""
    import open_clip

    import bench.model.backbone  # noqa: F401 - registers tiny-test

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(open_clip.create_model("tiny-test").state_dict(), path)
    return path
