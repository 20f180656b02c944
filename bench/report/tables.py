"""The builders of each protocol's tables.

:func:`build_tables` -- one table per protocol (and backbone / source): few-shot (method x shots by dataset +
Average), base-to-new (Base / New / H per dataset and the average row with H of the averaged B and N), domain
shift (source, targets, target average), cross-dataset (source, targets, average of the targets). An average is
given only when every dataset it averages is complete; it is computed from the unrounded cell means and rounded
once, half up, when shown (:func:`bench.report.cells.fixed`).
"""

from __future__ import annotations

from bench.report.cells import FLAG, Cell, Row, Table
from bench.report.frame import Selection, harmonic, select
from bench.report.looks import base_method, display_name
from bench.report.query import Query

def _cell(rec) -> Cell:
    """A table cell from one aggregated record (or None)."""
    if rec is None:
        return Cell("missing")
    if rec["unsupported"]:
        return Cell("unsupported")
    if not rec["complete"]:
        return Cell("partial" if rec["n"] else "missing", n=int(rec["n"]), expected=int(rec["expected"]))
    return Cell("value", mean=float(rec["mean"]), std=float(rec["std"]), n=int(rec["n"]),
                expected=int(rec["expected"]))


def _average(cells: list[Cell]) -> Cell:
    """Arithmetic mean of the unrounded means of complete cells; flagged (never computed) unless every cell is
    complete."""
    done = [c for c in cells if c.kind == "value"]
    if not cells:
        return Cell("empty")
    if len(done) < len(cells):
        return Cell("incomplete", detail=f"{len(done)}/{len(cells)} datasets")
    return Cell("value", mean=sum(c.mean for c in done) / len(done), expected=1)


def _seedless(label: str, recs) -> bool:
    if len(recs):
        return bool((recs["expected"] == 1).all() and (recs["shots"] == 0).all())
    try:
        from bench.registry import get_method

        return not get_method(base_method(label)).needs_training
    except Exception:  # noqa: BLE001 - a method that is not registered: assume it trains
        return False


def _rows_for(agg, label: str, shots_filter: list[int] | None, protocol_shots: tuple[int, ...]):
    """(shots, records) per table row of one label."""
    recs = agg[agg["label"] == label]
    if _seedless(label, recs):
        return [(0, recs)]
    present = sorted({int(s) for s in recs["shots"] if s > 0})
    shots = list(shots_filter) if shots_filter else (present or list(protocol_shots))
    return [(k, recs[recs["shots"] == k]) for k in shots]


def _lookup(recs, train_dataset: str, eval_name: str):
    hit = recs[(recs["train_dataset"] == train_dataset) & (recs["eval"] == eval_name)]
    return None if hit.empty else hit.iloc[0]


def build_tables(df, q: Query) -> list:
    """All tables of one protocol: one per backbone (and per source for domain shift / cross-dataset)."""
    from bench.protocols import get_protocol
    from bench.report.reference import add_paper_rows, load_reference

    proto = get_protocol(q.protocol)
    refs = load_reference() if q.compare == "paper" else None
    tables = []
    for s in select(df, q):
        bb = f"{s.arch} ({s.weights})"
        if q.protocol in ("fewshot", "base2new"):
            t = (_fewshot_table if q.protocol == "fewshot" else _base2new_table)(s, q, proto)
            t.title = f"{q.protocol} — {bb}"
            parts = [t]
        else:
            parts = []
            for src in s.datasets:
                t = _transfer_table(s, src, q, proto)
                t.title = f"{q.protocol} — {bb} — source {display_name(src)}"
                parts.append(t)
        noted = s.runs[s.runs["note"].notna()]
        for t in parts:
            if refs is not None:
                add_paper_rows(t, refs, q.protocol, s.arch, s.weights)
            flag_noted_rows(t, noted.groupby("label")["note"].first().to_dict())
            t.mark_best()
            t.notes.insert(0, f"{q.metric} (%): mean ± population std (ddof=0) over seeds "
                              f"{','.join(map(str, s.seeds))}; zero-shot runs have no seed. "
                              "'k/n seeds' = incomplete cell (not averaged); '—' = no result.")
            if s.ignored_seeds:
                t.notes.append("results of seeds " + ",".join(map(str, s.ignored_seeds))
                               + " are not in --seeds and were left out")
            if df.attrs.get("duplicates"):
                t.notes.append(f"{df.attrs['duplicates']} duplicate run(s) (same label, dataset, shots, seed; "
                               "different config hash) were dropped, keeping the latest")
        tables += parts
    return tables


def flag_noted_rows(t: Table, notes: dict) -> None:
    """Mark result rows of labels whose runs carry a table note (``train_stats["table_note"]``) and say why."""
    pos = -1 if t.protocol == "base2new" else 0
    flagged = set()
    for r in t.rows:
        label = r.index[pos] if r.index else None
        if r.kind == "result" and label in notes:
            r.index = list(r.index)
            r.index[pos] = f"{label} {FLAG}"
            flagged.add(label)
    t.notes += [f"{FLAG} {label}: {notes[label]}" for label in sorted(flagged)]


def _fewshot_table(s: Selection, q, proto) -> Table:
    dsets = s.datasets
    cols = [display_name(d) for d in dsets] + ["Average"]
    t = Table("", q.protocol, ["Method", "Shots"], cols, list(dsets) + ["average"])
    for label in s.labels:
        for k, recs in _rows_for(s.cells, label, q.shots, proto.shots):
            cells = [_cell(_lookup(recs, d, d)) for d in dsets]
            cells.append(_average(cells))
            t.rows.append(Row([label, str(k)], cells, group=None if k == 0 else k))
    return t


def _base2new_table(s: Selection, q, proto) -> Table:
    a, dsets = s.cells, s.datasets
    t = Table("", q.protocol, ["Dataset", "Method"], ["Base", "New", "H"], ["base", "new", "H"])
    multi_shots = len({int(k) for k in a["shots"] if k > 0}) > 1 or bool(q.shots and len(q.shots) > 1)
    blocks: dict[str, list[Row]] = {"average": []}
    for d in dsets:
        blocks[d] = []
    for label in s.labels:
        for k, recs in _rows_for(a, label, q.shots, proto.shots):
            name = f"{label} ({k} shots)" if multi_shots and k else label
            per_ds = []
            for d in dsets:
                b, n = _cell(_lookup(recs, d, f"{d}:base")), _cell(_lookup(recs, d, f"{d}:new"))
                h = (Cell("value", mean=harmonic(b.mean, n.mean), expected=1)
                     if b.kind == n.kind == "value" else Cell("missing"))
                per_ds.append((b, n))
                blocks[d].append(Row([display_name(d), name], [b, n, h], group=d))
            bb = _average([b for b, _ in per_ds])
            nn = _average([n for _, n in per_ds])
            hh = (Cell("value", mean=harmonic(bb.mean, nn.mean), expected=1)
                  if bb.kind == nn.kind == "value" else Cell("incomplete", detail=bb.detail or nn.detail))
            blocks["average"].append(Row([f"Average over {len(dsets)} datasets", name], [bb, nn, hh],
                                         group="average"))
    for rows in blocks.values():
        t.rows += rows
    t.notes.append("H = 2BN/(B+N) of the seed means; the average row's H is H of the averaged B and N "
                   "(docs/protocol.md §9)")
    return t


def _transfer_table(s: Selection, src, q, proto) -> Table:
    from bench.protocols import evals_for

    evals = [e["dataset"] for e in evals_for(q.protocol, src, q.group)]
    avg_name = "Target avg" if q.protocol == "domain_shift" else "Average"
    cols = [display_name(e) for e in evals] + [avg_name]
    t = Table("", q.protocol, ["Method", "Shots"], cols, evals + ["target_average"])
    a = s.cells[s.cells["train_dataset"] == src]
    rows = []
    for label in s.labels:
        for k, recs in _rows_for(a, label, q.shots, proto.shots):
            cells = [_cell(_lookup(recs, src, e)) for e in evals]
            cells.append(_average(cells[1:]))
            rows.append(Row([label, str(k)], cells, group=None if k == 0 else k))
    if len({r.index[1] for r in rows if r.index[1] != "0"}) <= 1:
        t.index_names = ["Method"]
        for r in rows:
            r.index = r.index[:1]
            r.group = "all"
    t.rows = rows
    what = f"the {len(evals) - 1} targets" + ("" if q.protocol == "domain_shift" else " (source excluded)")
    t.notes.append(f"{avg_name}: arithmetic mean over {what}")
    return t
