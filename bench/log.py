"""Plain, flushed log lines (SLURM-friendly) and tqdm bars that only show on a terminal."""

import sys
import time

from tqdm.auto import tqdm


def info(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def progress(iterable=None, **kwargs):
    """A tqdm bar shown only when stderr is a terminal (``disable=None``): jobs get no bar floods."""
    kwargs.setdefault("disable", None)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
