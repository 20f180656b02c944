"""Tables and statistics from the results store (``bench table``): tidy frame -> seed aggregation -> tables.

Nothing here runs anything: it reads the store's result JSONs (one per run) and aggregates them.

* :func:`tidy` -- one row per (run, eval): protocol, label, method, backbone, train dataset, eval dataset,
  classes, shots, seed, top1, macro-F1, per-class mean, n_test.
* :func:`aggregate` -- mean and population std (ddof = 0) over the expected seeds of the *unrounded*
  accuracies (docs/protocol.md §9). A cell with fewer seeds than expected is flagged as incomplete, never averaged.
* :func:`build_tables` -- one table per protocol (and backbone / source): few-shot (method x shots by
  dataset + Average), base-to-new (Base / New / H per dataset and the average row with H of the averaged
  B and N), domain shift (source, targets, target average), cross-dataset (source, targets, average of
  the targets). An average is given only when every dataset it averages is complete.
* :func:`render` -- md | latex (the best entry per column in bold) | csv | json (numeric: one record per
  cell with mean, std, n_seeds and the best / incomplete flags, see :func:`table_records`).
* :func:`paired_tests` -- Wilcoxon signed-rank (or paired t) test of two methods over datasets (each
  dataset's mean over seeds is one pair; one test per shot count) with a bootstrap CI of the mean difference.
* ``--compare paper`` adds the published numbers of ``results/reference/*.csv`` and our difference to them.

Heavy imports (pandas, numpy, scipy) happen inside functions so that ``bench --help`` stays fast.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError

PROTOCOL_NAMES = ("fewshot", "base2new", "domain_shift", "cross_dataset")
FORMATS = ("md", "csv", "json", "latex")
METRICS = ("top1", "macro_f1", "per_class_mean")
STATUS_MARKS = {"RECALLED": "†", "DERIVED": "‡"}
STATUS_NOTES = {
    "RECALLED": "† RECALLED: the paper's number as commonly quoted, not seen verbatim in a repository file "
                "(results/reference/README.md); check it against the PDF.",
    "DERIVED": "‡ DERIVED: computed here from VERBATIM numbers (e.g. the mean of the author's per-seed values).",
}

FRAME_COLUMNS = [
    "protocol", "label", "method", "backbone", "weights", "train_dataset", "train_classes", "shots", "seed",
    "eval", "eval_dataset", "classes", "top1", "macro_f1", "per_class_mean", "n_test", "unsupported", "hash",
    "finished_at", "note",
]
FLAG = "§"  # a label whose runs carry a method's table note (e.g. the linear probe's C searched on test images)
KEY = ["backbone", "weights", "protocol", "label", "method", "train_dataset", "shots", "eval", "eval_dataset",
       "classes"]


def reference_dir() -> Path:
    """The published numbers: results/reference/ in a checkout, shipped inside the package when installed."""
    from bench.paths import resource_dir

    return resource_dir("reference")


# ------------------------------------------------------------------------------------------ tidy frame


def tidy(results: list[dict]):
    """One row per (run, eval) of complete results in the runner's format. Duplicate runs of the same
    (backbone, protocol, label, dataset, shots, seed) -- e.g. a re-run with another precision -- keep the
    latest; ``frame.attrs["duplicates"]`` counts what was dropped."""
    import numpy as np
    import pandas as pd

    rows = []
    for r in results:
        c = r["config"]
        tr = c["train"]
        bb = c.get("backbone") or {}
        for name, m in (r.get("metrics") or {}).items():
            ds, _, cls = name.partition(":")
            per_class = m.get("per_class") or {}
            top1 = m.get("top1")
            rows.append({
                "protocol": c["protocol"],
                "label": c.get("label") or c["method"],
                "method": c["method"],
                "backbone": str(bb.get("arch")),
                "weights": str(bb.get("weights", bb.get("pretrained"))),
                "train_dataset": tr["dataset"],
                "train_classes": tr.get("classes", "all"),
                "shots": int(tr.get("shots") or 0),
                "seed": float(tr["seed"]) if tr.get("seed") is not None else np.nan,
                "eval": name,
                "eval_dataset": m.get("dataset", ds),
                "classes": m.get("classes", cls or "all"),
                "top1": float(top1) if top1 is not None else np.nan,
                "macro_f1": float(m["macro_f1"]) if m.get("macro_f1") is not None else np.nan,
                "per_class_mean": float(np.mean(list(per_class.values()))) if per_class else np.nan,
                "n_test": m.get("n_test"),
                "unsupported": m.get("unsupported"),
                "hash": r.get("hash"),
                "finished_at": r.get("finished_at") or "",
                "note": (r.get("train_stats") or {}).get("table_note"),
            })
    df = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    n = len(df)
    ident = ["backbone", "weights", "protocol", "label", "train_dataset", "shots", "seed", "eval"]
    df = df.sort_values("finished_at").drop_duplicates(ident, keep="last").reset_index(drop=True)
    df.attrs["duplicates"] = n - len(df)
    return df


def load_frame(results: str | Path | None = None):
    """The tidy frame of every complete result in a store folder (default: the configured store)."""
    from bench.store import Store

    store = Store(results) if results else Store()
    if not store.root.is_dir():
        raise BenchError(f"results store not found: {store.root} (run `bench run ...` first, or pass --results DIR)")
    return tidy(store.current_results())


# ------------------------------------------------------------------------------------------ aggregation


def aggregate(df, seeds: list[int], metric: str = "top1"):
    """Mean and population std (ddof=0) over ``seeds`` of each (backbone, protocol, label, train dataset,
    shots, eval) cell. Seedless runs (zero-shot) expect one run. Columns: mean, std, n, expected, complete,
    seeds (found), unsupported. Results of seeds outside ``seeds`` are left out (``attrs["ignored_seeds"]``)."""
    import numpy as np
    import pandas as pd

    if metric not in METRICS:
        raise BenchError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    wanted = {float(s) for s in seeds}
    seeded = df["seed"].notna()
    ignored = sorted({int(s) for s in df.loc[seeded & ~df["seed"].isin(wanted), "seed"]})
    df = df[~seeded | df["seed"].isin(wanted)]
    out = []
    for key, g in df.groupby(KEY, sort=False, dropna=False):
        seedless = g["seed"].isna().all()
        vals = g[metric].to_numpy(dtype=float)
        ok = ~np.isnan(vals)
        unsupported = bool(g["unsupported"].notna().any() and not ok.any())
        expected = 1 if seedless else len(wanted)
        n = int(ok.sum())
        rec = dict(zip(KEY, key))
        rec.update({
            "mean": float(np.mean(vals[ok])) if n else np.nan,
            "std": float(np.std(vals[ok], ddof=0)) if n else np.nan,
            "n": n,
            "expected": expected,
            "complete": n == expected and not unsupported,
            "seeds": tuple(sorted(int(s) for s in g.loc[ok, "seed"].dropna())),
            "unsupported": unsupported,
        })
        out.append(rec)
    agg = pd.DataFrame(out, columns=KEY + ["mean", "std", "n", "expected", "complete", "seeds", "unsupported"])
    agg.attrs["ignored_seeds"] = ignored
    return agg


def harmonic(b: float, n: float) -> float:
    """H = 2BN/(B+N) (0 when both are 0)."""
    return 2.0 * b * n / (b + n) if (b + n) else 0.0


# ------------------------------------------------------------------------------------------ table model


@dataclass
class Cell:
    kind: str = "missing"        # value | missing | partial | unsupported | incomplete | paper | diff | empty
    mean: float | None = None
    std: float | None = None
    n: int = 0
    expected: int = 0
    status: str = ""             # paper cells: VERBATIM | RECALLED | DERIVED
    best: bool = False
    detail: str = ""             # incomplete averages: "9/11 datasets"

    def text(self, digits: int = 2, latex: bool = False) -> str:
        pm = " $\\pm$ " if latex else " ± "
        dash = "--" if latex else "—"
        if self.kind == "value":
            s = f"{self.mean:.{digits}f}"
            if self.std is not None and self.expected > 1:
                s += f"{pm}{self.std:.{digits}f}"
            return s
        if self.kind == "paper":
            mark = STATUS_MARKS.get(self.status, "")
            if latex and mark:
                mark = {"†": "$^\\dagger$", "‡": "$^\\ddagger$"}[mark]
            return f"{self.mean:.{digits}f}{mark}"
        if self.kind == "diff":
            return f"{self.mean:+.{digits}f}"
        if self.kind == "partial":
            return f"{self.n}/{self.expected} seeds"
        if self.kind == "unsupported":
            return "n/a"
        if self.kind == "incomplete":
            return f"incomplete ({self.detail})" if self.detail else "incomplete"
        if self.kind == "empty":
            return ""
        return dash


@dataclass
class Row:
    index: list[str]
    cells: list[Cell]
    kind: str = "result"         # result | paper | diff
    group: object = "all"        # best-per-column comparison group; None = joins every group (zero-shot)


@dataclass
class Table:
    title: str
    protocol: str
    index_names: list[str]
    columns: list[str]           # display names
    column_keys: list[str]       # csv names
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def mark_best(self) -> None:
        """Bold the best complete value per column within each comparison group (>= 2 candidates)."""
        results = [r for r in self.rows if r.kind == "result"]
        groups = {r.group for r in results if r.group is not None}
        if not groups:
            groups = {None}
        for j in range(len(self.columns)):
            for g in groups:
                cand = [r.cells[j] for r in results if (r.group == g or r.group is None) and r.cells[j].kind == "value"]
                if len(cand) < 2:
                    continue
                best = max(round(c.mean, 2) for c in cand)
                for c in cand:
                    if round(c.mean, 2) == best:
                        c.best = True


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
    """Arithmetic mean of complete cells; flagged (never computed) unless every cell is complete."""
    done = [c for c in cells if c.kind == "value"]
    if not cells:
        return Cell("empty")
    if len(done) < len(cells):
        return Cell("incomplete", detail=f"{len(done)}/{len(cells)} datasets")
    return Cell("value", mean=sum(c.mean for c in done) / len(done), expected=1)


# ------------------------------------------------------------------------------------------ building tables


def display_name(key: str) -> str:
    try:
        from bench.data import get_spec

        return get_spec(key).display_name or key
    except Exception:  # noqa: BLE001 - unknown keys (hand-made results) are shown as they are
        return key


def method_look(label: str) -> dict:
    """How a label is shown: display_name, color, marker, linestyle, order -- the method class's attributes
    (``bench.method.Method``). A label with overrides (``coop[n_ctx=4]``) keeps its method's order and line
    style and gets its own colour and marker from a hash of the label, the same in every figure."""
    from bench.method import DEFAULT_PALETTE, DISPLAY_ATTRS, _stable_index, default_display

    base, sep, rest = label.partition("[")
    try:
        from bench.registry import get_method

        cls = get_method(base)
        look = {a: getattr(cls, a) for a in DISPLAY_ATTRS}
    except BenchError:  # results of a method that is not registered here
        look = default_display(base)
    if sep:
        look["display_name"] = f"{look['display_name']} [{rest}"
        palette = [c for c in DEFAULT_PALETTE if c.lower() != str(look["color"]).lower()]
        look["color"] = palette[_stable_index(label, len(palette))]
        look["marker"] = default_display(label)["marker"]
    return look


def _order_labels(labels: list[str], methods: list[str] | None) -> list[str]:
    def base(label):
        return label.split("[", 1)[0]

    if methods:
        out = []
        for m in methods:
            hits = [lb for lb in labels if lb == m] or sorted(lb for lb in labels if base(lb) == m)
            out += [h for h in (hits or [m]) if h not in out]
        return out

    def key(label):
        b = base(label)
        return (method_look(b)["order"], b, label != b, label)

    return sorted(set(labels), key=key)


def _select_labels(agg, methods):
    if not methods:
        return agg
    labels = set(agg["label"])
    wanted = set()
    for m in methods:
        hit = {lb for lb in labels if lb == m or lb.split("[", 1)[0] == m}
        wanted |= hit
    return agg[agg["label"].isin(wanted)]


def _seedless(label: str, recs) -> bool:
    if len(recs):
        return bool((recs["expected"] == 1).all() and (recs["shots"] == 0).all())
    try:
        from bench.registry import get_method

        return not get_method(label.split("[", 1)[0]).needs_training
    except Exception:  # noqa: BLE001 - a method that is not registered: assume it trains
        return False


@dataclass
class Query:
    protocol: str = "fewshot"
    methods: list[str] | None = None
    datasets: list[str] | None = None
    shots: list[int] | None = None
    seeds: list[int] | None = None
    group: str = "coop11"
    backbone: str | None = None
    metric: str = "top1"
    compare: str | None = None


def expected_datasets(protocol: str, group: str, datasets: list[str] | None) -> list[str]:
    from bench.protocols import default_datasets

    ds = list(datasets) if datasets else default_datasets(protocol, group)
    if not ds:
        raise BenchError(f"no datasets for protocol {protocol} in group {group!r}; pass --datasets")
    return ds


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


def build_tables(df, q: Query) -> list[Table]:
    """All tables of one protocol: one per backbone (and per source for domain shift / cross-dataset)."""
    from bench.protocols import get_protocol

    proto = get_protocol(q.protocol)
    seeds = list(q.seeds) if q.seeds else list(proto.seeds)
    sub = df[df["protocol"] == q.protocol]
    if q.backbone:
        sub = sub[sub["backbone"].str.startswith(q.backbone)]
    if sub.empty:
        raise BenchError(f"no complete results for protocol {q.protocol}"
                         + (f" and backbone {q.backbone}" if q.backbone else "")
                         + " in the store (protocols present: "
                         + (", ".join(sorted(set(df["protocol"]))) or "none") + ")")
    agg = aggregate(sub, seeds, q.metric)
    agg = _select_labels(agg, q.methods)
    refs = load_reference() if q.compare == "paper" else None
    tables = []
    for (arch, weights), a in agg.groupby(["backbone", "weights"], sort=True):
        labels = _order_labels(list(a["label"].unique()), q.methods)
        bb = f"{arch} ({weights})"
        if q.protocol in ("fewshot", "base2new"):
            dsets = expected_datasets(q.protocol, q.group, q.datasets)
            t = (_fewshot_table if q.protocol == "fewshot" else _base2new_table)(a, labels, dsets, q, proto)
            t.title = f"{q.protocol} — {bb}"
            parts = [t]
        else:
            sources = expected_datasets(q.protocol, q.group, q.datasets)
            parts = []
            for src in sources:
                t = _transfer_table(a, labels, src, q, proto)
                t.title = f"{q.protocol} — {bb} — source {display_name(src)}"
                parts.append(t)
        noted = sub[(sub["backbone"] == arch) & (sub["weights"] == weights) & sub["note"].notna()]
        for t in parts:
            if refs is not None:
                add_paper_rows(t, refs, q.protocol, arch, weights)
            flag_noted_rows(t, noted.groupby("label")["note"].first().to_dict())
            t.mark_best()
            t.notes.insert(0, f"{q.metric} (%): mean ± population std (ddof=0) over seeds "
                              f"{','.join(map(str, seeds))}; zero-shot runs have no seed. "
                              "'k/n seeds' = incomplete cell (not averaged); '—' = no result.")
            if agg.attrs.get("ignored_seeds"):
                t.notes.append("results of seeds " + ",".join(map(str, agg.attrs["ignored_seeds"]))
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


def _fewshot_table(a, labels, dsets, q, proto) -> Table:
    cols = [display_name(d) for d in dsets] + ["Average"]
    t = Table("", q.protocol, ["Method", "Shots"], cols, list(dsets) + ["average"])
    for label in labels:
        for k, recs in _rows_for(a, label, q.shots, proto.shots):
            cells = [_cell(_lookup(recs, d, d)) for d in dsets]
            cells.append(_average(cells))
            t.rows.append(Row([label, str(k)], cells, group=None if k == 0 else k))
    return t


def _base2new_table(a, labels, dsets, q, proto) -> Table:
    t = Table("", q.protocol, ["Dataset", "Method"], ["Base", "New", "H"], ["base", "new", "H"])
    multi_shots = len({int(s) for s in a["shots"] if s > 0}) > 1 or bool(q.shots and len(q.shots) > 1)
    blocks: dict[str, list[Row]] = {"average": []}
    for d in dsets:
        blocks[d] = []
    for label in labels:
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


def _transfer_table(a, labels, src, q, proto) -> Table:
    from bench.protocols import evals_for

    evals = [e["dataset"] for e in evals_for(q.protocol, src, q.group)]
    targets = [e for e in evals if e != src]
    avg_name = "Target avg" if q.protocol == "domain_shift" else "Average"
    cols = [display_name(e) for e in evals] + [avg_name]
    t = Table("", q.protocol, ["Method", "Shots"], cols, evals + ["target_average"])
    a = a[a["train_dataset"] == src]
    rows = []
    for label in labels:
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


# ------------------------------------------------------------------------------------------ published numbers


def load_reference(folder: str | Path | None = None):
    """All published numbers of ``results/reference/*.csv`` (and ``*.yaml`` lists of the same records)."""
    import pandas as pd
    import yaml

    folder = Path(folder) if folder else reference_dir()
    frames = []
    for p in sorted(folder.glob("*.csv")):
        frames.append(pd.read_csv(p, dtype={"variant": str, "seed": str}, keep_default_na=False))
    for p in sorted(list(folder.glob("*.yaml")) + list(folder.glob("*.yml"))):
        data = yaml.safe_load(p.read_text()) or []
        frames.append(pd.DataFrame(data.get("numbers", []) if isinstance(data, dict) else data))
    if not frames:
        raise BenchError(f"no published numbers found in {folder} (expected *.csv files)")
    ref = pd.concat(frames, ignore_index=True).fillna("")
    ref["value"] = ref["value"].astype(float)
    ref["shots"] = ref["shots"].astype(int)
    for c in ("variant", "seed"):
        ref[c] = ref[c].astype(str)
    return ref


def paper_backbone(arch: str) -> str:
    """open_clip name -> the papers' name: ViT-B-16(-quickgelu) -> ViT-B/16, RN50-quickgelu -> RN50."""
    a = arch.removesuffix("-quickgelu")
    if a.startswith("ViT-"):
        parts = a.split("-")
        if len(parts) == 3:
            return f"ViT-{parts[1]}/{parts[2]}"
    return a


_DEFAULT_PAPER_BACKBONE = {"fewshot": "RN50", "base2new": "ViT-B/16", "domain_shift": "ViT-B/16",
                           "cross_dataset": "ViT-B/16"}


def add_paper_rows(t: Table, ref, protocol: str, arch: str, weights: str) -> None:
    """After each result row of a method with published numbers: a '(paper)' row and a 'Δ' row (ours - paper).

    Only rows without overrides (label == method) are compared, with the reference rows whose variant is
    empty (the suite's default configuration). Differences are given only when the backbone matches."""
    r = ref[(ref["protocol"] == protocol) & (ref["variant"] == "") & (ref["seed"] == "")]
    bb = paper_backbone(arch)
    matched = weights == "openai" and bb in set(r["backbone"])
    shown_bb = bb if matched else _DEFAULT_PAPER_BACKBONE[protocol]
    r = r[r["backbone"] == shown_bb]
    statuses = set()
    new_rows = []
    for row in t.rows:
        new_rows.append(row)
        if row.kind != "result":
            continue
        label = row.index[-1] if protocol == "base2new" else row.index[0]
        if "[" in label or label not in set(r["method"]):
            continue
        rm = r[r["method"] == label]
        paper_cells, diff_cells = [], []
        for j, key in enumerate(t.column_keys):
            if protocol == "base2new":
                ds = "average" if row.group == "average" else row.group
                hit = rm[(rm["eval"] == ds) & (rm["metric"] == key)]
            else:
                shots = int(row.index[1]) if len(row.index) > 1 else None
                hit = rm[rm["eval"] == key]
                if protocol == "fewshot":
                    hit = hit[hit["shots"] == shots]
            if hit.empty:
                paper_cells.append(Cell("empty"))
                diff_cells.append(Cell("empty"))
                continue
            rec = hit.iloc[0]
            statuses.add(rec["status"])
            paper_cells.append(Cell("paper", mean=float(rec["value"]), status=rec["status"]))
            ours = row.cells[j]
            diff_cells.append(Cell("diff", mean=ours.mean - float(rec["value"]))
                              if (matched and ours.kind == "value") else Cell("empty"))
        if all(c.kind == "empty" for c in paper_cells):
            continue
        idx = list(row.index)
        pos = len(idx) - 1 if protocol == "base2new" else 0
        idx_p, idx_d = list(idx), list(idx)
        idx_p[pos] = f"{label} (paper, {shown_bb})"
        idx_d[pos] = f"Δ {label} − paper"
        new_rows.append(Row(idx_p, paper_cells, kind="paper", group=row.group))
        if matched and any(c.kind == "diff" for c in diff_cells):
            new_rows.append(Row(idx_d, diff_cells, kind="diff", group=row.group))
    t.rows = new_rows
    if not any(r.kind == "paper" for r in new_rows):
        t.notes.append(f"--compare paper: no published {shown_bb} numbers for these rows (only methods run with "
                       "their default hyperparameters, i.e. labels without [overrides], are compared)")
        return
    if not matched:
        t.notes.append(f"published numbers are for {shown_bb} (openai weights); this table's backbone is "
                       f"{arch} ({weights}), so no differences are computed")
    else:
        t.notes.append("Δ = this suite's mean − the published number (in points)")
    for s in sorted(statuses):
        if s in STATUS_NOTES:
            t.notes.append(STATUS_NOTES[s])
    t.notes.append(f"published numbers: {reference_dir()} (see its README.md for sources)")


# ------------------------------------------------------------------------------------------ rendering


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


EXPORT_FIELDS = ["mean", "std", "n_seeds", "expected_seeds", "best", "incomplete", "kind", "status", "detail"]


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
                "kind": c.kind, "status": c.status, "detail": c.detail,
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


# ------------------------------------------------------------------------------------------ paired test


def _resolve_label(df, name: str) -> str:
    labels = set(df["label"])
    if name in labels:
        return name
    hits = sorted(lb for lb in labels if lb.split("[", 1)[0] == name)
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise BenchError(f"{name!r} matches several labels ({', '.join(hits)}); name one exactly")
    raise BenchError(f"no results for method {name!r} in this selection; labels present: "
                     f"{', '.join(sorted(labels)) or 'none'}")


def paired_tests(df, a: str, b: str, *, protocol: str = "fewshot", stat: str = "wilcoxon",
                 seeds: list[int] | None = None, datasets: list[str] | None = None,
                 shots: list[int] | None = None, metric: str = "top1", alpha: float = 0.05,
                 n_resamples: int = 9999) -> list[dict]:
    """Paired tests of methods ``a`` and ``b`` with the dataset as the unit: one test per shot count (and per
    class split for base-to-new: base, new), whose pairs are the datasets (each the mean over seeds of each
    method; zero-shot's single run is its value). Cells not complete on both sides (every seed) are left
    out. Each result holds test, n (= number of datasets), statistic, pvalue, mean_diff (a - b), a bootstrap
    confidence interval of the mean difference (``scipy.stats.bootstrap``, BCa, 1 - alpha), verdict and
    the pairs frame."""
    import numpy as np
    import pandas as pd

    from bench.protocols import get_protocol

    if stat not in ("wilcoxon", "ttest"):
        raise BenchError(f"unknown --stat {stat!r}; known: wilcoxon, ttest")
    seeds = list(seeds) if seeds else list(get_protocol(protocol).seeds)
    d = df[df["protocol"] == protocol]
    if datasets:
        d = d[d["train_dataset"].isin(datasets) | d["eval_dataset"].isin(datasets)]
    la, lb = _resolve_label(d, a), _resolve_label(d, b)
    if la == lb:
        raise BenchError("--test needs two different methods")
    agg = aggregate(d[d["label"].isin([la, lb])], seeds, metric)
    agg = agg[agg["complete"]]
    A, B = agg[agg["label"] == la], agg[agg["label"] == lb]
    if shots:
        A = A[(A["shots"] == 0) | A["shots"].isin(shots)]
        B = B[(B["shots"] == 0) | B["shots"].isin(shots)]
    on = ["backbone", "weights", "train_dataset", "eval", "eval_dataset", "classes"]
    za, zb = bool(len(A)) and bool((A["shots"] == 0).all()), bool(len(B)) and bool((B["shots"] == 0).all())
    if za and not zb:  # zero-shot: its one value per dataset is paired with the other method at each shot count
        m = B[on + ["shots", "mean", "n"]].merge(A[on + ["mean", "n"]], on=on, suffixes=("_b", "_a"))
    elif zb and not za:
        m = A[on + ["shots", "mean", "n"]].merge(B[on + ["mean", "n"]], on=on, suffixes=("_a", "_b"))
    else:
        m = A[on + ["shots", "mean", "n"]].merge(B[on + ["shots", "mean", "n"]], on=on + ["shots"],
                                                 suffixes=("_a", "_b"))
    if m.empty:
        raise BenchError(f"no dataset with complete results (every seed of {','.join(map(str, seeds))}) for both "
                         f"{la} and {lb} in protocol {protocol}")
    out = []
    for (bb, w, k, cls), pairs in m.groupby(["backbone", "weights", "shots", "classes"], sort=True):
        pairs = pairs.sort_values(["train_dataset", "eval"]).reset_index(drop=True)
        n = len(pairs)
        what = f"{k} shots" + ("" if cls == "all" else f", {cls} classes")
        if n < 2:
            raise BenchError(f"only {n} dataset with complete results of both {la} and {lb} ({protocol}, {what}); "
                             "a paired test over datasets needs at least 2")
        xa, xb = pairs["mean_a"].to_numpy(float), pairs["mean_b"].to_numpy(float)
        out.append(_one_test(la, lb, xa, xb, stat, alpha, n_resamples)
                   | {"n": n, "shots": int(k), "classes": cls, "backbone": f"{bb} ({w})", "what": what,
                      "metric": metric, "protocol": protocol, "seeds": seeds,
                      "pairs": pd.DataFrame({"dataset": pairs["eval"], f"{la}": xa, f"{lb}": xb,
                                             "diff": xa - xb})})
    return out


def _one_test(la, lb, xa, xb, stat, alpha, n_resamples) -> dict:
    import warnings

    import numpy as np
    from scipy import stats

    diff = xa - xb
    n = len(diff)
    mean_diff = float(diff.mean())
    if np.allclose(diff, 0):
        name = "Wilcoxon signed-rank" if stat == "wilcoxon" else "paired t-test"
        statistic, p = float("nan"), 1.0
    elif stat == "wilcoxon":
        name = "Wilcoxon signed-rank (two-sided)"
        res = stats.wilcoxon(xa, xb)
        statistic, p = float(res.statistic), float(res.pvalue)
    else:
        name = "paired t-test (two-sided)"
        res = stats.ttest_rel(xa, xb)
        statistic, p = float(res.statistic), float(res.pvalue)
    if np.ptp(diff) < 1e-12:  # every pair differs by the same amount: the resampled mean cannot vary
        lo = hi = mean_diff
        ci_method = "none (all differences equal)"
    else:
        ci_method = "BCa"
        with warnings.catch_warnings():  # tiny n: BCa can be degenerate; fall back to the percentile interval
            warnings.simplefilter("ignore")
            ci = stats.bootstrap((diff,), np.mean, confidence_level=1 - alpha, n_resamples=n_resamples,
                                 method="BCa", random_state=np.random.default_rng(0)).confidence_interval
            if not (np.isfinite(ci.low) and np.isfinite(ci.high)):
                ci_method = "percentile"
                ci = stats.bootstrap((diff,), np.mean, confidence_level=1 - alpha, n_resamples=n_resamples,
                                     method="percentile", random_state=np.random.default_rng(0)).confidence_interval
        lo, hi = float(ci.low), float(ci.high)
    if np.allclose(diff, 0):
        verdict = f"{la} and {lb} are identical on all {n} datasets"
    elif p < alpha:
        verdict = (f"{la} is significantly {'better' if mean_diff > 0 else 'worse'} than {lb} "
                   f"(p = {p:.3g} < {alpha:g})")
    else:
        verdict = f"no significant difference between {la} and {lb} at alpha = {alpha:g} (p = {p:.3g})"
    if n < 6 and stat == "wilcoxon" and not np.allclose(diff, 0):
        verdict += f"; with {n} datasets the smallest possible two-sided p is {2 / 2 ** n:.3g}"
    return {"test": name, "a": la, "b": lb, "statistic": statistic, "pvalue": p, "mean_diff": mean_diff,
            "ci_low": lo, "ci_high": hi, "ci_level": 1 - alpha, "ci_method": ci_method, "verdict": verdict}


def paired_test(df, a: str, b: str, **kw) -> dict:
    """The one paired test of :func:`paired_tests` (an error when the selection has several shot counts or
    class splits: pass ``shots=[k]``)."""
    res = paired_tests(df, a, b, **kw)
    if len(res) > 1:
        raise BenchError("several tests (" + "; ".join(r["what"] for r in res) + "): select one shot count")
    return res[0]


def format_test(r: dict) -> str:
    lines = [f"paired test: {r['a']} vs {r['b']} ({r['protocol']}, {r['what']}, {r['metric']}, {r['backbone']})",
             f"unit: a dataset (its mean over seeds {','.join(map(str, r['seeds']))}; zero-shot: its one run)",
             f"test: {r['test']}",
             f"n pairs (datasets): {r['n']}",
             f"statistic: {r['statistic']:.4g}",
             f"p-value: {r['pvalue']:.4g}",
             f"mean difference ({r['a']} - {r['b']}): {r['mean_diff']:+.2f} points, "
             f"{100 * r['ci_level']:.0f}% bootstrap CI [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] ({r['ci_method']})",
             f"verdict: {r['verdict']}"]
    return "\n".join(lines) + "\n"


def tests_json(results: list[dict]) -> str:
    import json

    out = []
    for r in results:
        rec = {k: v for k, v in r.items() if k != "pairs"}
        rec["pairs"] = r["pairs"].to_dict(orient="records")
        for k, v in rec.items():
            if isinstance(v, float) and v != v:
                rec[k] = None
        out.append(rec)
    return json.dumps({"tests": out}, indent=1) + "\n"


# ------------------------------------------------------------------------------------------ CLI


def _csv_list(text):
    if not text:
        return None
    items = []
    for t in text if isinstance(text, list) else [text]:
        items += [x.strip() for x in t.split(",") if x.strip()]
    return items or None


def query_from_args(args) -> Query:
    from bench.protocols import get_protocol, parse_int_list

    get_protocol(args.protocol)
    group = args.preset or getattr(args, "group", None)
    if group is None and not args.datasets:  # infer the dataset group from what the store holds
        from bench.cli import infer_preset

        group = infer_preset(args.results, args.protocol)
        if group and group != "coop11":
            print(f"note: the store holds {group} results: showing --preset {group}", file=sys.stderr)
    group = group or "coop11"
    return Query(
        protocol=args.protocol,
        methods=_csv_list(args.methods),
        datasets=_csv_list(args.datasets),
        shots=parse_int_list(args.shots, "shots") if getattr(args, "shots", None) else None,
        seeds=parse_int_list(args.seeds, "seeds") if args.seeds else None,
        group=group,
        backbone=getattr(args, "backbone", None),
        metric=getattr(args, "metric", "top1"),
        compare=getattr(args, "compare", None),
    )


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def add_selection_args(p) -> None:
    """Options shared by ``bench table`` and ``bench plot``."""
    p.add_argument("--protocol", default="fewshot", help="fewshot | base2new | domain_shift | cross_dataset")
    p.add_argument("--methods", "--method", dest="methods",
                   help="comma-separated method names or labels, in row order (default: all in the store)")
    p.add_argument("--datasets", help="comma-separated dataset keys (default: the protocol's datasets of the group; "
                                      "for domain_shift / cross_dataset: the source)")
    p.add_argument("--seeds", help="comma-separated seeds every cell must have, as in `bench run` (default: the "
                                   "protocol's, 1,2,3); results of other seeds are left out, with a note")
    from bench.cli import DeprecatedAlias

    p.add_argument("--preset", choices=["coop11", "mini"],
                   help="dataset group: 'coop11' (the 11 CoOp datasets) or 'mini' (the miniature world); default: "
                        "inferred from what the store holds")
    p.add_argument("--group", dest="preset", choices=["coop11", "mini"], action=DeprecatedAlias, new="--preset",
                   help=argparse_suppress())
    p.add_argument("--backbone", help="only results of this backbone (open_clip architecture name prefix)")
    p.add_argument("--metric", default="top1", choices=list(METRICS), help="value to aggregate (default top1)")
    p.add_argument("--results", help="results store folder (default $BENCH_RESULTS or results/runs)")


def cmd_table(args) -> int:
    q = query_from_args(args)
    df = load_frame(args.results)
    if args.test:
        names = _csv_list(args.test) or []
        if len(names) != 2:
            raise BenchError(f"--test needs exactly two methods (got {len(names)}): --test coop linear_probe")
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
