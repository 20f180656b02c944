"""Reliability and security (issue 14): bad input refused in one line before any work, results recorded
truthfully, a store that one bad file cannot poison, loads that cannot run code, concurrent commands that
share the work, and signals handled as Ctrl-C is."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Tuple

import pytest
import torch

from bench.cli import main
from bench.store import Store, config_hash

DATASETS = ["caltech101", "eurosat"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt):
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("data")
    for key in DATASETS:
        make_dataset_tree(key, root, n_classes=3, per_class=(8, 2, 4))
    return {"root": root, "ckpt": tiny_ckpt}


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def base(world, results, root=None):
    return ["--backbone", "tiny-test", "--pretrained", world["ckpt"], "--data-root", root or world["root"],
            "--results", results]


def one_line_error(code, err, *needles):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err


def cli_cmd(world, results, *argv, root=None):
    return [sys.executable, "-m", "bench.cli", *map(str, argv), *map(str, base(world, results, root))]


# ---------------------------------------------------------------------------------------- 1. silent wrong results

@pytest.mark.parametrize("setting, needles", [
    ("epochs=0", ["epochs", ">= 1"]),
    ("epochs=-3", ["epochs", ">= 1"]),
    ("n_ctx=0", ["n_ctx", ">= 1"]),
    ("n_ctx=abc", ["n_ctx", "'abc'", "integer"]),
    ("lr=-1", ["lr", ">= 0"]),
    ("batch_size=0", ["batch_size", ">= 1"]),
    ("class_token_position=bogus", ["class_token_position", "end, middle, front"]),
    ("nosuch=1", ["unknown hyperparameter(s) nosuch", "known: batch_size"]),
])
def test_bad_hyperparameters_refused_before_any_work(world, tmp_path, capsys, monkeypatch, setting, needles):
    import bench.engine.runner

    monkeypatch.setattr(bench.engine.runner, "get_backbone", lambda *a, **k: pytest.fail("work started"))
    code, _, err = run_cli(capsys, "run", "--method", "coop", "--datasets", "eurosat", "--shots", "1", "--seeds", "1",
                           "--set", setting, *base(world, tmp_path / "res"))
    one_line_error(code, err, *needles)
    assert not (tmp_path / "res").exists()


def test_set_values_are_converted_to_the_declared_type(world, tmp_path):
    from bench.protocols import expand

    bb = {"arch": "tiny-test", "pretrained": None, "weights": "random"}
    [c] = expand("fewshot", ["coop"], datasets=["eurosat"], shots=[1], seeds=[1], backbone=bb,
                 overrides={"lr": "1e-3", "n_ctx": "4", "epochs": 2.0})
    assert c["hparams"]["lr"] == 0.001 and isinstance(c["hparams"]["n_ctx"], int) and c["hparams"]["epochs"] == 2
    assert c["label"] == "coop[epochs=2.0,lr=1e-3,n_ctx=4]"  # the label says what was asked
    [lp] = expand("fewshot", ["linear_probe"], datasets=["eurosat"], shots=[1], seeds=[1], backbone=bb,
                  overrides={"C": "null"})
    assert lp["hparams"]["C"] is None


def test_every_method_declares_every_default_hyperparameter():
    """Every built-in method (user methods may leave hparam_spec out: their types come from their defaults)."""
    from bench.method import Param
    from bench.protocols import PROTOCOLS, check_hparams
    from bench.registry import get_method, list_methods

    for name in list_methods():
        cls = get_method(name)
        if not cls.__module__.startswith("bench.methods."):
            continue  # registered by another test in this process (a user method folder)
        for protocol in cls.protocols:
            for dataset in ("imagenet", "eurosat"):
                for shots in PROTOCOLS[protocol].shots:
                    hp = cls.default_hparams(protocol, dataset, shots)
                    assert set(hp) <= set(cls.hparam_spec), (name, sorted(set(hp) - set(cls.hparam_spec)))
                    assert all(isinstance(p, Param) for p in cls.hparam_spec.values())
                    assert check_hparams(name, hp) == hp, name  # the defaults are valid as declared


@pytest.mark.parametrize("flags, needle", [
    (["--views", "-1"], "bad --views -1"),
    (["--views", "0"], "bad --views 0"),
    (["--shots", "1,,2"], "bad --shots '1,,2': empty entry"),
])
def test_bad_views_and_shot_lists(world, tmp_path, capsys, flags, needle):
    code, _, err = run_cli(capsys, "run", "--method", "coop", "--datasets", "eurosat", "--seeds", "1", *flags,
                           *base(world, tmp_path / "res"))
    one_line_error(code, err, needle)


def test_more_shots_than_images_warns_once_and_records_images_used(world, tmp_path, capsys):
    code, out, err = run_cli(capsys, "run", "--method", "linear_probe", "--datasets", "eurosat", "--shots", "17",
                             "--seeds", "1,2", *base(world, tmp_path / "res"))
    assert code == 0, err
    assert err.count("fewer than 17 training images") == 1
    results = Store(tmp_path / "res").all_results()
    assert len(results) == 2
    for r in results:
        used = r["train_images"]
        assert used["shots_requested"] == 17 and used["min_per_class"] == used["max_per_class"] == 8
        assert sorted(used["per_class"].values()) == [8, 8, 8]


def _edit_split(root: Path, dataset: str, edit) -> None:
    from bench.data import get_spec

    spec = get_spec(dataset)
    f = root / spec.dir / spec.split_file
    data = json.loads(f.read_text())
    edit(data)
    f.write_text(json.dumps(data))


def test_class_without_training_images_is_an_error(world, tmp_path, capsys):
    from bench.data.synth import make_dataset_tree

    root = tmp_path / "data"
    make_dataset_tree("eurosat", root, n_classes=3, per_class=(4, 2, 3))
    _edit_split(root, "eurosat", lambda d: d.update(train=[e for e in d["train"] if e[1] != 2]))
    for method, extra in (("linear_probe", []), ("coop", ["--set", "epochs=1"])):
        code, _, err = run_cli(capsys, "run", "--method", method, "--datasets", "eurosat", "--shots", "2",
                               "--seeds", "1", *extra, *base(world, tmp_path / "res", root))
        one_line_error(code, err, "no training image")
    assert Store(tmp_path / "res").all_results() == []
    # the runner refuses it too (API users, SLURM tasks)
    from bench.protocols import expand
    from bench.engine.runner import execute

    [c] = expand("fewshot", ["linear_probe"], datasets=["eurosat"], shots=[2], seeds=[1],
                 backbone={"arch": "tiny-test", "pretrained": str(world["ckpt"]), "weights": "x"}, data_root=str(root))
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="no training image"):
        execute(c, Store(tmp_path / "res"))


# ---------------------------------------------------------------------------------------- 2. the store

POISONS = {
    "list": lambda r: [r],
    "status only": lambda r: {"status": "complete"},
    "metrics oops": lambda r: {**r, "metrics": "oops"},
    "top1 text": lambda r: {**r, "metrics": {k: {**m, "top1": "high"} for k, m in r["metrics"].items()}},
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_an_invalid_result_file_is_reported_not_counted_and_redone(world, tmp_path, capsys, poison):
    args = ["--method", "zeroshot", "--datasets", ",".join(DATASETS), *base(world, tmp_path / "res")]
    assert run_cli(capsys, "run", *args)[0] == 0
    path = sorted((tmp_path / "res").rglob("*.json"))[0]
    path.write_text(json.dumps(POISONS[poison](json.loads(path.read_text()))))
    from bench import store as store_mod

    for cmd in (["status"], ["run", "--dry-run"]):
        store_mod._REPORTED.clear()
        code, out, err = run_cli(capsys, *cmd, *args)
        assert code == 0 and "Traceback" not in err
        assert f"invalid result file {path}" in err and err.count("invalid result file") == 1
    assert "1 done, 1 to run" in out
    store_mod._REPORTED.clear()
    code, out, err = run_cli(capsys, "table", "--protocol", "fewshot", "--results", tmp_path / "res")
    assert "Traceback" not in err and f"invalid result file {path}" in err
    code, out, err = run_cli(capsys, "run", *args)
    assert code == 0 and "1 already complete, 1 ran" in out
    assert json.loads(path.read_text())["status"] == "complete" and len(Store(tmp_path / "res").all_results()) == 2


def test_failure_record_that_is_a_list_does_not_break_status(world, tmp_path, capsys):
    args = ["--method", "zeroshot", "--datasets", "eurosat", *base(world, tmp_path / "res")]
    grid_cfg = _grid(world, tmp_path / "res", "--method", "zeroshot", "--datasets", "eurosat")[0]
    fpath = Store(tmp_path / "res").failure_path(grid_cfg)
    fpath.parent.mkdir(parents=True)
    fpath.write_text("[1, 2]")
    code, out, err = run_cli(capsys, "status", *args)
    assert code == 0 and "Traceback" not in err and str(fpath) in err


def _grid(world, results, *flags):
    import argparse

    from bench.cli import add_grid_args, build_grid

    p = argparse.ArgumentParser()
    add_grid_args(p)
    return build_grid(p.parse_args([*map(str, base(world, results)), *flags]))[0]


def test_stale_temp_files_of_killed_writers_are_removed(world, tmp_path, capsys):
    res = tmp_path / "res"
    folder = res / "zeroshot" / "eurosat"
    folder.mkdir(parents=True)
    old, fresh = folder / ".noseed-abc.json.k1l2.tmp", folder / ".noseed-def.json.x9y8.tmp"
    old.write_text("{")
    fresh.write_text("{")
    past = time.time() - 3600
    os.utime(old, (past, past))
    code, _, err = run_cli(capsys, "run", "--method", "zeroshot", "--datasets", "eurosat", *base(world, res))
    assert code == 0 and "removed 1 stale temporary file" in err
    assert not old.exists() and fresh.exists()  # a live writer's temporary file is left alone


def test_unwritable_results_store_fails_before_any_work(world, tmp_path, capsys, monkeypatch):
    import bench.engine.runner

    monkeypatch.setattr(bench.engine.runner, "get_backbone", lambda *a, **k: pytest.fail("work started"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    for results in (afile, afile / "sub"):
        code, _, err = run_cli(capsys, "run", "--method", "zeroshot", "--datasets", "eurosat", *base(world, results))
        one_line_error(code, err, "results store", str(results))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_results_store(world, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code, _, err = run_cli(capsys, "run", "--method", "zeroshot", "--datasets", "eurosat", *base(world, ro))
    one_line_error(code, err, "is not writable", str(ro))


def test_file_size_limit_is_one_line_naming_the_path(world, tmp_path):
    """`ulimit -f`: the feature bank (torch.save) and a result (JSON) each fail with one line naming the file."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))"
    env = {**os.environ, "BENCH_CACHE": str(tmp_path / "cache")}
    cmd = cli_cmd(world, tmp_path / "res", "run", "--method", "zeroshot", "--datasets", "eurosat")
    done = subprocess.run([sys.executable, "-c", f"{limit}; import sys, runpy; sys.argv = {cmd[2:]!r}; "
                           "runpy.run_module('bench.cli', run_name='__main__')"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write ") and "file-size limit" in last and str(tmp_path / "cache") in last
    assert "Traceback" not in done.stderr
    script = (f"{limit}; import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "from bench.store import write_json_atomic\nfrom bench.errors import BenchError\n"
              f"try:\n    write_json_atomic(__import__('pathlib').Path({str(tmp_path / 'r.json')!r}), "
              "{'x': 'y' * 10000})\nexcept BenchError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert f"cannot write {tmp_path / 'r.json'}: the file-size limit was reached" in done.stdout, done.stderr
    assert not (tmp_path / "r.json").exists() and not list(tmp_path.glob(".r.json*"))


# ---------------------------------------------------------------------------------------- bench data check

def test_data_check_reports_missing_files_and_reasons(world, tmp_path, capsys):
    from bench.data import load_splits
    from bench.data.synth import make_dataset_tree

    root = tmp_path / "data"
    make_dataset_tree("eurosat", root, n_classes=3, per_class=(2, 1, 2))
    make_dataset_tree("caltech101", root, n_classes=3, per_class=(2, 1, 2))
    gone = load_splits("eurosat", root).root / load_splits("eurosat", root).test[0].path
    gone.unlink()
    _edit_split(root, "caltech101", lambda d: d.update(train=5))
    code, out, err = run_cli(capsys, "data", "check", "--data-root", root, "--datasets", "eurosat,caltech101")
    assert code == 1 and "Traceback" not in err and "None" not in out
    lines = {ln.split()[0]: ln for ln in out.splitlines()}
    assert f"1 files missing, first: {gone}" in lines["eurosat"]
    assert "incomplete" in lines["caltech101"] and "'train' must be a list" in lines["caltech101"]
    code, _, err = run_cli(capsys, "run", "--method", "zeroshot", "--datasets", "caltech101",
                           *base(world, tmp_path / "res", root))
    one_line_error(code, err, "'train' must be a list")


def test_unreadable_dataset_folder_is_one_line(world, tmp_path, capsys, monkeypatch):
    from bench.data.synth import make_dataset_tree

    root = tmp_path / "data"
    make_dataset_tree("eurosat", root, n_classes=3, per_class=(2, 1, 2))
    locked = str((root / "eurosat").resolve()) + os.sep
    real_stat = Path.stat

    def stat(self, *a, **k):  # what a folder without search permission does (root ignores chmod here)
        if os.path.abspath(str(self)).startswith(locked):
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *a, **k)

    monkeypatch.setattr(Path, "stat", stat)
    code, out, err = run_cli(capsys, "data", "check", "--data-root", root, "--datasets", "eurosat")
    assert code == 1 and "Traceback" not in err and "Permission denied" in out and "None" not in out
    code, _, err = run_cli(capsys, "run", "--method", "zeroshot", "--datasets", "eurosat",
                           *base(world, tmp_path / "res", root))
    one_line_error(code, err, "cannot read", "Permission denied")


# ---------------------------------------------------------------------------------------- 3. security

@pytest.mark.parametrize("entry", ["../../outside.jpg", "/etc/passwd", "a/../../../b.jpg"])
def test_split_paths_must_stay_inside_the_dataset_root(world, tmp_path, capsys, entry):
    from bench.data.synth import make_dataset_tree

    root = tmp_path / "data"
    make_dataset_tree("eurosat", root, n_classes=3, per_class=(2, 1, 2))
    (tmp_path / "outside.jpg").write_bytes(b"secret")
    _edit_split(root, "eurosat", lambda d: d["test"].__setitem__(0, [entry, d["test"][0][1], d["test"][0][2]]))
    code, _, err = run_cli(capsys, "run", "--method", "zeroshot", "--datasets", "eurosat",
                           *base(world, tmp_path / "res", root))
    one_line_error(code, err, repr(entry), "test[0]", "not inside the dataset root")
    assert not (tmp_path / "res").exists() or Store(tmp_path / "res").all_results() == []


def test_symlinks_inside_the_root_are_allowed(world, tmp_path, capsys):
    from bench.data.synth import make_dataset_tree

    root = tmp_path / "data"
    make_dataset_tree("eurosat", root, n_classes=3, per_class=(2, 1, 2))
    rel = json.loads((root / "eurosat" / "split_zhou_EuroSAT.json").read_text())["test"][0][0]
    (root / "eurosat" / "2750" / "alias.jpg").symlink_to(root / "eurosat" / "2750" / rel)
    _edit_split(root, "eurosat", lambda d: d["test"].__setitem__(0, ["alias.jpg", d["test"][0][1], d["test"][0][2]]))
    code, _, err = run_cli(capsys, "run", "--method", "zeroshot", "--datasets", "eurosat",
                           *base(world, tmp_path / "res", root))
    assert code == 0, err


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_training_checkpoint_payload_does_not_run(tmp_path):
    from bench.launch.slurm import FileCheckpointer

    marker = tmp_path / "PWNED"
    path = tmp_path / "run.ckpt.pt"
    torch.save({"module": {}, "epoch": 3, "x": _Payload(marker)}, path)
    # the payload is real: an unrestricted load runs it
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    assert FileCheckpointer(path).load() is None  # refused: the run starts over from epoch 0
    assert not marker.exists() and not path.exists()


class _SetstatePayload(torch.nn.Module):
    """A TorchScript module whose ``__setstate__`` (compiled into the archive) runs on ``torch.jit.load``."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def forward(self, x):
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
        print("PAYLOAD RAN")
        self.w = state[0]
        self.training = state[1]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_read_without_running_its_code(tmp_path):
    import open_clip

    from bench.model.backbone import read_checkpoint, read_torchscript_weights
    from bench.errors import BenchError

    # same weights as torch.jit.load, every parameter and buffer
    torch.manual_seed(4)
    model = open_clip.create_model("tiny-test", None)
    path = tmp_path / "jit.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    ours, jit = read_torchscript_weights(path), torch.jit.load(str(path)).state_dict()
    assert sorted(ours) == sorted(jit) and all(torch.equal(ours[k], jit[k]) for k in jit)

    # an archive whose data.pkl calls os.system: refused, nothing runs
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(_Payload(marker), protocol=2))
        z.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("evil/version", "3\n")
    with pytest.raises(BenchError, match="cannot read checkpoint"):
        read_checkpoint(evil)
    assert not marker.exists()


def test_torchscript_setstate_payload_does_not_run(tmp_path, capfd):
    from bench.model.backbone import read_checkpoint
    from bench.errors import BenchError

    path = tmp_path / "setstate.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_SetstatePayload()), str(path))
        capfd.readouterr()
        torch.jit.load(str(path))
    assert "PAYLOAD RAN" in capfd.readouterr().out  # the payload is real: torch.jit.load runs it
    with pytest.raises(BenchError, match="cannot read checkpoint"):
        read_checkpoint(path)
    out = capfd.readouterr()
    assert "PAYLOAD RAN" not in out.out + out.err


# ---------------------------------------------------------------------------------------- 4. concurrency, signals

def test_claims_and_stale_claim_recovery(tmp_path):
    store = Store(tmp_path)
    config = {"method": "m", "protocol": "fewshot", "train": {"dataset": "d", "shots": 1, "seed": 1}, "evals": []}
    first = store.claim(config)
    assert first is not None and store.claim(config) is None  # held (by this live process)
    first.release()
    assert not store.claim_path(config).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = store.claim_path(config)
    import socket

    path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "time": time.time()}))
    again = store.claim(config)  # the claimer crashed: taken over
    assert again is not None and json.loads(path.read_text())["pid"] == os.getpid()
    again.release()
    path.write_text(json.dumps({"pid": 1, "host": "another-node", "time": 0}))
    assert store.claim(config) is None  # another host, fresh: alive
    past = time.time() - 3600
    os.utime(path, (past, past))
    assert store.claim(config) is not None  # another host, no heartbeat for an hour: abandoned


def test_two_concurrent_grids_execute_each_run_once(world, tmp_path):
    res = tmp_path / "res"
    cmd = cli_cmd(world, res, "run", "--method", "coop", "--datasets", ",".join(DATASETS), "--shots", "1",
                  "--seeds", "1,2", "--set", "epochs=2", "--set", "n_ctx=2", "--views", "1")
    env = {**os.environ, "BENCH_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    executed = sum(err.count("-> ") for _, err in outs)  # one "<label> <dataset> ... -> <eval>: top1" per execution
    assert executed == 4 and len(Store(res).all_results()) == 4
    import re

    counts = [re.search(r"(\d+) already complete, (\d+) ran(?:, (\d+) done by another process)?", o).groups()
              for o, _ in outs]
    assert sum(int(ran) for _, ran, _ in counts) == 4
    for (skipped, ran, other), _ in zip(counts, outs):
        assert int(skipped) + int(ran) + int(other or 0) == 4  # every run accounted for, truthfully
    assert not list(res.rglob("*.claim"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_are_handled_as_ctrl_c(world, tmp_path, sig):
    from bench.data.synth import make_dataset_tree

    root = tmp_path / "data"
    keys = ["caltech101", "eurosat", "dtd", "food101"]
    for k in keys:
        make_dataset_tree(k, root, n_classes=3, per_class=(1, 1, 20))
    res = tmp_path / "res"
    proc = subprocess.Popen(cli_cmd(world, res, "run", "--method", "zeroshot", "--datasets", ",".join(keys),
                                    root=root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(res.rglob("*.json")) and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the grid finished before the signal arrived")
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines()[-1] == f"interrupted by {signal.Signals(sig).name}: results written so far are kept"
    assert "Traceback" not in err
    for p in res.rglob("*.json"):
        assert json.loads(p.read_text())["status"] == "complete"
    assert not list(res.rglob("*.claim")) and not [p for p in res.rglob(".*") if p.name.endswith(".tmp")]
    assert main([str(a) for a in cli_cmd(world, res, "run", "--method", "zeroshot", "--datasets", ",".join(keys),
                                         root=root)[3:]]) == 0
    assert len(Store(res).all_results()) == len(keys)
