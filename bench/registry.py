"""Method registry: ``@register_method("name")`` fills it; every module in ``methods/`` is imported on first use.

A new method is one file in ``methods/`` with one decorated class; nothing else needs editing.
"""

import importlib
import pkgutil

from bench.errors import BenchError

_METHODS: dict[str, type] = {}
_loaded = False


def register_method(name: str):
    """Class decorator registering a :class:`bench.method.Method` subclass under ``name``."""

    def wrap(cls):
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} registered twice ({_METHODS[name].__module__} and {cls.__module__})")
        cls.name = name
        if hasattr(cls, "fill_display_defaults"):
            cls.fill_display_defaults(name)
        _METHODS[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    import methods

    for info in sorted(pkgutil.iter_modules(methods.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"methods.{info.name}")
    _loaded = True


def list_methods() -> list[str]:
    _load_all()
    return sorted(_METHODS)


def get_method(name: str) -> type:
    _load_all()
    if name not in _METHODS:
        raise BenchError(f"unknown method {name!r}; known methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]
