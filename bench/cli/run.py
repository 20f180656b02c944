"""``bench run``: run a protocol grid (only what is missing), and the grid flags ``bench status`` shares.

The grid flags resolve (:func:`resolve_grid_args`) into what :func:`bench.protocols.expand` needs; every user
error is one line, raised before any work (:func:`preflight` checks the BENCH_* environment, the cache folder,
the split files, the weights and the prompts' fit in the text context).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bench.cli.common import parse_csv, print_json, store_from_args
from bench.errors import BenchError

PRESETS = {
    # The CoOp papers' setting: ViT-B/16 with OpenAI's weights on the 11 datasets (the default).
    "coop11": {"backbone": "ViT-B-16", "pretrained": "openai", "group": "coop11"},
    # The miniature world: a tiny CLIP pretrained here and small procedural datasets (offline default).
    # 16 cached augmented views per image by default (the demo's), instead of one per epoch.
    "mini": {"backbone": "mini", "pretrained": "mini", "group": "mini", "views": 16},
}


def add_command(sub) -> None:
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


def add_grid_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("grid")
    g.add_argument("--protocol", default="fewshot", help="fewshot | base2new | domain_shift | cross_dataset")
    g.add_argument("--method", "--methods", dest="methods", help="comma-separated method names (default: all)")
    g.add_argument("--datasets", help="comma-separated dataset keys (default: the protocol's datasets)")
    g.add_argument("--shots", help="comma-separated shot counts, e.g. 1,2,4,8,16")
    g.add_argument("--seeds", help="comma-separated seeds, e.g. 1,2,3")
    g.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a hyperparameter (repeatable); changes the run hash and table label (a value "
                        "equal to the default does not); KEY=a,b sweeps: one labelled set of runs per value; "
                        "METHOD.KEY=VALUE sets it for one listed method only")
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


def weights_id(pretrained: str | None, arch: str = "") -> str:
    """What identifies the weights in a run's config: the tag, the architecture of an hf-hub model, or
    ``sha256:<16 hex>`` of a checkpoint file's content (``--pretrained mini``: the tiny CLIP's checkpoint)."""
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
    from bench.model.weights import checkpoint_digest

    return "sha256:" + checkpoint_digest(path)[:16]


_weights_id = weights_id  # the old private name (tests, scripts)


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
        "methods": parse_csv(args.methods, "--method"),
        "datasets": parse_csv(args.datasets, "--datasets"),
        "shots": parse_int_list(args.shots, "shots") if args.shots is not None else None,
        "seeds": parse_int_list(args.seeds, "seeds") if args.seeds is not None else None,
        "overrides": sweep[0],
        "override_sets": sweep,
        "backbone": {"arch": arch, "pretrained": pretrained, "weights": weights_id(pretrained, arch)},
        "group": preset.get("group", "coop11"),
        "precision": _precision(args),
        "views": args.views,
        "default_views": preset.get("views"),
        "data_root": data_root,
    }


def _precision(args) -> str:
    """``--precision``, checked; for a local run one equal to what ``auto`` resolves to on the device it will
    use (fp32 on CPU, amp on CUDA) is ``auto``: the same numbers, so the same label and run hash. A SLURM task's
    device is not known here: its precision stays as given."""
    from bench.model.backbone import PRECISIONS, _resolve_device, _resolve_precision

    precision = args.precision
    if precision not in PRECISIONS:
        raise BenchError(f"unknown --precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if precision == "auto" or getattr(args, "launcher", "local") != "local":
        return precision
    import torch

    device = _resolve_device(getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu"))
    return "auto" if _resolve_precision("auto", device) == precision else precision


def build_grid(args) -> tuple[list[dict], dict]:
    """The grid of run configs the flags name (``expand`` once per ``--set`` sweep value), and the resolved flags.
    Without ``--method``: every method that supports the protocol."""
    from bench.protocols import expand, get_protocol
    from bench.registry import get_method, list_methods

    g = resolve_grid_args(args)
    get_protocol(g["protocol"])
    methods = g["methods"] or [m for m in list_methods() if g["protocol"] in get_method(m).protocols]
    grid = []
    for overrides in g["override_sets"]:  # a --set sweep: one labelled set of runs per value
        grid += expand(g["protocol"], methods, datasets=g["datasets"], shots=g["shots"], seeds=g["seeds"],
                       overrides=overrides, backbone=g["backbone"], group=g["group"], precision=g["precision"],
                       views=g["views"], data_root=g["data_root"],
                       default_views=g["default_views"])
    return grid, g


# Environment variables read deep inside a run: checked here, before any work. name -> (integer?, what it sets)
NUMERIC_ENV = {
    "BENCH_FEATURE_MEMORY_MB": (False, "megabytes of cached features kept in memory"),
    "BENCH_WORKERS": (True, "image-decoding worker processes (0: decode in the main process)"),
}
DETERMINISTIC_VALUES = ("1", "true", "on", "yes", "strict", "0", "false", "off", "no", "warn")


def check_environment() -> None:
    """One line naming the variable for a malformed BENCH_* setting (instead of a traceback inside a run)."""
    from bench.engine.checkpoint import local_policy

    for name, (integer, what) in NUMERIC_ENV.items():
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        try:
            value = int(raw) if integer else float(raw)
            if not value >= 0 or value == float("inf"):
                raise ValueError
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise BenchError(f"{name}={raw!r}: must be {kind} >= 0 ({what})") from None
    value = os.environ.get("BENCH_DETERMINISTIC", "1").strip().lower()
    if value not in DETERMINISTIC_VALUES:
        raise BenchError(f"BENCH_DETERMINISTIC={value!r}: must be 1 (strict, the default), warn or 0")
    local_policy()  # BENCH_CHECKPOINT_EVERY*: its own one-line errors


def check_cache_writable() -> None:
    """The feature cache and few-shot samples folder ($BENCH_CACHE) must be a writable folder: checked before any
    work, as the results store is, not failed in every run."""
    import tempfile

    from bench.paths import cache_dir

    root = cache_dir()
    if root.exists() and not root.is_dir():
        raise BenchError(f"cache folder {root} is not a folder (set BENCH_CACHE to a writable folder)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        for sub in ("features", "samples"):
            folder = root / sub
            folder.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise BenchError(f"cache folder {root} is not writable: {e.strerror or type(e).__name__} "
                         f"(set BENCH_CACHE to a writable folder)") from None


def check_context_length(grid: list[dict], backbones: dict) -> None:
    """Learnable text context (``n_ctx``, ``n_ctx_text``) that cannot fit the text encoder's context length: any
    prompt needs the start token, the context, at least one name token, '.' and the end token."""
    for c in grid:
        length = getattr(backbones[json.dumps(c["backbone"], sort_keys=True)], "context_length", None)
        hp = c["hparams"]
        for key in ("n_ctx", "n_ctx_text"):
            n = hp.get(key)
            if key == "n_ctx" and hp.get("ctx_init"):
                continue  # the context then comes from ctx_init's words; n_ctx is ignored
            if length and isinstance(n, int) and n + 4 > length:
                raise BenchError(f"{key}={n} for {c['method']} does not fit the text encoder's context length "
                                 f"{length} ({c['backbone']['arch']}): at most {length - 4}")


def preflight(grid: list[dict], load_backbone: bool = True, device: str | None = None) -> None:
    """Fail fast, in one line, on environment, cache, data, weight or prompt-length problems before any run
    starts."""
    from bench.data import load_splits
    from bench.engine.runner import get_backbone, require_test_images

    check_environment()
    check_cache_writable()
    roots = {c["data_root"] for c in grid}
    if None in roots:
        raise BenchError("no data root: pass --data-root DIR (or set BENCH_DATA, or use --preset mini)")
    needed = {(c["data_root"], c["train"]["dataset"]) for c in grid}
    needed |= {(c["data_root"], e["dataset"]) for c in grid for e in c["evals"]}
    for root, dataset in sorted(needed):
        require_test_images(root, dataset)
    from bench.data import require_train_images
    from bench.registry import get_method

    for root, dataset in sorted({(c["data_root"], c["train"]["dataset"]) for c in grid
                                 if get_method(c["method"]).needs_training}):
        splits = load_splits(dataset, root)
        if not splits.train:
            raise BenchError(f"dataset {dataset} under {root}: its split lists no training images (a method that "
                             f"trains needs some; `bench data check --datasets {dataset}` shows the split sizes)")
        require_train_images(splits)
    if load_backbone:
        backbones = {key: get_backbone(spec, grid[0].get("precision", "auto"), device)[0]
                     for key, spec in {json.dumps(c["backbone"], sort_keys=True): c["backbone"] for c in grid}.items()}
        check_context_length(grid, backbones)


def cmd_run(args) -> int:
    from bench.launch import launch_local
    from bench.launch.threads import apply_threads

    apply_threads()  # BENCH_THREADS: checked before any work
    grid, g = build_grid(args)
    store = store_from_args(args)
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
