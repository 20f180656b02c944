"""Tables, statistics and figures from the results store (``bench table``, ``bench plot``).

Nothing here runs anything: it reads the store's result JSONs (one per run) and aggregates them.

* :mod:`bench.report.query` -- what a table or figure shows (:class:`Query`) and what a store holds.
* :mod:`bench.report.frame` -- the tidy frame (one row per run and test set), the seed aggregation and the one
  select-and-aggregate step of tables and figures.
* :mod:`bench.report.looks` -- display names and each method's colour, marker, line style and order.
* :mod:`bench.report.cells` -- the table model; :mod:`bench.report.tables` -- each protocol's table.
* :mod:`bench.report.reference` -- the published numbers (``--compare paper``).
* :mod:`bench.report.render` -- md | latex | csv | json.
* :mod:`bench.report.stats` -- paired tests of two methods over datasets.
* :mod:`bench.report.series` -- the figures' data (curves, bars); :mod:`bench.report.plots` -- the figures.

The command line lives in ``bench.cli.table`` and ``bench.cli.plot``. Heavy imports (pandas, numpy, scipy,
matplotlib) happen inside functions so that ``bench --help`` stays fast.
"""

from __future__ import annotations

from bench.report.frame import (FRAME_COLUMNS, KEY, METRICS, Selection, aggregate, harmonic, load_frame, run_label,
                                select, tidy)
from bench.report.looks import display_name, distinct_looks, method_look, order_labels
from bench.report.query import Query, csv_list, expected_datasets, infer_preset, store_grid
from bench.report.reference import add_paper_rows, load_reference, paper_backbone, reference_dir
from bench.report.render import FORMATS, render, render_csv, render_json, render_latex, render_md, table_records
from bench.report.stats import _one_test, format_test, paired_test, paired_tests, tests_json
from bench.report.cells import FLAG, Cell, Row, Table, fixed
from bench.report.tables import build_tables, flag_noted_rows

__all__ = [
    "FLAG", "FORMATS", "FRAME_COLUMNS", "KEY", "METRICS", "Cell", "Query", "Row", "Selection", "Table",
    "add_paper_rows", "aggregate", "build_tables", "csv_list", "display_name", "distinct_looks", "expected_datasets",
    "fixed", "flag_noted_rows", "format_test", "harmonic", "infer_preset", "load_frame", "load_reference",
    "method_look", "order_labels", "paired_test", "paired_tests", "paper_backbone", "reference_dir", "render",
    "render_csv", "render_json", "render_latex", "render_md", "run_label", "select", "store_grid", "table_records",
    "tests_json", "tidy", "_one_test",
]
