"""``bench demo``: the built-in default job — the miniature world end to end, as plain ``bench`` commands.

It pretrains the tiny CLIP once (cached), writes the miniature datasets, runs a few-shot grid, the base-to-new
and the domain-shift protocols, prints the three tables and writes the few-shot figure.  Every step is an ordinary
CLI call, printed before it runs, so the demo doubles as a tour of the commands.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import IO

FEWSHOT_METHODS = "zeroshot,linear_probe,coop,kgcoop"
SHIFT_METHODS = "zeroshot,coop"
BASE2NEW_METHODS = "zeroshot,coop,kgcoop"


def steps(shots: str, seeds: str, views: int, extra: list[str]) -> list[list[str]]:
    common = ["--preset", "mini", *extra]
    return [
        ["run", "--protocol", "fewshot", "--method", FEWSHOT_METHODS, "--shots", shots, "--seeds", seeds,
         "--views", str(views), *common],
        ["run", "--protocol", "base2new", "--method", BASE2NEW_METHODS, "--seeds", seeds, "--views", str(views),
         *common],
        ["run", "--protocol", "domain_shift", "--method", SHIFT_METHODS, "--seeds", seeds, "--views", str(views),
         *common],
        ["table", "--protocol", "fewshot", "--method", FEWSHOT_METHODS, "--seeds", seeds, *common],
        ["table", "--protocol", "base2new", "--method", BASE2NEW_METHODS, "--seeds", seeds, *common],
        ["table", "--protocol", "domain_shift", "--method", SHIFT_METHODS, "--seeds", seeds, *common],
        ["plot", "--protocol", "fewshot", "--method", FEWSHOT_METHODS, "--seeds", seeds, *common],
    ]


def _helper(argv: list[str]) -> tuple[subprocess.Popen, IO[bytes]]:
    """A second `bench run` of the same grid, in the background: the store's run claims make the two processes
    share the runs (each run executed once), as two SLURM tasks or two terminals would. One thread each, like the
    demo's own process, so every number is the same whichever process computed it."""
    out = tempfile.TemporaryFile()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *argv, "-q"], stdout=out, stderr=subprocess.STDOUT,
                            env=env)
    return proc, out


def cmd_demo(args) -> int:
    import torch

    from bench.cli import main
    from bench.features import usable_cpus

    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        torch.set_num_threads(1)  # the miniature models are tiny: one thread is fastest and immune to busy cores
    share = on_cpu and usable_cpus() >= 2 and not args.one_process
    extra = ["--results", args.results] if args.results else []
    t0 = time.time()
    if share:  # the checkpoint and data first (once, with every core), then two processes share each grid
        from bench.mini.build import ensure_data
        from bench.mini.pretrain import ensure_checkpoint

        ensure_checkpoint()
        ensure_data()
    for argv in steps(args.shots, args.seeds, args.views, extra):
        helper = None
        if share and argv[0] == "run":
            print(f"\n$ bench {shlex.join(argv)} -q &   # a second process on the other core, sharing the runs",
                  flush=True)
            helper = _helper(argv)
        print(f"\n$ bench {shlex.join(argv)}", flush=True)
        try:
            code = main(argv)
        except BaseException:  # Ctrl-C, SIGTERM: the second process stops too (its claims are released)
            if helper is not None:
                helper[0].terminate()
            raise
        if helper is not None:
            proc, out = helper
            if code not in (0, None):
                proc.terminate()
            helper_code = proc.wait()
            if code in (0, None) and helper_code != 0:
                out.seek(0)
                print(out.read().decode(errors="replace")[-3000:])
                print(f"demo step failed in the second process (exit {helper_code}): bench {shlex.join(argv)}")
                return helper_code
            out.close()
        if code not in (0, None):
            print(f"demo step failed (exit {code}): bench {shlex.join(argv)}")
            return code
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    return 0


def add_command(sub) -> None:
    p = sub.add_parser("demo", help="the built-in default: the miniature world end to end (~15 min on 2 CPU cores, "
                                    "9 of them pretraining once)")
    # Sized for CI on two CPU cores (pretraining is ~9 of its minutes there); `--shots 1,4,16 --seeds 1,2,3`
    # or `bench run --preset mini ...` for more.
    p.add_argument("--shots", default="1,16")
    p.add_argument("--seeds", default="1")
    p.add_argument("--views", type=int, default=16, help="cached augmented views per training image")
    p.add_argument("--results", help="results store folder (default results/runs)")
    p.add_argument("--one-process", action="store_true",
                   help="run every grid in this process only (default on a CPU with 2+ cores: a second `bench run` "
                        "of each grid shares its runs)")
    p.set_defaults(func=cmd_demo)
