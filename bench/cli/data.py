"""``bench data``: check datasets in CoOp's layout, write the few-shot samples every method uses."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli.common import DeprecatedAlias, parse_csv
from bench.errors import BenchError


def add_command(sub) -> None:
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


def cmd_data(args) -> int:
    from bench.data import check_dataset, get_spec, list_specs, load_splits, resolve_data_root, write_sample

    data_root = resolve_data_root(args.data_root, required=True)
    if args.data_cmd == "check":
        keys = parse_csv(args.datasets, "--datasets")
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
            if r.get("notes"):  # differences from the released dataset, or "synthetic tree"
                line += "  (" + "; ".join(r["notes"]) + ")"
            print(line)
        return 0 if ok else 1
    from bench.protocols import parse_int_list

    if not args.datasets:
        raise BenchError("data sample needs --datasets D (comma-separated)")
    shots = parse_int_list(args.shots, "shots")
    seeds = parse_int_list(args.seeds, "seeds") if args.seeds is not None else [1]
    for key in parse_csv(args.datasets, "--datasets"):
        splits = load_splits(get_spec(key), data_root)
        for k in shots:
            for s in seeds:
                print(write_sample(splits, k, s))
    return 0
