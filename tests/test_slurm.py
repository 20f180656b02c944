"""The SLURM launcher: profiles, packing, the checkpointable task, the job registry (no cluster needed), and, marked
``slurm``, end to end against a real cluster (`bash slurm/cluster.sh start`): arrays whose results equal the local
launcher's, a preempted task that resumes from its checkpoint, failed runs in `bench status`, resubmission of only
what is missing or failed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bench.store import eval_name
import torch

from bench.launch import slurm as bs
from bench.cli import main
from bench.errors import BenchError
from bench.store import Store, config_hash


def _cluster_problem() -> str | None:
    if not shutil.which("sbatch"):
        return "no SLURM here: sbatch is not on PATH (start the test cluster with `bash slurm/cluster.sh start`)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the SLURM controller does not answer ({type(e).__name__}); `bash slurm/cluster.sh start`"
    if out.returncode != 0:
        return f"the SLURM controller does not answer ({out.stderr.strip()[:200]}); `bash slurm/cluster.sh start`"
    states = [s.rstrip("*~#$@!%^-") for s in out.stdout.split()]
    if not any(s in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no usable SLURM node (sinfo states: {' '.join(states) or 'none'})"
    return None


_PROBLEM = _cluster_problem()
cluster = pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")

DATASETS = ["caltech101", "eurosat"]
COOP = ["--method", "coop", "--datasets", ",".join(DATASETS), "--shots", "1,2,4", "--seeds", "1",
        "--set", "epochs=4", "--set", "n_ctx=4", "--views", "1"]
ZEROSHOT = ["--method", "zeroshot", "--datasets", ",".join(DATASETS)]
SLURM = ["--launcher", "slurm", "--slurm-profile", "local-test"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt):
    """Generated datasets (real JPEGs, CoOp layout) and a tiny-test checkpoint with fixed weights, on local disk."""
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("slurm-data")
    for key in DATASETS:
        make_dataset_tree(key, root, n_classes=4, per_class=(4, 2, 4))
    return {"root": root, "ckpt": tiny_ckpt}


def base(world, results) -> list[str]:
    return ["--backbone", "tiny-test", "--pretrained", str(world["ckpt"]), "--data-root", str(world["root"]),
            "--results", str(results)]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def grid_of(world, results, *flags):
    import argparse

    from bench.cli import add_grid_args, build_grid

    p = argparse.ArgumentParser()
    add_grid_args(p)
    return build_grid(p.parse_args([*base(world, results), *flags]))[0]


def by_hash(results: Path) -> dict[str, dict]:
    return {r["hash"]: r for r in Store(results).all_results()}


def same_numbers(a: dict, b: dict) -> None:
    assert a["hash"] == b["hash"]
    for name, m in a["metrics"].items():
        o = b["metrics"][name]
        assert (m["top1"], m["per_class"], m["macro_f1"], m["n_test"]) == \
               (o["top1"], o["per_class"], o["macro_f1"], o["n_test"]), name
    la, lb = a["train_stats"].get("loss"), b["train_stats"].get("loss")
    assert (la is None) == (lb is None)
    if la is not None:
        assert len(la) == len(lb)
        assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)


def wait_for(pred, timeout: float, what: str, folder: Path | None = None, interval: float = 0.3):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    queue = subprocess.run(["squeue", "-r"], capture_output=True, text=True).stdout
    logs = ""
    if folder is not None:
        for f in sorted(Path(folder).rglob("*_log.err"))[:4]:
            logs += f"\n--- {f}\n" + "\n".join(bs.log_tail(f, 25))
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\nsqueue:\n{queue}{logs}")


# ----------------------------------------------------------------------------------------------------------------------
# Without a cluster


def test_profile_defaults_file_and_overrides(tmp_path):
    prof = bs.load_profile(None)
    assert prof["checkpoint_every"] == 10 and prof["gpus"] == 0 and prof["time_min"] == 60
    path = tmp_path / "c.yaml"
    path.write_text("partition: gpu\ngpus: 2\ntime: '1:30:00'\nsbatch: {mail-type: END}\nsetup: [module load x]\n"
                    "env: {HF_HUB_OFFLINE: 1, SCRATCH: /s/$USER}\n")
    prof = bs.load_profile(path, ["partition=big", "sbatch.reservation=r1", "setup=echo hi", "time=2-00:00:00",
                                  "gres=gpu:a100:1", "checkpoint_every=3"])
    assert prof["partition"] == "big" and prof["time_min"] == 2 * 24 * 60 and prof["checkpoint_every"] == 3
    params = bs.executor_parameters(prof)
    assert params["slurm_partition"] == "big" and params["timeout_min"] == 2880
    assert params["slurm_gres"] == "gpu:a100:1" and "gpus_per_node" not in params  # gres wins over gpus
    assert params["slurm_additional_parameters"] == {"mail-type": "END", "reservation": "r1"}
    assert params["slurm_setup"] == ['export HF_HUB_OFFLINE="1"', 'export SCRATCH="/s/$USER"', "module load x",
                                     "echo hi"]
    # the sbatch script submitit writes from these parameters
    import submitit

    ex = submitit.AutoExecutor(folder=tmp_path / "sub", cluster="slurm")
    ex.update_parameters(**params)
    text = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ["#SBATCH --partition=big", "#SBATCH --gres=gpu:a100:1", "#SBATCH --time=2880",
                 "#SBATCH --mail-type=END", "#SBATCH --reservation=r1", "#SBATCH --signal=USR2@120",
                 'export SCRATCH="/s/$USER"']:
        assert line in text
    assert bs.parse_time_min("90") == 90 and bs.parse_time_min("10:30") == 11 and bs.parse_time_min("1-2") == 1560
    for bad, needle in [(["nope=1"], "unknown SLURM profile key(s) nope"), (["cpus=x"], "cpus must be an integer"),
                        (["time=soon"], "bad SLURM time"), (["partition"], "expected KEY=VALUE")]:
        with pytest.raises(BenchError, match=re.escape(needle)):
            bs.load_profile(None, bad)
    with pytest.raises(BenchError, match="SLURM profile not found: nowhere.yaml"):
        bs.load_profile("nowhere.yaml")
    assert bs.load_profile("local-test")["partition"] == "debug"  # found in slurm/ by name


def test_packing_short_and_long_runs(world, tmp_path):
    grid = grid_of(world, tmp_path, *COOP) + grid_of(world, tmp_path, *ZEROSHOT)
    tasks = bs.pack(grid, pack_size=4, max_cost=20000)
    assert sorted(len(t) for t in tasks) == [4, 4]  # 8 short runs, 4 per task, grouped by dataset
    assert all(len({c["train"]["dataset"] for c in t}) == 1 for t in tasks)
    tasks = bs.pack(grid, pack_size=4, max_cost=0)  # every coop run is "long" now: one task each
    assert sorted(len(t) for t in tasks) == [1] * 6 + [2]
    assert [len(t) for t in bs.pack(grid, pack_size=1, max_cost=1e9)] == [1] * 8


def test_file_checkpointer_is_atomic(tmp_path):
    ck = bs.FileCheckpointer(tmp_path / "a" / "r.ckpt.pt")
    assert ck.load() is None
    ck.save({"epoch": 3, "w": torch.ones(2)})
    ck.save({"epoch": 5, "w": torch.zeros(2)})
    assert ck.load()["epoch"] == 5 and [p.name for p in ck.path.parent.iterdir()] == ["r.ckpt.pt"]
    ck.path.write_bytes(b"garbage")
    assert ck.load() is None and not ck.path.exists()  # unreadable: start over
    ck.clear()


# one method per batch source / step of the loop: FeatureBatches (CoOp), FullBatch + per-epoch selection in buffers
# (LP++), PooledBatches (CLAP), a partial last batch + best-epoch keys (Tip-Adapter-F), a method-defined gradient step
# (ProGrad), Adam (TaskRes)
RESUMABLE = {"coop": ["--set", "n_ctx=4"], "lp_pp": [], "clap": [], "tip_adapter_f": [], "prograd": ["--set", "n_ctx=4"],
             "taskres": []}


@pytest.mark.parametrize("method", list(RESUMABLE))
def test_task_resumes_from_checkpoint_in_process(world, tmp_path, monkeypatch, capsys, method):
    """RunTask without SLURM: interrupted after its second checkpoint (as a preemption's exit would), rerun, the
    run resumes from the file checkpoint and ends with the uninterrupted numbers; the checkpoint is removed."""
    flags = ["--method", method, "--datasets", "caltech101", "--shots", "2", "--seeds", "1", "--set", "epochs=8",
             *RESUMABLE[method], "--views", "2"]
    assert cli(capsys, "run", *base(world, tmp_path / "ref"), *flags)[0] == 0
    (config,) = grid_of(world, tmp_path / "s", *flags)
    store = Store(tmp_path / "s")
    payload = {"configs": [config], "store": str(store.root), "checkpoint_every": 2, "device": None}
    saves = []
    real_save = bs.FileCheckpointer.save

    def save_then_die(self, state):
        real_save(self, state)
        saves.append(state["epoch"])
        if len(saves) == 2:
            raise SystemExit(-1)  # what submitit's signal handler does after requeuing

    monkeypatch.setattr(bs.FileCheckpointer, "save", save_then_die)
    with pytest.raises(SystemExit):
        bs.RunTask()(payload)
    assert saves == [2, 4] and bs.checkpoint_path(store, config).exists() and not store.is_complete(config)
    monkeypatch.setattr(bs.FileCheckpointer, "save", real_save)
    capsys.readouterr()
    summary = bs.RunTask()(payload)
    err = capsys.readouterr().err
    assert "resumed from checkpoint at epoch 4/8" in err
    assert summary["done"] == [config_hash(config)]
    assert not bs.checkpoint_path(store, config).exists()
    same_numbers(Store(tmp_path / "ref").load(config), store.load(config))
    assert bs.RunTask()(payload)["skipped"] == [config_hash(config)]  # written exactly once
    delayed = bs.RunTask().checkpoint(payload)  # what submitit pickles for the requeued task
    assert isinstance(delayed.function, bs.RunTask) and delayed.args == (payload,)


def test_task_records_failures_and_goes_on(world, tmp_path):
    good, bad = grid_of(world, tmp_path, *ZEROSHOT)
    bad = json.loads(json.dumps(bad))
    bad["data_root"] = str(tmp_path / "no-such-root")
    store = Store(tmp_path / "s")
    with pytest.raises(bs.RunsFailed, match="1 of 2 run"):  # after running the good one: the task ends FAILED
        bs.RunTask()({"configs": [bad, good], "store": str(store.root), "checkpoint_every": 0})
    assert "no-such-root" in store.failure(bad)["error"] and store.is_complete(good)


def test_run_states_from_registry_and_queue(world, tmp_path):
    store = Store(tmp_path / "s")
    a, b, c, d, e = grid_of(world, tmp_path / "s", *COOP)[:5]
    store.write({"status": "complete", "hash": config_hash(a), "config": a, "metrics": {eval_name(e): {"top1": 50.0} for e in a["evals"]}})
    store.write_failure(d, "boom")
    log = tmp_path / "7_3_0_log.err"
    log.write_text("line 1\nTraceback ...\nKilled\n")
    reg = {"runs": {config_hash(x): {"job_id": j, "stderr": str(log)} for x, j in
                    [(a, "7_0"), (b, "7_1"), (c, "7_2"), (e, "7_3")]}, "submissions": []}
    bs.registry_path(store).parent.mkdir(parents=True)
    bs.registry_path(store).write_text(json.dumps(reg))
    queue = {"7_1": "PENDING", "7_2": "RUNNING", "7_3": "COMPLETED"}
    states = bs.run_states([a, b, c, d, e], store, queue=queue)
    assert [states[config_hash(x)]["state"] for x in (a, b, c, d, e)] == \
           ["done", "pending", "running", "failed", "failed"]
    assert "ended without a result" in states[config_hash(e)]["error"]
    lines = []
    bs.print_status_details([a, b, c, d, e], states, out=lines.append)
    text = "\n".join(lines)
    assert "boom" in text and "SLURM task 7_3" in text and "    Killed" in text and "in the queue: 2 task(s)" in text
    assert bs._expand_ids("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"] and bs._expand_ids("9") == ["9"]


def test_status_without_squeue_says_unknown(world, tmp_path, monkeypatch, capsys):
    """Away from the cluster (no squeue) submitted runs without a result are 'unknown', never 'failed'."""
    (c,) = grid_of(world, tmp_path / "s", *ZEROSHOT)[:1]
    store = Store(tmp_path / "s")
    bs.registry_path(store).parent.mkdir(parents=True)
    bs.registry_path(store).write_text(json.dumps({"runs": {config_hash(c): {"job_id": "5_0"}}}))
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert bs.run_states([c], store)[config_hash(c)]["state"] == "unknown"
    code, out, _ = cli(capsys, "status", *base(world, tmp_path / "s"), *ZEROSHOT)
    assert code == 0 and "unknown" in out.splitlines()[0] and "queue not reachable" in out
    with pytest.raises(BenchError, match="squeue. not found on PATH"):
        bs.submit(grid_of(world, tmp_path / "s", *ZEROSHOT), store, bs.load_profile(None), out=lambda s: None)


def test_progress_bars_are_off_without_a_terminal():
    """Jobs write stderr to a file: bench.log.progress (tqdm, disable=None) shows no bar there."""
    code = ("import sys; from bench import log\n"
            "for _ in log.progress(range(3), desc='x'): pass\n"
            "log.info('plain line')\n")
    out = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "plain line" in out.stderr
    assert "\r" not in out.stderr and "it/s" not in out.stderr and "x:" not in out.stderr


# ----------------------------------------------------------------------------------------------------------------------
# Against the cluster


def _submitted(out: str) -> list[str]:
    m = re.search(r"submitted job array\(s\) ([\d, ]+)", out)
    return [s.strip() for s in m.group(1).split(",")] if m else []


@pytest.mark.slurm
@cluster
def test_arrays_match_local_and_resubmit_only_missing(world, tmp_path, capsys):
    local, remote = tmp_path / "local", tmp_path / "slurm"
    for flags in (COOP, ZEROSHOT):
        code, _, err = cli(capsys, "run", *base(world, local), *flags)
        assert code == 0, err
    expected = by_hash(local)
    assert len(expected) == 8

    t0 = time.time()
    code, out, err = cli(capsys, "run", *base(world, remote), *COOP, *SLURM, "--slurm", "pack_size=2")
    assert code == 0, err
    assert time.time() - t0 < 15, "bench run --launcher slurm must return right after submission"
    assert "submitting 6 as 3 array task(s)" in out and len(_submitted(out)) == 1
    folder = Path(re.search(r"logs:\s+(\S+)/<array>", out).group(1))
    assert folder.parent == remote.with_name("slurm.slurm") and folder.is_dir()
    code, out, _ = cli(capsys, "run", *base(world, remote), *ZEROSHOT, *SLURM)
    assert code == 0 and "submitting 2 as 1 array task(s)" in out

    # while queued or running: nothing is submitted twice, status shows the queue
    code, out, _ = cli(capsys, "run", *base(world, remote), *COOP, *SLURM)
    assert code == 0 and "nothing to submit" in out, out
    code, out, _ = cli(capsys, "status", *base(world, remote), *COOP)
    assert "pending" in out and "running" in out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("fewshot")]
    assert sum(int(r[3]) + int(r[4]) + int(r[5]) for r in rows) == 6 and all(r[6] == "0" for r in rows), out

    wait_for(lambda: len(by_hash(remote)) == 8, 150, "8 results from the SLURM arrays", folder.parent)
    got = by_hash(remote)
    assert sorted(got) == sorted(expected)
    for h in expected:
        same_numbers(expected[h], got[h])
        assert got[h]["environment"]["slurm_job_id"]  # really ran in a SLURM job

    code, out, _ = cli(capsys, "status", *base(world, remote), *COOP)
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("fewshot")]
    assert sum(int(r[3]) for r in rows) == 6 and all(r[4:] == ["0"] * 4 for r in rows), out
    reg = json.loads(bs.registry_path(Store(remote)).read_text())
    assert len(reg["submissions"]) == 2 and len(reg["runs"]) == 8
    for flags in (COOP, ZEROSHOT):  # a finished grid submits nothing
        code, out, _ = cli(capsys, "run", *base(world, remote), *flags, *SLURM)
        assert code == 0 and "nothing to submit" in out and not _submitted(out)
    assert len(json.loads(bs.registry_path(Store(remote)).read_text())["submissions"]) == 2
    logs = sorted(folder.parent.rglob("*_log.err"))
    assert len(logs) == 4
    for f in logs:  # plain log lines, no progress bars
        text = f.read_text()
        assert "task finished" in text and "\r" not in text and "it/s" not in text
    assert not list(remote.rglob("*.ckpt.pt"))


LONG = ["--method", "coop", "--datasets", "caltech101", "--shots", "2", "--seeds", "1", "--set", "epochs=600",
        "--set", "n_ctx=4", "--views", "2"]


@pytest.fixture(scope="module")
def long_run(world, tmp_path_factory):
    """A run long enough to be interrupted, and its uninterrupted result from the local launcher."""
    local = tmp_path_factory.mktemp("long-local")
    assert main([*map(str, ["run", *base(world, local), *LONG])]) == 0
    (expected,) = by_hash(local).values()
    return LONG, expected


@pytest.mark.slurm
@cluster
@pytest.mark.parametrize("how", ["signal", "preemption"])
def test_preempted_task_resumes_from_its_checkpoint(world, long_run, tmp_path, capsys, how):
    """``signal``: submitit's own simulation (``SlurmJob._interrupt``: SIGTERM, then USR2 to the task);
    ``preemption``: a real one, by a job of the higher-priority partition ``urgent`` of slurm/cluster.sh that needs
    the whole node (SLURM sends USR2 thanks to preempt_send_user_signal)."""
    import submitit

    if how == "preemption":
        cpus = subprocess.run(["sinfo", "-h", "-p", "urgent", "-o", "%c"], capture_output=True, text=True).stdout
        if not cpus.strip():
            pytest.skip("no 'urgent' partition to preempt with (slurm/cluster.sh's test cluster has one)")
    flags, expected = long_run
    remote = tmp_path / "slurm"

    code, out, err = cli(capsys, "run", *base(world, remote), *flags, *SLURM, "--slurm", "checkpoint_every=10",
                         "--slurm", "pack_max_cost=0")
    assert code == 0 and "submitting 1 as 1 array task(s)" in out, out + err
    (job_id,) = _submitted(out)
    entry = next(iter(json.loads(bs.registry_path(Store(remote)).read_text())["runs"].values()))
    log = Path(entry["stderr"])
    wait_for(lambda: log.exists() and "checkpoint at epoch" in log.read_text(), 90, "a training checkpoint",
             log.parent, interval=0.1)
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
    wait_for(lambda: by_hash(remote), 120, "the resumed run's result", log.parent)
    text = log.read_text()
    assert "this job is preempted" in text
    m = re.search(r"resumed from checkpoint at epoch (\d+)/600", text)
    assert m and 0 < int(m.group(1)) < 600, text[-3000:]
    (got,) = by_hash(remote).values()
    same_numbers(expected, got)
    assert got["environment"]["slurm_job_id"]
    assert not list(remote.rglob("*.ckpt.pt"))
    assert text.count("run 1/1 ") >= 3 and "done in" in text  # start, start after requeue, done
    code, out, _ = cli(capsys, "run", *base(world, remote), *flags, *SLURM)
    assert "nothing to submit" in out
    if how == "preemption":
        assert (tmp_path / f"urgent_{urgent}.out").exists()  # the preempting job ran


@pytest.mark.slurm
@cluster
def test_failed_run_shows_in_status_and_only_it_is_resubmitted(world, tmp_path, capsys):
    from bench.data.synth import make_dataset_tree

    root = tmp_path / "data"
    shutil.copytree(world["root"], root)
    broken = sorted((root / "eurosat").rglob("*.jpg"))[-1]
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    args = ["--backbone", "tiny-test", "--pretrained", str(world["ckpt"]), "--data-root", str(root),
            "--results", str(tmp_path / "s"), *ZEROSHOT]
    code, out, _ = cli(capsys, "run", *args, *SLURM, "--slurm", "pack_size=1")
    assert code == 0 and "submitting 2 as 2 array task(s)" in out
    store = Store(tmp_path / "s")
    grid = grid_of(world, tmp_path / "s", *ZEROSHOT, "--data-root", str(root))

    def ended():
        return all(s["state"] in ("done", "failed") for s in bs.run_states(grid, store).values())

    wait_for(ended, 90, "both tasks to end", bs.slurm_dir(store))
    code, out, _ = cli(capsys, "status", *args)
    assert "cannot decode image" in out and "SLURM task" in out and "  log " in out and ": FAILED: " in out, out
    row = next(ln.split() for ln in out.splitlines() if " eurosat " in ln)
    assert row[-1] == "1"  # failed column

    make_dataset_tree("eurosat", root, n_classes=4, per_class=(4, 2, 4))  # repaired
    code, out, _ = cli(capsys, "run", *args, *SLURM)
    assert code == 0 and "submitting 1 as 1 array task(s)" in out, out
    wait_for(lambda: len(store.all_results()) == 2, 90, "the resubmitted run", bs.slurm_dir(store))
    code, out, _ = cli(capsys, "status", *args)
    assert "failed:" not in out
