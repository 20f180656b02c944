"""The GPU suite (marker ``gpu``; skipped without CUDA): tiny models on CUDA for every registered method in fp16
and bf16 autocast, a preempted and resumed run equal to an uninterrupted one, same-seed runs bit-identical (in one
process and in fresh processes), CPU- and GPU-filled feature caches kept apart, the README's example method, and
the run's device in the recorded memory and device name. ``scripts/gpu-smoke.sh`` runs it (about a minute on one
GPU) and adds feature-extraction throughput."""

import copy
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

# BENCH_GPU_SUITE_DEVICE=cpu runs the suite's own logic on a machine without a GPU (GPU-only checks are skipped)
DEVICE = os.environ.get("BENCH_GPU_SUITE_DEVICE", "cuda")
ON_CUDA = DEVICE.startswith("cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(),
                                                  reason="no CUDA device (run scripts/gpu-smoke.sh on a GPU machine)")]

from bench.launch import slurm as bs  # noqa: E402
from bench.engine import loop as bt  # noqa: E402
from bench.protocols import expand  # noqa: E402
from bench.engine.runner import execute, get_backbone  # noqa: E402
from bench.store import Store, config_hash  # noqa: E402

GPU_PRECISION = "amp" if ON_CUDA else "fp32"  # what "auto" resolves to


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("gpu-data")
    make_dataset_tree("eurosat", root, n_classes=4, per_class=(4, 2, 4))
    return str(root)


def config_of(data_root, spec, method, precision="amp", **overrides):
    from bench.registry import get_method

    cls = get_method(method)
    protocol = "fewshot" if "fewshot" in cls.protocols else "base2new"
    if protocol not in cls.protocols:
        pytest.skip(f"{method} supports neither fewshot nor base2new")
    hp = cls.default_hparams(protocol, "eurosat", 2)
    if "epochs" in hp and "epochs" not in overrides:
        overrides["epochs"] = 2  # tiny runs: a few steps of every code path
    (config,) = expand(protocol, [method], datasets=["eurosat"], shots=[2], seeds=[1], overrides=overrides,
                       backbone=spec, data_root=data_root, precision=precision, views=2)
    return config


def methods():
    from bench.registry import list_methods

    return list_methods()


def needs_bf16(precision):
    from bench.model.backbone import bf16_supported

    if precision == "bf16" and ON_CUDA and not bf16_supported(DEVICE):
        pytest.skip(f"{torch.cuda.get_device_name()} has no native bf16")


@pytest.mark.parametrize("precision", ["amp", "bf16"])
@pytest.mark.parametrize("method", methods())
def test_every_method_runs_on_cuda(data_root, tiny_backbone_spec, tmp_path, method, precision):
    needs_bf16(precision)
    config = config_of(data_root, tiny_backbone_spec, method, precision)
    result = execute(config, Store(tmp_path), device=DEVICE)
    resolved = result["backbone_resolved"]
    assert resolved["device"].startswith(DEVICE) and resolved["precision"] == precision
    if ON_CUDA:
        assert resolved["deterministic"] == bt.determinism_mode()
        assert result["environment"]["device"] == torch.cuda.get_device_name(torch.device(resolved["device"]))
        assert result["memory"]["gpu_peak_allocated_mb"] > 0
    for name, m in result["metrics"].items():
        assert m.get("unsupported") or 0 <= m["top1"] <= 100, name
    losses = result["train_stats"].get("loss")
    if losses is not None:
        assert all(torch.isfinite(torch.tensor(losses)))
        assert ("loss_scale" in result["train_stats"]) == (precision == "amp")  # GradScaler for fp16 only


def test_default_precision_on_gpu_is_fp16_autocast(tiny_backbone_spec):
    bb, _ = get_backbone(tiny_backbone_spec, "auto", DEVICE)
    assert bb.precision == GPU_PRECISION


@pytest.mark.parametrize("method", ["coop", "cocoop", "kgcoop"])
def test_same_seed_is_bit_identical_in_one_process(data_root, tiny_backbone_spec, tmp_path, method):
    config = config_of(data_root, tiny_backbone_spec, method)
    a = execute(copy.deepcopy(config), Store(tmp_path / "a"), device=DEVICE)
    b = execute(copy.deepcopy(config), Store(tmp_path / "b"), device=DEVICE)
    assert a["metrics"] == b["metrics"] and a["train_stats"]["loss"] == b["train_stats"]["loss"]


def test_same_seed_is_bit_identical_in_fresh_processes(data_root, tiny_ckpt, tmp_path):
    def run(results):
        cmd = [sys.executable, "-m", "bench.cli", "run", "--method", "coop,kgcoop", "--datasets", "eurosat",
               "--shots", "2", "--seeds", "1", "--set", "epochs=3", "--backbone", "tiny-test", "--pretrained",
               str(tiny_ckpt), "--data-root", data_root, "--results", str(results)]
        if not ON_CUDA:
            cmd += ["--precision", "fp32"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return {r["hash"]: r for r in Store(results).all_results()}

    a, b = run(tmp_path / "a"), run(tmp_path / "b")
    assert sorted(a) == sorted(b) and len(a) == 2
    for h in a:
        assert a[h]["backbone_resolved"]["device"].startswith(DEVICE)
        assert a[h]["metrics"] == b[h]["metrics"] and a[h]["train_stats"]["loss"] == b[h]["train_stats"]["loss"]


@pytest.mark.parametrize("method,stop_step", [("cocoop", 11), ("coop", 1)])
def test_preempted_and_resumed_run_equals_uninterrupted(data_root, tiny_backbone_spec, tmp_path, monkeypatch,
                                                        method, stop_step):
    """SIGUSR2 mid-step, as SLURM sends it: the state is saved after the step, the task exits; the rerun resumes
    mid-epoch on the GPU and ends bit-identical to an uninterrupted run."""
    from bench.registry import get_method

    config = config_of(data_root, tiny_backbone_spec, method, **({"batch_size": 2} if method == "coop" else {}))
    reference = execute(copy.deepcopy(config), Store(tmp_path / "ref"), device=DEVICE)
    store = Store(tmp_path / "slurm")
    payload = bs.task_payload([config], store, bs.load_profile(None, ["gpus=1"]))
    assert payload["device"] == "cuda" and payload["require_cuda"]
    if not ON_CUDA:
        payload = {**payload, "device": DEVICE, "require_cuda": False}

    def checkpoint_and_try_requeue(signum, frame):  # stands in for submitit's handler
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, checkpoint_and_try_requeue)
    cls = get_method(method)
    real, count = cls.loss, [0]

    def loss(self, features, labels):
        count[0] += 1
        if count[0] == stop_step:
            os.kill(os.getpid(), signal.SIGUSR2)
        return real(self, features, labels)

    try:
        monkeypatch.setattr(cls, "loss", loss)
        with pytest.raises(SystemExit):
            bs.RunTask()(payload)
        state = torch.load(bs.checkpoint_path(store, config), weights_only=True)
        assert state["epoch"] * 1000 + state["step"] > 0 and not store.is_complete(config)
        monkeypatch.undo()
        bs._STOPPING = False
        assert bs.RunTask()(payload)["done"] == [config_hash(config)]
    finally:
        signal.signal(signal.SIGUSR2, previous)
        bt.STOP.pending = None
        bs._STOPPING = False
    got = store.load(config)
    assert got["metrics"] == reference["metrics"]
    assert got["train_stats"]["loss"] == reference["train_stats"]["loss"]


def test_cpu_and_gpu_feature_caches_are_kept_apart(data_root, tiny_backbone_spec, tmp_path):
    """A CPU fp32 run and a GPU fp16 run must not read each other's cached features."""
    if not ON_CUDA:
        pytest.skip("needs a GPU")
    cpu = execute(config_of(data_root, tiny_backbone_spec, "zeroshot", "auto"), Store(tmp_path / "cpu"),
                  device="cpu")
    bb_cpu, cache_cpu = get_backbone(tiny_backbone_spec, "auto", "cpu")
    bb_gpu, cache_gpu = get_backbone(tiny_backbone_spec, "auto", DEVICE)
    assert bb_cpu.precision == "fp32" and bb_gpu.precision == "amp"
    root = os.path.join(data_root, "eurosat")
    assert cache_cpu.bank_dir(root, "eval") != cache_gpu.bank_dir(root, "eval")
    before = cache_gpu.encoded
    gpu = execute(config_of(data_root, tiny_backbone_spec, "zeroshot", "auto"), Store(tmp_path / "gpu"),
                  device=DEVICE)
    assert cache_gpu.encoded > before  # encoded its own features, did not read the CPU-filled bank
    assert cpu["backbone_resolved"]["precision"] == "fp32" and gpu["backbone_resolved"]["precision"] == "amp"


def test_readme_example_method_on_cuda(data_root, tiny_backbone_spec, tmp_path):
    """TrainData lives on the run's device: the README's prototype method mixes it with CUDA text features."""
    import re

    from bench import registry
    from bench.paths import repo_root
    from bench.engine.runner import build_train_data

    text = (repo_root() / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "register_method" in b)
    try:
        exec(compile(block, "README-example", "exec"), {})
        config = config_of(data_root, tiny_backbone_spec, "prototype")
        bb, cache = get_backbone(tiny_backbone_spec, config["precision"], DEVICE)
        train, _ = build_train_data(config, bb, cache, data_root)
        for t in (train.labels, train.view(0), train.eval_features, train.val_features, train.val_labels):
            assert t.device == torch.device(bb.device)
        result = execute(config, Store(tmp_path), device=DEVICE)
        assert 0 <= result["metrics"]["eurosat"]["top1"] <= 100
    finally:
        registry._METHODS.pop("prototype", None)


@pytest.mark.skipif(not ON_CUDA or torch.cuda.device_count() < 2, reason="the second-device check needs two GPUs")
def test_second_device_is_the_one_recorded(data_root, tiny_backbone_spec, tmp_path):
    result = execute(config_of(data_root, tiny_backbone_spec, "coop"), Store(tmp_path), device="cuda:1")
    assert result["backbone_resolved"]["device"] == "cuda:1"
    assert result["environment"]["device"] == torch.cuda.get_device_name(1)
    assert result["memory"]["gpu_peak_allocated_mb"] > 0


def test_gpu_results_are_json(data_root, tiny_backbone_spec, tmp_path):
    result = execute(config_of(data_root, tiny_backbone_spec, "coop"), Store(tmp_path), device=DEVICE)
    json.dumps(result)  # nothing CUDA-specific leaks into the stored record
