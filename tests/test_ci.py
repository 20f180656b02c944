"""The README's two commands are a contract: `.ci/run` must run exactly what the README shows a new user."""

import os
import re
import shutil
import stat
import subprocess

from bench.paths import repo_root


def _readme_commands() -> list[str]:
    text = (repo_root() / "README.md").read_text()
    section = text.split("## The two commands", 1)[1].split("\n#", 1)[0]
    blocks = [b.strip() for b in re.findall(r"```\n(.*?)```", section, re.S)]
    assert len(blocks) == 2 and all("\n" not in b for b in blocks), blocks  # set-up + main job, then the tests
    return blocks


def test_ci_runs_the_readme_commands_verbatim():
    setup, tests = _readme_commands()
    assert "pip install" in setup and "pytest" in tests
    lines = [ln.split("#", 1)[0].strip() for ln in (repo_root() / ".ci" / "run").read_text().splitlines()]
    commands = [ln for ln in lines if ln]
    assert any(c == setup or c.startswith(setup + " ||") for c in commands), commands
    assert commands[-1] == tests, commands  # the tests are the last thing CI runs


def _fake(bin_dir, name, body):
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_ci_stops_when_the_setup_command_fails(tmp_path):
    """A failed install must fail CI, not fall through to the tests (set -e ignores failures inside `a && b`)."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(repo_root() / ".ci" / "run", tmp_path / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    _fake(bin_dir, "pip", f'echo pip >> {log}; exit 1')
    for name in ("bench", "python"):
        _fake(bin_dir, name, f'echo {name} >> {log}')
    # `python3 -m venv DIR` makes an (empty) environment whose activation keeps the fakes first on PATH
    _fake(bin_dir, "python3", 'mkdir -p "$3/bin" && : > "$3/bin/activate"')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert log.read_text().split() == ["pip"]  # neither the demo nor the tests ran


def test_ci_installs_into_a_fresh_virtual_environment_with_the_constraints():
    """CI must see what a new user gets: a new venv each run, resolved with the tested versions."""
    text = (repo_root() / ".ci" / "run").read_text()
    assert re.search(r'rm -rf "\$VENV"\s+python3 -m venv "\$VENV"\s+source "\$VENV/bin/activate"', text)
    setup, _ = _readme_commands()
    assert "-c constraints.txt" in setup
    pins = dict(ln.split("==", 1) for ln in (repo_root() / "constraints.txt").read_text().splitlines()
                if ln and not ln.startswith("#"))
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    for dep in ("open_clip_torch", "submitit", "pandas", "scipy", "seaborn", "scikit-learn", "pytest"):
        assert dep in pins, dep
