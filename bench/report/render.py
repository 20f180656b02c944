"""Rendering tables: md | latex (the best entry per column in bold) | csv | json (numeric: one record per cell
with mean, std, n_seeds and the best / incomplete flags, see :func:`table_records`)."""

from __future__ import annotations

from bench.errors import BenchError
from bench.report.cells import Table

FORMATS = ("md", "csv", "json", "latex")


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def render_md(t: Table) -> str:
    head = t.index_names + t.columns
    lines = [f"### {t.title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join([":---"] * len(t.index_names) + ["---:"] * len(t.columns)) + "|"]
    for r in t.rows:
        cells = []
        for c in r.cells:
            s = _md_escape(c.text())
            cells.append(f"**{s}**" if c.best else (f"*{s}*" if r.kind == "paper" and s else s))
        lines.append("| " + " | ".join([_md_escape(i) for i in r.index] + cells) + " |")
    lines.append("")
    lines += [f"- {n}" for n in t.notes]
    return "\n".join(lines) + "\n"


EXPORT_FIELDS = ["mean", "std", "n_seeds", "expected_seeds", "best", "incomplete", "kind", "status", "selection",
                 "detail"]


def table_records(t: Table) -> list[dict]:
    """One numeric record per table cell (the long form of the table): the table's title and protocol, its row
    index (e.g. method, shots), the column key (a dataset key, "average", base/new/H), the unrounded mean and
    std (std only where the table shows one: over several seeds), n_seeds found / expected_seeds, and the flags
    best (marked best of its column) and incomplete (fewer seeds or datasets than asked, or no result)."""
    out = []
    for r in t.rows:
        idx = {n.lower(): v for n, v in zip(t.index_names, r.index)}
        for key, c in zip(t.column_keys, r.cells):
            has_mean = c.kind in ("value", "paper", "diff")
            out.append({
                "table": t.title, "protocol": t.protocol, "row_kind": r.kind, **idx, "column": key,
                "mean": float(c.mean) if has_mean else None,
                "std": float(c.std) if c.kind == "value" and c.std is not None and c.expected > 1 else None,
                # averages over datasets have no seed count of their own
                "n_seeds": int(c.n) if c.kind in ("value", "partial") and c.n else None,
                "expected_seeds": int(c.expected) if c.kind in ("value", "partial") and c.n else None,
                "best": bool(c.best),
                "incomplete": c.kind in ("partial", "missing", "incomplete"),
                "kind": c.kind, "status": c.status, "selection": c.selection, "detail": c.detail,
            })
    return out


def render_csv(tables: list[Table]) -> str:
    """All tables as one numeric CSV (``table_records``; empty = no value)."""
    import csv
    import io

    records = [rec for t in tables for rec in table_records(t)]
    fields = ["table", "protocol", "row_kind"]
    for t in tables:
        fields += [n.lower() for n in t.index_names if n.lower() not in fields]
    fields += ["column"] + EXPORT_FIELDS
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow({k: ("" if v is None else v) for k, v in rec.items()})
    return buf.getvalue()


def render_json(tables: list[Table]) -> str:
    """All tables as JSON: per table its title, protocol, index names, columns, notes and numeric records."""
    import json

    data = {"tables": [{"title": t.title, "protocol": t.protocol, "index_names": t.index_names,
                        "columns": t.columns, "column_keys": t.column_keys, "notes": t.notes,
                        "records": table_records(t)} for t in tables]}
    return json.dumps(data, indent=1, allow_nan=False) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"),
                 ("Δ", "$\\Delta$"), ("−", "$-$"), ("—", "--")):
        s = s.replace(a, b)
    return s


def render_latex(t: Table) -> str:
    spec = "l" * len(t.index_names) + "r" * len(t.columns)
    lines = [f"% {t.title}", "\\begin{tabular}{" + spec + "}", "\\toprule",
             " & ".join(_tex(h) for h in t.index_names + t.columns) + " \\\\", "\\midrule"]
    start = object()
    prev_group = start
    for r in t.rows:
        if t.protocol == "base2new" and r.kind == "result" and prev_group is not start and r.group != prev_group:
            lines.append("\\midrule")
        if r.kind == "result":
            prev_group = r.group
        cells = []
        for c in r.cells:
            s = c.text(latex=True)
            cells.append(f"\\textbf{{{s}}}" if c.best else s)
        lines.append(" & ".join([_tex(i) for i in r.index] + cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    lines += [f"% {n}" for n in t.notes]
    return "\n".join(lines) + "\n"


def render(tables: list[Table], fmt: str = "md") -> str:
    if fmt not in FORMATS:
        raise BenchError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt in ("csv", "json"):  # numeric exports of all tables at once
        return (render_csv if fmt == "csv" else render_json)(tables)
    fn = {"md": render_md, "latex": render_latex}[fmt]
    return "\n".join(fn(t) for t in tables)

