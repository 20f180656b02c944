"""Issue 25's report items and first-hour friction of `bench table` / `bench plot`, each reproduced.

The store here holds result files written through the store (Store.write) for configs of
bench.protocols.expand, with accuracies chosen by the test: what is under test is how tables and figures read
and show them, so no training is needed. Every test fails on the code before the fix.
"""

from __future__ import annotations

import hashlib

import pytest

from bench.cli import main
from bench.protocols import expand
from bench.store import Store, config_hash

TINY = {"arch": "tiny-test", "pretrained": None, "weights": "random"}
FS = ["caltech101", "dtd"]
COOP = "coop[epochs=2]"


def _value(config: dict, name: str) -> float:
    """A reproducible accuracy in [40, 90) per (run, eval)."""
    h = hashlib.sha256((config_hash(config) + name).encode()).hexdigest()
    return 40.0 + int(h[:8], 16) % 5000 / 100.0


def write(store: Store, configs: list[dict], value=_value, when: str = "2026-01-01T00:00:00") -> None:
    for c in configs:
        metrics = {}
        for e in c["evals"]:
            name = e["dataset"] if e.get("classes", "all") == "all" else f"{e['dataset']}:{e['classes']}"
            metrics[name] = {"top1": value(c, name), "dataset": e["dataset"], "classes": e.get("classes", "all"),
                             "n_test": 8}
        store.write({"status": "complete", "hash": config_hash(c), "config": c, "metrics": metrics,
                     "finished_at": when})


def fewshot_grid(**kw) -> list[dict]:
    """Zero-shot + CoOp at 1 and 2 shots, seeds 1 and 2: a 2-seed grid (the protocol's default is 1,2,3)."""
    kw = {"backbone": TINY, **kw}
    return (expand("fewshot", ["zeroshot"], datasets=FS, **kw)
            + expand("fewshot", ["coop"], datasets=FS, shots=[1, 2], seeds=[1, 2], overrides={"epochs": 2}, **kw))


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "S")
    write(s, fewshot_grid())
    write(s, expand("base2new", ["zeroshot"], datasets=FS, backbone=TINY)
          + expand("base2new", ["coop"], datasets=FS, shots=[2], seeds=[1, 2], overrides={"epochs": 2},
                   backbone=TINY))
    return s


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------ item 5


def test_figures_go_beside_the_store_they_are_drawn_from(store, tmp_path, capsys, monkeypatch):
    import bench.paths

    checkout_figures = tmp_path / "checkout" / "results" / "figures"
    monkeypatch.setattr(bench.paths, "figures_dir", lambda: checkout_figures)  # the checkout's folder
    monkeypatch.delenv("BENCH_RESULTS", raising=False)
    code, out, err = _cli(capsys, "plot", "--results", store.root, "--seeds", "1,2", "--format", "png")
    assert code == 0, err
    beside = tmp_path / "S-figures"
    assert sorted(p.name for p in beside.iterdir()) == ["fewshot.png", "fewshot_average.png"]
    assert out.split() == [str(beside / "fewshot.png"), str(beside / "fewshot_average.png")]
    # the same store named by $BENCH_RESULTS
    monkeypatch.setenv("BENCH_RESULTS", str(store.root))
    code, out, err = _cli(capsys, "plot", "--protocol", "base2new", "--seeds", "1,2", "--format", "png")
    assert code == 0, err
    assert (beside / "base2new.png").is_file()
    assert not checkout_figures.exists()


# ------------------------------------------------------------------------------------------ item 7


def test_a_rerun_in_another_precision_gets_its_own_cell(tmp_path):
    from bench.report import Query, build_tables, load_frame

    s = Store(tmp_path / "S")
    write(s, fewshot_grid(), value=lambda c, name: 50.0, when="2026-01-01")
    bf16 = [c for c in fewshot_grid(precision="bf16") if c["train"]["seed"] == 1 and c["train"]["shots"] == 1]
    write(s, bf16, value=lambda c, name: 10.0, when="2026-02-01")      # later: it used to replace seed 1
    f = load_frame(s.root)
    assert f.attrs["duplicates"] == 0
    (t,) = build_tables(f, Query(datasets=FS, seeds=[1, 2], shots=[1]))
    rows = {r.index[0]: r for r in t.rows}
    assert [c.text() for c in rows[COOP].cells] == ["50.00 ± 0.00"] * 2 + ["50.00"]
    bf = rows["coop[epochs=2,precision=bf16]"]
    assert [c.text() for c in bf.cells[:2]] == ["1/2 seeds"] * 2


# ------------------------------------------------------------------------------------------ item 9


def test_an_unknown_method_or_label_is_one_line_naming_it_and_what_the_store_holds(store, capsys):
    for cmd in ("table", "plot"):
        code, out, err = _cli(capsys, cmd, "--results", store.root, "--methods", "nosuch", "--seeds", "1,2",
                              "--out-dir" if cmd == "plot" else "--format", store.root.parent / "f" if cmd == "plot"
                              else "md")
        assert code == 2 and out == "", (cmd, out, err)
        (line,) = [ln for ln in err.splitlines() if not ln.startswith("note:")]   # one line
        assert line.startswith("error:") and "'nosuch'" in line and COOP in line and "zeroshot" in line, err


def test_a_label_with_a_comma_is_one_label(tmp_path, capsys):
    s = Store(tmp_path / "S")
    write(s, fewshot_grid() + expand("fewshot", ["coop"], datasets=FS, shots=[1], seeds=[1, 2],
                                     overrides={"epochs": 2, "n_ctx": 4}, backbone=TINY))
    code, out, err = _cli(capsys, "table", "--results", s.root, "--methods", "coop[epochs=2,n_ctx=4]",
                          "--seeds", "1,2")
    assert code == 0, err
    rows = [ln.split("|")[1].strip() for ln in out.splitlines() if ln.startswith("| coop")]
    assert rows == ["coop[epochs=2,n_ctx=4]"]
    from bench.report import csv_list

    assert csv_list("coop[epochs=2,n_ctx=4], zeroshot") == ["coop[epochs=2,n_ctx=4]", "zeroshot"]


# ------------------------------------------------------------------------------------------ item 14


def test_an_average_is_rounded_once_half_up_from_unrounded_values():
    from bench.report import Query, build_tables, tidy

    # MaPLe's four published target accuracies, in an order whose float mean is the double just below 60.275
    targets = {"imagenetv2": 64.07, "imagenet_sketch": 49.15, "imagenet_a": 76.98, "imagenet_r": 50.90}
    assert f"{sum(targets.values()) / 4:.2f}" == "60.27"
    metrics = {d: {"top1": v, "dataset": d} for d, v in {"imagenet": 70.72, **targets}.items()}
    cfg = {"method": "maple", "label": "maple", "protocol": "domain_shift",
           "backbone": {"arch": "ViT-B-16", "weights": "openai"},
           "train": {"dataset": "imagenet", "shots": 16, "seed": 1, "classes": "all"}}
    f = tidy([{"status": "complete", "config": cfg, "metrics": metrics}])
    (t,) = build_tables(f, Query(protocol="domain_shift", seeds=[1]))
    (r,) = [r for r in t.rows if r.kind == "result"]
    assert t.column_keys[-1] == "target_average" and r.cells[-1].text() == "60.28"
    assert r.cells[-1].mean == pytest.approx(60.275)                  # the unrounded mean is kept


# ------------------------------------------------------------------------------------------ friction


def test_table_and_plot_start_from_the_seeds_the_store_holds(store, tmp_path, capsys):
    code, out, err = _cli(capsys, "table", "--results", store.root, "--datasets", ",".join(FS))
    assert code == 0, err
    assert "seeds" not in out.split("- ")[0].replace("± ", "")       # no 'k/n seeds' cell
    assert "over seeds 1,2;" in out and "--seeds 1,2" in err
    code, out, err = _cli(capsys, "plot", "--results", store.root, "--datasets", ",".join(FS),
                          "--out-dir", tmp_path / "fig", "--format", "png")
    assert code == 0, err
    assert "skipped" not in err and "nothing" not in err
    from bench.report import store_grid   # what `bench status` can start from, too

    held = store_grid(store.root, "fewshot")
    assert held["seeds"] == [1, 2] and held["backbones"] == [("tiny-test", "None")]
    assert held["datasets"] == FS and held["methods"] == [COOP, "zeroshot"] and held["preset"] == "coop11"


def _figure_axes(monkeypatch, draw):
    """Run ``draw``; return every saved figure's axes (by the figure's file name)."""
    from bench.report import plots

    seen = {}
    real = plots._save

    def spy(fig, base, formats):
        seen[base.name] = [ax for ax in fig.axes if ax.get_visible()]
        return real(fig, base, formats)

    monkeypatch.setattr(plots, "_save", spy)
    draw()
    return seen


def test_fewshot_figure_ticks_follow_the_data_and_markers_at_100_are_not_cut(tmp_path, monkeypatch):
    from bench.report import Query, load_frame, plots

    s = Store(tmp_path / "S")
    write(s, fewshot_grid(), value=lambda c, name: 100.0 if c["method"] == "coop" else 60.0)
    f = load_frame(s.root)
    axes = _figure_axes(monkeypatch, lambda: plots.plot_fewshot(f, Query(datasets=FS, seeds=[1, 2]), tmp_path,
                                                                ("png",)))
    for ax in axes["fewshot"] + axes["fewshot_average"]:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]       # not 0 ... 16
        assert ax.get_xlim()[1] < plots.xpos(4)
        assert ax.get_ylim()[1] >= 100.5                                               # room for a marker at 100


def test_methods_drawn_together_never_share_a_marker_or_colour(tmp_path, monkeypatch):
    from matplotlib.colors import to_hex

    from bench.method import default_display
    from bench.registry import get_method
    from bench.report import Query, load_frame, plots

    user = "mine12"  # not a registered method; its hashed default marker is CoOp's
    assert default_display(user)["marker"] == get_method("coop").marker
    s = Store(tmp_path / "S")
    grid = expand("fewshot", ["zeroshot"], datasets=FS, backbone=TINY) + expand(
        "fewshot", ["coop"], datasets=FS, shots=[1, 2], seeds=[1, 2], backbone=TINY)
    mine = [{**c, "method": user, "label": user} for c in grid if c["method"] == "coop"]
    write(s, grid + mine)
    f = load_frame(s.root)
    axes = _figure_axes(monkeypatch, lambda: plots.plot_fewshot(f, Query(datasets=FS, seeds=[1, 2]), tmp_path,
                                                                ("png",)))
    looks = {ln.get_gid(): (to_hex(ln.get_color()), ln.get_marker())
             for ax in axes["fewshot"] for ln in ax.get_lines() if ln.get_gid()}
    assert set(looks) == {"zeroshot", "coop", user}
    assert looks["coop"] == (get_method("coop").color.lower(), "o")      # a built-in keeps its own look
    assert looks[user][1] != "o" and looks[user][0] != looks["coop"][0]
    assert looks["zeroshot"][1] == "*"


def test_base2new_panels_share_one_y_origin_at_zero(tmp_path, monkeypatch):
    from bench.report import Query, load_frame, plots

    s = Store(tmp_path / "S")
    high = {"caltech101": 90.0, "dtd": 30.0}
    write(s, expand("base2new", ["zeroshot"], datasets=FS, backbone=TINY)
          + expand("base2new", ["coop"], datasets=FS, shots=[2], seeds=[1, 2], overrides={"epochs": 2},
                   backbone=TINY), value=lambda c, name: high[c["train"]["dataset"]] - (c["method"] == "zeroshot"))
    f = load_frame(s.root)
    axes = _figure_axes(monkeypatch, lambda: plots.plot_base2new(f, Query(protocol="base2new", datasets=FS,
                                                                          seeds=[1, 2]), tmp_path, ("png",)))
    limits = {ax.get_ylim() for ax in axes["base2new"]}
    assert len(limits) == 1 and next(iter(limits))[0] == 0.0


def test_a_paired_test_over_few_datasets_says_its_ci_means_little(store, capsys):
    code, out, err = _cli(capsys, "table", "--results", store.root, "--seeds", "1,2", "--shots", "2",
                          "--datasets", ",".join(FS), "--test", "coop", "zeroshot")
    assert code == 0, err
    assert "n pairs (datasets): 2" in out and "with 2 datasets this CI means little" in out


def test_compare_paper_says_which_columns_have_published_numbers(tmp_path, capsys):
    s = Store(tmp_path / "S")
    write(s, expand("fewshot", ["coop"], datasets=FS, shots=[16], seeds=[1, 2], backbone=TINY))
    code, out, err = _cli(capsys, "table", "--results", s.root, "--seeds", "1,2", "--compare", "paper",
                          "--datasets", ",".join(FS))
    assert code == 0, err
    assert "| coop (paper, RN50) |" in out
    assert "published RN50 numbers exist here only for DTD; the other columns have none" in out
