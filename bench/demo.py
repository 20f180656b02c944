"""``bench demo``: the built-in default job — the miniature world end to end, as plain ``bench`` commands.

It pretrains the tiny CLIP once (cached), writes the miniature datasets, runs a few-shot grid, the base-to-new
and the domain-shift protocols, prints the three tables and writes the few-shot figure.  Every step is an ordinary
CLI call, printed before it runs, so the demo doubles as a tour of the commands.
"""

from __future__ import annotations

import shlex
import time

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


def cmd_demo(args) -> int:
    import torch

    from bench.cli import main

    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # the miniature models are tiny: one thread is fastest and immune to busy cores
    extra = ["--results", args.results] if args.results else []
    t0 = time.time()
    for argv in steps(args.shots, args.seeds, args.views, extra):
        print(f"\n$ bench {shlex.join(argv)}", flush=True)
        code = main(argv)
        if code not in (0, None):
            print(f"demo step failed (exit {code}): bench {shlex.join(argv)}")
            return code
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    return 0


def add_command(sub) -> None:
    p = sub.add_parser("demo", help="the built-in default: the miniature world end to end (a few minutes on a CPU)")
    # Sized for CI on two CPU cores (pretraining is ~8 of its minutes there); `--shots 1,4,16 --seeds 1,2,3`
    # or `bench run --preset mini ...` for more.
    p.add_argument("--shots", default="1,16")
    p.add_argument("--seeds", default="1")
    p.add_argument("--views", type=int, default=16, help="cached augmented views per training image")
    p.add_argument("--results", help="results store folder (default results/runs)")
    p.set_defaults(func=cmd_demo)
