"""Figures from the results store (``bench plot``), in the CoOp papers' conventions.

* fewshot: one panel per dataset plus a bold-titled "Average over N datasets" panel (first). x ticks at
  0, 1, 2, 4, 8, 16 shots (up to the largest drawn) with log2-like spacing; 0 = zero-shot CLIP, a star with a horizontal dashed
  reference line; one line per method in its own colour and marker and a ±1 std band over seeds; y =
  accuracy (%); one shared legend. Written at full paper width (all panels) and at column width (the average
  panel alone).
* base2new: grouped bars Base / New / H per dataset (one bar per method) with ±1 std error bars, the
  average panel first; every panel's y axis starts at 0 and ends at the same top.

Colour, marker, line style, name and order of each method come from its class (``Method.display_name``,
``color``, ``marker``, ``linestyle``, ``order``): the same in every figure, except that two methods drawn
together never share a marker or colour (the later one gets a free one). The figure says what the band is
and which backbone. Only complete cells (every expected seed) are drawn; skipped points are listed on stderr,
and a figure that would show nothing but zero-shot is refused. PNG (200 dpi) and PDF go beside the store they
are drawn from (:func:`default_out_dir`) unless ``--out-dir`` says otherwise; the written paths are printed.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from bench.report.series import base2new_bars, fewshot_series  # noqa: F401 - the figures' data (re-exported)

FULL_WIDTH_IN = 7.0     # two-column paper, full text width
COLUMN_WIDTH_IN = 3.4   # one column
DPI = 200
DEFAULT_TICKS = (0, 1, 2, 4, 8, 16)


def default_out_dir(results: str | Path | None = None) -> Path:
    """Where the figures of a store go: the default store's ``figures`` folder (``results/figures`` in a
    checkout); for another store (``--results DIR`` or ``$BENCH_RESULTS``) the folder ``DIR-figures`` beside it,
    so that drawing one store never overwrites another's figures."""
    import os

    from bench.paths import figures_dir

    if results is None and not os.environ.get("BENCH_RESULTS"):
        return figures_dir()
    from bench.store import Store

    root = Store(results).root if results is not None else Store().root
    root = Path(os.path.abspath(root.expanduser()))
    return root.parent / f"{root.name}-figures"


def xpos(shots: int) -> float:
    """0 -> 0, 1 -> 1, 2 -> 2, 4 -> 3, 8 -> 4, 16 -> 5 (log2-like spacing with zero-shot at 0)."""
    return 0.0 if shots == 0 else math.log2(shots) + 1.0


def _warn(msg: str) -> None:
    print(f"plot: {msg}", file=sys.stderr)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


# ------------------------------------------------------------------------------------------ drawing


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    return plt, sns


def styles(labels, seedless=()) -> dict:
    """label -> {display_name, color, marker, linestyle, order}: the method class's look, made distinct among
    the labels drawn together (:func:`bench.report.looks.distinct_looks`)."""
    from bench.report.looks import distinct_looks

    return distinct_looks(labels, seedless)


def grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, cols) for n panels: the fewest empty slots with at most ``max_cols`` columns (ties: more columns)."""
    if n <= max_cols:
        return 1, max(n, 1)
    best = min(range(2, max_cols + 1), key=lambda c: (math.ceil(n / c) * c - n, -c))
    return math.ceil(n / best), best


def y_limits(lo: float, hi: float, cap: float = 100.0) -> tuple[float, float]:
    """Limits around [lo, hi] with headroom (8 % of the range, at least 1 point), never below 0 nor above
    ``cap`` -- except that a value at or near ``cap`` keeps 1 point above it, so that its marker is not cut."""
    pad = max(0.08 * (hi - lo), 1.0)
    return max(0.0, lo - pad), max(min(cap, hi + pad), hi + 1.0)


def shot_ticks(present) -> list[int]:
    """The x ticks of a few-shot figure: the CoOp ticks (0, 1, 2, 4, 8, 16) up to the largest shot count drawn,
    and every drawn shot count (only 1-2 shots: 0, 1, 2; no zero-shot and from 1 shot on: no 0)."""
    present = sorted(set(present))
    lo, hi = present[0], present[-1]
    return sorted({t for t in DEFAULT_TICKS if lo <= t <= hi} | set(present))


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
        if s["seedless"]:
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
    ax.set_xlim(xpos(ticks[0]) - 0.3, xpos(ticks[-1]) + 0.3)
    if ys_all:
        ax.set_ylim(*y_limits(min(ys_all), max(ys_all)))
    else:
        _no_data(ax)
    ax.set_title(title, fontweight="bold" if bold else "normal")
    ax.grid(True, alpha=0.4)
    return ys_all


def _no_data(ax) -> None:
    """Say so in a panel with nothing to draw (instead of an empty 0-1 axis)."""
    ax.text(0.5, 0.5, "no complete results", transform=ax.transAxes, ha="center", va="center", color="0.45",
            fontsize="small")
    ax.tick_params(labelleft=False)


def _legend_handles(series, looks):
    from matplotlib.lines import Line2D

    handles, names = [], []
    for label, s in series.items():
        look = looks[label]
        if s["seedless"]:
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
    from bench.report.looks import display_name

    plt, sns = _mpl()
    data = fewshot_series(df, q)
    written = []
    for (arch, weights), d in data.items():
        for s in d["skipped"]:
            _warn(f"[{arch}] skipped incomplete point: {s}")
        series = {lb: s for lb, s in d["series"].items()
                  if any(m == m for pts in s["points"].values() for _, m, _ in pts)}
        if not any(not s["seedless"] for s in series.values()):
            have = ",".join(map(str, d["found_seeds"])) or "none"
            _warn(f"[{arch}] nothing but zero-shot to draw: no trained method has every seed of "
                  f"{','.join(map(str, d['seeds']))} (seeds in the store: {have}; pass --seeds)")
            continue
        present = sorted({k for s in series.values() for pts in s["points"].values() for k, m, _ in pts if m == m})
        ticks = shot_ticks(present)
        looks = styles(series, {lb for lb, s in series.items() if s["seedless"]})
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

    from bench.report.looks import display_name

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
        top = y_limits(0.0, max(max(B + bs, N + ns, H) for per in bars.values() for B, N, H, bs, ns in per.values()))[1]
        with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=0.85):
            rows, cols = grid_shape(len(panels))
            fig, axes = plt.subplots(rows, cols, figsize=(FULL_WIDTH_IN, 1.85 * rows + 0.7), squeeze=False,
                                     layout="constrained")
            for ax, (key, title, bold) in zip(axes.flat, panels):
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
                ax.set_ylim(0, top)  # one origin, 0, in every panel: bar heights compare across panels
                if not any(key in per for per in bars.values()):
                    _no_data(ax)
                ax.set_xticks(range(3))
                ax.set_xlim(-0.5, 2.5)
                ax.set_xticklabels(["Base", "New", "H"])
                ax.set_title(title, fontweight="bold" if bold else "normal")
                ax.grid(True, axis="y", alpha=0.4)
                ax.grid(False, axis="x")
            _label_axes(fig, axes, len(panels), "Accuracy (%)", None)
            from matplotlib.patches import Patch

            handles = [Patch(color=looks[lb]["color"]) for lb in bars]
            fig.legend(handles, [looks[lb]["display_name"] for lb in bars], loc="outside lower center",
                       ncol=min(len(bars), 5), frameon=False)
            _caption(fig, _band_note(len(d["seeds"]), arch, weights).replace("mean ± 1 std", "error bars: ± 1 std"))
            written += _save(fig, out_dir / f"base2new{suffix}", formats)
            plt.close(fig)
    return written


def _seedless_label(df, label: str) -> bool:
    rows = df[df["label"] == label]
    return bool(len(rows)) and bool(rows["seed"].isna().all())
