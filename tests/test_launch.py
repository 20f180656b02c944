"""Launchers: the local and SLURM launchers do not import each other; packing and cached views ask the method
(its declared hooks), never its name; torch's CPU threads come from BENCH_THREADS only, recorded in each result."""

import json
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from bench import registry
from bench.cli import main
from bench.launch.slurm import pack
from bench.method import Method
from bench.protocols import expand
from bench.store import Store

TINY = {"arch": "tiny-test", "pretrained": None, "weights": "random"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt):
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("data")
    make_dataset_tree("eurosat", root, n_classes=3, per_class=(3, 2, 3))
    return {"root": root, "ckpt": tiny_ckpt}


@pytest.mark.parametrize("module,other", [("bench.launch.slurm", "bench.launch.local"),
                                          ("bench.launch.local", "bench.launch.slurm")])
def test_launchers_do_not_import_each_other(module, other):
    code = f"import sys, {module}; assert {other!r} not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


class Slow(Method):
    """Trains in 'rounds', not epochs: its hooks say so."""

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return {"rounds": 500}

    @classmethod
    def train_epochs(cls, hparams):
        return hparams["rounds"]


class Cheap(Slow):
    @classmethod
    def estimated_cost(cls, hparams, n_train):
        return 0.0


@pytest.fixture
def user_methods(monkeypatch):
    for name, cls in (("zz_slow", Slow), ("zz_cheap", Cheap)):
        monkeypatch.setitem(registry._METHODS, name, cls)


def test_packing_and_views_ask_the_method(user_methods, tmp_path):
    grid = expand("fewshot", ["zz_slow", "zz_cheap", "coop", "linear_probe", "zeroshot"], datasets=["eurosat"],
                  shots=[16], seeds=[1, 2], backbone=TINY, data_root=str(tmp_path), views=8)
    slow = [c for c in grid if c["method"] == "zz_slow"]
    assert [c["views"] for c in slow] == [8, 8]  # min(--views, train_epochs): the hook, not hparams["epochs"]
    assert expand("fewshot", ["zz_slow"], datasets=["eurosat"], shots=[1], seeds=[1], backbone=TINY,
                  data_root=str(tmp_path))[0]["views"] == 500
    tasks = pack(grid, 16, 20000)  # EuroSAT 16 shots: 160 images; 500 rounds -> 80000 > 20000
    alone = sorted(t[0]["method"] for t in tasks if len(t) == 1)
    assert alone == ["coop", "coop", "zz_slow", "zz_slow"]  # CoOp: 200 epochs x 160 images
    packed = sorted(c["method"] for t in tasks if len(t) > 1 for c in t)
    assert packed == ["linear_probe", "linear_probe", "zeroshot", "zz_cheap", "zz_cheap"]


def test_bad_bench_threads_is_one_line_before_any_work(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BENCH_THREADS", "two")
    code = main(["run", "--method", "zeroshot", "--datasets", "eurosat", "--backbone", "tiny-test", "--pretrained",
                 str(world["ckpt"]), "--data-root", str(world["root"]), "--results", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert code != 0 and "BENCH_THREADS='two'" in err and "Traceback" not in err
    assert not (tmp_path / "res").exists()


def test_threads_from_bench_threads_are_recorded_not_hashed(world, tmp_path, monkeypatch, capsys):
    args = ["run", "--method", "zeroshot", "--datasets", "eurosat", "--backbone", "tiny-test", "--pretrained",
            str(world["ckpt"]), "--data-root", str(world["root"])]
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("BENCH_THREADS", "2")
        assert main([*args, "--results", str(tmp_path / "a")]) == 0
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("BENCH_THREADS", "1")
        assert main([*args, "--results", str(tmp_path / "b")]) == 0
    finally:
        torch.set_num_threads(before)
    (a,), (b,) = Store(tmp_path / "a").all_results(), Store(tmp_path / "b").all_results()
    assert (a["environment"]["torch_threads"], b["environment"]["torch_threads"]) == (2, 1)
    assert a["hash"] == b["hash"]


def test_hint_when_another_process_of_this_host_shares_an_oversubscribed_cpu(world, tmp_path, monkeypatch, capsys):
    """A run held by another live process of this host, with more torch threads than CPUs: one line says what to
    set; the run is taken over once that process is gone."""
    from bench.launch import launch_local
    from bench.launch import local

    (config,) = expand("fewshot", ["zeroshot"], datasets=["eurosat"], backbone=TINY, data_root=str(world["root"]))
    store = Store(tmp_path / "res")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    threading.Thread(target=other.wait, daemon=True).start()  # reaped when it ends (a zombie's pid stays alive)
    path = store.claim_path(config)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "time": time.time()}))
    monkeypatch.delenv("BENCH_THREADS", raising=False)
    monkeypatch.setattr(local, "usable_cpus", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        summary = launch_local([config], store, device="cpu")
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert "2 processes x 2 torch threads on 2 CPU(s)" in err and "BENCH_THREADS=1" in err
    assert summary["ran"] == 1 and store.is_complete(config)
