"""The ``bench`` command line: flat sub-commands, one line per error.

    bench run      --method coop --shots 1,2,4,8,16 --seeds 1,2,3 --datasets caltech101 --data-root DATA
    bench status   (same grid flags as run)
    bench list     methods | datasets | backbones | protocols
    bench data     check --data-root DATA | sample --dataset D --shots K --seed S --data-root DATA
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from bench.errors import BenchError
from bench.report.query import infer_preset  # noqa: F401 - used by cmd_status; lives below the CLI

PRESETS = {
    # The CoOp papers' setting: ViT-B/16 with OpenAI's weights on the 11 datasets (the default).
    "coop11": {"backbone": "ViT-B-16", "pretrained": "openai", "group": "coop11"},
    # The miniature world: a tiny CLIP pretrained here and small procedural datasets (offline default).
    # 16 cached augmented views per image by default (the demo's), instead of one per epoch.
    "mini": {"backbone": "mini", "pretrained": "mini", "group": "mini", "views": 16},
}


def deprecated(old: str, new: str) -> None:
    """One line on stderr for an old flag spelling that still works."""
    print(f"note: {old} is deprecated; use {new}", file=sys.stderr)


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: stores into the new flag's dest and prints a deprecation note."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        deprecated(option_string, self.new)
        setattr(namespace, self.dest, values)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _csv(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def add_grid_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("grid")
    g.add_argument("--protocol", default="fewshot", help="fewshot | base2new | domain_shift | cross_dataset")
    g.add_argument("--method", "--methods", dest="methods", help="comma-separated method names (default: all)")
    g.add_argument("--datasets", help="comma-separated dataset keys (default: the protocol's datasets)")
    g.add_argument("--shots", help="comma-separated shot counts, e.g. 1,2,4,8,16")
    g.add_argument("--seeds", help="comma-separated seeds, e.g. 1,2,3")
    g.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a hyperparameter (repeatable); changes the run hash and table label; "
                        "KEY=a,b sweeps: one labelled set of runs per value")
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="'mini': the miniature world (tiny CLIP + mini data); 'coop11': ViT-B-16 openai on the 11 "
                        "CoOp datasets (the default)")
    g.add_argument("--backbone", help="open_clip architecture (default ViT-B-16; 'mini' with --preset mini), one "
                                      "of --model-configs, or hf-hub:<org>/<repo>")
    g.add_argument("--pretrained", help="open_clip pretrained tag or checkpoint path (default openai)")
    g.add_argument("--data-root", help="folder holding the datasets in CoOp's layout (default $BENCH_DATA)")
    g.add_argument("--precision", default="auto",
                   help="auto (fp32 on CPU, fp16 autocast on GPU) | fp32 | amp (fp16 autocast) | bf16 | fp16")
    g.add_argument("--views", type=int, help="cached augmented views per training image (default: one per epoch; "
                                             "16 with --preset mini); another number shows in the label")
    g.add_argument("--results", help="results store folder (default $BENCH_RESULTS, results/runs in a checkout, "
                                     "else ~/.local/share/clip-prompt-bench/runs)")


def _weights_id(pretrained: str | None, arch: str = "") -> str:
    if pretrained is None:
        return "random"
    if pretrained == "hf-hub":
        return arch
    path = Path(pretrained).expanduser()
    if pretrained == "mini":
        from bench.mini.pretrain import ensure_checkpoint

        path = Path(ensure_checkpoint())
    elif not path.is_file():
        if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise BenchError(f"checkpoint not found: {path}")
        return pretrained
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()[:16]


def resolve_grid_args(args) -> dict:
    """Flags + preset -> everything a grid needs (one-line errors for bad input)."""
    from bench.protocols import parse_int_list, parse_sweep

    preset = PRESETS.get(args.preset or "", {})
    if args.views is not None and args.views < 1:
        raise BenchError(f"bad --views {args.views}: need at least 1 view per image")
    backbone = args.backbone or preset.get("backbone", "ViT-B-16")
    pretrained = args.pretrained or preset.get("pretrained", "openai")
    if pretrained in ("none", "random"):
        pretrained = None
    from bench.model.backbone import check_arch, is_hf_hub, resolve_arch

    check_arch(backbone)
    if is_hf_hub(backbone):
        if args.pretrained:
            raise BenchError(f"{backbone} brings its own weights from the Hugging Face Hub: leave out --pretrained")
        pretrained = "hf-hub"
    from bench.data import resolve_data_root

    data_root = resolve_data_root(args.data_root)
    if args.preset == "mini" and not args.data_root:
        from bench.mini.build import ensure_data

        data_root = resolve_data_root(ensure_data())
    arch, _ = resolve_arch(backbone, pretrained)
    sweep = parse_sweep(args.overrides)  # expanded before any validation: each set is checked on its own
    return {
        "protocol": args.protocol,
        "methods": _csv(args.methods),
        "datasets": _csv(args.datasets),
        "shots": parse_int_list(args.shots, "shots") if args.shots is not None else None,
        "seeds": parse_int_list(args.seeds, "seeds") if args.seeds is not None else None,
        "overrides": sweep[0],
        "override_sets": sweep,
        "backbone": {"arch": arch, "pretrained": pretrained, "weights": _weights_id(pretrained, arch)},
        "group": preset.get("group", "coop11"),
        "precision": args.precision,
        "views": args.views,
        "default_views": preset.get("views"),
        "data_root": data_root,
    }


def build_grid(args) -> tuple[list[dict], dict]:
    from bench.protocols import expand, get_protocol
    from bench.registry import get_method, list_methods

    g = resolve_grid_args(args)
    get_protocol(g["protocol"])
    if g["methods"]:
        for m in g["methods"]:
            if g["protocol"] not in get_method(m).protocols:
                raise BenchError(f"method {m} does not support protocol {g['protocol']} "
                                 f"(supports: {', '.join(get_method(m).protocols)})")
        methods = g["methods"]
    else:
        methods = [m for m in list_methods() if g["protocol"] in get_method(m).protocols]
    grid = []
    for overrides in g["override_sets"]:  # a --set sweep: one labelled set of runs per value
        grid += expand(g["protocol"], methods, datasets=g["datasets"], shots=g["shots"], seeds=g["seeds"],
                       overrides=overrides, backbone=g["backbone"], group=g["group"], precision=g["precision"],
                       views=g["views"], data_root=g["data_root"],
                       default_views=g["default_views"])
    return grid, g


def _store(args):
    from bench.store import Store

    return Store(args.results) if getattr(args, "results", None) else Store()


def preflight(grid: list[dict], load_backbone: bool = True, device: str | None = None) -> None:
    """Fail fast, in one line, on data or weight problems before any run starts."""
    from bench.data import load_splits
    from bench.engine.runner import get_backbone

    roots = {c["data_root"] for c in grid}
    if None in roots:
        raise BenchError("no data root: pass --data-root DIR (or set BENCH_DATA, or use --preset mini)")
    needed = {(c["data_root"], c["train"]["dataset"]) for c in grid}
    needed |= {(c["data_root"], e["dataset"]) for c in grid for e in c["evals"]}
    for root, dataset in sorted(needed):
        load_splits(dataset, root)
    from bench.data import require_train_images
    from bench.registry import get_method

    for root, dataset in sorted({(c["data_root"], c["train"]["dataset"]) for c in grid
                                 if get_method(c["method"]).needs_training}):
        require_train_images(load_splits(dataset, root))
    if load_backbone:
        for spec in {json.dumps(c["backbone"], sort_keys=True): c["backbone"] for c in grid}.values():
            get_backbone(spec, grid[0].get("precision", "auto"), device)


def cmd_run(args) -> int:
    from bench.launch import launch_local
    from bench.launch.threads import apply_threads

    apply_threads()  # BENCH_THREADS: checked before any work
    grid, g = build_grid(args)
    store = _store(args)
    if args.dry_run:
        todo = {id(c) for c in store.pending(grid)}
        if args.json:
            from bench.store import config_hash

            print_json({"runs": [{"state": "todo" if id(c) in todo else "done", "hash": config_hash(c),
                                  "label": c["label"], "method": c["method"], "protocol": c["protocol"],
                                  "overrides": c["overrides"], **c["train"],
                                  "evals": [e["dataset"] + ("" if e["classes"] == "all" else ":" + e["classes"])
                                            for e in c["evals"]]} for c in grid],
                        "total": len(grid), "done": len(grid) - len(todo), "todo": len(todo)})
            return 0
        for c in grid:
            tr = c["train"]
            state = "todo" if id(c) in todo else "done"
            evals = ",".join(e["dataset"] + ("" if e["classes"] == "all" else ":" + e["classes"]) for e in c["evals"])
            print(f"{state:5} {c['label']:28} {tr['dataset']:16} shots={tr['shots']:<3} seed={tr['seed']!s:5} "
                  f"-> {evals}")
        print(f"{len(grid)} runs, {len(grid) - len(todo)} done, {len(todo)} to run")
        return 0
    device = None
    if args.device:
        if args.launcher != "local":
            raise BenchError("--device applies to local runs; SLURM tasks use their allocated GPU (or the CPU)")
        from bench.model.backbone import _resolve_device

        device = str(_resolve_device(args.device))
    store.check_writable()  # before any work: a read-only store or a file named as one fails here
    store.clean_stale()
    preflight(grid, load_backbone=args.launcher == "local", device=device)
    if args.launcher == "slurm":
        from bench.launch import launch_slurm

        launch_slurm(grid, store, args)
        return 0
    summary = launch_local(grid, store, device=device)
    other = ""
    if summary.get("by_other"):
        other += f", {summary['by_other']} done by another process"
    if summary.get("failed_other"):
        other += f", {summary['failed_other']} failed in another process"
    print(f"{summary['total']} runs: {summary['skipped']} already complete, {summary['ran']} ran{other}, "
          f"{summary['failed']} failed; results in {store.root}")
    return 1 if summary["failed"] or summary.get("failed_other") else 0


def cmd_status(args) -> int:
    from collections import Counter

    from bench.launch.slurm import print_status_details, run_states
    from bench.store import config_hash

    if not (args.preset or args.datasets or args.backbone or args.pretrained):
        inferred = infer_preset(args.results, args.protocol)
        if inferred and inferred != "coop11":
            args.preset = inferred
            if not args.json:
                print(f"note: the store holds {inferred} results: showing --preset {inferred}", file=sys.stderr)
    grid, _ = build_grid(args)
    store = _store(args)
    states = run_states(grid, store)  # done | pending | running | failed | missing (| unknown: queue unreachable)
    counts: Counter = Counter()
    for c in grid:
        counts[(c["protocol"], c["label"], c["train"]["dataset"], states[config_hash(c)]["state"])] += 1
    cols = ["done", "missing", "failed"]
    if any(s["job_id"] for s in states.values()):  # something of this grid was submitted to SLURM
        cols = ["done", "pending", "running", "missing", "failed"]
        if any(s["state"] == "unknown" for s in states.values()):
            cols.append("unknown")
    width = {"done": 5, "pending": 8, "running": 8, "missing": 8, "failed": 7, "unknown": 8}
    keys = sorted({k[:3] for k in counts})
    if args.json:
        print_json({"columns": cols, "rows": [{"protocol": k[0], "label": k[1], "dataset": k[2],
                                              **{c: counts[k + (c,)] for c in cols}} for k in keys],
                    "runs": [{"hash": config_hash(c), "label": c["label"], **c["train"],
                              "state": states[config_hash(c)]["state"], "job_id": states[config_hash(c)]["job_id"],
                              "error": states[config_hash(c)].get("error")} for c in grid]})
        return 0
    print(f"{'protocol':14} {'method':28} {'dataset':16} " + " ".join(f"{c:>{width[c]}}" for c in cols))
    for k in keys:
        print(f"{k[0]:14} {k[1]:28} {k[2]:16} " + " ".join(f"{counts[k + (c,)]:>{width[c]}}" for c in cols))
    print_status_details(grid, states)
    return 0


def _list_records(what: str) -> list[dict]:
    if what == "methods":
        from bench.registry import get_method, list_methods

        out = []
        for m in list_methods():
            c = get_method(m)
            out.append({"name": m, "description": c.description, "needs_training": c.needs_training,
                        "protocols": list(c.protocols), "display_name": c.display_name, "color": c.color,
                        "marker": c.marker, "linestyle": c.linestyle, "order": c.order})
        return out
    if what == "datasets":
        import dataclasses

        from bench.data import list_specs

        return [{k: v for k, v in dataclasses.asdict(s).items() if k not in ("classname_map", "extra")}
                for s in list_specs()]
    if what == "backbones":
        import open_clip

        import bench.model.backbone  # noqa: F401 - registers the project's tiny architectures

        return [{"name": n, "pretrained": open_clip.list_pretrained_tags_by_model(n)} for n in open_clip.list_models()]
    import dataclasses

    from bench.protocols import PROTOCOLS

    return [dataclasses.asdict(p) for p in PROTOCOLS.values()]


def cmd_list(args) -> int:
    if args.json:
        print_json(_list_records(args.what))
        return 0
    if args.what == "methods":
        from bench.registry import get_method, list_methods

        for m in list_methods():
            cls = get_method(m)
            print(f"{m:14} {cls.description}")
    elif args.what == "datasets":
        from bench.data import list_specs

        for s in list_specs():
            print(f"{s.key:18} {s.group:17} {s.num_classes:>5} classes  folder {s.dir}/  template {s.template!r}")
    elif args.what == "backbones":
        import open_clip

        import bench.model.backbone  # noqa: F401 - registers the project's tiny architectures

        for name in open_clip.list_models():
            tags = open_clip.list_pretrained_tags_by_model(name)
            print(f"{name:40} {', '.join(tags)}")
    else:
        from bench.protocols import PROTOCOLS

        for p in PROTOCOLS.values():
            print(f"{p.name:14} shots={','.join(map(str, p.shots))} seeds={','.join(map(str, p.seeds))}  {p.description}")
    return 0


def cmd_data(args) -> int:
    from bench.data import check_dataset, get_spec, list_specs, load_splits, resolve_data_root, write_sample

    data_root = resolve_data_root(args.data_root, required=True)
    if args.data_cmd == "check":
        keys = _csv(args.datasets)
        specs = [get_spec(k) for k in keys] if keys else [s for s in list_specs() if s.group in ("coop11", "imagenet_variant")]
        try:
            if not Path(data_root).is_dir():
                print(f"data root {data_root} does not exist")
        except OSError as e:
            print(f"data root {data_root} cannot be read: {e.strerror}")
        ok = True
        for spec in specs:
            r = check_dataset(spec, data_root)
            ok &= r["status"] == "found"
            line = f"{spec.key:18} {r['status']:10}"
            if r["status"] == "missing":
                line += f" expected {r.get('expected')}"
                if r.get("detail"):
                    line += f" ({r['detail']})"
            elif r.get("classes") is None:  # the dataset could not be read: say why
                line += f" {r.get('message') or 'unreadable'}"
            else:
                sizes = " ".join(f"{k}={v}" for k, v in (r.get("images") or {}).items())
                line += f" {r.get('classes')} classes  {sizes}"
                if r.get("missing_files") or r.get("empty_files"):
                    line += (f"  {r.get('missing_files', 0)} files missing"
                             + (f", {r['empty_files']} empty" if r.get("empty_files") else "")
                             + f", first: {r['first_missing']}")
                elif r["status"] != "found" and r.get("message"):
                    line += f"  {r['message']}"
            print(line)
        return 0 if ok else 1
    from bench.protocols import parse_int_list

    if not args.datasets:
        raise BenchError("data sample needs --datasets D (comma-separated)")
    shots = parse_int_list(args.shots, "shots")
    seeds = parse_int_list(args.seeds, "seeds") if args.seeds is not None else [1]
    for key in _csv(args.datasets):
        splits = load_splits(get_spec(key), data_root)
        for k in shots:
            for s in seeds:
                print(write_sample(splits, k, s))
    return 0


def add_verbosity_args(parser, sub) -> None:
    """-q/--quiet and -v/--verbose before or after the sub-command (``bench -q run ...`` = ``bench run ... -q``)."""
    for p, default in [(parser, None)] + [(sp, argparse.SUPPRESS) for sp in _all_subparsers(sub)]:
        p.add_argument("-q", "--quiet", action="store_true", default=default if default else False,
                       help="only results, warnings and errors (no progress lines or bars)")
        p.add_argument("-v", "--verbose", action="count", default=default if default else 0,
                       help="more detail (library log lines we otherwise drop)")


def _all_subparsers(sub) -> list:
    out = []
    for sp in dict.fromkeys(sub.choices.values()):  # aliases map to the same parser
        nested = [a for a in sp._actions if isinstance(a, argparse._SubParsersAction)]
        out += [sp] + [x for n in nested for x in _all_subparsers(n)]
    return out


def main(argv: list[str] | None = None) -> int:
    from bench import __version__

    parser = argparse.ArgumentParser(prog="bench", description="CLIP prompt-learning benchmark suite")
    parser.add_argument("--version", action="version", version=f"bench {__version__} (clip-prompt-bench)")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="run a protocol grid (only what is missing)")
    add_grid_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the grid and what is already done")
    p.add_argument("--device", help="cpu | cuda | cuda:1 | mps ... for local runs (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="with --dry-run: the grid as JSON")
    p.add_argument("--launcher", default="local", choices=["local", "slurm"])
    p.add_argument("--slurm-profile", help="YAML profile in slurm/ (partition, account, gpus, time, ...)")
    p.add_argument("--slurm", action="append", metavar="KEY=VALUE",
                   help="override a SLURM profile key (repeatable), e.g. --slurm partition=gpu --slurm time=2:00:00 "
                        "--slurm sbatch.mail-type=END (keys: slurm/README.md)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="done / missing / failed runs of a grid")
    add_grid_args(p)
    p.add_argument("--json", action="store_true", help="counts per (protocol, method, dataset) and every run as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("list", help="what is registered")
    p.add_argument("what", choices=["methods", "datasets", "backbones", "protocols"])
    p.add_argument("--json", action="store_true", help="as JSON (every field)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("data", help="check datasets, write few-shot samples")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    c = dsub.add_parser("check", help="found/missing, classes, images per split, first missing file")
    c.add_argument("--data-root")
    c.add_argument("--datasets", "--dataset", dest="datasets", help="comma-separated dataset keys")
    c.set_defaults(func=cmd_data)
    s = dsub.add_parser("sample", help="write the few-shot sample every method uses for (dataset, shots, seed)")
    s.add_argument("--datasets", help="comma-separated dataset keys")
    s.add_argument("--shots", required=True, help="comma-separated shot counts")
    s.add_argument("--seeds", help="comma-separated seeds (default 1)")
    s.add_argument("--dataset", dest="datasets", action=DeprecatedAlias, new="--datasets", help=argparse.SUPPRESS)
    s.add_argument("--seed", dest="seeds", action=DeprecatedAlias, new="--seeds", help=argparse.SUPPRESS)
    s.add_argument("--data-root")
    s.set_defaults(func=cmd_data)

    for register in _EXTRA_COMMANDS:
        register(sub)
    for name, p in sub.choices.items():  # on every sub-command: where extra methods live
        if name == "data":
            continue
        p.add_argument("--methods-dir", action="append", metavar="DIR",
                       help="a folder of method files (*.py) to load too (repeatable; also $BENCH_METHODS_PATH)")
        p.add_argument("--model-configs", action="append", metavar="DIR",
                       help="a folder of open_clip model-config JSONs (<name>.json) to register (repeatable; "
                            "also $BENCH_MODEL_CONFIGS)")

    add_verbosity_args(parser, sub)

    args = parser.parse_args(argv)
    previous = _install_signal_handlers()
    from bench import log

    log.set_verbosity(1 + getattr(args, "verbose", 0) - (1 if getattr(args, "quiet", False) else 0))
    try:
        if getattr(args, "model_configs", None):
            from bench.model.backbone import add_model_configs

            for folder in args.model_configs:
                add_model_configs(folder)
        if getattr(args, "methods_dir", None):
            from bench.registry import add_methods_path

            for folder in args.methods_dir:
                add_methods_path(folder)
        return args.func(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        name = f" by {e.name}" if isinstance(e, Terminated) else ""
        print(f"interrupted{name}: results written so far are kept", file=sys.stderr)
        return 128 + (e.signum if isinstance(e, Terminated) else 2)
    finally:
        _restore_signal_handlers(previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM / SIGHUP, handled as Ctrl-C is: the run in progress stops, its claim and temporary files go,
    completed results stay."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def _install_signal_handlers() -> dict:
    """SIGTERM and SIGHUP as SIGINT; SIGXFSZ ignored (a file-size limit then fails the write with one line instead
    of killing the process). Not inside a submitit job (SLURM), whose own handlers checkpoint and requeue, and
    only from the main thread."""
    import signal
    import threading

    if os.environ.get("SUBMITIT_EXECUTOR") or threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig, handler in ((signal.SIGTERM, _raise_terminated), (signal.SIGHUP, _raise_terminated),
                         (signal.SIGXFSZ, signal.SIG_IGN)):
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):
            pass
    return previous


def _restore_signal_handlers(previous: dict) -> None:
    import signal

    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


# Sub-commands added by other modules (report, plots, perf, demo): each a function(subparsers) -> None.
_EXTRA_COMMANDS: list = []


def _register_extras() -> None:
    import importlib

    for mod in ("bench.cli.table", "bench.cli.plot", "bench.perf", "bench.cli.demo"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        _EXTRA_COMMANDS.append(m.add_command)


_register_extras()

if __name__ == "__main__":
    sys.exit(main())
