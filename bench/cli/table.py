"""``bench table``: tables (mean ± std over seeds) and paired tests from the results store.

Also the selection flags and the query that ``bench plot`` (:mod:`bench.cli.plot`) shares with it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.cli.common import argparse_suppress  # noqa: F401 - bench.cli.plot imports it from here
from bench.errors import BenchError


def add_selection_args(p) -> None:
    """Options shared by ``bench table`` and ``bench plot``."""
    from bench.cli import DeprecatedAlias
    from bench.report.frame import METRICS

    p.add_argument("--protocol", default="fewshot", help="fewshot | base2new | domain_shift | cross_dataset")
    p.add_argument("--methods", "--method", dest="methods",
                   help="comma-separated method names or labels, in row order (default: all in the store)")
    p.add_argument("--datasets", help="comma-separated dataset keys (default: the protocol's datasets of the group; "
                                      "for domain_shift / cross_dataset: the source)")
    p.add_argument("--seeds", help="comma-separated seeds every cell must have, as in `bench run` (default: the "
                                   "seeds the store holds for this protocol, else the protocol's 1,2,3); results "
                                   "of other seeds are left out, with a note")
    p.add_argument("--preset", choices=["coop11", "mini"],
                   help="dataset group: 'coop11' (the 11 CoOp datasets) or 'mini' (the miniature world); default: "
                        "inferred from what the store holds")
    p.add_argument("--group", dest="preset", choices=["coop11", "mini"], action=DeprecatedAlias, new="--preset",
                   help=argparse_suppress())
    p.add_argument("--backbone", help="only results of this backbone (open_clip architecture name prefix)")
    p.add_argument("--metric", default="top1", choices=list(METRICS), help="value to aggregate (default top1)")
    p.add_argument("--results", help="results store folder (default $BENCH_RESULTS or results/runs)")


def query_from_args(args):
    """The :class:`bench.report.Query` of the selection flags; what is not given starts from what the store
    holds (:func:`bench.report.query.store_grid`), said on stderr where it differs from the protocol's defaults:
    the dataset group, its datasets the store holds and the seeds (a 2-seed store is shown over its 2 seeds)."""
    from bench.protocols import default_datasets, get_protocol, parse_int_list
    from bench.report.query import Query, csv_list, store_grid

    proto = get_protocol(args.protocol)
    group = args.preset or getattr(args, "group", None)
    seeds = parse_int_list(args.seeds, "seeds") if args.seeds else None
    datasets = csv_list(args.datasets)
    if group is None or not datasets or seeds is None:
        held = store_grid(args.results, args.protocol)
        if group is None and not args.datasets:  # the dataset group of what the store holds
            group = held["preset"]
            if group and group != "coop11":
                print(f"note: the store holds {group} results: showing --preset {group}", file=sys.stderr)
        if not datasets and not args.preset and held["datasets"]:  # the group's datasets the store holds, in order
            every = default_datasets(args.protocol, group or "coop11")
            have = [d for d in every if d in held["datasets"]]
            if have and len(have) < len(every):
                datasets = have
                print(f"note: the store holds {args.protocol} results of {len(have)} of the {len(every)} datasets: "
                      f"showing --datasets {','.join(have)}", file=sys.stderr)
        if seeds is None and held["seeds"] and held["seeds"] != sorted(proto.seeds):
            seeds = held["seeds"]
            print(f"note: the store holds {args.protocol} results of seeds {','.join(map(str, seeds))}: showing "
                  f"--seeds {','.join(map(str, seeds))}", file=sys.stderr)
    return Query(
        protocol=args.protocol,
        methods=csv_list(args.methods),
        datasets=datasets,
        shots=parse_int_list(args.shots, "shots") if getattr(args, "shots", None) else None,
        seeds=seeds,
        group=group or "coop11",
        backbone=getattr(args, "backbone", None),
        metric=getattr(args, "metric", "top1"),
        compare=getattr(args, "compare", None),
    )


def cmd_table(args) -> int:
    from bench.report import build_tables, format_test, load_frame, paired_tests, render, tests_json
    from bench.report.query import csv_list

    q = query_from_args(args)
    df = load_frame(args.results)
    if args.test:
        names = csv_list(args.test) or []
        if len(names) != 2:
            raise BenchError(f"--test needs exactly two methods (got {len(names)}), e.g. --test METHOD_A,METHOD_B")
        res = paired_tests(df, names[0], names[1], protocol=q.protocol, stat=args.stat, seeds=q.seeds,
                           datasets=q.datasets if q.protocol in ("fewshot", "base2new") else None, shots=q.shots,
                           metric=q.metric, alpha=args.alpha)
        text = tests_json(res) if args.format == "json" else "\n".join(format_test(r) for r in res)
    else:
        text = render(build_tables(df, q), args.format)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(out)
    else:
        sys.stdout.write(text)
    return 0


def add_command(sub) -> None:
    from bench.report.render import FORMATS

    p = sub.add_parser("table", help="tables (mean ± std over seeds) and paired tests from the results store",
                       description="Aggregate stored results into the papers' tables. Incomplete cells are "
                                   "shown as such ('1/3 seeds', '—'), never averaged over fewer seeds or datasets.")
    add_selection_args(p)
    p.add_argument("--shots", help="few-shot rows to show, e.g. 16 or 1,2,4 (default: all present)")
    p.add_argument("--format", default="md", choices=list(FORMATS),
                   help="md | latex (as printed) | csv | json (numeric: mean, std, n_seeds per cell, flags as columns)")
    p.add_argument("--compare", choices=["paper"], help="add the published numbers (results/reference) and Δ")
    p.add_argument("--test", nargs="+", metavar="METHOD",
                   help="paired test of two methods over datasets (each dataset's mean over seeds is one pair; one "
                        "test per shot count), with a bootstrap CI of the mean difference: --test A B")
    p.add_argument("--stat", default="wilcoxon", choices=["wilcoxon", "ttest"], help="test for --test")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the --test verdict")
    p.add_argument("--out", help="write the table to this file instead of stdout")
    p.set_defaults(func=cmd_table)
