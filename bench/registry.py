"""Method registry: ``@register_method("name")`` fills it; on first use it imports, in this order:

* every module of the built-in package :mod:`bench.methods` (source: the repository's ``methods/`` folder);
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

BUILTIN_PACKAGE = "bench.methods"
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
    package = importlib.import_module(BUILTIN_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{BUILTIN_PACKAGE}.{info.name}")
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


def _home_package(module) -> str | None:
    """The package whose modules count as the method's own code: :mod:`bench.methods` for the built-ins, the top
    package otherwise (a plug-in's package, a methods folder's tag); None for a method defined in the harness."""
    if module.__name__.startswith(BUILTIN_PACKAGE + "."):
        return BUILTIN_PACKAGE
    top = module.__name__.split(".")[0]
    return None if top == "bench" else top


def _related_modules(module) -> list:
    """``module`` and, transitively, the modules of its own package (or folder) that it uses, e.g. methods/_prompts.py
    for methods/coop.py. The harness (bench.*) and third-party libraries are not the method's code."""
    home_package = _home_package(module)
    home = Path(module.__file__).resolve().parent
    if home_package is None:
        return [module]

    def ours(m) -> bool:
        f = getattr(m, "__file__", None)
        if not f or not f.endswith(".py"):
            return False
        if m.__name__.startswith(home_package + "."):
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
    return sorted(seen.values(), key=_identity_name)


def _identity_name(module) -> str:
    """The module's name as a run's identity knows it: the built-ins as ``methods.X``, the name they had before they
    moved into :mod:`bench.methods` (so that results stored before the move keep their hashes)."""
    name = module.__name__
    return name[len("bench."):] if name.startswith(BUILTIN_PACKAGE + ".") else name


def source_digest(cls: type) -> str:
    """The digest of the method's source: its module and the helper modules of its package it uses (names as
    :func:`_identity_name` gives them, sources AST-normalised), 12 hex digits."""
    h = hashlib.sha256()
    try:
        for m in _related_modules(sys.modules.get(cls.__module__)):
            h.update(_identity_name(m).encode() + b"\0" + _normalised_source(Path(m.__file__)).encode() + b"\0")
    except (AttributeError, TypeError, OSError, SyntaxError, UnicodeDecodeError):
        h.update(b"no-source:" + cls.__qualname__.encode())  # e.g. compiled-only modules: version decides
    return h.hexdigest()[:12]


def code_version(cls: type) -> str:
    """A digest of the method's source (its file and its package's helper modules it uses, AST-normalised) and of
    its optional ``version`` attribute: edited code gets new run hashes, so stale results are never reused."""
    if cls not in _CODE_VERSIONS:
        digest = source_digest(cls)
        if cls.__module__.startswith(BUILTIN_PACKAGE + "."):  # a revision recorded as changing no number
            same = importlib.import_module(f"{BUILTIN_PACKAGE}._same_code").SAME_CODE
            digest = same.get(getattr(cls, "name", ""), {}).get(digest, digest)
        version = getattr(cls, "version", None)
        _CODE_VERSIONS[cls] = digest + (f"-v{version}" if version is not None else "")
    return _CODE_VERSIONS[cls]
