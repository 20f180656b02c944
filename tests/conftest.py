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
