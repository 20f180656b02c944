"""Moved to :mod:`bench.engine.imagestream`; this path stays importable for method files written against it (prefer :mod:`bench.api`)."""

import sys as _sys

import bench.engine.imagestream as _module

_sys.modules[__name__] = _module
