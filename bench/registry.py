"""Method registry: ``@register_method("name")`` fills it; on first use it imports, in this order:

* every module of the built-in ``methods/`` package;
* the entry points of group ``clip_prompt_bench.methods`` of installed packages (each names a module whose
  classes register themselves, or a :class:`bench.method.Method` subclass, registered under the entry point's name);
* every ``*.py`` file (not starting with ``_``) of the folders in ``$BENCH_METHODS_PATH`` (``os.pathsep``-separated;
  ``--methods-dir DIR`` on the command line adds to it). Files there may import their ``_helper.py`` siblings.

A new method is one file with one decorated class; nothing else needs editing.
"""

import ast
import hashlib
import importlib
import importlib.util
import inspect
import pkgutil
import sys
from pathlib import Path

from bench.errors import BenchError

ENTRY_POINT_GROUP = "clip_prompt_bench.methods"
PATH_ENV = "BENCH_METHODS_PATH"

_METHODS: dict[str, type] = {}
_loaded = False
_DIRS_LOADED: set[str] = set()


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
    _loaded = True  # set before loading user code: a failing plug-in must not reload the built-ins
    _load_entry_points()
    for folder in _env_dirs():
        load_methods_dir(folder)


def _env_dirs() -> list[str]:
    import os

    return [d for d in os.environ.get(PATH_ENV, "").split(os.pathsep) if d.strip()]


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    from bench.method import Method

    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, Method) and _METHODS.get(ep.name) is not obj:
                register_method(ep.name)(obj)
        except Exception as e:  # noqa: BLE001 - a broken plug-in is one line naming it
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            raise BenchError(f"cannot load method entry point {ep.name} = {ep.value} (package {dist}, group "
                             f"{ENTRY_POINT_GROUP}): {type(e).__name__}: {' '.join(str(e).split())}") from None


def add_methods_path(folder) -> None:
    """Add a folder of method files (``--methods-dir``): recorded in $BENCH_METHODS_PATH, so that child processes
    (SLURM tasks) load it too, and loaded now if the registry already is."""
    import os

    folder = str(Path(folder).expanduser().resolve())
    if not Path(folder).is_dir():
        raise BenchError(f"methods folder not found: {folder}")
    dirs = _env_dirs()
    if folder not in dirs:
        os.environ[PATH_ENV] = os.pathsep.join([*dirs, folder])
    if _loaded:
        load_methods_dir(folder)


def load_methods_dir(folder) -> None:
    """Import every ``*.py`` of ``folder`` not starting with ``_`` (once per process); their classes register."""
    folder = Path(folder).expanduser().resolve()
    if str(folder) in _DIRS_LOADED:
        return
    if not folder.is_dir():
        raise BenchError(f"methods folder not found: {folder} (from ${PATH_ENV} or --methods-dir)")
    _DIRS_LOADED.add(str(folder))
    tag = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        name = f"_bench_user_methods_{tag}.{path.stem}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(folder))  # a method file may import its _helper siblings
        try:
            spec.loader.exec_module(module)
        except BenchError:
            raise
        except Exception as e:  # noqa: BLE001 - one line naming the file and the line
            del sys.modules[name]
            where, tb = "", e.__traceback__
            while tb is not None:  # the deepest line of the method file itself
                if tb.tb_frame.f_code.co_filename == str(path):
                    where = f":{tb.tb_lineno}"
                tb = tb.tb_next
            raise BenchError(f"cannot load method file {path}{where}: {type(e).__name__}: "
                             f"{' '.join(str(e).split())}") from None
        finally:
            sys.path.remove(str(folder))


def list_methods() -> list[str]:
    _load_all()
    return sorted(_METHODS)


def find_method(name: str) -> type | None:
    """The registered method class, or None."""
    _load_all()
    return _METHODS.get(name)


def get_method(name: str) -> type:
    _load_all()
    if name not in _METHODS:
        raise BenchError(f"unknown method {name!r}; known methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


# ---------------------------------------------------------------------------------------------------------------
# Code version: part of every run's identity (bench.protocols.expand puts it in the config, so in the hash)

_CODE_VERSIONS: dict[type, str] = {}


def _normalised_source(path: Path) -> str:
    """The module's AST without docstrings: comments, formatting and docstrings do not change a run's identity."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def _related_modules(module) -> list:
    """``module`` and, transitively, the modules of its own package (or folder) that it uses, e.g. methods/_prompts.py
    for methods/coop.py. The harness (bench.*) and third-party libraries are not the method's code."""
    top = module.__name__.split(".")[0]
    home = Path(module.__file__).resolve().parent
    if top == "bench":
        return [module]

    def ours(m) -> bool:
        f = getattr(m, "__file__", None)
        if not f or not f.endswith(".py"):
            return False
        if m.__name__.split(".")[0] == top and "." in m.__name__:
            return True
        return Path(f).resolve().parent == home and not m.__name__.startswith("bench")

    def used(mod) -> list:
        found = [v if inspect.ismodule(v) else sys.modules.get(getattr(v, "__module__", None) or "")
                 for v in list(vars(mod).values())]
        try:  # `from helper import CONSTANT` leaves no trace in the globals: read the import statements too
            tree = ast.parse(Path(mod.__file__).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            return found
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [sys.modules.get(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(mod.__name__.split(".")[:-node.level] + ([base] if base else []))
                found += [sys.modules.get(base)] + [sys.modules.get(f"{base}.{a.name}") for a in node.names]
        return found

    seen, todo = {module.__name__: module}, [module]
    while todo:
        for m in used(todo.pop()):
            if m is not None and m.__name__ not in seen and ours(m):
                seen[m.__name__] = m
                todo.append(m)
    return [seen[k] for k in sorted(seen)]


def code_version(cls: type) -> str:
    """A digest of the method's source (its file and its package's helper modules it uses, AST-normalised) and of
    its optional ``version`` attribute: edited code gets new run hashes, so stale results are never reused."""
    if cls not in _CODE_VERSIONS:
        module = sys.modules.get(cls.__module__)
        h = hashlib.sha256()
        try:
            for m in _related_modules(module):
                h.update(m.__name__.encode() + b"\0" + _normalised_source(Path(m.__file__)).encode() + b"\0")
        except (AttributeError, TypeError, OSError, SyntaxError, UnicodeDecodeError):
            h.update(b"no-source:" + cls.__qualname__.encode())  # e.g. compiled-only modules: version decides
        version = getattr(cls, "version", None)
        _CODE_VERSIONS[cls] = h.hexdigest()[:12] + (f"-v{version}" if version is not None else "")
    return _CODE_VERSIONS[cls]
