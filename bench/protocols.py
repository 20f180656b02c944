"""The four evaluation protocols as data, and their expansion into a grid of fully resolved run configs.

A run trains once (or not at all, for zero-shot) and is evaluated on one or more test sets:

| protocol      | trains on                          | evaluates on                                          |
|---------------|------------------------------------|-------------------------------------------------------|
| fewshot       | each dataset, K shots, all classes | its test split                                        |
| base2new      | each dataset, 16 shots, base half  | base classes and new classes of its test split        |
| domain_shift  | the source (ImageNet), 16 shots    | the source and its shifted variants (V2, Sketch, A, R)|
| cross_dataset | the source (ImageNet), 16 shots    | the source and every other dataset of the group       |
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import BenchError
from bench.store import method_label

# Dataset groups: the CoOp papers' 11 datasets, and the project's miniature world.
GROUPS = ("coop11", "mini")


@dataclass(frozen=True)
class Protocol:
    name: str
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    train_classes: str          # "all" | "base"
    description: str


PROTOCOLS = {
    p.name: p
    for p in [
        Protocol("fewshot", (1, 2, 4, 8, 16), (1, 2, 3), "all", "K-shot training on all classes, test on all classes"),
        Protocol("base2new", (16,), (1, 2, 3), "base", "16 shots on the base half; test on base and on new classes"),
        Protocol("domain_shift", (16,), (1, 2, 3), "all", "train on the source, test on it and its shifted variants"),
        Protocol("cross_dataset", (16,), (1, 2, 3), "all", "train on the source, test on every other dataset"),
    ]
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise BenchError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def group_datasets(group: str) -> list[str]:
    from bench.data import list_specs

    return [s.key for s in list_specs(group)]


def sources(group: str) -> list[str]:
    """Datasets of a group that have shifted variants (ImageNet; the miniature world's source)."""
    from bench.data import list_specs

    return [s.key for s in list_specs(group) if s.domain_shift_targets]


def default_datasets(protocol: str, group: str) -> list[str]:
    if protocol in ("domain_shift", "cross_dataset"):
        return sources(group)[:1]
    return group_datasets(group)


def evals_for(protocol: str, dataset: str, group: str) -> list[dict]:
    """The test sets a run of ``protocol`` trained on ``dataset`` is evaluated on."""
    from bench.data import get_spec

    if protocol == "base2new":
        return [{"dataset": dataset, "classes": "base"}, {"dataset": dataset, "classes": "new"}]
    if protocol == "domain_shift":
        targets = list(get_spec(dataset).domain_shift_targets)
        if not targets:
            raise BenchError(f"dataset {dataset} has no domain-shift targets; sources: {', '.join(sources(group))}")
        return [{"dataset": t, "classes": "all"} for t in [dataset, *targets]]
    if protocol == "cross_dataset":
        others = [d for d in group_datasets(group) if d != dataset]
        return [{"dataset": t, "classes": "all"} for t in [dataset, *others]]
    return [{"dataset": dataset, "classes": "all"}]


def parse_int_list(text: str, what: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; one-line error otherwise (seeds must fit numpy's and torch's 32-bit seed range)."""
    parts = str(text).split(",")
    if any(x.strip() == "" for x in parts) and str(text).strip() != "":
        raise BenchError(f"bad --{what} {text!r}: empty entry in the list (expected e.g. 1,2,4)")
    try:
        values = [int(x) for x in parts if x.strip() != ""]
    except ValueError:
        raise BenchError(f"bad --{what} {text!r}: expected comma-separated integers, e.g. 1,2,4,8,16") from None
    if not values:
        raise BenchError(f"bad --{what} {text!r}: empty list")
    if what == "shots" and any(v < 1 for v in values):
        raise BenchError(f"bad --shots {text!r}: shot counts must be >= 1")
    if what == "seeds" and any(v < 0 or v >= 2**32 for v in values):
        raise BenchError(f"bad --seeds {text!r}: seeds must be in [0, 2**32 - 1]")
    return sorted(set(values), key=values.index)


def split_pair(pair: str, flag: str, example: str) -> tuple[str, str]:
    """'KEY=VALUE' -> ('KEY', 'VALUE') (the key stripped); one-line error naming ``flag`` otherwise."""
    key, eq, value = pair.partition("=")
    if not eq or not key.strip():
        raise BenchError(f"bad {flag} {pair!r}: expected KEY=VALUE, e.g. {flag} {example}")
    return key.strip(), value


def parse_value(text: str, empty=None, scalar: bool = True):
    """The one KEY=VALUE value parser (``--set``, ``--slurm``): the text read as YAML (``4`` -> 4, ``0.002``,
    ``true``, ``null``, ``'quoted'``; YAML 1.1 keeps ``1e-3`` as text, which a declared float converts); text that
    is not valid YAML stays text; an empty value is ``empty``. ``scalar``: a YAML list or mapping stays its text
    (hyperparameters are scalars)."""
    import yaml

    if not text.strip():
        return empty
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if scalar and not (isinstance(parsed, (int, float, bool, str)) or parsed is None):
        return text
    return parsed


def check_hparams(method: str, hparams: dict) -> dict:
    """``hparams`` converted to the method's declared types (``Method.hparam_spec``) and range-checked.

    Raises a one-line BenchError naming the key and the allowed values; undeclared keys pass unchanged.
    """
    from bench.registry import get_method

    spec = get_method(method).hparam_spec
    return {k: spec[k].convert(k, v, f" of method {method}") if k in spec else v for k, v in hparams.items()}


def check_undeclared(method: str, overrides: dict, defaults: dict) -> None:
    """Overrides of hyperparameters the method declares no ``hparam_spec`` for: the type is inferred from the
    default (an integer, a number, true/false) and a value of another type is refused in one line, at grid
    build rather than inside the run. The value itself is kept as given (it is part of the run's identity)."""
    from bench.method import Param
    from bench.registry import get_method

    spec = get_method(method).hparam_spec
    for key, value in overrides.items():
        default = defaults.get(key)
        if key in spec or default is None or type(default) not in (bool, int, float):
            continue
        Param(type(default)).convert(key, value, f" of method {method} (its default is {default!r})")


def parse_sweep(pairs: list[str] | None) -> list[dict]:
    """``--set`` values with commas are sweeps: ['n_ctx=2,4', 'lr=0.1'] -> [{'n_ctx': 2, 'lr': 0.1},
    {'n_ctx': 4, 'lr': 0.1}] (the cartesian product over swept keys, in the order given). A value that must hold
    a comma is quoted YAML-style: --set 'ctx_init="a, b"'. Each resulting set is one labelled set of runs.
    A key may be scoped to one method (``coop.epochs=2``): see :func:`overrides_for`."""
    import itertools

    import yaml

    keys, choices = [], []
    for pair in pairs or []:
        key, value = split_pair(pair, "--set", "n_ctx=4")
        stripped = value.strip()
        quoted = len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\""
        parts = [value] if quoted or "," not in value else value.split(",")
        if len(parts) > 1 and any(not p.strip() for p in parts):
            raise BenchError(f"bad --set {pair!r}: empty value in the sweep (values are comma-separated; "
                             f"quote a value that holds a comma: --set '{key}=\"a, b\"')")
        values = []
        for p in parts:
            v = parse_value(p.strip() if len(parts) > 1 else p, empty="")
            if isinstance(v, str) and quoted:
                try:
                    v = str(yaml.safe_load(stripped))
                except yaml.YAMLError:
                    pass
            values.append(v)
        if key in keys:
            choices[keys.index(key)] = values  # the last --set of a key wins, as for a plain override
        else:
            keys.append(key)
            choices.append(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*choices)] or [{}]


def overrides_for(method: str, overrides: dict, methods: list[str]) -> dict:
    """The overrides that apply to ``method``: every unscoped key, and the keys scoped to it
    (``coop.epochs=2`` -> ``epochs=2`` for coop only; a scoped key wins over the same unscoped key).
    A scope that names no method of the grid is refused in one line."""
    plain, scoped = {}, {}
    for key, value in overrides.items():
        scope, dot, name = key.partition(".")
        if not dot:
            plain[key] = value
            continue
        if scope not in methods:
            raise BenchError(f"bad --set {key}={value}: {scope!r} is not a method of this grid "
                             f"({', '.join(methods)}); scope a key as METHOD.KEY=VALUE")
        if scope == method:
            scoped[name] = value
    return {**plain, **scoped}


def normalise_overrides(method: str, overrides: dict, defaults: dict) -> dict:
    """``overrides`` without those equal to the resolved default (``--set epochs=50`` where 50 is the default):
    such a run is the default run, with its label and hash, not a new label that redoes identical work."""
    declared = check_hparams(method, {k: v for k, v in defaults.items() if k in overrides})
    given = check_hparams(method, {k: v for k, v in overrides.items() if k in defaults})
    same = {k for k in given if type(given[k]) is type(declared[k]) and given[k] == declared[k]}
    return {k: v for k, v in overrides.items() if k not in same}


def _n_views(views: int | None, epochs) -> int | None:
    return min(views, epochs) if (views and epochs) else epochs


def data_identity(datasets, data_root: str | None) -> dict | None:
    """``{dataset: fingerprint}`` of every dataset a run reads (:func:`bench.data.data_fingerprint`), or None
    when no data root is given or one of them cannot be read there: such a config hashes as before fingerprints
    existed (its results stored by that code are found; `bench run` refuses missing data before any work)."""
    if not data_root:
        return None
    from bench.data import data_fingerprint

    try:
        return {d: data_fingerprint(d, data_root) for d in datasets}
    except BenchError:
        return None


def expand(
    protocol: str,
    methods: list[str],
    *,
    datasets: list[str] | None = None,
    shots: list[int] | None = None,
    seeds: list[int] | None = None,
    overrides: dict | None = None,
    backbone: dict,
    group: str = "coop11",
    precision: str = "auto",
    views: int | None = None,
    data_root: str | None = None,
    default_views: int | None = None,
) -> list[dict]:
    """The grid of run configs (deduplicated, each complete enough to run on its own).

    ``views``: cached augmented views per training image (None: ``default_views``, else one per epoch). Views
    change the numbers, so they are part of a run's identity, and of its label where they differ from the
    default (``coop[views=8]``): `bench status`, `run` and `table` then agree on what is done.
    Every config records ``code``, the method's code version (:func:`bench.registry.code_version`), and, with a
    readable ``data_root``, ``data``: the fingerprint of each dataset it reads (:func:`data_identity`).
    """
    from bench.data import get_spec
    from bench.method import check_augmentation
    from bench.registry import code_version, get_method

    proto = get_protocol(protocol)
    datasets = datasets or default_datasets(protocol, group)
    for d in datasets:
        get_spec(d)
    shots = shots or list(proto.shots)
    seeds = seeds or list(proto.seeds)
    if views is not None and (isinstance(views, bool) or not isinstance(views, int) or views < 1):
        raise BenchError(f"bad --views {views!r}: the number of cached augmented views must be an integer >= 1")
    given = overrides or {}
    for name in methods:
        cls = get_method(name)
        if protocol not in cls.protocols:
            raise BenchError(f"method {name} does not support protocol {protocol} "
                             f"(supports: {', '.join(cls.protocols)})")
        check_hparams(name, overrides_for(name, given, methods))  # bad types and ranges refused before any work
    grid, seen = [], set()
    for name in methods:
        cls = get_method(name)
        scoped = overrides_for(name, given, methods)
        for dataset in datasets:
            evals = evals_for(protocol, dataset, group)
            # the hand-crafted prompt of every dataset the run touches is part of its identity: edit a spec's
            # template and its runs are redone (not silently reused)
            templates = {d: get_spec(d).template for d in dict.fromkeys([dataset, *(e["dataset"] for e in evals)])}
            data = data_identity(templates, data_root)  # the data it reads, too: a copy's results never stand in
            for k in shots if cls.needs_training else [0]:
                for seed in seeds if cls.needs_training else [None]:
                    hp = cls.default_hparams(protocol, dataset, k)
                    unknown = sorted(set(scoped) - set(hp) - set(cls.hparam_spec))
                    if unknown:
                        raise BenchError(f"unknown hyperparameter(s) {', '.join(unknown)} for method {name}; "
                                         f"known: {', '.join(sorted(set(hp) | set(cls.hparam_spec))) or '(none)'}"
                                         + ("; scope a key to one method as METHOD.KEY=VALUE"
                                            if len(methods) > 1 else ""))
                    check_undeclared(name, scoped, hp)
                    # labels and hashes keep the values as given (less those equal to the default); the run's
                    # hparams get the declared types
                    overrides = normalise_overrides(name, scoped, hp)
                    hp = check_hparams(name, {**hp, **overrides})
                    epochs = cls.cached_views(hp)
                    n_views = _n_views(views or default_views, epochs)
                    label_extra = {}
                    if cls.needs_training and n_views != _n_views(default_views, epochs):
                        label_extra["views"] = n_views
                    config = {
                        "method": name,
                        "label": method_label(name, {**overrides, **label_extra}),
                        "code": code_version(cls),
                        "overrides": dict(sorted(overrides.items())),
                        "hparams": dict(sorted(hp.items())),
                        "backbone": dict(backbone),
                        "precision": precision,
                        "protocol": protocol,
                        "train": {"dataset": dataset, "shots": k, "seed": seed, "classes": proto.train_classes},
                        "evals": evals,
                        "templates": templates,
                        "views": n_views if cls.needs_training else None,
                        "data_root": data_root,
                    }
                    if data:
                        config["data"] = data
                    augmentation = check_augmentation(name, cls.train_augmentation(hp)) if cls.needs_training \
                        else None
                    if augmentation:  # CoOp's augmentation (None) is left out: those configs hash as before
                        config["augmentation"] = augmentation
                    from bench.store import config_hash

                    h = config_hash(config)
                    if h not in seen:
                        seen.add(h)
                        grid.append(config)
    return grid
