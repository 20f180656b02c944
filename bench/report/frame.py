"""The tidy frame of the results store and its one select-and-aggregate step (tables and figures share it).

* :func:`tidy` -- one row per (run, eval): protocol, label, method, backbone, train dataset, eval dataset,
  classes, shots, seed, top1, macro-F1, per-class mean, n_test.
* :func:`aggregate` -- mean and population std (ddof = 0) over the expected seeds of the *unrounded*
  accuracies (docs/protocol.md §9). A cell with fewer seeds than expected is flagged as incomplete, never averaged.
* :func:`select` -- what one table or figure shows: the protocol's rows of the asked backbone and methods,
  aggregated over the seeds, one :class:`Selection` per backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.errors import BenchError
from bench.report.looks import base_method, order_labels
from bench.report.query import Query, expected_datasets

METRICS = ("top1", "macro_f1", "per_class_mean")
FRAME_COLUMNS = [
    "protocol", "label", "method", "backbone", "weights", "precision", "train_dataset", "train_classes", "shots",
    "seed", "eval", "eval_dataset", "classes", "top1", "macro_f1", "per_class_mean", "n_test", "unsupported",
    "hash", "finished_at", "note",
]
KEY = ["backbone", "weights", "protocol", "label", "method", "train_dataset", "shots", "eval", "eval_dataset",
       "classes"]
DEFAULT_PRECISION = "auto"


def run_label(config: dict) -> str:
    """The label a run is shown under: its config's label (method and overrides), plus every identity field
    that changes its numbers and is not in the label already -- today the precision when not the default:
    ``coop[precision=bf16]``, ``coop[n_ctx=4,precision=bf16]``. Runs that differ in it never share a cell."""
    label = config.get("label") or config["method"]
    precision = config.get("precision") or DEFAULT_PRECISION
    if precision == DEFAULT_PRECISION or "precision=" in label:
        return label
    base, sep, rest = label.partition("[")
    items = (rest[:-1].split(",") if sep else []) + [f"precision={precision}"]
    return f"{base}[{','.join(sorted(items))}]"


def tidy(results: list[dict]):
    """One row per (run, eval) of complete results in the runner's format. Duplicate runs of the same
    (backbone, protocol, label, dataset, shots, seed) keep the latest; ``frame.attrs["duplicates"]`` counts
    what was dropped. Runs of another precision have another label (:func:`run_label`), so they are not
    duplicates."""
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
                "label": run_label(c),
                "method": c["method"],
                "backbone": str(bb.get("arch")),
                "weights": str(bb.get("weights", bb.get("pretrained"))),
                "precision": c.get("precision") or DEFAULT_PRECISION,
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


def load_frame(results=None):
    """The tidy frame of every complete result in a store folder (default: the configured store)."""
    from bench.store import Store

    store = Store(results) if results else Store()
    if not store.root.is_dir():
        raise BenchError(f"results store not found: {store.root} (run `bench run ...` first, or pass --results DIR)")
    return tidy(store.current_results())


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


@dataclass
class Selection:
    """What one table or figure of one backbone shows: ``cells`` (aggregated records of the asked labels),
    ``runs`` (the tidy rows of this protocol and backbone), ``labels`` in display order, the ``seeds`` every
    cell must have, the ``datasets`` (columns, panels or sources) and the seeds left out."""
    arch: str
    weights: str
    cells: object
    runs: object
    labels: list[str]
    seeds: list[int]
    datasets: list[str]
    ignored_seeds: list[int] = field(default_factory=list)


def check_methods(labels, methods: list[str] | None) -> None:
    """One line naming every ``--methods`` entry that is neither a label in ``labels`` (what the store holds for
    this selection), nor the method of one, nor a registered method."""
    from bench.registry import get_method

    labels = set(labels)
    unknown = []
    for m in methods or []:
        if m in labels or any(base_method(lb) == m for lb in labels):
            continue
        try:
            get_method(m)
        except BenchError:
            unknown.append(m)
    if unknown:
        raise BenchError(f"unknown method or label {', '.join(map(repr, unknown))}; this selection of the store "
                         f"holds: {', '.join(sorted(labels)) or 'nothing'}")


def select_labels(agg, methods):
    """The records of the labels ``methods`` names (a method name selects all of its labels)."""
    if not methods:
        return agg
    labels = set(agg["label"])
    wanted = {lb for lb in labels for m in methods if lb == m or base_method(lb) == m}
    return agg[agg["label"].isin(wanted)]


def select(df, q: Query) -> list[Selection]:
    """The one select-and-aggregate step of tables and figures: rows of ``q.protocol`` (and ``q.backbone``),
    aggregated over ``q.seeds`` (default: the protocol's), the labels ``q.methods`` names; one Selection per
    (backbone, weights), sorted."""
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
    check_methods(sub["label"], q.methods)
    agg = aggregate(sub, seeds, q.metric)
    ignored = list(agg.attrs.get("ignored_seeds") or [])
    agg = select_labels(agg, q.methods)
    if agg.empty:
        raise BenchError(f"no {q.protocol} results of {', '.join(q.methods or [])} in the store; it holds: "
                         + ", ".join(sorted(set(sub["label"]))))
    dsets = expected_datasets(q.protocol, q.group, q.datasets)
    out = []
    for (arch, weights), a in agg.groupby(["backbone", "weights"], sort=True):
        runs = sub[(sub["backbone"] == arch) & (sub["weights"] == weights)]
        out.append(Selection(arch, weights, a, runs, order_labels(list(a["label"].unique()), q.methods), seeds,
                             dsets, ignored))
    return out
