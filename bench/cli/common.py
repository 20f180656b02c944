"""What every ``bench`` sub-command shares: verbosity flags, old flag spellings, JSON output, comma lists,
the results store named by ``--results``, and the signal handling of a command in progress.

Light imports only: ``bench --help`` loads this module.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bench.errors import BenchError


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


def argparse_suppress():
    """The help text of a flag that is kept working but not shown (old spellings)."""
    return argparse.SUPPRESS


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def parse_csv(text: str | None, flag: str) -> list[str] | None:
    """'a,b' -> ['a', 'b']; None (flag not given) -> None. An empty list or an empty entry (``--datasets ''``,
    ``--datasets a,,b``) is refused in one line: an empty value never silently means "all"."""
    if text is None:
        return None
    parts = [x.strip() for x in text.split(",")]
    if not any(parts):
        raise BenchError(f"bad {flag} {text!r}: empty list (leave the flag out for the default)")
    if not all(parts):
        raise BenchError(f"bad {flag} {text!r}: empty entry in the list (expected e.g. a,b)")
    return list(dict.fromkeys(parts))


def store_from_args(args):
    """The results store named by ``--results`` (default: $BENCH_RESULTS or the checkout's results/runs)."""
    from bench.store import Store

    return Store(args.results) if getattr(args, "results", None) else Store()


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


def install_signal_handlers() -> dict:
    """SIGTERM and SIGHUP as SIGINT; SIGXFSZ ignored (a file-size limit then fails the write with one line instead
    of killing the process). Not inside a submitit job (SLURM), whose own handlers checkpoint and requeue, and
    only from the main thread. Returns the previous handlers, for :func:`restore_signal_handlers`."""
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


def restore_signal_handlers(previous: dict) -> None:
    import signal

    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
