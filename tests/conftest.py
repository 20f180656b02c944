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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (two OpenMP threads on a busy 2-core box are ~100x slower); restores the
    count when the module ends. Not autouse: the method test modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")`` (others, e.g. test_report, set their own count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def bb():
    """The tiny random backbone, initialised under seed 0 without touching the global RNG stream (helpers in
    tests/methodkit.py). test_features.py and test_lora.py define their own ``bb`` (a saved checkpoint; random
    biases), which take precedence in those modules."""
    from bench.model.backbone import create_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_backbone("tiny-test", None)
