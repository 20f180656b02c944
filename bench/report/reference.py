"""Published numbers (``results/reference/*.csv``) and the '(paper)' / 'Δ' rows of ``bench table --compare paper``."""

from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError
from bench.report.cells import SELECTION_MARKS, Cell, Row, Table

STATUS_NOTES = {
    "RECALLED": "† RECALLED: the paper's number as commonly quoted, not seen verbatim in a repository file "
                "(results/reference/README.md); check it against the PDF.",
    "DERIVED": "‡ DERIVED: computed here from VERBATIM numbers (e.g. the mean of the author's per-seed values).",
}
# the column `selection`: how the published number chose its hyperparameters (or epoch); "" = as this suite does
# (few-shot validation, or no search), "unstated" = not documented by the authors (unmarked)
SELECTIONS = ("", "test", "full_val", "unstated")
SELECTION_NOTES = {
    "test": f"{SELECTION_MARKS['test']} the published number chose hyperparameters or the epoch on TEST images "
            "(e.g. Tip-Adapter's alpha/beta on ImageNet, every Tip-Adapter-F epoch); this suite selects on the "
            "few-shot validation split, so the published number is optimistic against it (results/reference/README.md, "
            "column selection).",
    "full_val": f"{SELECTION_MARKS['full_val']} the published number chose hyperparameters on the FULL validation "
                "split (e.g. Tip-Adapter's alpha/beta grid), not on a few-shot one as this suite does "
                "(results/reference/README.md, column selection).",
}


def reference_dir() -> Path:
    """The published numbers: results/reference/ in a checkout, shipped inside the package when installed."""
    from bench.paths import resource_dir

    return resource_dir("reference")


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
    ref = pd.concat(frames, ignore_index=True)
    if "selection" not in ref.columns:  # files written before the column existed: as the suite
        ref["selection"] = ""
    ref = ref.fillna("")
    ref["value"] = ref["value"].astype(float)
    ref["shots"] = ref["shots"].astype(int)
    for c in ("variant", "seed", "selection"):
        ref[c] = ref[c].astype(str)
    bad = sorted(set(ref["selection"]) - set(SELECTIONS))
    if bad:
        raise BenchError(f"published numbers in {folder}: unknown selection value(s) {', '.join(map(repr, bad))}; "
                         f"known: {', '.join(map(repr, SELECTIONS))}")
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
    statuses, selections = set(), set()
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
            if key == "average" and protocol == "fewshot" and not _eleven_datasets(t):
                hit = hit.iloc[:0]  # the published averages are over the 11 datasets; this table's is not
            if hit.empty:
                paper_cells.append(Cell("empty"))
                diff_cells.append(Cell("empty"))
                continue
            rec = hit.iloc[0]
            statuses.add(rec["status"])
            selections.add(rec["selection"])
            paper_cells.append(Cell("paper", mean=float(rec["value"]), status=rec["status"],
                                    selection=rec["selection"]))
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
    covered = [t.columns[j] for j in range(len(t.columns))
               if any(r.kind == "paper" and r.cells[j].kind == "paper" for r in new_rows)]
    if 0 < len(covered) < len(t.columns):
        t.notes.append(f"--compare paper: published {shown_bb} numbers exist here only for {', '.join(covered)}; "
                       "the other columns have none to compare with")
    if not matched:
        t.notes.append(f"published numbers are for {shown_bb} (openai weights); this table's backbone is "
                       f"{arch} ({weights}), so no differences are computed")
    else:
        t.notes.append("Δ = this suite's mean − the published number (in points)")
    for s in sorted(statuses):
        if s in STATUS_NOTES:
            t.notes.append(STATUS_NOTES[s])
    for s in SELECTION_NOTES:
        if s in selections:
            t.notes.append(SELECTION_NOTES[s])
    t.notes.append(f"published numbers: {reference_dir()} (see its README.md for sources)")


def _eleven_datasets(t: Table) -> bool:
    """Whether a few-shot table's dataset columns are exactly the 11 datasets of the published averages (the
    CoOp papers' group): a published "Average over 11 datasets" is compared only with the same average."""
    from bench.data import list_specs

    return {k for k in t.column_keys if k != "average"} == {s.key for s in list_specs("coop11")}
