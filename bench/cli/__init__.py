"""The ``bench`` command line: flat sub-commands, one line per error.

    bench run      --method coop --shots 1,2,4,8,16 --seeds 1,2,3 --datasets caltech101 --data-root DATA
    bench status   (same grid flags as run)
    bench list     methods | datasets | backbones | protocols
    bench data     check --data-root DATA | sample --dataset D --shots K --seed S --data-root DATA
    bench table / plot / demo / perf

One module per sub-command (:data:`COMMANDS`), each with ``add_command(subparsers)``; heavy libraries (torch,
open_clip, pandas, matplotlib) are imported only when a command runs, so ``bench --help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from bench.cli.common import (DeprecatedAlias, Terminated, add_verbosity_args, install_signal_handlers,  # noqa: F401
                              print_json, restore_signal_handlers)
from bench.cli.run import PRESETS, _weights_id, add_grid_args, build_grid, preflight, resolve_grid_args  # noqa: F401
from bench.errors import BenchError

# The sub-command modules, in the order ``bench --help`` lists them; each has add_command(subparsers).
COMMANDS = ("bench.cli.run", "bench.cli.status", "bench.cli.list", "bench.cli.data", "bench.cli.table",
            "bench.cli.plot", "bench.perf", "bench.cli.demo")


def _command_modules() -> list:
    return [importlib.import_module(name) for name in COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    from bench import __version__

    parser = argparse.ArgumentParser(prog="bench", description="CLIP prompt-learning benchmark suite")
    parser.add_argument("--version", action="version", version=f"bench {__version__} (clip-prompt-bench)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for module in _command_modules():
        module.add_command(sub)
    for name, p in sub.choices.items():  # on every sub-command: where extra methods live
        if name == "data":
            continue
        p.add_argument("--methods-dir", action="append", metavar="DIR",
                       help="a folder of method files (*.py) to load too (repeatable; also $BENCH_METHODS_PATH)")
        p.add_argument("--model-configs", action="append", metavar="DIR",
                       help="a folder of open_clip model-config JSONs (<name>.json) to register (repeatable; "
                            "also $BENCH_MODEL_CONFIGS)")
    add_verbosity_args(parser, sub)
    return parser


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = install_signal_handlers()
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
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe (`bench list backbones | head`) surfaces here, inside the handler
        return code
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except OSError as e:  # a file or folder the command was told to use: one line naming it
        if e.errno == errno.EPIPE:
            _quiet_stdout()
            return 0
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or _one_line(e)}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        name = f" by {e.name}" if isinstance(e, Terminated) else ""
        print(f"interrupted{name}: results written so far are kept", file=sys.stderr)
        return 128 + (e.signum if isinstance(e, Terminated) else 2)
    finally:
        restore_signal_handlers(previous)


def _quiet_stdout() -> None:
    """The reader of our stdout went away (``| head``): point stdout at /dev/null so the interpreter's final
    flush does not complain, and exit quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (captured): nothing to silence
        pass


if __name__ == "__main__":
    sys.exit(main())
