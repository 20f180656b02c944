"""Marked ``slurm``, against the test cluster (`bash slurm/cluster.sh start`): an image-side run on the tiny model,
streaming images through DataLoader workers, preempted on the cluster, is requeued, resumes mid-epoch from the
checkpoint its preemption wrote, and ends with the metrics of an uninterrupted local run. Two runs of the image path:
IVLP (deep prompts, an epoch schedule) and CLIP-LoRA (weight deltas in both towers, an iteration count: its
``n_iters`` is EPOCHS epochs' worth of steps). Skipped without a cluster.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from bench.cli import main
from bench.launch import slurm as bs
from bench.store import Store
from test_slurm import SLURM, _submitted, by_hash, cli, cluster, same_numbers, wait_for

EPOCHS = 30  # 128 steps an epoch (16 shots x 8 classes, batch 1): about 40 s on the tiny model
COMMON = ["--datasets", "caltech101", "--shots", "16", "--seeds", "1", "--set", "batch_size=1"]
RUNS = {
    "ivlp": ["--method", "ivlp", *COMMON, "--set", f"epochs={EPOCHS}", "--set", "text_depth=2",
             "--set", "vision_depth=2"],
    "clip_lora": ["--method", "clip_lora", *COMMON, "--set", f"n_iters={EPOCHS * 128}"],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt):
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("slurm-images")
    make_dataset_tree("caltech101", root, n_classes=8, per_class=(16, 2, 2))
    return {"root": root, "ckpt": tiny_ckpt}


def base(world, results) -> list[str]:
    return ["--backbone", "tiny-test", "--pretrained", str(world["ckpt"]), "--data-root", str(world["root"]),
            "--results", str(results)]


@pytest.fixture(scope="module", params=list(RUNS))
def method(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def expected(world, method, tmp_path_factory):
    """The uninterrupted result, from the local launcher."""
    local = tmp_path_factory.mktemp("images-local")
    assert main([*map(str, ["run", *base(world, local), *RUNS[method]])]) == 0
    (result,) = by_hash(local).values()
    return result


@pytest.mark.slurm
@cluster
@pytest.mark.parametrize("how", ["signal", "preemption"])
def test_preempted_image_run_resumes_mid_epoch(world, method, expected, tmp_path, capsys, how):
    """``signal``: submitit's simulation (SIGTERM, then USR2 to the task); ``preemption``: a job of the partition
    ``urgent`` that needs the whole node. Checkpoints every 20 steps; the preemption saves at the step boundary."""
    import submitit

    if how == "preemption":
        cpus = subprocess.run(["sinfo", "-h", "-p", "urgent", "-o", "%c"], capture_output=True, text=True).stdout
        if not cpus.strip():
            pytest.skip("no 'urgent' partition to preempt with (slurm/cluster.sh's test cluster has one)")
    remote = tmp_path / "slurm"
    code, out, err = cli(capsys, "run", *base(world, remote), *RUNS[method], *SLURM, "--slurm", "checkpoint_every=0",
                         "--slurm", "checkpoint_every_steps=20", "--slurm", "pack_max_cost=0")
    assert code == 0 and "submitting 1 as 1 array task(s)" in out, out + err
    (job_id,) = _submitted(out)
    entry = next(iter(json.loads(bs.registry_path(Store(remote)).read_text())["runs"].values()))
    log = Path(entry["stderr"])
    # a step checkpoint of epoch 1 or later: the run is well into training, with its workers started
    wait_for(lambda: log.exists() and re.search(r"checkpoint at epoch [1-9]\d*/\d+, step", log.read_text()), 120,
             "a mid-epoch training checkpoint", log.parent, interval=0.1)
    if how == "signal":
        submitit.SlurmJob(folder=entry["folder"], job_id=job_id)._interrupt()
    else:
        urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-c", cpus.split()[0].rstrip("+"),
                                 "-o", str(tmp_path / "urgent_%j.out"), "--wrap", "true"],
                                capture_output=True, text=True, check=True).stdout.strip()

    def restarted():
        """Requeued and started again. SLURM holds a requeued job for ~2 minutes (BeginTime): release it now."""
        if "restart 1)" in log.read_text():
            return True
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True).stdout
        if state.split()[:2] == ["PENDING", "BeginTime"]:
            subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)
        return False

    wait_for(restarted, 60, "the task to be requeued and restarted", log.parent)
    wait_for(lambda: by_hash(remote), 180, "the resumed run's result", log.parent)
    text = log.read_text()
    assert "this job is preempted" in text
    assert text.count("preempted or at the time limit") == 1  # one handler run: the workers ignore the signal
    saved = re.findall(r"checkpoint at epoch (\d+)/\d+(?:, step (\d+))? \(preemption\)", text)
    assert len(saved) == 1, text[-3000:]  # saved once, when the signal came, at the step boundary
    resumed = re.search(rf"resumed from checkpoint at epoch (\d+)/{EPOCHS}(?:, step (\d+))?", text)
    assert resumed and resumed.groups() == saved[0], text[-3000:]  # exactly where the preemption stopped it
    epoch, step = int(saved[0][0]), int(saved[0][1] or 0)
    assert 0 < epoch < EPOCHS and step > 0  # mid-epoch (a boundary: 1 chance in 128)
    (got,) = by_hash(remote).values()
    same_numbers(expected, got)
    assert got["environment"]["slurm_job_id"]
    assert not list(remote.rglob("*.ckpt.pt"))
    if how == "preemption":
        assert (tmp_path / f"urgent_{urgent}.out").exists()  # the preempting job ran
