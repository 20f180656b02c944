"""Figures from the results store (``bench plot``), in the CoOp papers' conventions.

* fewshot: one panel per dataset plus a bold-titled "Average over N datasets" panel (first). x ticks at
  0, 1, 2, 4, 8, 16 shots with log2-like spacing; 0 = zero-shot CLIP, a star with a horizontal dashed
  reference line; one line per method in its own colour and marker and a ±1 std band over seeds; y =
  accuracy (%); one shared legend. Written at full paper width (all panels) and at column width (the average
  panel alone).
* base2new: grouped bars Base / New / H per dataset (one bar per method) with ±1 std error bars, the
  average panel first; the y axis starts near the data.

Colour, marker, line style, name and order of each method come from its class (``Method.display_name``,
``color``, ``marker``, ``linestyle``, ``order``): the same in every figure. The figure says what the band is
and which backbone. Only complete cells (every expected seed) are drawn; skipped points are listed on stderr,
and a figure that would show nothing but zero-shot is refused. PNG (200 dpi) and PDF go to
``results/figures/`` unless ``--out-dir`` says otherwise; the written paths are printed.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from bench.errors import BenchError

FULL_WIDTH_IN = 7.0     # two-column paper, full text width
COLUMN_WIDTH_IN = 3.4   # one column
DPI = 200
DEFAULT_TICKS = (0, 1, 2, 4, 8, 16)


def default_out_dir() -> Path:
    from bench.paths import figures_dir

    return figures_dir()


def method_name(label: str) -> str:
    from bench.report import method_look

    return method_look(label)["display_name"]


def xpos(shots: int) -> float:
    """0 -> 0, 1 -> 1, 2 -> 2, 4 -> 3, 8 -> 4, 16 -> 5 (log2-like spacing with zero-shot at 0)."""
    return 0.0 if shots == 0 else math.log2(shots) + 1.0


def _warn(msg: str) -> None:
    print(f"plot: {msg}", file=sys.stderr)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


# ------------------------------------------------------------------------------------------ data


def fewshot_series(df, q) -> dict:
    """{(arch, weights): {"datasets": [...], "series": {label: {"zeroshot": bool,
    "points": {dataset | "average": [(shots, mean, std)]}}}, "skipped": [...]}} from complete cells only.

    The average point of a method at K shots exists only when every dataset is complete at K; its band is
    the population std over seeds of the per-seed averages over datasets."""
    import numpy as np

    from bench.protocols import get_protocol
    from bench.report import _order_labels, _select_labels, aggregate, expected_datasets

    proto = get_protocol("fewshot")
    seeds = list(q.seeds) if q.seeds else list(proto.seeds)
    sub = df[df["protocol"] == "fewshot"]
    if q.backbone:
        sub = sub[sub["backbone"].str.startswith(q.backbone)]
    if sub.empty:
        raise BenchError("no complete few-shot results in the store")
    dsets = expected_datasets("fewshot", q.group, q.datasets)
    agg = _select_labels(aggregate(sub, seeds, q.metric), q.methods)
    out = {}
    for (arch, weights), a in agg.groupby(["backbone", "weights"], sort=True):
        raw = sub[(sub["backbone"] == arch) & (sub["weights"] == weights)]
        series, skipped = {}, []
        for label in _order_labels(list(a["label"].unique()), q.methods):
            recs = a[a["label"] == label]
            zs = bool((recs["shots"] == 0).all())
            shots = sorted({int(s) for s in recs["shots"]})
            if q.shots and not zs:
                shots = [k for k in shots if k in q.shots]
            points: dict = {d: [] for d in dsets + ["average"]}
            for k in shots:
                complete = True
                for d in dsets:
                    hit = recs[(recs["shots"] == k) & (recs["train_dataset"] == d) & (recs["eval"] == d)]
                    if hit.empty or not bool(hit.iloc[0]["complete"]):
                        complete = False
                        have = "no result" if hit.empty else f"{int(hit.iloc[0]['n'])}/{int(hit.iloc[0]['expected'])} seeds"
                        skipped.append(f"{label} {d} {k} shots ({have})")
                        if not zs:
                            points[d].append((k, float("nan"), float("nan")))  # a gap in the line
                        continue
                    r = hit.iloc[0]
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
            series[label] = {"zeroshot": zs, "points": points}
        out[(arch, weights)] = {"datasets": dsets, "series": series, "skipped": skipped, "seeds": seeds,
                                "found_seeds": sorted({int(s) for s in raw["seed"].dropna()})}
    return out


def base2new_bars(df, q) -> dict:
    """{(arch, weights): {"datasets": [...], "bars": {label: {dataset | "average": (B, N, H, Bstd, Nstd)}}}}."""
    from bench.protocols import get_protocol
    from bench.report import _order_labels, _select_labels, aggregate, expected_datasets, harmonic

    proto = get_protocol("base2new")
    seeds = list(q.seeds) if q.seeds else list(proto.seeds)
    sub = df[df["protocol"] == "base2new"]
    if q.backbone:
        sub = sub[sub["backbone"].str.startswith(q.backbone)]
    if sub.empty:
        raise BenchError("no complete base-to-new results in the store")
    dsets = expected_datasets("base2new", q.group, q.datasets)
    agg = _select_labels(aggregate(sub, seeds, q.metric), q.methods)
    out = {}
    for (arch, weights), a in agg.groupby(["backbone", "weights"], sort=True):
        raw = sub[(sub["backbone"] == arch) & (sub["weights"] == weights)]
        bars, skipped = {}, []
        for label in _order_labels(list(a["label"].unique()), q.methods):
            recs = a[a["label"] == label]
            per = {}
            for d in dsets:
                b = recs[(recs["train_dataset"] == d) & (recs["eval"] == f"{d}:base")]
                n = recs[(recs["train_dataset"] == d) & (recs["eval"] == f"{d}:new")]
                if b.empty or n.empty or not (b.iloc[0]["complete"] and n.iloc[0]["complete"]):
                    skipped.append(f"{label} {d}")
                    continue
                B, N = float(b.iloc[0]["mean"]), float(n.iloc[0]["mean"])
                per[d] = (B, N, harmonic(B, N), float(b.iloc[0]["std"]), float(n.iloc[0]["std"]))
            if len(per) == len(dsets):
                B = sum(v[0] for v in per.values()) / len(per)
                N = sum(v[1] for v in per.values()) / len(per)
                per["average"] = (B, N, harmonic(B, N), *_seed_std_of_average(raw, label, dsets, seeds, q.metric))
            bars[label] = per
        out[(arch, weights)] = {"datasets": dsets, "bars": bars, "skipped": skipped, "seeds": seeds}
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


# ------------------------------------------------------------------------------------------ drawing


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    return plt, sns


def styles(labels) -> dict:
    """label -> {display_name, color, marker, linestyle, order}: the method class's look (bench.report.method_look)."""
    from bench.report import method_look

    return {lb: method_look(lb) for lb in labels}


def grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, cols) for n panels: the fewest empty slots with at most ``max_cols`` columns (ties: more columns)."""
    if n <= max_cols:
        return 1, max(n, 1)
    best = min(range(2, max_cols + 1), key=lambda c: (math.ceil(n / c) * c - n, -c))
    return math.ceil(n / best), best


def y_limits(lo: float, hi: float, cap: float = 100.0) -> tuple[float, float]:
    """Limits around [lo, hi] with headroom (8 % of the range, at least 1 point), never above ``cap`` or below 0."""
    pad = max(0.08 * (hi - lo), 1.0)
    return max(0.0, lo - pad), min(cap, hi + pad)


def _label_axes(fig, axes, n_panels: int, ylabel: str, xlabel: str | None) -> None:
    """Hide the unused slots; y label on the first column; x label (and tick labels) on the lowest panel of
    every column, which is the bottom row except above the empty slots."""
    rows, cols = axes.shape
    for i, ax in enumerate(axes.flat):
        if i >= n_panels:
            ax.set_visible(False)
    for r in range(rows):
        axes[r][0].set_ylabel(ylabel)
    for c in range(cols):
        col = [axes[r][c] for r in range(rows) if r * cols + c < n_panels]
        for ax in col[:-1]:
            ax.tick_params(labelbottom=False)
        if col and xlabel:
            col[-1].set_xlabel(xlabel)


def _caption(fig, text: str) -> None:
    fig.suptitle(text, fontsize="small", color="0.25")


def _draw_fewshot_panel(ax, series, key, looks, ticks, title, bold=False) -> list[float]:
    """Draw one panel; return the y values drawn (band edges included) for the limits."""
    ys_all = []
    for label, s in series.items():
        pts = s["points"].get(key) or []
        if not any(m == m for _, m, _ in pts):  # nothing but gaps (NaN)
            continue
        look = looks[label]
        c = look["color"]
        if s["zeroshot"]:
            y = pts[0][1]
            ax.axhline(y, color=c, linestyle="--", linewidth=1.0, alpha=0.8)
            ax.plot([0], [y], marker="*", markersize=10, color=c, linestyle="none", zorder=5, clip_on=False, gid=label)
            ys_all.append(y)
            continue
        xs = [xpos(k) for k, _, _ in pts]
        ys = [m for _, m, _ in pts]
        sd = [v for _, _, v in pts]
        ax.plot(xs, ys, marker=look["marker"], markersize=4, linewidth=1.5, linestyle=look["linestyle"], color=c,
                zorder=4, clip_on=False, gid=label)
        lo, hi = [m - v for m, v in zip(ys, sd)], [m + v for m, v in zip(ys, sd)]
        ax.fill_between(xs, lo, hi, color=c, alpha=0.18, linewidth=0)
        ys_all += [v for v in lo + hi if v == v]
    ax.set_xticks([xpos(k) for k in ticks])
    ax.set_xticklabels([str(k) for k in ticks])
    ax.set_xlim(-0.3, xpos(ticks[-1]) + 0.3)
    if ys_all:
        ax.set_ylim(*y_limits(min(ys_all), max(ys_all)))
    ax.set_title(title, fontweight="bold" if bold else "normal")
    ax.grid(True, alpha=0.4)
    return ys_all


def _legend_handles(series, looks):
    from matplotlib.lines import Line2D

    handles, names = [], []
    for label, s in series.items():
        look = looks[label]
        if s["zeroshot"]:
            h = Line2D([0], [0], color=look["color"], linestyle="--", marker="*", markersize=9)
        else:
            h = Line2D([0], [0], color=look["color"], linestyle=look["linestyle"], marker=look["marker"],
                       markersize=4, linewidth=1.5)
        handles.append(h)
        names.append(look["display_name"])
    return handles, names


def _save(fig, base: Path, formats) -> list[Path]:
    paths = []
    base.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        p = base.with_suffix("." + fmt)
        fig.savefig(p, dpi=DPI)  # exactly the figure size: full width / column width of a paper
        paths.append(p)
    return paths


def _band_note(n_seeds: int, arch: str, weights: str) -> str:
    if n_seeds == 1:  # one seed has no spread: say so instead of promising error bands
        return f"1 seed (no error bands), {arch} ({weights})"
    return f"mean ± 1 std over {n_seeds} seeds, {arch} ({weights})"


def plot_fewshot(df, q, out_dir: Path, formats=("png", "pdf")) -> list[Path]:
    from bench.report import display_name

    plt, sns = _mpl()
    data = fewshot_series(df, q)
    written = []
    for (arch, weights), d in data.items():
        for s in d["skipped"]:
            _warn(f"[{arch}] skipped incomplete point: {s}")
        series = {lb: s for lb, s in d["series"].items()
                  if any(m == m for pts in s["points"].values() for _, m, _ in pts)}
        if not any(not s["zeroshot"] for s in series.values()):
            have = ",".join(map(str, d["found_seeds"])) or "none"
            _warn(f"[{arch}] nothing but zero-shot to draw: no trained method has every seed of "
                  f"{','.join(map(str, d['seeds']))} (seeds in the store: {have}; pass --seeds)")
            continue
        present = sorted({k for s in series.values() for pts in s["points"].values() for k, m, _ in pts if m == m})
        ticks = sorted(set(DEFAULT_TICKS) | set(present))
        looks = styles(series)
        suffix = "" if len(data) == 1 else "-" + _slug(arch)
        dsets = d["datasets"]
        avg_title = f"Average over {len(dsets)} datasets"
        handles, names = _legend_handles(series, looks)
        note = _band_note(len(d["seeds"]), arch, weights)
        with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=0.85):
            # full width: the average panel first, then one panel per dataset
            panels = [("average", avg_title, True)] + [(k, display_name(k), False) for k in dsets]
            rows, cols = grid_shape(len(panels))
            fig, axes = plt.subplots(rows, cols, figsize=(FULL_WIDTH_IN, 1.85 * rows + 0.7), squeeze=False,
                                     layout="constrained")
            for ax, (key, title, bold) in zip(axes.flat, panels):
                _draw_fewshot_panel(ax, series, key, looks, ticks, title, bold)
            _label_axes(fig, axes, len(panels), "Accuracy (%)", "Shots per class")
            fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 5), frameon=False)
            _caption(fig, note)
            written += _save(fig, out_dir / f"fewshot{suffix}", formats)
            plt.close(fig)
            # column width: the average panel alone
            fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 2.4 + 0.18 * math.ceil(len(names) / 2)),
                                   layout="constrained")
            _draw_fewshot_panel(ax, series, "average", looks, ticks, avg_title, True)
            ax.set_ylabel("Accuracy (%)")
            ax.set_xlabel("Shots per class")
            fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 2), frameon=False)
            _caption(fig, note)
            written += _save(fig, out_dir / f"fewshot_average{suffix}", formats)
            plt.close(fig)
    return written


def plot_base2new(df, q, out_dir: Path, formats=("png", "pdf")) -> list[Path]:
    import numpy as np

    from bench.report import display_name

    plt, sns = _mpl()
    data = base2new_bars(df, q)
    written = []
    for (arch, weights), d in data.items():
        for s in d["skipped"]:
            _warn(f"[{arch}] skipped incomplete dataset: {s}")
        bars = {lb: v for lb, v in d["bars"].items() if v}
        trained = [lb for lb in bars if not _seedless_label(df, lb)]
        if not trained:
            _warn(f"[{arch}] nothing but zero-shot to draw: no trained method has every seed of "
                  f"{','.join(map(str, d['seeds']))} (pass --seeds)")
            continue
        looks = styles(bars)
        suffix = "" if len(data) == 1 else "-" + _slug(arch)
        dsets = d["datasets"]
        panels = [("average", f"Average over {len(dsets)} datasets", True)] + [(k, display_name(k), False) for k in dsets]
        width = 0.8 / len(bars)
        with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=0.85):
            rows, cols = grid_shape(len(panels))
            fig, axes = plt.subplots(rows, cols, figsize=(FULL_WIDTH_IN, 1.85 * rows + 0.7), squeeze=False,
                                     layout="constrained")
            for ax, (key, title, bold) in zip(axes.flat, panels):
                lo, hi = [], []
                for i, (label, per) in enumerate(bars.items()):
                    if key not in per:
                        continue
                    B, N, H, bs, ns = per[key]
                    x = np.arange(3) - 0.4 + width * (i + 0.5)
                    ax.bar(x, [B, N, H], width=width * 0.95, color=looks[label]["color"], edgecolor="white",
                           linewidth=0.3)
                    if bs > 0 or ns > 0:  # ±1 std over seeds (none for H and zero-shot)
                        ax.errorbar(x[:2], [B, N], yerr=[bs, ns], fmt="none", ecolor="black", elinewidth=0.7,
                                    capsize=1.5)
                    lo += [B - bs, N - ns, H]
                    hi += [B + bs, N + ns, H]
                if lo:
                    bottom, top = y_limits(min(lo), max(hi))
                    ax.set_ylim(math.floor(bottom / 5) * 5, top)  # near the data: 1-5 point gaps stay visible
                ax.set_xticks(range(3))
                ax.set_xticklabels(["Base", "New", "H"])
                ax.set_title(title, fontweight="bold" if bold else "normal")
                ax.grid(True, axis="y", alpha=0.4)
                ax.grid(False, axis="x")
            _label_axes(fig, axes, len(panels), "Accuracy (%)", None)
            from matplotlib.patches import Patch

            handles = [Patch(color=looks[lb]["color"]) for lb in bars]
            fig.legend(handles, [looks[lb]["display_name"] for lb in bars], loc="outside lower center",
                       ncol=min(len(bars), 5), frameon=False)
            _caption(fig, _band_note(len(d["seeds"]), arch, weights).replace("mean ± 1 std", "error bars: ± 1 std")
                     + "; the y axis does not start at 0")
            written += _save(fig, out_dir / f"base2new{suffix}", formats)
            plt.close(fig)
    return written


def _seedless_label(df, label: str) -> bool:
    rows = df[df["label"] == label]
    return bool(len(rows)) and bool(rows["seed"].isna().all())


# ------------------------------------------------------------------------------------------ CLI


FIGURE_FORMATS = ("png", "pdf", "svg")


def cmd_plot(args) -> int:
    from bench.report import _csv_list, load_frame, query_from_args

    if args.protocol not in ("fewshot", "base2new"):
        raise BenchError(f"bench plot draws --protocol fewshot or base2new (got {args.protocol!r}); "
                         "use `bench table` for the other protocols")
    formats = _csv_list(args.format) or ["png", "pdf"]
    bad = [f for f in formats if f not in FIGURE_FORMATS]
    if bad:
        raise BenchError(f"unknown figure format(s) {', '.join(bad)}; known: {', '.join(FIGURE_FORMATS)}")
    q = query_from_args(args)
    df = load_frame(args.results)
    out = Path(args.out_dir) if args.out_dir else default_out_dir()
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
    from bench.report import add_selection_args

    p = sub.add_parser("plot", help="the CoOp-style figures (few-shot curves, base-to-new bars) from the store")
    add_selection_args(p)
    p.add_argument("--shots", help="shot counts to draw (default: all present)")
    p.add_argument("--out-dir", help="output folder (default results/figures/)")
    p.add_argument("--format", default="png,pdf", help="comma-separated: png, pdf, svg (default png,pdf)")
    p.add_argument("--out", dest="out_dir", action=DeprecatedAlias, new="--out-dir", help=argparse_suppress())
    p.add_argument("--formats", dest="format", action=DeprecatedAlias, new="--format", help=argparse_suppress())
    p.set_defaults(func=cmd_plot)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS
