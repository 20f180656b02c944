"""``bench plot``: the CoOp-style figures (few-shot curves, base-to-new bars) from the results store."""

from __future__ import annotations

from pathlib import Path

from bench.cli.table import add_selection_args, argparse_suppress, query_from_args
from bench.errors import BenchError

FIGURE_FORMATS = ("png", "pdf", "svg")


def cmd_plot(args) -> int:
    from bench.report import load_frame
    from bench.report.plots import default_out_dir, plot_base2new, plot_fewshot
    from bench.report.query import csv_list

    if args.protocol not in ("fewshot", "base2new"):
        raise BenchError(f"bench plot draws --protocol fewshot or base2new (got {args.protocol!r}); "
                         "use `bench table` for the other protocols")
    formats = csv_list(args.format) or ["png", "pdf"]
    bad = [f for f in formats if f not in FIGURE_FORMATS]
    if bad:
        raise BenchError(f"unknown figure format(s) {', '.join(bad)}; known: {', '.join(FIGURE_FORMATS)}")
    out = Path(args.out_dir) if args.out_dir else default_out_dir(args.results)
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out-dir {out} is a file, not a folder: name a folder for the figures")
    q = query_from_args(args)
    df = load_frame(args.results)
    fn = plot_fewshot if args.protocol == "fewshot" else plot_base2new
    paths = fn(df, q, out, formats)
    if not paths:
        raise BenchError("nothing to plot: no trained method has complete cells (every expected seed) in this "
                         "selection (see the lines above)")
    for p in paths:
        print(p)
    return 0


def add_command(sub) -> None:
    from bench.cli import DeprecatedAlias

    p = sub.add_parser("plot", help="the CoOp-style figures (few-shot curves, base-to-new bars) from the store")
    add_selection_args(p)
    p.add_argument("--shots", help="shot counts to draw (default: all present)")
    p.add_argument("--out-dir", help="output folder (default: results/figures/ for the default store, DIR-figures "
                                     "beside another store DIR)")
    p.add_argument("--format", default="png,pdf", help="comma-separated: png, pdf, svg (default png,pdf)")
    p.add_argument("--out", dest="out_dir", action=DeprecatedAlias, new="--out-dir", help=argparse_suppress())
    p.add_argument("--formats", dest="format", action=DeprecatedAlias, new="--format", help=argparse_suppress())
    p.set_defaults(func=cmd_plot)
