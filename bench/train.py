"""Moved to :mod:`bench.engine.loop`; this path stays importable for method files written against it (prefer :mod:`bench.api`)."""

import sys as _sys

import bench.engine.loop as _module

_sys.modules[__name__] = _module
