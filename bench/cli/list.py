"""``bench list``: the registered methods, datasets, backbones and protocols."""

from __future__ import annotations

from bench.cli.common import print_json


def add_command(sub) -> None:
    p = sub.add_parser("list", help="what is registered")
    p.add_argument("what", choices=["methods", "datasets", "backbones", "protocols"])
    p.add_argument("--json", action="store_true", help="as JSON (every field)")
    p.set_defaults(func=cmd_list)


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
    records = _list_records(args.what)
    if args.json:
        print_json(records)
        return 0
    for r in records:
        if args.what == "methods":
            print(f"{r['name']:14} {r['description']}")
        elif args.what == "datasets":
            print(f"{r['key']:18} {r['group']:17} {r['num_classes']:>5} classes  folder {r['dir']}/  "
                  f"template {r['template']!r}")
        elif args.what == "backbones":
            print(f"{r['name']:40} {', '.join(r['pretrained'])}")
        else:
            print(f"{r['name']:14} shots={','.join(map(str, r['shots']))} seeds={','.join(map(str, r['seeds']))}  "
                  f"{r['description']}")
    return 0
