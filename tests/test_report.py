"""Tables, statistics, figures and published numbers, on a results store built from REAL runs.

The store is built once per module: generated datasets in CoOp's layouts (bench.data.synth), the tiny random
backbone, and bench.engine.runner.execute on grids from bench.protocols.expand (zero-shot, a linear probe with a
fixed C and CoOp with 2 epochs, to stay fast). Every number a table shows is recomputed here by hand from
the stored JSON files.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.protocols import expand
from bench.store import Store

TINY = {"arch": "tiny-test", "pretrained": None, "weights": "random"}
FS = ["caltech101", "dtd"]          # few-shot and base-to-new datasets of the test store
SEEDS = [1, 2]
SHOTS = [1, 2]
LP = "linear_probe[C=1]"
COOP = "coop[epochs=2]"
TARGETS_DS = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]


def grids(root) -> dict:
    kw = {"backbone": TINY, "data_root": str(root)}
    return {
        "fewshot": expand("fewshot", ["zeroshot"], datasets=FS, **kw)
        + expand("fewshot", ["linear_probe"], datasets=FS, shots=SHOTS, seeds=SEEDS, overrides={"C": 1}, **kw)
        + expand("fewshot", ["coop"], datasets=FS, shots=SHOTS, seeds=SEEDS, overrides={"epochs": 2}, **kw),
        "base2new": expand("base2new", ["zeroshot"], datasets=FS, **kw)
        + expand("base2new", ["coop"], datasets=FS, shots=[2], seeds=SEEDS, overrides={"epochs": 2}, **kw),
        "domain_shift": expand("domain_shift", ["zeroshot", "linear_probe"], shots=[2], seeds=SEEDS, **kw),
        "cross_dataset": expand("cross_dataset", ["zeroshot"], **kw)
        + expand("cross_dataset", ["coop"], shots=[2], seeds=SEEDS, overrides={"epochs": 2}, **kw),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    from bench.engine.runner import execute
    from bench.data.synth import make_all

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("data")
    make_all(root, n_classes=4, per_class=(4, 2, 3))  # the CoOp 11 + the 4 ImageNet variants
    store = Store(tmp_path_factory.mktemp("results"))
    g = grids(root)
    for protocol in g:
        for config in g[protocol]:
            execute(config, store)
    return {"root": root, "store": store, "grids": g}


@pytest.fixture(scope="module")
def frame(world):
    from bench.report import load_frame

    return load_frame(world["store"].root)


def stored_jsons(store: Store) -> list[dict]:
    """The result files, read without the store's helpers."""
    out = []
    for p in sorted(Path(store.root).rglob("*.json")):
        if not p.name.endswith(".failed.json"):
            out.append(json.loads(p.read_text()))
    return out


def by_hand(store: Store, protocol: str, label: str, train: str, eval_name: str, shots: int | None = None):
    """Unrounded top-1 values of one cell, straight from the JSON files."""
    vals = []
    for r in stored_jsons(store):
        c = r["config"]
        if (c["protocol"] == protocol and c["label"] == label and c["train"]["dataset"] == train
                and (shots is None or c["train"]["shots"] == shots)):
            vals.append(r["metrics"][eval_name]["top1"])
    return vals


def table(frame, **kw):
    from bench.report import Query, build_tables

    q = Query(seeds=SEEDS, **kw)
    (t,) = build_tables(frame, q)
    return t


def row(t, *index):
    hits = [r for r in t.rows if tuple(r.index) == index]
    assert len(hits) == 1, (index, [r.index for r in t.rows])
    return hits[0]


def col(t, name):
    return t.columns.index(name)


# ------------------------------------------------------------------------------------------ grids


def test_grid_sizes_per_protocol():
    n_coop11 = 11
    fs = expand("fewshot", ["zeroshot", "coop"], backbone=TINY)
    assert len(fs) == n_coop11 + n_coop11 * 5 * 3          # zero-shot once per dataset; 5 shots x 3 seeds
    assert all(len(c["evals"]) == 1 for c in fs)
    b2n = expand("base2new", ["zeroshot", "coop"], backbone=TINY)
    assert len(b2n) == n_coop11 + n_coop11 * 1 * 3
    assert all([e["classes"] for e in c["evals"]] == ["base", "new"] for c in b2n)
    assert {c["train"]["classes"] for c in b2n} == {"base"}
    ds = expand("domain_shift", ["zeroshot", "coop"], backbone=TINY)
    assert len(ds) == 1 + 3 and {c["train"]["dataset"] for c in ds} == {"imagenet"}
    assert all([e["dataset"] for e in c["evals"]] == ["imagenet"] + TARGETS_DS for c in ds)
    cd = expand("cross_dataset", ["zeroshot", "coop"], backbone=TINY)
    assert len(cd) == 1 + 3 and all(len(c["evals"]) == 11 for c in cd)


def test_store_holds_every_run_and_tidy_frame_has_one_row_per_eval(world, frame):
    g = world["grids"]
    assert [len(g[p]) for p in ("fewshot", "base2new", "domain_shift", "cross_dataset")] == [
        2 + 8 + 8, 2 + 4, 1 + 2, 1 + 2]
    every = [c for p in g for c in g[p]]
    assert all(world["store"].is_complete(c) for c in every)
    assert len(frame) == sum(len(c["evals"]) for c in every)
    for colname in ("protocol", "label", "method", "train_dataset", "eval_dataset", "classes", "shots", "seed",
                    "top1", "macro_f1", "n_test"):
        assert colname in frame.columns
    zs = frame[frame["method"] == "zeroshot"]
    assert (zs["shots"] == 0).all() and zs["seed"].isna().all()
    b2n = frame[frame["protocol"] == "base2new"]
    assert set(b2n["classes"]) == {"base", "new"} and set(b2n["eval"]) == {f"{d}:{c}" for d in FS for c in ("base", "new")}


# ------------------------------------------------------------------------------------------ tables vs hand


def test_fewshot_table_mean_std_and_average_match_hand_computation(world, frame):
    from bench.report import render

    t = table(frame, protocol="fewshot", datasets=FS)
    assert t.columns == ["Caltech101", "DTD", "Average"]
    store = world["store"]
    saw_nonzero_std = False
    for label in (LP, COOP):
        for k in SHOTS:
            r = row(t, label, str(k))
            means = []
            for j, d in enumerate(FS):
                vals = by_hand(store, "fewshot", label, d, d, k)
                assert len(vals) == len(SEEDS)
                mean, std = statistics.fmean(vals), statistics.pstdev(vals)   # population std (ddof=0)
                cell = r.cells[j]
                assert cell.kind == "value"
                assert cell.mean == pytest.approx(mean, abs=1e-9) and cell.std == pytest.approx(std, abs=1e-9)
                assert cell.text() == f"{mean:.2f} ± {std:.2f}"
                saw_nonzero_std |= std > 0
                means.append(mean)
            assert r.cells[-1].mean == pytest.approx(statistics.fmean(means), abs=1e-9)
    assert saw_nonzero_std, "the test store should have a cell whose seeds differ (ddof matters)"
    zs = row(t, "zeroshot", "0")
    for j, d in enumerate(FS):
        (v,) = by_hand(store, "fewshot", "zeroshot", d, d)
        assert zs.cells[j].mean == pytest.approx(v) and zs.cells[j].text() == f"{v:.2f}"
    # --shots picks one shot count (zero-shot stays as the reference row)
    t2 = table(frame, protocol="fewshot", datasets=FS, shots=[2])
    assert sorted({r.index[1] for r in t2.rows}) == ["0", "2"]
    md = render([t2], "md")
    assert "| Method | Shots | Caltech101 | DTD | Average |" in md


def test_best_entry_per_column_is_marked_in_every_format(frame):
    from bench.report import render

    t = table(frame, protocol="fewshot", datasets=FS, shots=[2])
    for j in range(len(t.columns)):
        vals = [round(r.cells[j].mean, 2) for r in t.rows if r.cells[j].kind == "value"]
        best = [r for r in t.rows if r.cells[j].best]
        assert best and all(round(r.cells[j].mean, 2) == max(vals) for r in best)
    md, tex, text = render([t], "md"), render([t], "latex"), render([t], "csv")
    assert "**" in md and "\\textbf{" in tex and "\\toprule" in tex and "$\\pm$" in tex
    rows = list(csv.DictReader(text.splitlines()))
    assert {r["column"] for r in rows} == {"caltech101", "dtd", "average"}
    best = {(r["method"], r["shots"], r["column"]) for r in rows if r["best"] == "True"}
    assert best == {(r.index[0], r.index[1], t.column_keys[j]) for r in t.rows for j, c in enumerate(r.cells) if c.best}


def _md_cells(md: str) -> dict:
    """(row index..., column name) -> (mean, std or None) as printed in a markdown table."""
    import re

    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    head = [h.strip() for h in lines[0].strip("|").split("|")]
    n_idx = sum(1 for x in lines[1].strip("|").split("|") if x.startswith(":"))
    out = {}
    for ln in lines[2:]:
        parts = [p.strip().strip("*") for p in ln.strip("|").split("|")]
        for name, text in zip(head[n_idx:], parts[n_idx:]):
            m = re.fullmatch(r"(-?[0-9.]+)(?: ± ([0-9.]+))?", text)
            if m:
                out[tuple(parts[:n_idx]) + (name,)] = (float(m[1]), float(m[2]) if m[2] else None)
    return out


@pytest.mark.parametrize("protocol", ["fewshot", "base2new"])
def test_numeric_csv_and_json_round_trip_to_the_markdown_table(frame, protocol):
    from bench.report import Query, build_tables, render

    tables = build_tables(frame, Query(protocol=protocol, datasets=FS, seeds=SEEDS))
    md = _md_cells(render(tables, "md"))
    rows = list(csv.DictReader(render(tables, "csv").splitlines()))
    recs = json.loads(render(tables, "json"))["tables"][0]["records"]
    (t,) = tables
    names = dict(zip(t.column_keys, t.columns))
    idx = [n.lower() for n in t.index_names]
    from_csv = {tuple(r[i] for i in idx) + (names[r["column"]],): (float(r["mean"]), float(r["std"]) if r["std"] else None)
                for r in rows if r["mean"]}
    from_json = {tuple(r[i] for i in idx) + (names[r["column"]],): (r["mean"], r["std"])
                 for r in recs if r["mean"] is not None}
    assert len(md) >= 8 and set(md) == set(from_csv) == set(from_json)
    for key, (mean, std) in md.items():
        for m, s in (from_csv[key], from_json[key]):
            assert round(m, 2) == pytest.approx(mean) and (s is None) == (std is None)
            assert std is None or round(s, 2) == pytest.approx(std)
    seeds_found = {r["n_seeds"] for r in recs if r["kind"] == "value" and r["std"] is not None}
    assert seeds_found == {len(SEEDS)}
    assert {r["incomplete"] for r in recs} <= {True, False} and all(isinstance(r["best"], bool) for r in recs)


def test_base2new_h_per_dataset_and_h_of_averaged_b_and_n(world, frame):
    from bench.report import harmonic

    t = table(frame, protocol="base2new", datasets=FS)
    assert t.columns == ["Base", "New", "H"]
    store = world["store"]
    bs, ns = [], []
    for d, name in zip(FS, ["Caltech101", "DTD"]):
        b = statistics.fmean(by_hand(store, "base2new", COOP, d, f"{d}:base"))
        n = statistics.fmean(by_hand(store, "base2new", COOP, d, f"{d}:new"))
        r = row(t, name, COOP)
        assert r.cells[0].mean == pytest.approx(b) and r.cells[1].mean == pytest.approx(n)
        assert r.cells[2].mean == pytest.approx(2 * b * n / (b + n) if b + n else 0.0)
        bs.append(b)
        ns.append(n)
    avg = row(t, "Average over 2 datasets", COOP)
    B, N = statistics.fmean(bs), statistics.fmean(ns)
    assert avg.cells[0].mean == pytest.approx(B) and avg.cells[1].mean == pytest.approx(N)
    assert avg.cells[2].mean == pytest.approx(harmonic(B, N))        # H(B̄, N̄), not the mean of the H's
    assert t.rows[0].index[0] == "Average over 2 datasets"           # the average block comes first


def test_domain_shift_and_cross_dataset_averages_exclude_the_source(world, frame):
    store = world["store"]
    t = table(frame, protocol="domain_shift")
    assert t.columns == ["ImageNet", "ImageNet-V2", "ImageNet-Sketch", "ImageNet-A", "ImageNet-R", "Target avg"]
    r = row(t, "linear_probe")
    targets = [statistics.fmean(by_hand(store, "domain_shift", "linear_probe", "imagenet", e)) for e in TARGETS_DS]
    for j, v in enumerate(targets, start=1):
        assert r.cells[j].mean == pytest.approx(v)
    assert r.cells[-1].mean == pytest.approx(statistics.fmean(targets))

    t = table(frame, protocol="cross_dataset")
    assert t.columns[0] == "ImageNet" and t.columns[-1] == "Average" and len(t.columns) == 12
    r = row(t, COOP)
    evals = t.column_keys[1:-1]
    assert "imagenet" not in evals and len(evals) == 10
    means = [statistics.fmean(by_hand(store, "cross_dataset", COOP, "imagenet", e)) for e in evals]
    assert r.cells[-1].mean == pytest.approx(statistics.fmean(means))


# ------------------------------------------------------------------------------------------ incomplete grids


def test_incomplete_cells_and_averages_are_flagged_never_averaged(world, tmp_path):
    from bench.report import Query, build_tables, load_frame, render

    copy = tmp_path / "store"
    shutil.copytree(world["store"].root, copy)
    victim = [p for p in copy.rglob("*.json")
              if "linear_probe" in str(p) and "/caltech101/" in str(p) and p.name.startswith("shots2-seed2-")]
    assert len(victim) == 1
    victim[0].unlink()
    f = load_frame(copy)
    (t,) = build_tables(f, Query(protocol="fewshot", datasets=FS, seeds=SEEDS))
    r = row(t, LP, "2")
    assert r.cells[0].kind == "partial" and r.cells[0].text() == "1/2 seeds" and r.cells[0].mean is None
    assert r.cells[-1].kind == "incomplete" and r.cells[-1].mean is None
    assert r.cells[-1].text() == "incomplete (1/2 datasets)"
    assert not r.cells[0].best
    assert "1/2 seeds" in render([t], "md")
    # the protocol's default (3 seeds) flags every trained cell of this 2-seed store
    (t3,) = build_tables(f, Query(protocol="fewshot", datasets=FS))
    assert row(t3, COOP, "1").cells[0].text() == "2/3 seeds"
    assert row(t3, "zeroshot", "0").cells[0].kind == "value"          # seedless runs expect one run
    # a dataset without results: "—" and no average
    (t4,) = build_tables(f, Query(protocol="fewshot", datasets=FS + ["eurosat"], seeds=SEEDS))
    r4 = row(t4, COOP, "1")
    assert r4.cells[2].text() == "—" and r4.cells[-1].text() == "incomplete (2/3 datasets)"
    # a seed outside --seeds is left out, and said so
    (t5,) = build_tables(f, Query(protocol="fewshot", datasets=FS, seeds=[1]))
    assert row(t5, COOP, "1").cells[0].kind == "value"
    assert any("seeds 2" in n for n in t5.notes)
    # base-to-new: an incomplete dataset leaves the average row's B, N and H flagged
    (tb,) = build_tables(f, Query(protocol="base2new", datasets=FS + ["eurosat"], seeds=SEEDS))
    avg = row(tb, "Average over 3 datasets", COOP)
    assert [c.kind for c in avg.cells] == ["incomplete"] * 3


def test_duplicate_runs_keep_the_latest_and_say_so():
    from bench.report import Query, build_tables, tidy

    def res(v, when, data_root):  # the same label, dataset, shots and seed; another config hash
        cfg = {"method": "coop", "label": "coop", "protocol": "fewshot", "data_root": data_root,
               "backbone": {"arch": "tiny-test", "weights": "random"},
               "train": {"dataset": "dtd", "shots": 1, "seed": 1, "classes": "all"}}
        return {"status": "complete", "config": cfg, "finished_at": when,
                "metrics": {"dtd": {"top1": v, "per_class": {}, "macro_f1": v, "n_test": 4}}}

    f = tidy([res(10.0, "2024-01-01", "/a"), res(30.0, "2024-02-01", "/b")])
    assert len(f) == 1 and f["top1"].iloc[0] == 30.0 and f.attrs["duplicates"] == 1
    (t,) = build_tables(f, Query(protocol="fewshot", datasets=["dtd"], seeds=[1]))
    assert any("duplicate" in n for n in t.notes)


def test_unsupported_evaluations_show_na():
    from bench.report import Query, build_tables, tidy

    cfg = {"method": "linear_probe", "label": "linear_probe", "protocol": "base2new",
           "backbone": {"arch": "tiny-test", "weights": "random"},
           "train": {"dataset": "dtd", "shots": 16, "seed": 1, "classes": "base"}}
    metrics = {"dtd:base": {"top1": 50.0, "dataset": "dtd", "classes": "base"},
               "dtd:new": {"top1": None, "unsupported": "class names it was not trained on", "dataset": "dtd",
                           "classes": "new"}}
    f = tidy([{"status": "complete", "config": cfg, "metrics": metrics}])
    (t,) = build_tables(f, Query(protocol="base2new", datasets=["dtd"], seeds=[1]))
    r = row(t, "DTD", "linear_probe")
    assert [c.text() for c in r.cells] == ["50.00", "n/a", "—"]
    assert [c.kind for c in row(t, "Average over 1 datasets", "linear_probe").cells][1:] == ["incomplete"] * 2


# ------------------------------------------------------------------------------------------ paired test


def test_paired_test_unit_is_the_dataset_and_agrees_with_scipy(world, frame, capsys):
    import numpy as np
    from scipy import stats

    from bench.report import paired_test, paired_tests

    store = world["store"]
    for k in SHOTS:
        # by hand: each dataset's mean over seeds of each method is one pair
        xa = [np.mean(by_hand(store, "fewshot", LP, d, d, shots=k)) for d in FS]
        xb = [np.mean(by_hand(store, "fewshot", COOP, d, d, shots=k)) for d in FS]
        res = paired_test(frame, "linear_probe", "coop", protocol="fewshot", seeds=SEEDS, shots=[k])
        assert res["n"] == len(FS) == 2                                        # datasets, not (shots, seed) cells
        w = stats.wilcoxon(xa, xb)
        assert res["statistic"] == pytest.approx(w.statistic) and res["pvalue"] == pytest.approx(w.pvalue)
        assert res["mean_diff"] == pytest.approx(float(np.mean(np.subtract(xa, xb))))
        assert res["ci_low"] <= res["mean_diff"] <= res["ci_high"]
        tt = stats.ttest_rel(xa, xb)
        res_t = paired_test(frame, LP, COOP, protocol="fewshot", seeds=SEEDS, shots=[k], stat="ttest")
        assert res_t["statistic"] == pytest.approx(tt.statistic) and res_t["pvalue"] == pytest.approx(tt.pvalue)
    # zero-shot's single value per dataset is paired per dataset, at each shot count: n = datasets again
    zs = paired_tests(frame, "coop", "zeroshot", protocol="fewshot", seeds=SEEDS)
    assert [r["shots"] for r in zs] == SHOTS and all(r["n"] == len(FS) for r in zs)
    zs_vals = [by_hand(store, "fewshot", "zeroshot", d, d)[0] for d in FS]
    coop1 = [np.mean(by_hand(store, "fewshot", COOP, d, d, shots=1)) for d in FS]
    assert zs[0]["mean_diff"] == pytest.approx(float(np.mean(np.subtract(coop1, zs_vals))))
    # the bootstrap CI is scipy's for the mean of the per-dataset differences
    d4 = np.array([1.0, 2.5, -0.5, 3.0])
    from bench.report import _one_test

    r = _one_test("a", "b", d4, np.zeros(4), "wilcoxon", 0.05, 999)
    ref = stats.bootstrap((d4,), np.mean, n_resamples=999, method="BCa", random_state=np.random.default_rng(0))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    # base-to-new: one test for base, one for new, each over datasets
    b2n = paired_tests(frame, "coop", "zeroshot", protocol="base2new", seeds=SEEDS)
    assert sorted(r["classes"] for r in b2n) == ["base", "new"] and all(r["n"] == len(FS) for r in b2n)

    code = main(["table", "--results", str(store.root), "--seeds", "1,2", "--shots", "2", "--test", "linear_probe,coop"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Wilcoxon signed-rank" in out and "n pairs (datasets): 2" in out and "unit: a dataset" in out
    assert "mean difference (linear_probe[C=1] - coop[epochs=2])" in out and "bootstrap CI" in out
    code = main(["table", "--results", str(store.root), "--seeds", "1,2", "--test", "coop", "zeroshot",
                 "--stat", "ttest", "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and [t["n"] for t in data["tests"]] == [2, 2] and "paired t-test" in data["tests"][0]["test"]
    code = main(["table", "--results", str(store.root), "--test", "coop"])
    assert code == 2 and "exactly two" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ CLI + published numbers


def test_cli_table_formats_and_compare_paper(world, capsys, tmp_path):
    res = str(world["store"].root)
    for fmt in ("md", "csv", "latex"):
        code = main(["table", "--results", res, "--protocol", "fewshot", "--datasets", "caltech101,dtd",
                     "--seeds", "1,2", "--format", fmt])
        out = capsys.readouterr().out
        assert code == 0 and ("Caltech101" in out or "caltech101" in out)
    code = main(["table", "--results", res, "--protocol", "domain_shift", "--seeds", "1,2", "--compare", "paper"])
    out = capsys.readouterr().out
    assert code == 0
    assert "zeroshot (paper, ViT-B/16)" in out and "66.73†" in out and "RECALLED" in out
    assert "no differences are computed" in out                     # tiny-test is not the papers' backbone
    out_file = tmp_path / "t.md"
    assert main(["table", "--results", res, "--protocol", "base2new", "--seeds", "1,2", "--datasets", "caltech101,dtd",
                 "--out", str(out_file)]) == 0
    assert "Average over 2 datasets" in out_file.read_text()
    capsys.readouterr()
    assert main(["table", "--results", res, "--protocol", "nope"]) == 2
    assert "unknown protocol" in capsys.readouterr().err
    assert main(["table", "--results", str(tmp_path / "none")]) == 2
    assert "results store not found" in capsys.readouterr().err


def test_compare_paper_differences_when_the_backbone_matches():
    from bench.report import Query, build_tables, tidy

    evals = ["imagenet"] + TARGETS_DS
    cfg = {"method": "zeroshot", "label": "zeroshot", "protocol": "domain_shift",
           "backbone": {"arch": "ViT-B-16-quickgelu", "weights": "openai"},
           "train": {"dataset": "imagenet", "shots": 0, "seed": None, "classes": "all"}}
    ours = [66.0, 61.0, 46.0, 48.0, 74.0]
    f = tidy([{"status": "complete", "config": cfg,
               "metrics": {e: {"top1": v, "dataset": e, "classes": "all"} for e, v in zip(evals, ours)}}])
    (t,) = build_tables(f, Query(protocol="domain_shift", compare="paper"))
    paper = row(t, "zeroshot (paper, ViT-B/16)")
    delta = row(t, "Δ zeroshot − paper")
    assert paper.cells[0].mean == 66.73 and paper.cells[0].status == "RECALLED" and paper.cells[0].text() == "66.73†"
    assert delta.cells[0].mean == pytest.approx(66.0 - 66.73)
    assert delta.cells[-1].mean == pytest.approx(statistics.fmean(ours[1:]) - 57.18)


def test_reference_numbers_are_consistent_and_use_suite_names():
    from bench.data import get_spec
    from bench.report import load_reference

    ref = load_reference()
    assert set(ref["status"]) <= {"VERBATIM", "RECALLED", "DERIVED"} and (ref["source"] != "").all()
    assert set(ref["protocol"]) == {"fewshot", "base2new", "domain_shift", "cross_dataset"}
    assert set(ref["selection"]) <= {"", "test", "full_val", "unstated"}
    for key in set(ref["eval"]) - {"average", "target_average"}:
        get_spec(key)                                   # a suite dataset key (raises otherwise)
    assert set(ref["method"]) <= {"zeroshot", "linear_probe", "coop", "cocoop", "kgcoop", "maple", "prograd", "proda",
                                 "vpt_deep", "ivlp", "promptsrc", "tip_adapter", "tip_adapter_f", "clip_adapter",
                                 "taskres", "lp_pp", "clap", "zs_lp", "clip_lora"}
    primary = ref[(ref["variant"] == "") & (ref["seed"] == "")]
    # one published number per (protocol, table, backbone, method, shots, eval, metric)
    assert not primary.duplicated(["protocol", "table", "backbone", "method", "shots", "eval", "metric"]).any()
    b2n = primary[(primary["protocol"] == "base2new") & (primary["table"] == "per_dataset")]
    wide = b2n.pivot_table(index=["method", "eval"], columns="metric", values="value")
    assert len(wide) == 5 * 11
    h = 2 * wide["base"] * wide["new"] / (wide["base"] + wide["new"])
    assert (h - wide["H"]).abs().max() < 0.01                           # results/reference/README.md: every row, within 0.01
    avg = primary[(primary["protocol"] == "base2new") & (primary["table"] == "average")]
    for m in ("zeroshot", "coop", "cocoop", "kgcoop", "maple"):
        for metric in ("base", "new"):
            published = avg[(avg["method"] == m) & (avg["metric"] == metric)]["value"].item()
            assert wide.loc[m][metric].mean() == pytest.approx(published, abs=0.011)
    for protocol, n_targets in (("domain_shift", 4), ("cross_dataset", 10)):
        p = primary[(primary["protocol"] == protocol) & primary["table"].isin(["cocoop_table3", "cross_dataset"])]
        for m, g in p.groupby("method"):
            tg = g[~g["eval"].isin(["imagenet", "target_average"])]
            assert len(tg) == n_targets
            assert tg["value"].mean() == pytest.approx(g[g["eval"] == "target_average"]["value"].item(), abs=0.011)
    from bench.report import reference_dir

    assert (reference_dir() / "README.md").is_file()


# ------------------------------------------------------------------------------------------ figures


def test_plots_are_written_and_readable(world, tmp_path, capsys):
    from PIL import Image

    from bench.report.plots import COLUMN_WIDTH_IN, DPI, FULL_WIDTH_IN

    res = str(world["store"].root)
    out = tmp_path / "fig"
    assert main(["plot", "--results", res, "--protocol", "fewshot", "--datasets", "caltech101,dtd", "--seeds", "1,2",
                 "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert main(["plot", "--results", res, "--protocol", "base2new", "--datasets", "caltech101,dtd", "--seeds", "1,2",
                 "--out", str(out)]) == 0                                           # the old spelling still works
    assert "--out is deprecated" in capsys.readouterr().err
    printed += [str(out / n) for n in ("base2new.png", "base2new.pdf")]
    names = {"fewshot.png", "fewshot.pdf", "fewshot_average.png", "fewshot_average.pdf", "base2new.png", "base2new.pdf"}
    assert {Path(p).name for p in printed} == names
    for n in names:
        assert (out / n).stat().st_size > 5000
    assert (out / "fewshot.pdf").read_bytes()[:4] == b"%PDF"
    for n, width_in in (("fewshot.png", FULL_WIDTH_IN), ("base2new.png", FULL_WIDTH_IN),
                        ("fewshot_average.png", COLUMN_WIDTH_IN)):
        with Image.open(out / n) as im:
            w, h = im.size
            assert im.format == "PNG"
            assert w == round(width_in * DPI), (n, im.size)                             # paper width at 200 dpi
            assert h > 300
            assert len(im.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10   # not blank
    # an incomplete selection is drawn without the incomplete points, and said so
    part = tmp_path / "part"
    shutil.copytree(res, part)
    for p in part.rglob("*.json"):
        c = json.loads(p.read_text()).get("config", {})
        if c.get("label") == COOP and c["train"] == {"dataset": "dtd", "shots": 2, "seed": 2, "classes": "all"}:
            p.unlink()
    assert main(["plot", "--results", str(part), "--protocol", "fewshot", "--datasets", "caltech101,dtd",
                 "--seeds", "1,2", "--out-dir", str(tmp_path / "fig3")]) == 0
    assert "skipped incomplete point: coop[epochs=2] dtd 2 shots (1/2 seeds)" in capsys.readouterr().err


def test_plot_refuses_a_figure_with_only_zero_shot(world, tmp_path, capsys):
    res = str(world["store"].root)
    for protocol in ("fewshot", "base2new"):  # the store has seeds 1,2; these figures ask for 1,2,3
        code = main(["plot", "--results", res, "--protocol", protocol, "--datasets", "caltech101,dtd",
                     "--seeds", "1,2,3", "--out-dir", str(tmp_path)])
        err = capsys.readouterr().err
        assert code != 0 and "nothing but zero-shot" in err and "pass --seeds" in err and "nothing to plot" in err
    assert not list(tmp_path.iterdir())


def test_method_colours_and_markers_are_fixed_per_method_across_figures(world, tmp_path):
    """The same method (label) gets the same colour and marker in every figure, whatever the other methods are;
    a method without overrides gets its class's colour and marker."""
    from matplotlib.colors import to_hex

    from bench.report import plots
    from bench.registry import get_method
    from bench.report import Query, load_frame, method_look

    looks: dict = {}
    real_save = plots._save

    def spy(fig, base, formats):
        for ax in fig.axes:
            for line in ax.get_lines():
                if line.get_gid():
                    looks.setdefault(line.get_gid(), set()).add((to_hex(line.get_color()), line.get_marker()))
        return real_save(fig, base, ("png",))

    frame = load_frame(world["store"].root)
    plots._save = spy
    try:
        for methods in (["zeroshot", "linear_probe", "coop"], ["coop", "zeroshot"], ["coop", "linear_probe"]):
            plots.plot_fewshot(frame, Query(methods=methods, datasets=FS, seeds=SEEDS), tmp_path)
    finally:
        plots._save = real_save
    assert set(looks) == {"zeroshot", LP, COOP}
    for label, seen in looks.items():
        assert seen == {(method_look(label)["color"].lower(), method_look(label)["marker"])}, label
    assert looks["zeroshot"] == {(get_method("zeroshot").color.lower(), "*")}
    assert len({c for s in looks.values() for c, _ in s}) == 3                  # three methods, three colours
    for name in ("coop", "linear_probe", "kgcoop"):
        cls = get_method(name)
        assert method_look(name) == {"display_name": cls.display_name, "color": cls.color, "marker": cls.marker,
                                     "linestyle": cls.linestyle, "order": cls.order}


def test_grid_shape_and_y_limits():
    from bench.report.plots import grid_shape, y_limits

    assert grid_shape(5) == (2, 3) and grid_shape(12) == (3, 4) and grid_shape(3) == (1, 3) and grid_shape(8) == (2, 4)
    for n in range(1, 16):
        rows, cols = grid_shape(n)
        assert rows * cols >= n and rows * cols - n < cols
    lo, hi = y_limits(80.0, 99.7)
    assert hi == pytest.approx(100.7) and lo < 80.0 and y_limits(0.5, 3.0)[0] == 0.0   # room for a marker at 99.7
    assert y_limits(50.0, 90.0)[1] == pytest.approx(93.2)


def test_plot_series_average_band_is_std_over_seeds_of_per_seed_averages(world, frame):
    import numpy as np

    from bench.report.plots import fewshot_series, xpos
    from bench.report import Query

    assert [xpos(k) for k in (0, 1, 2, 4, 8, 16)] == [0, 1, 2, 3, 4, 5]
    (d,) = fewshot_series(frame, Query(protocol="fewshot", datasets=FS, seeds=SEEDS)).values()
    pts = dict((k, (m, s)) for k, m, s in d["series"][COOP]["points"]["average"])
    store = world["store"]
    per_seed = []
    for s in SEEDS:
        per_seed.append(statistics.fmean(
            r["metrics"][r["config"]["train"]["dataset"]]["top1"] for r in stored_jsons(store)
            if r["config"]["protocol"] == "fewshot" and r["config"]["label"] == COOP
            and r["config"]["train"]["shots"] == 2 and r["config"]["train"]["seed"] == s))
    assert pts[2][0] == pytest.approx(np.mean(per_seed)) and pts[2][1] == pytest.approx(np.std(per_seed))
    assert d["series"]["zeroshot"]["seedless"] is True


def test_bench_help_stays_light():
    code = ("import sys, bench.report, bench.report.plots; "
            "assert not {'pandas', 'matplotlib', 'seaborn', 'scipy'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "bench.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "table" in out.stdout and "plot" in out.stdout
