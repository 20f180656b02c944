"""The layout guards itself: imports point downward only, nothing below the CLI imports it, and the harness names
no built-in method.

The import graph is read from the source (ast), so imports inside functions count as much as those at the top of
a module: moving an import into a function to dodge a cycle does not hide the cycle. Imports under
``if TYPE_CHECKING:`` never run and are left out. The built-in methods (source: methods/) are part of the graph as
``bench.methods.*``.

"Names no built-in method": no identifier and no word of a string literal (f-strings included) in bench/ equals
the registered name of a built-in method, outside the places listed in NAMES_ALLOWED_IN. Comments and docstrings
do not count (they may name a method as an example). Method names are lower-case identifiers, so the match is
exact and case-sensitive ("CoOp" in a help text is prose, "coop" is a name); a key that merely coincides with a
method's name counts too: rename it, so that a grep for a method's name finds only the method.
"""

import ast
import io
import re
import tokenize
from pathlib import Path

from bench.paths import repo_root

BENCH = repo_root() / "bench"
METHODS = repo_root() / "methods"  # installed as bench.methods
# Where the harness may name a built-in method: the demo (it runs a chosen set), the speed benchmarks (they time
# given methods), the methods themselves, and the miniature world's build (its own pretraining, not a method).
NAMES_ALLOWED_IN = ("bench/cli/demo.py", "bench/perf/", "bench/methods/", "bench/mini/")


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for root, package in ((BENCH, "bench"), (METHODS, "bench.methods")):
        for path in sorted(root.rglob("*.py")):
            if package == "bench" and path.is_relative_to(BENCH / "methods"):
                continue  # the checkout's stand-in for bench.methods: methods/__init__.py is the package
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return name in modules and modules[name].name == "__init__.py"


def _type_checking_only(node, parents) -> bool:
    for p in parents:
        if isinstance(p, ast.If):
            t = p.test
            if (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
                    (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"):
                return True
    return False


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of the package that ``name`` imports anywhere in its source (a name imported from a package
    that is itself a module counts as that module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node

    def chain(node):
        while node in parents:
            node = parents[node]
            yield node

    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _type_checking_only(node, chain(node)):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                here = name.split(".") if _is_package(name, modules) else name.split(".")[:-1]
                here = here[:len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            while t and t not in modules:  # `import bench.x.y` of a name inside a module: that module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _unit(module: str) -> str:
    """The subpackage (or top-level module) of bench that ``module`` belongs to: bench.report.plots -> bench.report."""
    return ".".join(module.split(".")[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a → b → ... → a) per strongly connected component with more than one node (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for comp in comps:  # a shortest cycle through the component's first node, by breadth-first search
        start = min(comp)
        prev, todo = {start: None}, [start]
        while todo:
            v = todo.pop(0)
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    todo = []
                    out.append([start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start])
                    break
                if w not in prev:
                    prev[w] = v
                    todo.append(w)
    return out


def test_the_graph_reads_function_level_and_relative_imports():
    graph = import_graph()
    assert "bench.engine.loop" in graph["bench.api"] and "bench.methods._prompts" in graph["bench.methods.coop"]
    # imported inside a function only (Context.template_for)
    assert "bench.data" in graph["bench.method"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles_between_modules():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_import_cycles_between_subpackages():
    graph = {}
    for module, targets in import_graph().items():
        graph.setdefault(_unit(module), set()).update(_unit(t) for t in targets if _unit(t) != _unit(module))
    found = cycles(graph)
    assert not found, "import cycles between subpackages: " + "; ".join(" -> ".join(c) for c in found)


def test_nothing_below_the_cli_imports_it():
    bad = sorted(f"{m} imports {t}" for m, targets in import_graph().items() if not m.startswith("bench.cli")
                 for t in targets if t == "bench.cli" or t.startswith("bench.cli."))
    assert not bad, "; ".join(bad)


# ------------------------------------------------------------------------------ the harness names no built-in method

def code_words(source: str) -> list[tuple[int, str]]:
    """(line, word) for the identifiers of the code and the words of its string literals: comments and docstrings
    are left out (they may name methods as examples); f-string text counts. A word is a run of [A-Za-z0-9_]."""
    tree = ast.parse(source)
    doc_lines = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        line = tok.start[0]
        if tok.type == tokenize.NAME:
            out.append((line, tok.string))
        elif tok.type in (tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", -1)) and line not in doc_lines:
            out += [(line, w) for w in re.findall(r"[A-Za-z0-9_]+", tok.string)]
    return out


def test_code_words_skip_comments_and_docstrings():
    src = 'def f():\n    """coop docstring"""\n    x = "a coop b"  # maple\n    return zeroshot\n'
    assert [w for _, w in code_words(src) if w in ("coop", "maple", "zeroshot")] == ["coop", "zeroshot"]


def test_the_harness_names_no_built_in_method():
    from bench.registry import BUILTIN_PACKAGE, get_method, list_methods

    names = {n for n in list_methods() if get_method(n).__module__.startswith(BUILTIN_PACKAGE + ".")}
    assert {"coop", "zeroshot", "linear_probe"} <= names
    bad = []
    for path in sorted(BENCH.rglob("*.py")):
        rel = path.relative_to(repo_root()).as_posix()
        if rel.startswith(NAMES_ALLOWED_IN):
            continue
        bad += [f"{rel}:{line}: {word}" for line, word in code_words(path.read_text(encoding="utf-8"))
                if word in names]
    assert not bad, "built-in method names in the harness:\n" + "\n".join(bad)

