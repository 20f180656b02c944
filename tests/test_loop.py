"""The one training loop (bench.engine.loop.fit) on the image-side path: an image-side method (PromptSRC, with its
Gaussian aggregate in buffers) interrupted mid-epoch, by a checkpoint-and-die or by the preemption request, resumes
mid-epoch without decoding the skipped batches and ends with the numbers of an uninterrupted run; a preemption
during evaluation does not retrain; the preemption signal is handled once, by the main process, with DataLoader
workers (forked workers inherit the handlers)."""

import copy
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from bench.engine import imagestream
from bench.engine import loop as bt
from bench.engine.checkpoint import FileCheckpointer
from bench.engine.runner import execute
from bench.protocols import expand
from bench.store import Store

STEPS = 4  # 8 base images (4 shots x 2 base classes), batch 2


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt):
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("loop-data")
    make_dataset_tree("eurosat", root, n_classes=4, per_class=(6, 2, 5))
    return {"root": root, "ckpt": tiny_ckpt}


def promptsrc(world, **overrides):
    (config,) = expand("base2new", ["promptsrc"], datasets=["eurosat"], shots=[4], seeds=[1],
                       overrides={"epochs": 3, "batch_size": 2, "text_depth": 2, "vision_depth": 2, **overrides},
                       backbone={"arch": "tiny-test", "pretrained": str(world["ckpt"])}, data_root=str(world["root"]))
    return config


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    return execute(copy.deepcopy(promptsrc(world)), Store(tmp_path_factory.mktemp("ref")))


def same_run(a: dict, b: dict) -> None:
    assert a["hash"] == b["hash"] and a["train_stats"]["loss"] == b["train_stats"]["loss"]
    for name, m in a["metrics"].items():
        assert (b["metrics"][name]["top1"], b["metrics"][name]["per_class"]) == (m["top1"], m["per_class"]), name


class DieAfter(FileCheckpointer):
    """The SLURM checkpointer, then a hard stop right after the k-th save."""

    def __init__(self, path, every_steps=0, die_after=None):
        super().__init__(path, every_steps)
        self.die_after, self.saves = die_after, []

    def save(self, state):
        super().save(state)
        self.saves.append((state["epoch"], state["step"]))
        if len(self.saves) == self.die_after:
            raise KeyboardInterrupt("killed")


@pytest.fixture
def counted(monkeypatch):
    """Counts PromptSRC's training steps and the training images decoded (augmentation, not the test transform)."""
    from bench.methods.promptsrc import PromptSRC

    counts = {"steps": 0, "decoded": 0, "hook": None}
    real_loss, real_item = PromptSRC.loss, imagestream._Images.__getitem__

    def loss(self, batch):
        counts["steps"] += 1
        if counts["hook"] is not None:
            counts["hook"](counts["steps"])
        return real_loss(self, batch)

    def item(self, key):
        counts["decoded"] += isinstance(key, tuple) and key[1] is not None
        return real_item(self, key)

    monkeypatch.setattr(PromptSRC, "loss", loss)
    monkeypatch.setattr(imagestream._Images, "__getitem__", item)
    monkeypatch.setenv("BENCH_WORKERS", "0")  # decoded in this process, so counted
    return counts


def test_image_run_killed_mid_epoch_resumes_mid_epoch_exactly(world, reference, tmp_path, counted):
    config, store = promptsrc(world), Store(tmp_path / "s")
    ck = DieAfter(tmp_path / "run.ckpt.pt", every_steps=3, die_after=2)
    with pytest.raises(KeyboardInterrupt):
        execute(config, store, checkpointer=ck, checkpoint_every=0)
    assert ck.saves == [(0, 3), (1, 2)] and counted["steps"] == 6  # within epochs, every 3 steps
    state = torch.load(ck.path, weights_only=True)
    assert any(k.startswith("gpa_") for k in state["module"])  # the aggregate travels in the checkpoint
    assert {"torch", "numpy", "python"} <= set(state["rng"])  # the full RNG state
    counted.update(steps=0, decoded=0)
    ck.die_after = None
    same_run(reference, execute(config, store, checkpointer=ck, checkpoint_every=0))
    assert counted["steps"] == 3 * STEPS - 6  # only the remaining steps ran ...
    assert counted["decoded"] == 2 * (3 * STEPS - 6)  # ... and only their images were decoded
    assert ck.saves[2:] == [(2, 1), (3, 0)]  # step 9, then the end of training
    assert not ck.path.exists()  # cleared once the result is stored


@pytest.mark.parametrize("stop_step", [5, 4])  # mid-epoch 1, and an epoch's last step (saved at the boundary)
def test_preemption_request_stops_image_training_at_the_step_boundary(world, reference, tmp_path, counted,
                                                                     stop_step):
    """The SLURM handler defers to STOP while training: the step in progress ends, the state is saved, the handler
    runs (requeue and exit); the rerun resumes there."""
    config, store = promptsrc(world), Store(tmp_path / "s")
    ck = DieAfter(tmp_path / "run.ckpt.pt")
    ran = []

    def requeue_and_exit():
        ran.append(bt.STOP.active)
        raise SystemExit(-1)

    counted["hook"] = lambda n: n == stop_step and bt.STOP.defer(requeue_and_exit)
    try:
        with pytest.raises(SystemExit):
            execute(config, store, checkpointer=ck, checkpoint_every=0)
    finally:
        bt.STOP.pending = None
    assert ran == [1] and counted["steps"] == stop_step  # after the step, and no further step started
    assert ck.saves == [divmod(stop_step, STEPS)]
    counted.update(steps=0, hook=None)
    same_run(reference, execute(config, store, checkpointer=ck, checkpoint_every=0))
    assert counted["steps"] == 3 * STEPS - stop_step


def test_preemption_during_evaluation_does_not_retrain_an_image_method(world, reference, tmp_path, counted,
                                                                       monkeypatch):
    from bench.methods.promptsrc import PromptSRC

    config, store = promptsrc(world), Store(tmp_path / "s")
    ck = FileCheckpointer(tmp_path / "run.ckpt.pt")

    def preempted(self, images, classnames):
        raise SystemExit(-1)

    with monkeypatch.context() as m:
        m.setattr(PromptSRC, "logits", preempted)
        with pytest.raises(SystemExit):
            execute(config, store, checkpointer=ck, checkpoint_every=0)  # no periodic checkpoints at all
    state = ck.load()
    assert (state["epoch"], state["step"]) == (3, 0)
    logs = []
    monkeypatch.setattr("bench.engine.runner.log.info", logs.append)
    counted["steps"] = 0
    same_run(reference, execute(config, store, checkpointer=ck))
    assert counted["steps"] == 0 and "resumed from checkpoint at training complete" in logs
    assert not ck.path.exists()


_ONE_SIGNAL = textwrap.dedent('''
    import os, signal, sys, time
    import torch
    torch.set_num_threads(1)
    from bench.engine import imagestream
    from bench.launch import slurm as bs
    from bench.protocols import expand
    from bench.store import Store
    from bench.methods.promptsrc import PromptSRC

    log, where, root, ckpt, results = sys.argv[1:6]

    def checkpoint_and_try_requeue(signum, frame):  # submitit's handler, by name (the task wraps it)
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(0.5)  # the workers' copies, if any, run meanwhile
        bs.RunTask().checkpoint({})
        raise SystemExit(3)

    signal.signal(signal.SIGUSR2, checkpoint_and_try_requeue)
    signal.signal(signal.SIGUSR1, checkpoint_and_try_requeue)
    imagestream.stream_logits.__defaults__ = (2, None)  # test batches of 2: workers at evaluation too
    steps = [0]
    real_loss, real_logits = PromptSRC.loss, PromptSRC.logits

    def loss(self, batch):
        steps[0] += 1
        if where == "training" and steps[0] == 3:
            os.killpg(0, signal.SIGUSR2)  # as SLURM does: to every process of the step
        return real_loss(self, batch)

    def logits(self, images, classnames):
        if where == "evaluation":
            os.killpg(0, signal.SIGUSR2)
        return real_logits(self, images, classnames)

    PromptSRC.loss, PromptSRC.logits = loss, logits
    (config,) = expand("base2new", ["promptsrc"], datasets=["eurosat"], shots=[4], seeds=[1],
                       overrides={"epochs": 2, "batch_size": 2, "text_depth": 1, "vision_depth": 1},
                       backbone={"arch": "tiny-test", "pretrained": ckpt}, data_root=root)
    store = Store(results)
    bs.RunTask()(bs.task_payload([config], store, bs.load_profile(None, ["checkpoint_every=0"])))
''')


@pytest.mark.parametrize("where", ["training", "evaluation"])
def test_preemption_signal_is_handled_once_with_dataloader_workers(world, tmp_path, where):
    """SLURM signals every process of the step; forked DataLoader workers inherit the main process's handlers and
    would run submitit's requeue too (the second requeue fails). Workers ignore it: one handler run, in the main
    process, with the training state saved."""
    script, log = tmp_path / "one_signal.py", tmp_path / "handled.txt"
    script.write_text(_ONE_SIGNAL)
    env = {**os.environ, "BENCH_WORKERS": "2", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(script), str(log), where, str(world["root"]), str(world["ckpt"]),
                           str(tmp_path / "results")], capture_output=True, text=True, timeout=300, env=env,
                          start_new_session=True)  # its own process group: killpg reaches it and its workers only
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert log.read_text().split() == [_main_pid(proc)], proc.stderr[-3000:]
    state = torch.load(next((tmp_path / "results").rglob("*.ckpt.pt")), weights_only=True)
    assert (state["epoch"], state["step"]) == ((0, 3) if where == "training" else (2, 0))


def _main_pid(proc) -> str:
    """The main process's pid, as the task logged it ("task pid N" without SLURM)."""
    import re

    m = re.search(r"task pid (\d+)", proc.stderr + proc.stdout)
    assert m, proc.stderr[-2000:]
    return m.group(1)


_KILLED_AT_STEP = textwrap.dedent('''
    import os, signal, sys
    from bench.cli import main
    from bench.methods.promptsrc import PromptSRC

    steps, real = [0], PromptSRC.loss

    def loss(self, batch):
        steps[0] += 1
        if steps[0] == int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9, in the middle of this step
        return real(self, batch)

    PromptSRC.loss = loss
    sys.exit(main(sys.argv[1:]))
''')


def test_killed_local_image_run_resumes_losing_at_most_checkpoint_every_steps(world, tmp_path):
    """`bench run` of an image-side method killed with SIGKILL in step 9 (8 steps done), checkpoints every 3 steps:
    the rerun resumes at step 6 (epoch 1, step 2), and ends with the numbers of an uninterrupted `bench run`."""
    from bench.cli import main

    flags = ["run", "--method", "promptsrc", "--datasets", "eurosat", "--protocol", "base2new", "--shots", "4",
             "--seeds", "1", "--set", "epochs=3", "--set", "batch_size=2", "--set", "text_depth=2",
             "--set", "vision_depth=2", "--backbone", "tiny-test", "--pretrained", str(world["ckpt"]),
             "--data-root", str(world["root"])]
    assert main([*flags, "--results", str(tmp_path / "ref")]) == 0
    (expected,) = Store(tmp_path / "ref").all_results()

    script, results = tmp_path / "killed.py", tmp_path / "res"
    script.write_text(_KILLED_AT_STEP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "BENCH_WORKERS": "1", "KILL_AT_STEP": "9",
           "BENCH_CHECKPOINT_EVERY": "0", "BENCH_CHECKPOINT_EVERY_STEPS": "3"}
    killed = subprocess.run([sys.executable, str(script), *flags, "--results", str(results)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (ckpt,) = results.rglob("*.ckpt.pt")
    state = torch.load(ckpt, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2)  # 8 steps done, the last checkpoint at 6: 2 lost (< 3)
    assert not Store(results).all_results()

    env.pop("KILL_AT_STEP")
    rerun = subprocess.run([sys.executable, "-m", "bench.cli", *flags, "--results", str(results)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from checkpoint at epoch 1/3, step 2" in rerun.stdout + rerun.stderr
    (got,) = Store(results).all_results()
    same_run(expected, got)
    assert not list(results.rglob("*.ckpt.pt"))


def test_local_checkpoint_policy_from_the_environment(monkeypatch):
    from bench.engine.checkpoint import local_policy
    from bench.errors import BenchError

    monkeypatch.setenv("BENCH_CHECKPOINT_EVERY_STEPS", "20")
    monkeypatch.setenv("BENCH_CHECKPOINT_EVERY_MIN", "0.5")
    assert local_policy() == {"every": 10, "every_steps": 20, "every_s": 30.0}
    monkeypatch.setenv("BENCH_CHECKPOINT_EVERY_STEPS", "often")
    with pytest.raises(BenchError, match="BENCH_CHECKPOINT_EVERY_STEPS='often'") as e:
        local_policy()
    assert "\n" not in str(e.value)


def test_an_op_without_deterministic_cuda_kernel_fails_an_image_run_in_one_line(world, monkeypatch):
    from bench.engine.imagestream import build_image_train_data, fit_image_epochs
    from bench.engine.runner import get_backbone
    from bench.errors import BenchError
    from bench.method import Context

    monkeypatch.setenv("BENCH_WORKERS", "0")
    config = promptsrc(world)
    bb, _ = get_backbone(config["backbone"], device="cpu")
    train, names = build_image_train_data(config, bb, world["root"])
    ctx = Context(backbone=bb, classnames=names, template="{}", dataset="eurosat", hparams={}, seed=1,
                  log=lambda m: None)

    def loss(batch):
        raise RuntimeError("index_add_cuda_ does not have a deterministic implementation, but you set "
                           "'torch.use_deterministic_algorithms(True)'. You can turn off ...\nmore text")

    with pytest.raises(BenchError, match="BENCH_DETERMINISTIC=warn") as e:
        fit_image_epochs(torch.nn.Linear(2, 2), loss, train, ctx, epochs=1, batch_size=2, lr=0.1)
    assert "\n" not in str(e.value) and "index_add_cuda_" in str(e.value)
    assert not bt.STOP.active  # the training marker is released on errors
