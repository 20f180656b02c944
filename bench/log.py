"""Plain, flushed log lines (SLURM-friendly) and tqdm bars that only show on a terminal.

Verbosity (``bench -q`` / ``bench -v``): 0 = quiet (errors, results and warnings only), 1 = normal, 2 = verbose
(also library log messages we otherwise drop, e.g. open_clip's model-creation chatter).
"""

import contextlib
import logging
import sys
import time

from tqdm.auto import tqdm

VERBOSITY = 1


def set_verbosity(level: int) -> None:
    global VERBOSITY
    VERBOSITY = int(level)


def info(msg: str) -> None:
    if VERBOSITY >= 1:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def debug(msg: str) -> None:
    if VERBOSITY >= 2:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def progress(iterable=None, **kwargs):
    """A tqdm bar shown only when stderr is a terminal (``disable=None``): jobs get no bar floods."""
    kwargs.setdefault("disable", None if VERBOSITY >= 1 else True)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


class _DropMessages(logging.Filter):
    def __init__(self, fragments):
        super().__init__()
        self.fragments = tuple(fragments)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if any(f in msg for f in self.fragments):
            debug(f"(dropped library log line) {msg}")
            return False
        return True


@contextlib.contextmanager
def drop_log_messages(*fragments: str, logger: str = ""):
    """Drop log records containing any of ``fragments`` from ``logger`` (default: the root logger, which
    ``logging.warning(...)`` uses) for the duration of the block -- for library lines that are false in our
    use, e.g. open_clip's "Model initialized randomly" when we load the real weights right after."""
    lg = logging.getLogger(logger)
    f = _DropMessages(fragments)
    lg.addFilter(f)
    try:
        yield
    finally:
        lg.removeFilter(f)
