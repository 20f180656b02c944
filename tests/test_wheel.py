"""The package as a user installs it: build the wheel, install it into a fresh virtual environment (reusing this
environment's torch/open_clip through a .pth line, no download), and run the CLI from outside the checkout."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from bench.paths import repo_root

pytestmark = pytest.mark.slow

SOURCES = ["bench", "methods", "datasets", "results/reference", "slurm", "pyproject.toml", "README.md"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # build from a copy: the build never writes into the checkout
    for name in SOURCES:
        if (repo_root() / name).is_dir():
            shutil.copytree(repo_root() / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(repo_root() / name, src / name)
    run = dict(capture_output=True, text=True, timeout=300)
    try:  # build with this environment's setuptools when recent enough (no index needed), else pip's isolated way
        import setuptools

        recent = int(setuptools.__version__.split(".")[0]) >= 68
    except ImportError:
        recent = False
    isolation = ["--no-build-isolation"] if recent else []
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
                           str(src), "-w", str(tmp / "dist")], **run)
    assert done.returncode == 0, done.stderr
    wheel = next((tmp / "dist").glob("clip_prompt_bench-*.whl"))

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, **run)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, **run).stdout.strip())
    # this environment's packages (torch, open_clip, ...) after the venv's own; .pth files there are not run,
    # so an editable install of the checkout in this environment stays invisible to the venv
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], **run)
    assert done.returncode == 0, done.stderr

    home = tmp / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BENCH_", "XDG_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    work = tmp / "work"  # an unrelated current folder, away from the checkout
    work.mkdir()

    def bench(*argv, ok=True):
        done = subprocess.run([str(venv / "bin" / "bench"), *map(str, argv)], cwd=work, env=env, **run)
        if ok:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    return {"bench": bench, "py": py, "site": site, "home": home, "env": env, "work": work, "tmp": tmp}


def test_wheel_holds_specs_configs_and_reference_numbers(installed):
    code = ("import json, bench, bench.paths as p, bench.report as r, bench.model.backbone as b; "
            "print(json.dumps([bench.__file__, str(p.DATASETS_DIR), str(r.reference_dir()), len(r.load_reference()),"
            " str(b.MODEL_CONFIG_DIR), p.in_checkout(), str(p.cache_dir()), str(p.results_dir())]))")
    done = subprocess.run([str(installed["py"]), "-c", code], cwd=installed["work"], env=installed["env"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    module, specs, ref, n_ref, configs, checkout, cache, results = json.loads(done.stdout)
    site = str(installed["site"])
    assert module.startswith(site) and specs.startswith(site) and ref.startswith(site) and configs.startswith(site)
    assert Path(specs, "dtd.yaml").is_file() and Path(configs, "mini.json").is_file() and n_ref > 100
    assert not checkout
    home = str(installed["home"])
    assert cache == f"{home}/.cache/clip-prompt-bench"
    assert results == f"{home}/.local/share/clip-prompt-bench/runs"
    assert not (installed["site"] / "datasets").exists()  # never a top-level `datasets` package


def test_wheel_installs_the_built_in_methods_inside_bench(installed):
    from bench.registry import BUILTIN_PACKAGE, get_method, list_methods

    site = installed["site"]
    assert not (site / "methods").exists()  # nothing named `methods` at the top of site-packages
    assert (site / "bench" / "methods" / "coop.py").is_file() and (site / "bench" / "methods" / "_prompts.py").is_file()
    built_in = {n for n in list_methods() if get_method(n).__module__.startswith(BUILTIN_PACKAGE + ".")}
    listed = {ln.split()[0] for ln in installed["bench"]("list", "methods").stdout.splitlines() if ln.strip()}
    assert built_in and listed == built_in


def test_installed_cli_lists_and_runs_zeroshot(installed):
    from bench.data.synth import make_dataset_tree

    bench = installed["bench"]
    assert bench("--version").stdout.strip().startswith("bench 0.")
    out = bench("list", "datasets").stdout
    assert "dtd" in out and "imagenet" in out and "mini_textures" in out

    data = installed["tmp"] / "data"
    make_dataset_tree("eurosat", data, n_classes=4, per_class=(2, 1, 3))
    done = bench("run", "--method", "zeroshot", "--datasets", "eurosat", "--backbone", "tiny-test",
                 "--pretrained", "none", "--data-root", data, "--device", "cpu")
    assert "1 ran, 0 failed" in done.stdout
    home = installed["home"]
    runs = list((home / ".local/share/clip-prompt-bench/runs/zeroshot/eurosat").glob("*.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["metrics"]["eurosat"]["n_test"] == 12
    assert any((home / ".cache/clip-prompt-bench/features").rglob("*.pt")) or \
        any((home / ".cache/clip-prompt-bench/features").iterdir())
    table = bench("table", "--protocol", "fewshot", "--method", "zeroshot", "--datasets", "eurosat").stdout
    assert "zeroshot" in table

    done = bench("run", "--method", "zeroshot", "--datasets", "nosuch", "--data-root", data, ok=False)
    assert done.returncode == 2 and "unknown dataset 'nosuch'; known: imagenet, caltech101" in done.stderr
