"""What a table or figure shows (:class:`Query`) and the defaults read from the store when a flag is not given.

The command line (``bench.cli.table`` / ``bench.cli.plot``) builds a :class:`Query` from its flags; tables and
figures select through :func:`bench.report.frame.select`. :func:`store_grid` says what a store holds (dataset
group, backbones, seeds, datasets) so that ``bench status`` / ``table`` / ``plot`` can start from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import BenchError


@dataclass
class Query:
    protocol: str = "fewshot"
    methods: list[str] | None = None
    datasets: list[str] | None = None
    shots: list[int] | None = None
    seeds: list[int] | None = None
    group: str = "coop11"
    backbone: str | None = None
    metric: str = "top1"
    compare: str | None = None


def csv_list(text) -> list[str] | None:
    """``"a, b"`` (or a list of such strings) -> ``["a", "b"]``; None when empty. Commas inside brackets do not
    split, so a label with several overrides stays whole: ``coop[csc=True,n_ctx=4],cocoop`` -> two items."""
    if not text:
        return None
    items = []
    for t in text if isinstance(text, list) else [text]:
        depth, cur = 0, ""
        for ch in t:
            depth += (ch == "[") - (ch == "]")
            if ch == "," and depth <= 0:
                items.append(cur.strip())
                cur, depth = "", 0
            else:
                cur += ch
        items.append(cur.strip())
    return [x for x in items if x] or None


def expected_datasets(protocol: str, group: str, datasets: list[str] | None) -> list[str]:
    """The datasets a table or figure of ``protocol`` has columns (panels, sources) for."""
    from bench.protocols import default_datasets

    ds = list(datasets) if datasets else default_datasets(protocol, group)
    if not ds:
        raise BenchError(f"no datasets for protocol {protocol} in group {group!r}; pass --datasets")
    return ds


def store_grid(results: str | None = None, protocol: str | None = None) -> dict:
    """What a store holds (of one protocol, when given): ``preset`` ('mini' when only the miniature world's
    datasets, 'coop11' otherwise, None when empty), ``backbones`` [(arch, pretrained), ...], ``seeds`` and ``shots`` (sorted,
    seedless runs aside), ``datasets`` (train datasets, sorted) and ``methods`` (labels, sorted). For
    ``bench status`` / ``table`` / ``plot`` without grid flags."""
    from bench.data import get_spec
    from bench.store import Store

    store = Store(results) if results else Store()
    out = {"preset": None, "backbones": [], "seeds": [], "shots": [], "datasets": [], "methods": []}
    if not store.root.is_dir():
        return out
    groups, backbones, seeds, shots, datasets, methods = set(), set(), set(), set(), set(), set()
    for r in store.all_results():
        c = r.get("config") or {}
        if protocol and c.get("protocol") != protocol:
            continue
        train = c.get("train") or {}
        try:
            groups.add(get_spec(train["dataset"]).group)
        except Exception:  # noqa: BLE001 - hand-made results of unknown datasets
            groups.add("other")
        bb = c.get("backbone") or {}
        backbones.add((str(bb.get("arch")), str(bb.get("pretrained", bb.get("weights")))))
        if train.get("seed") is not None:
            seeds.add(int(train["seed"]))
        if train.get("shots"):
            shots.add(int(train["shots"]))
        if train.get("dataset"):
            datasets.add(train["dataset"])
        methods.add(c.get("label") or c.get("method"))
    if groups:
        out["preset"] = "mini" if groups <= {"mini", "mini_variant"} else "coop11"
    out.update(backbones=sorted(backbones), seeds=sorted(seeds), shots=sorted(shots), datasets=sorted(datasets),
               methods=sorted(m for m in methods if m))
    return out


def infer_preset(results: str | None, protocol: str | None = None) -> str | None:
    """'mini' when the store holds only results of the miniature world's datasets, 'coop11' when it holds
    results of other datasets, None when it is empty (table/plot/status without --preset)."""
    return store_grid(results, protocol)["preset"]
