"""The published numbers' `selection` column (how a published number chose its hyperparameters) and its table
flags, and the Tip-Adapter exp.log numbers of results/reference/fewshot_adapters.csv. Fast: no runs, no models."""

from __future__ import annotations

import statistics

import pytest

from bench.errors import BenchError
from bench.report import Query, build_tables, load_reference, render, tidy
from bench.report.cells import SELECTION_MARKS, Cell

ELEVEN = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
          "sun397", "dtd", "eurosat", "ucf101"]
HEADER = "protocol,table,backbone,method,paper_method,variant,train_dataset,shots,seed,eval,paper_dataset,metric,value"


def _records(method, values: dict, shots=16, arch="RN50-quickgelu", seeds=(1, 2, 3)):
    """Stored-run records of one method: {dataset: accuracy}, the same on every seed."""
    out = []
    for seed in seeds:
        for ds, v in values.items():
            cfg = {"method": method, "label": method, "protocol": "fewshot",
                   "backbone": {"arch": arch, "weights": "openai"},
                   "train": {"dataset": ds, "shots": shots, "seed": seed, "classes": "all"}}
            out.append({"status": "complete", "config": cfg,
                        "metrics": {ds: {"top1": v, "dataset": ds, "classes": "all"}}})
    return out


def _paper_row(t, method):
    hits = [r for r in t.rows if r.kind == "paper" and r.index[0].startswith(f"{method} (paper")]
    assert len(hits) == 1, [r.index for r in t.rows]
    return hits[0]


def test_every_file_has_the_selection_column_and_an_old_file_reads_as_empty(tmp_path):
    from bench.report import reference_dir

    for p in sorted(reference_dir().glob("*.csv")):
        assert p.read_text().splitlines()[0].split(",")[13:16] == ["status", "selection", "source"], p.name
    ref = load_reference()
    assert set(ref["selection"]) == {"", "test", "full_val", "unstated"}
    # a file without the column (or a yaml list without the key): "" = selected as the suite does
    (tmp_path / "old.csv").write_text(HEADER + ",status,source\n"
                                      "fewshot,t,RN50,coop,CoOp,,dtd,16,,dtd,DTD,top1,63.58,VERBATIM,somewhere\n")
    (tmp_path / "more.yaml").write_text("- {protocol: fewshot, table: t, backbone: RN50, method: coop, paper_method: "
                                        "CoOp, variant: '', train_dataset: eurosat, shots: 16, seed: '', eval: "
                                        "eurosat, paper_dataset: EuroSAT, metric: top1, value: 1.5, status: RECALLED,"
                                        " selection: test, source: here}\n")
    old = load_reference(tmp_path)
    assert list(old["selection"]) == ["", "test"] and list(old["value"]) == [63.58, 1.5]
    (tmp_path / "more.yaml").unlink()
    (tmp_path / "bad.csv").write_text(HEADER + ",status,selection,source\n"
                                      "fewshot,t,RN50,coop,CoOp,,dtd,16,,dtd,DTD,top1,1,VERBATIM,val,x\n")
    with pytest.raises(BenchError, match="unknown selection value"):
        load_reference(tmp_path)


def test_tip_adapter_exp_log_numbers():
    ref = load_reference()
    tip = ref[ref["table"] == "tip_adapter_exp_log"]
    per = tip[tip["eval"] != "average"]
    assert (per["status"] == "VERBATIM").all() and (tip[tip["eval"] == "average"]["status"] == "DERIVED").all()
    assert (per["backbone"] == "RN50").all() and set(per["eval"]) == set(ELEVEN)
    for m in ("tip_adapter", "tip_adapter_f", "clip_adapter"):
        g = per[per["method"] == m]
        assert len(g) == 55 and sorted(set(g["shots"])) == [1, 2, 4, 8, 16]
        for k in (1, 2, 4, 8, 16):          # the DERIVED averages are the means of the 11 VERBATIM values
            avg = tip[(tip["method"] == m) & (tip["eval"] == "average") & (tip["shots"] == k)]["value"].item()
            assert avg == pytest.approx(statistics.fmean(g[g["shots"] == k]["value"]), abs=0.006)
    zs = per[per["method"] == "zeroshot"]
    assert len(zs) == 11 and (zs["shots"] == 0).all()
    # ImageNet's zero-shot is the 7-template ensemble: a variant (the suite's default is one template)
    assert set(zs[zs["variant"] != ""]["eval"]) == {"imagenet"}

    def one(m, ds, k):
        return per[(per["method"] == m) & (per["eval"] == ds) & (per["shots"] == k)].iloc[0]

    # spot checks against exp.log (Tip-Adapter d0e2d6f, exp.log lines 1-86)
    assert one("tip_adapter", "imagenet", 16)["value"] == 62.01
    assert one("tip_adapter_f", "fgvc_aircraft", 1)["value"] == 20.22
    assert one("clip_adapter", "stanford_cars", 4)["value"] == 62.45
    assert one("zeroshot", "eurosat", 0)["value"] == 37.52
    # the references' own selection: Tip-F always test; Tip on ImageNet test, elsewhere the full validation split
    assert (per[per["method"] == "tip_adapter_f"]["selection"] == "test").all()
    t = per[per["method"] == "tip_adapter"]
    assert (t[t["eval"] == "imagenet"]["selection"] == "test").all()
    assert (t[t["eval"] != "imagenet"]["selection"] == "full_val").all()
    assert (zs["selection"] == "").all()


def test_cell_marks_combine_status_and_selection():
    assert Cell("paper", mean=70.32, status="DERIVED", selection="test").text() == "70.32‡¶"
    assert Cell("paper", mean=60.93, status="VERBATIM", selection="full_val").text() == "60.93‖"
    assert Cell("paper", mean=1.0, status="RECALLED", selection="unstated").text() == "1.00†"
    assert Cell("paper", mean=1.0, status="VERBATIM").text() == "1.00"
    assert Cell("paper", mean=1.0, status="RECALLED", selection="test").text(latex=True) == "1.00$^\\dagger$$^\\P$"
    assert Cell("paper", mean=1.0, selection="full_val").text(latex=True) == "1.00$^\\|$"
    assert set(SELECTION_MARKS.values()).isdisjoint({"†", "‡", "§", "*"})


def test_compare_paper_flags_test_and_full_val_selection():
    ours = {"imagenet": 61.0, "dtd": 60.0}
    f = tidy(_records("tip_adapter", ours) + _records("tip_adapter_f", ours))
    (t,) = build_tables(f, Query(protocol="fewshot", compare="paper", datasets=["imagenet", "dtd"]))
    tip = _paper_row(t, "tip_adapter")
    assert tip.index[0] == "tip_adapter (paper, RN50)"
    assert [c.text() for c in tip.cells] == ["62.01¶", "60.93‖", ""]    # the 11-dataset average: not this table's
    assert [c.selection for c in tip.cells[:2]] == ["test", "full_val"]
    tipf = _paper_row(t, "tip_adapter_f")
    assert [c.text() for c in tipf.cells[:2]] == ["65.51¶", "66.55¶"]
    delta = [r for r in t.rows if r.kind == "diff" and r.index[0] == "Δ tip_adapter − paper"][0]
    assert delta.cells[0].mean == pytest.approx(61.0 - 62.01)
    notes = "\n".join(t.notes)
    assert "¶ the published number chose hyperparameters or the epoch on TEST images" in notes
    assert "‖ the published number chose hyperparameters on the FULL validation split" in notes
    md = render([t], "md")
    assert "*62.01¶*" in md and "- ¶ " in md and "- ‖ " in md
    assert "62.01$^\\P$" in render([t], "latex")
    recs = [r for r in __import__("json").loads(render([t], "json"))["tables"][0]["records"]
            if r["row_kind"] == "paper" and r["column"] == "imagenet" and r["method"].startswith("tip_adapter (")]
    assert recs[0]["selection"] == "test" and recs[0]["status"] == "VERBATIM"
    assert "selection" in render([t], "csv").splitlines()[0].split(",")


def test_published_average_is_compared_only_over_the_eleven_datasets():
    values = {d: 70.0 for d in ELEVEN}
    f = tidy(_records("tip_adapter", values, seeds=(1,)))
    (t,) = build_tables(f, Query(protocol="fewshot", compare="paper", seeds=[1]))
    tip = _paper_row(t, "tip_adapter")
    assert t.column_keys[-1] == "average" and tip.cells[-1].text() == "70.32‡¶"
    delta = [r for r in t.rows if r.kind == "diff"][0]
    assert delta.cells[-1].mean == pytest.approx(70.0 - 70.32)
    assert "‡ DERIVED" in "\n".join(t.notes)


def test_unflagged_rows_carry_no_selection_note():
    f = tidy(_records("zeroshot", {"dtd": 40.0, "eurosat": 30.0}, shots=0, seeds=(None,)))
    (t,) = build_tables(f, Query(protocol="fewshot", compare="paper", datasets=["dtd", "eurosat"]))
    zs = _paper_row(t, "zeroshot")
    assert [c.text() for c in zs.cells[:2]] == ["42.20", "37.52"]      # Tip-Adapter exp.log's zero-shot column
    assert not any(n.startswith(("¶", "‖")) for n in t.notes)


def test_one_primary_number_per_cell_and_quoted_clip_lora_rows():
    ref = load_reference()
    primary = ref[(ref["variant"] == "") & (ref["seed"] == "")]
    # add_paper_rows takes the first match: a (method, backbone, shots, eval) cell must have one primary number,
    # whatever table it comes from
    assert not primary.duplicated(["protocol", "backbone", "method", "shots", "eval", "metric"]).any()
    lora = ref[ref["method"] == "clip_lora"]
    assert (lora["backbone"] == "ViT-B/16").all() and (lora["selection"] == "").all()
    assert lora[(lora["variant"] == "") & (lora["eval"] == "oxford_flowers")]["value"].tolist() == [98.0]
    assert set(lora[lora["eval"] == "average"]["variant"]) == {"sd_lora_readme"}   # third-party: not compared
    # the adapter lineage's suite names (results/reference/README.md, name mapping)
    assert {"tip_adapter", "tip_adapter_f", "clip_adapter", "clip_lora"} <= set(ref["method"])
