"""``bench demo``: the built-in default job — the miniature world end to end, as plain ``bench`` commands.

It pretrains the tiny CLIP once (cached), writes the miniature datasets, runs a few-shot grid, the base-to-new
and the domain-shift protocols, prints the three tables and writes the few-shot figure.  Every step is an ordinary
CLI call, printed before it runs, so the demo doubles as a tour of the commands.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import IO

FEWSHOT_METHODS = "zeroshot,linear_probe,coop"  # KgCoOp: in base-to-new, its paper's protocol
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


def _helper(run_steps: list[list[str]]) -> tuple[subprocess.Popen, IO[bytes]]:
    """A second process that runs the demo's grids in the opposite order, in the background: the store's run
    claims make the two share every run (each executed once), as two SLURM tasks or two terminals would, and
    the opposite order keeps them on different grids until the end. One thread each, like the demo's own
    process, so every number is the same whichever process computed it."""
    out = tempfile.TemporaryFile()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli.demo", json.dumps([[*a, "-q"] for a in run_steps[::-1]])],
                            stdout=out, stderr=subprocess.STDOUT, env=env)
    return proc, out


def _helper_main(argvs: list[list[str]]) -> int:
    from bench.cli import main

    for argv in argvs:
        code = main(argv)
        if code not in (0, None):
            return code
    return 0


def cmd_demo(args) -> int:
    import torch

    from bench.cli import main
    from bench.data.images import usable_cpus

    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        torch.set_num_threads(1)  # the miniature models are tiny: one thread is fastest and immune to busy cores
        os.environ["BENCH_THREADS"] = "1"  # also in every `bench run` step and the second process, whatever the shell set
    share = on_cpu and usable_cpus() >= 2 and not args.one_process
    extra = ["--results", args.results] if args.results else []
    t0 = time.time()
    if share:  # the checkpoint and data first (once, with every core), then two processes share the grids
        from bench.mini.build import ensure_data
        from bench.mini.pretrain import ensure_checkpoint

        ensure_checkpoint()
        ensure_data()
    all_steps = steps(args.shots, args.seeds, args.views, extra)
    helper = None
    if share:
        run_steps = [a for a in all_steps if a[0] == "run"]
        print(f"\n(a second process runs the same {len(run_steps)} grids in the opposite order on the other core; "
              f"the two share the runs through the results store)", flush=True)
        helper = _helper(run_steps)
    try:
        for argv in all_steps:
            if helper is not None and argv[0] != "run":  # tables and figures once both processes are done
                code = _join(helper)
                helper = None
                if code:
                    return code
            print(f"\n$ bench {shlex.join(argv)}", flush=True)
            code = main(argv)
            if code not in (0, None):
                print(f"demo step failed (exit {code}): bench {shlex.join(argv)}")
                return code
    finally:  # a failed step, Ctrl-C or SIGTERM: the second process stops too (its claims are released)
        if helper is not None:
            helper[0].terminate()
            helper[0].wait()
            helper[1].close()
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    return 0


def _join(helper: tuple[subprocess.Popen, IO[bytes]]) -> int:
    """Wait for the second process; its output and a one-line error if it failed."""
    proc, out = helper
    code = proc.wait()
    if code != 0:
        out.seek(0)
        print(out.read().decode(errors="replace")[-3000:])
        print(f"demo failed in the second process (exit {code})")
    out.close()
    return code


def add_command(sub) -> None:
    p = sub.add_parser("demo", help="the built-in default: the miniature world end to end (~8 min on 2 CPU cores, "
                                    "5 of them pretraining once)")
    # Sized for CI on two CPU cores (pretraining is ~5 of its ~8 minutes there); `--shots 1,4,16 --seeds 1,2,3`
    # or `bench run --preset mini ...` for more.
    p.add_argument("--shots", default="1,16")
    p.add_argument("--seeds", default="1")
    p.add_argument("--views", type=int, default=16, help="cached augmented views per training image")
    p.add_argument("--results", help="results store folder (default results/runs)")
    p.add_argument("--one-process", action="store_true",
                   help="run every grid in this process only (default on a CPU with 2+ cores: a second process "
                        "runs the same grids in the opposite order, sharing the runs)")
    p.set_defaults(func=cmd_demo)


if __name__ == "__main__":  # the second process of cmd_demo: python -m bench.cli.demo '<JSON list of bench argvs>'
    sys.exit(_helper_main(json.loads(sys.argv[1])))
