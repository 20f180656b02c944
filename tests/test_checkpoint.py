"""Checkpoints on the cluster path, on CPU: saved at the end of training (before evaluation), when the preemption
signal arrives (held until the step ends), within epochs by steps; a resumed run, mid-epoch included, ends with the
numbers of an uninterrupted one. Also: GPU profiles require CUDA, precision resolution, loss scaling, determinism
settings and the run's device in the recorded memory and device name (mocked where CUDA is needed)."""

import copy
import os
import signal
import subprocess
import sys

import pytest
import torch

from bench.launch import slurm as bs
from bench.engine import loop as bt
from bench.engine.checkpoint import FileCheckpointer, checkpoint_path
from bench.errors import BenchError
from bench.method import Checkpointer
from bench.protocols import expand
from bench.engine.runner import execute
from bench.store import Store, config_hash

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("ckpt-data")
    make_dataset_tree("eurosat", root, n_classes=3, per_class=(3, 2, 3))
    return str(root)


def config_of(data_root, spec, method, **overrides):
    (config,) = expand("fewshot", [method], datasets=["eurosat"], shots=[2], seeds=[1], overrides=overrides,
                       backbone=spec, data_root=data_root, views=2)
    return config


def same_run(a: dict, b: dict) -> None:
    """Bit-identical numbers: metrics and the per-epoch training losses."""
    assert a["hash"] == b["hash"]
    assert a["metrics"] == b["metrics"]
    assert a["train_stats"]["loss"] == b["train_stats"]["loss"]


@pytest.fixture
def fake_submitit_handler():
    """A SIGUSR2 handler standing in for submitit's (same name, so RunTask wraps it): calls the task's checkpoint()
    hook, then exits as submitit does after requeuing."""
    calls = []

    def checkpoint_and_try_requeue(signum, frame):
        calls.append(bt.STOP.active)
        bs.RunTask().checkpoint({})
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, checkpoint_and_try_requeue)
    yield calls
    signal.signal(signal.SIGUSR2, previous)
    bs._STOPPING = False
    bt.STOP.pending = None


def signal_at_step(monkeypatch, method_cls, n):
    """Send SIGUSR2 to this process from inside the n-th training step (mid-step, like a real signal)."""
    real = method_cls.loss
    count = [0]

    def loss(self, features, labels):
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGUSR2)
        return real(self, features, labels)

    monkeypatch.setattr(method_cls, "loss", loss)
    return count


@pytest.mark.parametrize("method,overrides,stop_step", [
    ("cocoop", {}, 9),                      # CoCoOp's defaults: 10 epochs, batch 1 (6 steps an epoch): mid-epoch 2
    ("coop", {"epochs": 1, "batch_size": 2, "n_ctx": 4}, 2),  # one epoch of 3 steps: mid-epoch 0
])
def test_preemption_signal_saves_at_the_step_boundary_and_resume_is_exact(
        data_root, tiny_backbone_spec, tmp_path, monkeypatch, fake_submitit_handler, method, overrides, stop_step):
    from bench.registry import get_method

    config = config_of(data_root, tiny_backbone_spec, method, **overrides)
    reference = execute(copy.deepcopy(config), Store(tmp_path / "ref"))
    store = Store(tmp_path / "slurm")
    payload = bs.task_payload([config], store, bs.load_profile())  # the default SLURM profile
    assert payload["checkpoint_every"] == 10 and not payload["require_cuda"]

    count = signal_at_step(monkeypatch, get_method(method), stop_step)
    with pytest.raises(SystemExit):
        bs.RunTask()(payload)
    assert fake_submitit_handler == [1]  # ran once, held while training, after the step ended
    assert count[0] == stop_step  # no further step started
    state = torch.load(checkpoint_path(store, config), weights_only=True)
    per_epoch = 6 if method == "cocoop" else 3
    assert (state["epoch"], state["step"]) == divmod(stop_step, per_epoch)
    assert not store.is_complete(config) and store.failure(config) is None

    monkeypatch.undo()
    count = signal_at_step(monkeypatch, get_method(method), 0)
    bs._STOPPING = False
    summary = bs.RunTask()(payload)
    assert summary["done"] == [config_hash(config)]
    epochs = int(config["hparams"]["epochs"])
    assert count[0] == epochs * per_epoch - stop_step  # only the remaining steps ran
    same_run(reference, store.load(config))
    assert not checkpoint_path(store, config).exists()


@pytest.mark.parametrize("method,overrides", [("cocoop", {}), ("coop", {"epochs": 1, "n_ctx": 4})])
def test_checkpoint_after_training_so_evaluation_never_retrains(data_root, tiny_backbone_spec, tmp_path, monkeypatch,
                                                                method, overrides):
    """A preemption during evaluation: the end-of-training checkpoint exists, the rerun only evaluates."""
    from bench.registry import get_method

    config = config_of(data_root, tiny_backbone_spec, method, **overrides)
    reference = execute(copy.deepcopy(config), Store(tmp_path / "ref"))
    store = Store(tmp_path / "s")
    ck = FileCheckpointer(checkpoint_path(store, config))
    cls = get_method(method)

    def preempted(self, features, classnames):
        raise SystemExit(-1)

    with monkeypatch.context() as m:
        m.setattr(cls, "logits", preempted)
        with pytest.raises(SystemExit):
            execute(config, store, checkpointer=ck, checkpoint_every=0)  # no periodic checkpoints at all
    state = ck.load()
    assert state is not None and state["epoch"] == int(config["hparams"]["epochs"]) and state["step"] == 0
    count = signal_at_step(monkeypatch, cls, 0)
    logs = []
    monkeypatch.setattr("bench.engine.runner.log.info", logs.append)
    result = execute(config, store, checkpointer=ck)
    assert count[0] == 0 and any("resumed from checkpoint at training complete" in x for x in logs)
    same_run(reference, result)
    assert not ck.path.exists()


class _MemoryCheckpointer(Checkpointer):
    def __init__(self, every_steps=0, die_after=None):
        self.state, self.saves, self.every_steps, self.die_after = None, [], every_steps, die_after

    def load(self):
        return copy.deepcopy(self.state)

    def save(self, state):
        self.state = copy.deepcopy(state)
        self.saves.append((state["epoch"], state["step"]))
        if self.die_after == len(self.saves):
            raise KeyboardInterrupt  # a hard kill right after this save

    def clear(self):
        self.state = None


def test_step_checkpoints_resume_mid_epoch_exactly(data_root, tiny_backbone_spec, tmp_path):
    config = config_of(data_root, tiny_backbone_spec, "cocoop", epochs=2)
    reference = execute(copy.deepcopy(config), Store(tmp_path / "ref"))
    store = Store(tmp_path / "s")
    ck = _MemoryCheckpointer(every_steps=4, die_after=2)
    with pytest.raises(KeyboardInterrupt):
        execute(config, store, checkpointer=ck)
    assert ck.saves == [(0, 4), (1, 2)]  # 6 steps per epoch: steps 4, 8 (= epoch 1, step 2)
    ck.die_after = None
    same_run(reference, execute(config, store, checkpointer=ck))
    assert ck.saves[2:] == [(2, 0)]  # resumed: the end of training (an epoch's last step is not a mid-epoch save)


def test_stop_request_outside_training_runs_the_handler_at_once():
    ran = []
    assert bt.STOP.defer(lambda: ran.append(1)) is False and not bt.STOP.requested
    with bt.STOP.training():
        assert bt.STOP.defer(lambda: ran.append(2)) is True and ran == []
        bt.STOP.release()
    assert ran == [2] and not bt.STOP.requested


def test_default_profile_checkpoint_policy_reaches_the_checkpointer(tmp_path):
    prof = bs.load_profile(None, ["checkpoint_every_steps=500", "checkpoint_every_min=15"])
    payload = bs.task_payload([], Store(tmp_path), prof)
    assert (payload["checkpoint_every_steps"], payload["checkpoint_every_min"]) == (500, 15.0)
    assert bs.load_profile()["checkpoint_every_min"] == 30.0
    with pytest.raises(BenchError, match="checkpoint_every_min"):
        bs.load_profile(None, ["checkpoint_every_min=soon"])


# ------------------------------------------------------------------------------------------ GPUs asked for, none given

@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_gpu_profile_without_cuda_fails_the_runs_in_one_line(data_root, tiny_backbone_spec, tmp_path):
    config = config_of(data_root, tiny_backbone_spec, "zeroshot")
    store = Store(tmp_path / "s")
    for overrides in (["gpus=1"], ["gres=gpu:a100:1"]):
        payload = bs.task_payload([config], store, bs.load_profile(None, overrides))
        assert payload["device"] == "cuda" and payload["require_cuda"]
        with pytest.raises(bs.RunsFailed):
            bs.RunTask()(payload)
        error = store.failure(config)["error"]
        assert "asks for GPUs" in error and "\n" not in error and not store.is_complete(config)
    cpu = bs.task_payload([config], store, bs.load_profile(None, ["gpus=1", "device=cpu"]))
    assert not cpu["require_cuda"]  # explicitly CPU on a GPU node is allowed
    with pytest.raises(BenchError, match="CUDA is not available") as e:  # the runner-side check
        execute(config, Store(tmp_path / "r"), device="cuda")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ precision

def test_auto_precision_is_fp16_autocast_on_gpu_and_fp32_on_cpu():
    from bench.model.backbone import _resolve_precision

    assert _resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert _resolve_precision("auto", torch.device("cuda")) == "amp"
    assert _resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_bf16_checks_real_support_on_the_runs_device(monkeypatch):
    import contextlib

    import bench.model.backbone as bb

    asked = []

    @contextlib.contextmanager
    def on_device(d):
        asked.append(("device", torch.device(d)))
        yield

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", on_device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: asked.append(("emulation", including_emulation)) or False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla V100-SXM2-32GB")
    assert bb.bf16_supported("cuda:1") is False
    assert asked == [("device", torch.device("cuda:1")), ("emulation", False)]
    with pytest.raises(BenchError, match="V100-SXM2-32GB has no native bf16") as e:
        bb._resolve_precision("bf16", torch.device("cuda:1"))
    assert "\n" not in str(e.value)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert bb._resolve_precision("bf16", torch.device("cuda:1")) == "bf16"


@pytest.mark.parametrize("precision,scaled", [("amp", True), ("bf16", False), ("fp32", False)])
def test_fp16_training_scales_the_loss(data_root, tiny_backbone_spec, tmp_path, precision, scaled):
    config = config_of(data_root, tiny_backbone_spec, "coop", epochs=2, n_ctx=4)
    config["precision"] = precision
    ck = _MemoryCheckpointer()
    result = execute(config, Store(tmp_path / precision), checkpointer=ck)
    assert result["backbone_resolved"]["precision"] == precision  # recorded in the result
    assert ("loss_scale" in result["train_stats"]) == scaled
    assert all(torch.isfinite(torch.tensor(result["train_stats"]["loss"])))
    if scaled:
        assert result["train_stats"]["loss_scale"]["final"] > 0 and ck.saves
        assert bt.grad_scaler("amp", "cpu") is not None and bt.grad_scaler("fp16", "cpu") is not None


# ------------------------------------------------------------------------------------------ determinism, device

def test_deterministic_cuda_settings(monkeypatch):
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        monkeypatch.delenv("BENCH_DETERMINISTIC", raising=False)
        assert bt.deterministic_cuda() == "strict"
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        monkeypatch.setenv("BENCH_DETERMINISTIC", "warn")
        assert bt.deterministic_cuda() == "warn" and torch.is_deterministic_algorithms_warn_only_enabled()
        monkeypatch.setenv("BENCH_DETERMINISTIC", "0")
        assert bt.deterministic_cuda() == "off" and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
    env = {k: v for k, v in os.environ.items() if k not in ("CUBLAS_WORKSPACE_CONFIG", "BENCH_DETERMINISTIC")}
    out = subprocess.run([sys.executable, "-c", "import os, bench; print(os.environ.get('CUBLAS_WORKSPACE_CONFIG'))"],
                         capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert out == ":4096:8"  # set on import, before anything can start CUDA


def test_peak_memory_and_device_name_read_the_runs_device(monkeypatch):
    from bench.engine import runner

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: asked.append(("mem", d)) or 3 * 2**20)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: asked.append(("name", d)) or "GPU-1")
    assert runner._peak_memory_mb("cuda:1")["gpu_peak_allocated_mb"] == 3.0
    assert runner.environment("cuda:1")["device"] == "GPU-1"
    assert asked == [("mem", torch.device("cuda:1")), ("name", torch.device("cuda:1"))]
    assert runner.environment("cpu")["device"].startswith("cpu")


def test_train_data_lives_on_the_runs_device(data_root, tiny_backbone_spec):
    from bench.engine.runner import build_train_data, get_backbone

    config = config_of(data_root, tiny_backbone_spec, "coop")
    bb, cache = get_backbone(tiny_backbone_spec)
    train, _ = build_train_data(config, bb, cache, data_root)
    dev = torch.device(bb.device)
    for t in (train.labels, train.view(0), train.eval_features, train.val_features, train.val_labels):
        assert t.device == dev


def test_preemption_while_an_epochs_view_is_encoded_saves_at_once(data_root, tiny_backbone_spec, tmp_path, monkeypatch,
                                                                 fake_submitit_handler):
    """Encoding an epoch's augmented view can take minutes (longer than SLURM's grace period): the state at that
    epoch boundary is saved inside the signal handler and the task exits without waiting for the next step."""
    from bench.features import TrainViews

    config = config_of(data_root, tiny_backbone_spec, "coop", epochs=2, n_ctx=4, batch_size=2)
    reference = execute(copy.deepcopy(config), Store(tmp_path / "ref"))
    store = Store(tmp_path / "slurm")
    payload = bs.task_payload([config], store, bs.load_profile(None, ["checkpoint_every=0"]))
    real_view = TrainViews.__call__

    def view(self, v):  # the signal arrives while epoch 1's view is being served
        if v == 1 and bt.STOP.active:
            os.kill(os.getpid(), signal.SIGUSR2)
        return real_view(self, v)

    monkeypatch.setattr(TrainViews, "__call__", view)
    count = signal_at_step(monkeypatch, __import__("bench.methods.coop", fromlist=["CoOp"]).CoOp, 0)
    with pytest.raises(SystemExit):
        bs.RunTask()(payload)
    state = torch.load(checkpoint_path(store, config), weights_only=True)
    assert (state["epoch"], state["step"], count[0]) == (1, 0, 3) and len(state["loss"]) == 1
    monkeypatch.undo()
    bs._STOPPING = False
    bs.RunTask()(payload)
    same_run(reference, store.load(config))


def test_an_op_without_deterministic_cuda_kernel_fails_in_one_line():
    from types import SimpleNamespace

    from bench.method import Context, TrainData

    module = torch.nn.Linear(4, 2)
    ctx = Context(backbone=SimpleNamespace(device="cpu", precision="fp32"), classnames=["a", "b"], template="{}",
                  dataset="x", hparams={}, seed=1, log=lambda m: None)
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 0, 1])
    train = TrainData(labels=y, view=lambda v: x, n_views=1, eval_features=x)

    def loss(f, labels):
        raise RuntimeError("index_add_cuda_ does not have a deterministic implementation, but you set "
                           "'torch.use_deterministic_algorithms(True)'. You can turn off ...\nmore text")

    with pytest.raises(BenchError, match="BENCH_DETERMINISTIC=warn") as e:
        bt.fit_epochs(module, loss, train, ctx, epochs=1, batch_size=2, lr=0.1)
    assert "\n" not in str(e.value) and "index_add_cuda_" in str(e.value)
    assert not bt.STOP.active  # the training marker is released on errors
