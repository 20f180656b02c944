"""Files the suite writes respect the umask (issue 25, item 4): a group-shared store or cache stays readable."""

import os
import stat
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from bench.data.synth import make_dataset_tree

    root = tmp_path_factory.mktemp("umask") / "data"
    make_dataset_tree("dtd", root, n_classes=3, per_class=(2, 1, 2), image_size=16)
    return root


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_results_segments_and_samples_follow_the_umask(data, tiny_ckpt, tmp_path, umask, mode):
    env = {**os.environ, "BENCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--method", "coop", "--datasets", "dtd",
                           "--shots", "1", "--seeds", "1", "--set", "epochs=1", "--backbone", "tiny-test",
                           "--pretrained", str(tiny_ckpt), "--data-root", str(data), "--results",
                           str(tmp_path / "res")], capture_output=True, text=True, env=env, timeout=600,
                          preexec_fn=lambda: os.umask(umask))
    assert done.returncode == 0, done.stderr
    written = {"result": [p for p in (tmp_path / "res").rglob("*.json") if not p.name.startswith(".")],
               "segment": list((tmp_path / "cache").rglob("*.pt")),
               "sample": [p for p in (tmp_path / "cache").rglob("*.json") if "sample" in str(p) or "shot" in p.name]}
    for kind, paths in written.items():
        assert paths, f"no {kind} file written"
        for p in paths:
            assert stat.S_IMODE(p.stat().st_mode) == mode, f"{kind} {p} has mode {oct(p.stat().st_mode)}"
