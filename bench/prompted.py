"""Moved to :mod:`bench.model.prompted`; this path stays importable for method files written against it (prefer :mod:`bench.api`)."""

import sys as _sys

import bench.model.prompted as _module

_sys.modules[__name__] = _module
