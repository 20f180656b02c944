"""Moved to :mod:`bench.model.backbone`; this path stays importable for method files written against it (prefer :mod:`bench.api`)."""

import sys as _sys

import bench.model.backbone as _module

_sys.modules[__name__] = _module
