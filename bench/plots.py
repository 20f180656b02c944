"""Figures from the results store (``bench plot``), in the CoOp papers' conventions.

* fewshot: one panel per dataset plus a bold-titled "Average over N datasets" panel (first). x ticks at
  0, 1, 2, 4, 8, 16 shots with log2-like spacing; 0 = zero-shot CLIP, a star with a horizontal dashed
  reference line; one line per method with round markers and a ±1 std band over seeds; the linear probe
  dotted; y = accuracy (%); one shared legend. Written at full paper width (all panels) and at column width
  (the average panel alone).
* base2new: grouped bars Base / New / H per dataset (one bar per method), the average panel first.

Only complete cells (every expected seed) are drawn; skipped points are listed on stderr. PNG (200 dpi) and
PDF go to ``results/figures/`` unless ``--out`` says otherwise; the written paths are printed.
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
DISPLAY = {"zeroshot": "Zero-shot CLIP", "linear_probe": "Linear probe CLIP", "coop": "CoOp", "cocoop": "CoCoOp",
           "kgcoop": "KgCoOp", "maple": "MaPLe"}


def default_out_dir() -> Path:
    from bench.paths import figures_dir

    return figures_dir()


def method_name(label: str) -> str:
    base, sep, rest = label.partition("[")
    return DISPLAY.get(base, base) + (f" [{rest}" if sep else "")


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
        out[(arch, weights)] = {"datasets": dsets, "series": series, "skipped": skipped}
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
                per["average"] = (B, N, harmonic(B, N), 0.0, 0.0)
            bars[label] = per
        out[(arch, weights)] = {"datasets": dsets, "bars": bars, "skipped": skipped}
    return out


# ------------------------------------------------------------------------------------------ drawing


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    return plt, sns


def _colors(labels, sns) -> dict:
    pal = sns.color_palette("colorblind", max(len(labels), 3))
    return {lb: pal[i % len(pal)] for i, lb in enumerate(labels)}


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _draw_fewshot_panel(ax, series, key, colors, ticks, title, bold=False):
    for label, s in series.items():
        pts = s["points"].get(key) or []
        if not any(m == m for _, m, _ in pts):  # nothing but gaps (NaN)
            continue
        c = colors[label]
        if s["zeroshot"]:
            y = pts[0][1]
            ax.axhline(y, color=c, linestyle="--", linewidth=1.0, alpha=0.8)
            ax.plot([0], [y], marker="*", markersize=10, color=c, linestyle="none", zorder=5)
            continue
        xs = [xpos(k) for k, _, _ in pts]
        ys = [m for _, m, _ in pts]
        sd = [v for _, _, v in pts]
        ls = ":" if label.split("[", 1)[0] == "linear_probe" else "-"
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.5, linestyle=ls, color=c, zorder=4)
        ax.fill_between(xs, [m - v for m, v in zip(ys, sd)], [m + v for m, v in zip(ys, sd)], color=c,
                        alpha=0.18, linewidth=0)
    ax.set_xticks([xpos(k) for k in ticks])
    ax.set_xticklabels([str(k) for k in ticks])
    ax.set_xlim(-0.3, xpos(ticks[-1]) + 0.3)
    ax.set_title(title, fontweight="bold" if bold else "normal")
    ax.grid(True, alpha=0.4)


def _legend_handles(series, colors):
    from matplotlib.lines import Line2D

    handles, names = [], []
    for label, s in series.items():
        c = colors[label]
        if s["zeroshot"]:
            h = Line2D([0], [0], color=c, linestyle="--", marker="*", markersize=9)
        else:
            ls = ":" if label.split("[", 1)[0] == "linear_probe" else "-"
            h = Line2D([0], [0], color=c, linestyle=ls, marker="o", markersize=4, linewidth=1.5)
        handles.append(h)
        names.append(method_name(label))
    return handles, names


def _save(fig, base: Path, formats) -> list[Path]:
    paths = []
    base.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        p = base.with_suffix("." + fmt)
        fig.savefig(p, dpi=DPI)  # exactly the figure size: full width / column width of a paper
        paths.append(p)
    return paths


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
        if not series:
            _warn(f"[{arch}] nothing complete to plot")
            continue
        present = sorted({k for s in series.values() for pts in s["points"].values() for k, m, _ in pts if m == m})
        ticks = sorted(set(DEFAULT_TICKS) | set(present))
        colors = _colors(list(series), sns)
        suffix = "" if len(data) == 1 else "-" + _slug(arch)
        dsets = d["datasets"]
        avg_title = f"Average over {len(dsets)} datasets"
        handles, names = _legend_handles(series, colors)
        with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=0.85):
            # full width: the average panel first, then one panel per dataset
            rows, cols = _grid(len(dsets) + 1)
            fig, axes = plt.subplots(rows, cols, figsize=(FULL_WIDTH_IN, 1.85 * rows + 0.5), squeeze=False,
                                     layout="constrained")
            panels = [("average", avg_title, True)] + [(k, display_name(k), False) for k in dsets]
            for ax, (key, title, bold) in zip(axes.flat, panels):
                _draw_fewshot_panel(ax, series, key, colors, ticks, title, bold)
            for ax in list(axes.flat)[len(panels):]:
                ax.set_visible(False)
            for r in range(rows):
                axes[r][0].set_ylabel("Accuracy (%)")
            for ax in axes[-1]:
                ax.set_xlabel("Shots per class")
            fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 5), frameon=False)
            written += _save(fig, out_dir / f"fewshot{suffix}", formats)
            plt.close(fig)
            # column width: the average panel alone
            fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 2.2 + 0.18 * math.ceil(len(names) / 2)),
                                   layout="constrained")
            _draw_fewshot_panel(ax, series, "average", colors, ticks, avg_title, True)
            ax.set_ylabel("Accuracy (%)")
            ax.set_xlabel("Shots per class")
            fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 2), frameon=False)
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
        if not bars:
            _warn(f"[{arch}] nothing complete to plot")
            continue
        colors = _colors(list(bars), sns)
        suffix = "" if len(data) == 1 else "-" + _slug(arch)
        dsets = d["datasets"]
        panels = [("average", f"Average over {len(dsets)} datasets", True)] + [(k, display_name(k), False) for k in dsets]
        width = 0.8 / len(bars)
        with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=0.85):
            rows, cols = _grid(len(panels))
            fig, axes = plt.subplots(rows, cols, figsize=(FULL_WIDTH_IN, 1.85 * rows + 0.5), squeeze=False,
                                     layout="constrained")
            for ax, (key, title, bold) in zip(axes.flat, panels):
                for i, (label, per) in enumerate(bars.items()):
                    if key not in per:
                        continue
                    B, N, H, bs, ns = per[key]
                    x = np.arange(3) - 0.4 + width * (i + 0.5)
                    ax.bar(x, [B, N, H], width=width * 0.95, color=colors[label])
                    if key != "average" and (bs > 0 or ns > 0):  # ±1 std over seeds (none for H, zero-shot)
                        ax.errorbar(x[:2], [B, N], yerr=[bs, ns], fmt="none", ecolor="black", elinewidth=0.7,
                                    capsize=1.5)
                ax.set_xticks(range(3))
                ax.set_xticklabels(["Base", "New", "H"])
                ax.set_title(title, fontweight="bold" if bold else "normal")
            for ax in list(axes.flat)[len(panels):]:
                ax.set_visible(False)
            for r in range(rows):
                axes[r][0].set_ylabel("Accuracy (%)")
            from matplotlib.patches import Patch

            handles = [Patch(color=colors[lb]) for lb in bars]
            fig.legend(handles, [method_name(lb) for lb in bars], loc="outside lower center",
                       ncol=min(len(bars), 5), frameon=False)
            written += _save(fig, out_dir / f"base2new{suffix}", formats)
            plt.close(fig)
    return written


# ------------------------------------------------------------------------------------------ CLI


def cmd_plot(args) -> int:
    from bench.report import _csv_list, load_frame, query_from_args

    if args.protocol not in ("fewshot", "base2new"):
        raise BenchError(f"bench plot draws --protocol fewshot or base2new (got {args.protocol!r}); "
                         "use `bench table` for the other protocols")
    formats = _csv_list(args.formats) or ["png", "pdf"]
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad:
        raise BenchError(f"unknown figure format(s) {', '.join(bad)}; known: png, pdf, svg")
    q = query_from_args(args)
    df = load_frame(args.results)
    out = Path(args.out) if args.out else default_out_dir()
    fn = plot_fewshot if args.protocol == "fewshot" else plot_base2new
    paths = fn(df, q, out, formats)
    if not paths:
        raise BenchError("nothing to plot: no complete cells (every expected seed) in this selection")
    for p in paths:
        print(p)
    return 0


def add_command(sub) -> None:
    from bench.report import add_selection_args

    p = sub.add_parser("plot", help="the CoOp-style figures (few-shot curves, base-to-new bars) from the store")
    add_selection_args(p)
    p.add_argument("--shots", help="shot counts to draw (default: all present)")
    p.add_argument("--out", help="output folder (default results/figures/)")
    p.add_argument("--formats", default="png,pdf", help="comma-separated: png, pdf, svg (default png,pdf)")
    p.set_defaults(func=cmd_plot)
