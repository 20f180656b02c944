"""Paired tests of two methods over datasets (``bench table --test A B``).

Wilcoxon signed-rank (or paired t) test with the dataset as the unit (each dataset's mean over seeds is one
pair; one test per shot count) and a bootstrap CI of the mean difference.
"""

from __future__ import annotations

from bench.errors import BenchError
from bench.report.frame import aggregate

# Below this many datasets a bootstrap CI of the mean difference is too coarse and too narrow to mean much
# (resampling n values gives only C(2n-1, n) distinct means: 3 for n = 2, 35 for n = 4).
MIN_BOOTSTRAP_N = 8


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
    ci_note = ""
    if n < MIN_BOOTSTRAP_N:
        from math import comb

        ci_note = (f"with {n} datasets this CI means little: resampling {n} values gives only {comb(2 * n - 1, n)} "
                   f"distinct means, and the interval is too narrow below about {MIN_BOOTSTRAP_N} datasets")
    return {"test": name, "a": la, "b": lb, "statistic": statistic, "pvalue": p, "mean_diff": mean_diff,
            "ci_low": lo, "ci_high": hi, "ci_level": 1 - alpha, "ci_method": ci_method, "ci_note": ci_note,
            "verdict": verdict}


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
    if r.get("ci_note"):
        lines.insert(-1, f"note: {r['ci_note']}")
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

