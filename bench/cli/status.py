"""``bench status``: done / missing / failed (and, for SLURM, pending / running) runs of a grid."""

from __future__ import annotations

import sys

from bench.cli.common import print_json, store_from_args
from bench.cli.run import add_grid_args, build_grid


def add_command(sub) -> None:
    p = sub.add_parser("status", help="done / missing / failed runs of a grid")
    add_grid_args(p)
    p.add_argument("--json", action="store_true", help="counts per (protocol, method, dataset) and every run as JSON")
    p.set_defaults(func=cmd_status)


def cmd_status(args) -> int:
    from collections import Counter

    from bench.report.query import infer_preset

    from bench.launch.slurm import print_status_details, run_states
    from bench.store import config_hash

    if not (args.preset or args.datasets or args.backbone or args.pretrained):
        inferred = infer_preset(args.results, args.protocol)
        if inferred and inferred != "coop11":
            args.preset = inferred
            if not args.json:
                print(f"note: the store holds {inferred} results: showing --preset {inferred}", file=sys.stderr)
    _grid_from_store(args)
    grid, _ = build_grid(args)
    store = store_from_args(args)
    states = run_states(grid, store)  # done | pending | running | failed | missing (| unknown: queue unreachable)
    counts: Counter = Counter()
    for c in grid:
        counts[(c["protocol"], c["label"], c["train"]["dataset"], states[config_hash(c)]["state"])] += 1
    cols = ["done", "missing", "failed"]
    if any(s["job_id"] for s in states.values()):  # something of this grid was submitted to SLURM
        cols = ["done", "pending", "running", "missing", "failed"]
        if any(s["state"] == "unknown" for s in states.values()):
            cols.append("unknown")
    width = {"done": 5, "pending": 8, "running": 8, "missing": 8, "failed": 7, "unknown": 8}
    keys = sorted({k[:3] for k in counts})
    if args.json:
        print_json({"columns": cols, "rows": [{"protocol": k[0], "label": k[1], "dataset": k[2],
                                              **{c: counts[k + (c,)] for c in cols}} for k in keys],
                    "runs": [{"hash": config_hash(c), "label": c["label"], **c["train"],
                              "state": states[config_hash(c)]["state"], "job_id": states[config_hash(c)]["job_id"],
                              "error": states[config_hash(c)].get("error")} for c in grid]})
        return 0
    print(f"{'protocol':14} {'method':28} {'dataset':16} " + " ".join(f"{c:>{width[c]}}" for c in cols))
    for k in keys:
        print(f"{k[0]:14} {k[1]:28} {k[2]:16} " + " ".join(f"{counts[k + (c,)]:>{width[c]}}" for c in cols))
    print_status_details(grid, states)
    return 0


def _grid_from_store(args) -> None:
    """Without grid flags, show what the store holds (its one backbone, its seeds, datasets and methods) rather than
    the default ViT-B-16/openai grid, which would read "0 done" for a store of another backbone's results."""
    from bench.registry import find_method
    from bench.report.query import store_grid

    held = store_grid(args.results, args.protocol)
    said = []
    if not (args.backbone or args.pretrained or args.preset) and len(held["backbones"]) == 1:
        arch, pretrained = held["backbones"][0]
        args.backbone = arch
        if pretrained not in ("None", "random"):
            args.pretrained = pretrained
        said.append(f"--backbone {arch}")
    if not args.seeds and held["seeds"]:
        args.seeds = ",".join(map(str, held["seeds"]))
        said.append(f"--seeds {args.seeds}")
    if not args.shots and held["shots"]:
        args.shots = ",".join(map(str, held["shots"]))
        said.append(f"--shots {args.shots}")
    if not args.datasets and held["datasets"]:
        args.datasets = ",".join(held["datasets"])
        said.append(f"--datasets {args.datasets}")
    names = list(dict.fromkeys(label.split("[")[0] for label in held["methods"]))
    if not args.methods and names and all(find_method(n) for n in names):
        args.methods = ",".join(names)
        said.append(f"--method {args.methods}")
    if said and not args.json:
        print(f"note: showing what the store holds: {' '.join(said)}", file=sys.stderr)
