"""The data of the figures: few-shot curves and base-to-new bars, from the same select-and-aggregate step as the
tables (:func:`bench.report.frame.select`); only complete cells (every expected seed) become points or bars."""

from __future__ import annotations


def _lookup(recs, k, d, eval_name):
    hit = recs[(recs["shots"] == k) & (recs["train_dataset"] == d) & (recs["eval"] == eval_name)] if k is not None \
        else recs[(recs["train_dataset"] == d) & (recs["eval"] == eval_name)]
    return None if hit.empty else hit.iloc[0]


def fewshot_series(df, q) -> dict:
    """{(arch, weights): {"datasets": [...], "series": {label: {"seedless": bool,
    "points": {dataset | "average": [(shots, mean, std)]}}}, "skipped": [...]}} from complete cells only
    (the selection of :func:`bench.report.frame.select`, as the tables).

    The average point of a method at K shots exists only when every dataset is complete at K; its band is
    the population std over seeds of the per-seed averages over datasets."""
    import numpy as np

    from bench.report.frame import select
    from bench.report.query import Query

    q = Query(**{**vars(q), "protocol": "fewshot"})
    out = {}
    for sel in select(df, q):
        dsets, seeds, raw = sel.datasets, sel.seeds, sel.runs
        series, skipped = {}, []
        for label in sel.labels:
            recs = sel.cells[sel.cells["label"] == label]
            if recs.empty:
                continue
            zs = bool((recs["shots"] == 0).all())
            shots = sorted({int(s) for s in recs["shots"]})
            if q.shots and not zs:
                shots = [k for k in shots if k in q.shots]
            points: dict = {d: [] for d in dsets + ["average"]}
            for k in shots:
                complete = True
                for d in dsets:
                    r = _lookup(recs, k, d, d)
                    if r is None or not bool(r["complete"]):
                        complete = False
                        have = "no result" if r is None else f"{int(r['n'])}/{int(r['expected'])} seeds"
                        skipped.append(f"{label} {d} {k} shots ({have})")
                        if not zs:
                            points[d].append((k, float("nan"), float("nan")))  # a gap in the line
                        continue
                    points[d].append((k, float(r["mean"]), float(r["std"])))
                if complete:
                    vals = raw[(raw["label"] == label) & (raw["shots"] == k) & raw["train_dataset"].isin(dsets)
                               & (raw["eval"] == raw["train_dataset"])]
                    if zs:
                        per_seed = np.array([vals[q.metric].mean()])
                    else:
                        vals = vals[vals["seed"].isin([float(s) for s in seeds])]
                        per_seed = vals.groupby("seed")[q.metric].mean().to_numpy()
                    points["average"].append((k, float(per_seed.mean()), float(per_seed.std(ddof=0))))
                elif not zs:
                    points["average"].append((k, float("nan"), float("nan")))
            series[label] = {"seedless": zs, "points": points}
        out[(sel.arch, sel.weights)] = {"datasets": dsets, "series": series, "skipped": skipped, "seeds": seeds,
                                        "found_seeds": sorted({int(s) for s in raw["seed"].dropna()})}
    return out


def base2new_bars(df, q) -> dict:
    """{(arch, weights): {"datasets": [...], "bars": {label: {dataset | "average": (B, N, H, Bstd, Nstd)}}}}
    (the selection of :func:`bench.report.frame.select`, as the tables)."""
    from bench.report.frame import harmonic, select
    from bench.report.query import Query

    q = Query(**{**vars(q), "protocol": "base2new"})
    out = {}
    for sel in select(df, q):
        dsets, seeds, raw = sel.datasets, sel.seeds, sel.runs
        bars, skipped = {}, []
        for label in sel.labels:
            recs = sel.cells[sel.cells["label"] == label]
            if recs.empty:
                continue
            per = {}
            for d in dsets:
                b, n = _lookup(recs, None, d, f"{d}:base"), _lookup(recs, None, d, f"{d}:new")
                if b is None or n is None or not (b["complete"] and n["complete"]):
                    skipped.append(f"{label} {d}")
                    continue
                B, N = float(b["mean"]), float(n["mean"])
                per[d] = (B, N, harmonic(B, N), float(b["std"]), float(n["std"]))
            if len(per) == len(dsets):
                B = sum(v[0] for v in per.values()) / len(per)
                N = sum(v[1] for v in per.values()) / len(per)
                per["average"] = (B, N, harmonic(B, N), *_seed_std_of_average(raw, label, dsets, seeds, q.metric))
            bars[label] = per
        out[(sel.arch, sel.weights)] = {"datasets": dsets, "bars": bars, "skipped": skipped, "seeds": seeds}
    return out


def _seed_std_of_average(raw, label, dsets, seeds, metric) -> tuple[float, float]:
    """Population std over seeds of the per-seed averages over datasets of base and new (0 for zero-shot)."""
    out = []
    for cls in ("base", "new"):
        v = raw[(raw["label"] == label) & raw["train_dataset"].isin(dsets)
                & (raw["eval"] == raw["train_dataset"] + ":" + cls)]
        if v["seed"].isna().all():
            out.append(0.0)
            continue
        v = v[v["seed"].isin([float(s) for s in seeds])]
        out.append(float(v.groupby("seed")[metric].mean().std(ddof=0)))
    return out[0], out[1]
