"""A battery of bad inputs (command lines, split files, image files, environment variables): each is refused
with exit code != 0 and ONE stderr line that names what to fix, with no traceback, before any run starts (the
documented exceptions are marked: argparse's usage errors, and images that only a run decodes).

Most cases run through ``bench.cli.main(argv)`` in this process (the real path of ``python -m bench.cli``,
without a new interpreter per case); the few that depend on the process boundary (a closed pipe, the
interpreter's own error output) run ``python -m bench.cli`` in a subprocess. Nothing here loads a model
bigger than tiny-test, and nearly every case fails before one is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main

REPO = Path(__file__).resolve().parent.parent
NOISE = ("WARNING:root:No pretrained weights",)  # open_clip's note for --pretrained none (true: random weights)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A synthetic data root (dtd, caltech101: 3 classes), a plain file, a results folder, a user method folder."""
    from bench.data.synth import make_dataset_tree

    base = tmp_path_factory.mktemp("bad")
    data = base / "data"
    for key in ("dtd", "caltech101"):
        make_dataset_tree(key, data, n_classes=3, per_class=(2, 1, 2))
    (base / "a_file").write_text("not a folder\n")
    methods = base / "methods"
    methods.mkdir()
    (methods / "untyped.py").write_text(
        "from bench.api import Method, register_method\n\n\n"
        "@register_method('untyped')\nclass Untyped(Method):\n    description = 'no hparam_spec'\n\n"
        "    @classmethod\n    def default_hparams(cls, protocol, dataset, shots):\n"
        "        return {'alpha': 0.5, 'steps': 3, 'flag': True, 'name': 'x'}\n\n"
        "    def fit(self, train):\n        return {}\n")
    return {"data": data, "file": base / "a_file", "res": base / "res", "methods": methods, "base": base}


def grid(world, *extra, method="coop"):
    return ["-q", "run", "--method", method, "--datasets", "dtd", "--shots", "1", "--seeds", "1", "--backbone",
            "tiny-test", "--pretrained", "none", "--data-root", str(world["data"]), "--results", str(world["res"]),
            *map(str, extra)]


def refused(capsys, argv, *names: str) -> str:
    """main(argv) exits != 0 with one stderr line, 'error: ...' naming every one of ``names``; returns it."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith(NOISE)]
    assert code not in (0, None), f"accepted: {argv}\n{out}{err}"
    assert "Traceback" not in err + out, err
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line for {argv}:\n{err}"
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


# ---- command lines -------------------------------------------------------------------------------------------

COMMAND_LINES = [  # (extra flags, method, what the error line names)
    (["--datasets", ""], "coop", ["--datasets", "empty"]),          # used to run all eleven datasets
    (["--datasets", "dtd,,caltech101"], "coop", ["--datasets", "empty entry"]),
    (["--seeds", ""], "coop", ["--seeds"]),
    (["--seeds", "1,,2"], "coop", ["--seeds", "empty entry"]),
    (["--seeds", "-1"], "coop", ["--seeds"]),
    (["--seeds", str(2**32)], "coop", ["--seeds", "2**32"]),       # numpy / torch seeds are 32-bit
    (["--shots", "0"], "coop", ["--shots"]),
    (["--shots", "two"], "coop", ["--shots"]),
    (["--datasets", "nosuch"], "coop", ["nosuch"]),
    (["--protocol", "nosuch"], "coop", ["nosuch"]),
    ([], "nosuch", ["nosuch"]),
    ([], "", ["--method", "empty"]),
    ([], "coop,,zeroshot", ["--method", "empty entry"]),
    (["--protocol", "base2new"], "linear_probe", ["linear_probe", "base2new"]),
    (["--protocol", "domain_shift"], "coop", ["dtd", "domain-shift"]),
    (["--set", "nokey"], "coop", ["KEY=VALUE"]),
    (["--set", "=3"], "coop", ["KEY=VALUE"]),
    (["--set", "n_ctx=abc"], "coop", ["n_ctx"]),
    (["--set", "n_ctx=0"], "coop", ["n_ctx"]),
    (["--set", "n_ctx=2,,4"], "coop", ["empty value"]),
    (["--set", "nosuch=1"], "coop", ["nosuch", "coop"]),
    (["--set", "epochs=2"], "zeroshot,coop", ["epochs", "zeroshot", "METHOD.KEY=VALUE"]),
    (["--set", "kgcoop.epochs=2"], "zeroshot,coop", ["kgcoop", "not a method of this grid"]),
    (["--set", "coop.nosuch=2"], "zeroshot,coop", ["nosuch", "coop"]),
    (["--views", "0"], "coop", ["--views"]),
    (["--precision", "fp8"], "coop", ["--precision", "fp8"]),
    (["--device", "nosuch"], "coop", ["nosuch"]),
    (["--backbone", "no-such-arch"], "coop", ["no-such-arch"]),
    (["--pretrained", "/nonexistent/weights.pt"], "coop", ["/nonexistent/weights.pt"]),
    (["--model-configs", "/nonexistent/configs"], "coop", ["/nonexistent/configs"]),
    (["--methods-dir", "/nonexistent/methods"], "coop", ["/nonexistent/methods"]),
    (["--set", "n_ctx=100", "--set", "epochs=1"], "coop", ["n_ctx=100", "context length"]),  # per run before
    (["--launcher", "slurm", "--slurm", "partition"], "coop", ["--slurm", "KEY=VALUE"]),
    (["--launcher", "slurm", "--slurm", "nosuchkey=1"], "coop", ["nosuchkey"]),
    (["--launcher", "slurm", "--slurm-profile", "nosuch-profile"], "coop", ["nosuch-profile"]),
]


@pytest.mark.parametrize("extra,method,names", COMMAND_LINES, ids=[" ".join(c[0]) + f" [{c[1]}]" for c in COMMAND_LINES])
def test_bad_command_line_is_one_line_before_any_work(world, capsys, tmp_path, extra, method, names):
    refused(capsys, grid({**world, "res": tmp_path / "res"}, *extra, method=method), *names)
    assert not list(tmp_path.glob("res/**/*.json")), "a run was stored"


def test_empty_or_missing_folders_and_files_named_as_folders(world, capsys, monkeypatch):
    argv = grid(world, method="zeroshot")
    refused(capsys, [*argv[:-2], "--results", world["file"]], "results store", str(world["file"]))
    refused(capsys, [a if a != str(world["data"]) else "/nonexistent/data" for a in argv], "/nonexistent/data")
    monkeypatch.delenv("BENCH_DATA", raising=False)
    no_root = argv[:argv.index("--data-root")] + argv[argv.index("--data-root") + 2:]
    refused(capsys, no_root, "--data-root")
    refused(capsys, ["data", "check", "--data-root", world["data"], "--datasets", ""], "--datasets")
    refused(capsys, ["data", "sample", "--data-root", world["data"], "--shots", "1"], "--datasets")
    refused(capsys, ["data", "sample", "--data-root", world["data"], "--datasets", "dtd", "--shots", "0"], "--shots")
    refused(capsys, ["plot", "--protocol", "fewshot", "--out-dir", world["file"]], "--out-dir", str(world["file"]))


def test_user_method_without_hparam_spec_is_typed_from_its_defaults(world, capsys):
    """--set alpha=abc on a user method that declares no hparam_spec: refused at grid build (it used to fail
    with a TypeError inside each run, a SLURM task's included); a value of the default's type passes."""
    base = ["--methods-dir", world["methods"], "--dry-run"]
    for bad, key in (("alpha=abc", "alpha"), ("steps=1.5", "steps"), ("flag=maybe", "flag"), ("steps=true", "steps")):
        refused(capsys, grid(world, *base, "--set", bad, method="untyped"), key, "untyped")
    assert main([str(a) for a in grid(world, *base, "--set", "alpha=0.25", "--set", "name=y", method="untyped")]) == 0
    assert "untyped[alpha=0.25,name=y]" in capsys.readouterr().out


# ---- environment variables -----------------------------------------------------------------------------------

ENVIRONMENT = [
    ("BENCH_FEATURE_MEMORY_MB", "abc"),
    ("BENCH_FEATURE_MEMORY_MB", "-5"),
    ("BENCH_WORKERS", "many"),
    ("BENCH_WORKERS", "-1"),
    ("BENCH_DETERMINISTIC", "maybe"),
    ("BENCH_CHECKPOINT_EVERY", "often"),
    ("BENCH_CHECKPOINT_EVERY_MIN", "-1"),
]


@pytest.mark.parametrize("name,value", ENVIRONMENT, ids=[f"{n}={v}" for n, v in ENVIRONMENT])
def test_bad_environment_variable_is_one_line_naming_it(world, capsys, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    refused(capsys, grid(world, method="zeroshot"), name)


def test_cache_that_is_not_a_writable_folder_is_refused_before_any_run(world, capsys, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(world["file"]))
    refused(capsys, grid(world, method="zeroshot"), "cache folder", "BENCH_CACHE")
    monkeypatch.setenv("BENCH_CACHE", str(world["file"] / "cache"))  # a folder below a file cannot be made
    refused(capsys, grid(world, method="zeroshot"), "cache folder", "BENCH_CACHE")


def test_bench_data_that_does_not_exist(world, capsys, monkeypatch):
    monkeypatch.setenv("BENCH_DATA", "/nonexistent/bench-data")
    argv = grid(world, method="zeroshot")
    refused(capsys, argv[:argv.index("--data-root")] + argv[argv.index("--data-root") + 2:], "/nonexistent/bench-data")


# ---- split files ---------------------------------------------------------------------------------------------

SPLITS = [  # (how the split file is broken, what the error line names)
    (lambda d: "not json {", ["split file"]),
    (lambda d: [1, 2], ["split file", "train/val/test"]),
    (lambda d: {**d, "train": [["../../../etc/passwd", 0, "banded"]]}, ["../../../etc/passwd"]),
    (lambda d: {**d, "train": [["/etc/passwd", 0, "banded"]]}, ["/etc/passwd"]),
    (lambda d: {**d, "train": [[d["train"][0][0], "x", "banded"]]}, ["train[0]"]),
    (lambda d: {**d, "train": [["only-a-path"]]}, ["train[0]"]),
    (lambda d: {**d, "train": [[p, 99 if i == 0 else lab, c] for i, (p, lab, c) in enumerate(d["train"])]},
     ["labels"]),
    (lambda d: {k: v for k, v in d.items() if k != "train"}, ["training images", "dtd"]),
    (lambda d: {**d, "train": []}, ["training images", "dtd"]),         # used to fail in each run
    (lambda d: {**d, "test": []}, ["test images", "dtd"]),              # used to store top1 nan as complete
    (lambda d: {**d, "train": [t for t in d["train"] if t[1] != 0]}, ["no training image"]),
]


@pytest.mark.parametrize("case", range(len(SPLITS)))
def test_bad_split_file_is_one_line_naming_it(world, capsys, tmp_path, case):
    data = tmp_path / "data"
    shutil.copytree(world["data"] / "dtd", data / "dtd")
    split = data / "dtd" / "split_zhou_DescribableTextures.json"
    broken = SPLITS[case][0](json.loads(split.read_text()))
    split.write_text(broken if isinstance(broken, str) else json.dumps(broken))
    argv = grid(world, "--set", "epochs=1")
    argv[argv.index("--data-root") + 1] = str(data)
    refused(capsys, argv, *SPLITS[case][1])


# ---- image files: decoded only by a run; documented behaviour: that run fails in one line naming the file ------

@pytest.mark.parametrize("content", [b"", b"garbage, not a JPEG\n", None], ids=["empty", "garbage", "missing"])
def test_bad_image_fails_its_run_in_one_line_naming_the_file(world, capfd, tmp_path, content):
    data = tmp_path / "data"
    shutil.copytree(world["data"] / "dtd", data / "dtd")
    split = json.loads((data / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    image = data / "dtd" / "images" / split["test"][0][0]
    image.unlink() if content is None else image.write_bytes(content)
    argv = grid(world, method="zeroshot")[1:]  # without -q: the FAILED line is a progress line
    argv[argv.index("--data-root") + 1] = str(data)
    argv[argv.index("--results") + 1] = str(tmp_path / "res")
    code = main(argv)
    out, err = capfd.readouterr()  # the run's FAILED line goes through the log (the process's stderr)
    assert code == 1 and "Traceback" not in out + err
    failed = [x for x in err.splitlines() if "FAILED" in x]
    assert len(failed) == 1 and str(image) in failed[0], err
    stored = [p.name for p in (tmp_path / "res").glob("**/*.json")]
    assert stored and all(n.endswith(".failed.json") for n in stored), stored  # the failure recorded, no result


# ---- through a real process ----------------------------------------------------------------------------------

def _bench(*argv, env=None, shell_tail=""):
    full = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    cmd = " ".join([sys.executable, "-m", "bench.cli", *argv]) + shell_tail
    return subprocess.run(["bash", "-c", cmd + "; exit ${PIPESTATUS[0]}"], capture_output=True, text=True,
                          env=full, cwd=REPO, timeout=120)


def test_closed_pipe_exits_quietly():
    """`bench list backbones | head`: the reader went away; no BrokenPipeError traceback, exit 0."""
    done = _bench("list", "backbones", shell_tail=" | true")
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_environment_error_through_python_m_bench_cli(world):
    done = _bench("-q", "run", "--method", "zeroshot", "--datasets", "dtd", "--backbone", "tiny-test", "--pretrained",
                  "none", "--data-root", str(world["data"]), "--results", str(world["res"]),
                  env={"BENCH_FEATURE_MEMORY_MB": "abc"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: BENCH_FEATURE_MEMORY_MB='abc'"), done.stderr


def test_argparse_usage_errors_name_the_flag(capsys):
    """Documented: argparse's own refusals print the usage, then one 'error:' line naming the flag; exit 2."""
    for argv, name in ((["list", "nosuch"], "nosuch"), (["run", "--launcher", "ssh"], "--launcher"),
                       (["run", "--views", "many"], "--views"), (["nosuch"], "nosuch")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "Traceback" not in err
        assert "error:" in err.strip().splitlines()[-1] and name in err.strip().splitlines()[-1], err


def test_synth_helper_has_a_real_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    helped = subprocess.run([sys.executable, "-m", "bench.data.synth", "--help"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert helped.returncode == 0 and "DATA_ROOT" in helped.stdout and "--datasets" in helped.stdout
    bad = subprocess.run([sys.executable, "-m", "bench.data.synth", str(tmp_path), "--per-class", "1,2"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: bad --per-class '1,2': expected three counts TRAIN,VAL,TEST, e.g. 6,3,4"]
    made = subprocess.run([sys.executable, "-m", "bench.data.synth", str(tmp_path), "--datasets", "eurosat",
                           "--classes", "2", "--per-class", "1,1,1"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert made.returncode == 0 and (tmp_path / "eurosat").is_dir(), made.stderr
