"""Plain, flushed log lines (SLURM-friendly) and tqdm bars that only show on a terminal.

Log lines go through the standard ``logging`` logger ``"bench"`` (one handler writing ``[bench HH:MM:SS] msg`` to
the current stderr, not propagated to the root logger), so a program importing the suite controls them as any
library's: ``logging.getLogger("bench").setLevel(logging.WARNING)``, or replace its handlers.

Verbosity (``bench -q`` / ``bench -v``): 0 = quiet (errors, results and warnings only), 1 = normal, 2 = verbose
(also library log messages we otherwise drop, e.g. open_clip's model-creation chatter); it sets the logger's level.
"""

import contextlib
import logging
import sys

from tqdm.auto import tqdm

VERBOSITY = 1
LOGGER = logging.getLogger("bench")
_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


class _StderrHandler(logging.Handler):
    """Writes to ``sys.stderr`` as it is when a line is logged (test harnesses and the demo swap it), flushed."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging's own convention
            self.handleError(record)


_handler = _StderrHandler()
_handler.setFormatter(logging.Formatter("[bench %(asctime)s] %(message)s", datefmt="%H:%M:%S"))
LOGGER.addHandler(_handler)
LOGGER.propagate = False
LOGGER.setLevel(logging.INFO)


def set_verbosity(level: int) -> None:
    global VERBOSITY
    VERBOSITY = int(level)
    LOGGER.setLevel(_LEVELS[max(0, min(2, VERBOSITY))])


def info(msg: str) -> None:
    LOGGER.info(msg)


def debug(msg: str) -> None:
    LOGGER.debug(msg)


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
