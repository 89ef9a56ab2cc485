"""The package's shape: module and function sizes, and the import graph between its floors.

Run as a script to list what is over the limits (``--all`` includes the excluded subpackages,
``--with-docstrings`` counts docstring lines too)::

    python tests/test_code_shape.py [--all] [--with-docstrings]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tensornet"
MAX_MODULE_LINES = 460
MAX_FUNCTION_LINES = 60

# top-level subpackages left out of the limits (none: every module is held to them)
EXCLUDED: tuple[str, ...] = ()

# functions allowed past MAX_FUNCTION_LINES, "module path:qualified name" -> why (keep this short)
ALLOWED: dict[str, str] = {}


def _modules(include_all: bool = False) -> list[Path]:
    paths = sorted(PACKAGE.rglob("*.py"))
    if include_all:
        return paths
    return [p for p in paths if p.relative_to(PACKAGE).parts[0] not in EXCLUDED]


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method with its qualified name (nested ones included)."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append((prefix + node.name, node))
            found += _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            found += _functions(node, f"{prefix}{node.name}.")
        else:
            found += _functions(node, prefix)
    return found


def function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, with_docstring: bool = False) -> int:
    """Lines from the first decorator (or the ``def``) to the end, less the docstring's lines.

    The docstring is the documentation the style asks of every public function (parameters, notes, cost,
    what is raised); the limit is on the code.
    """
    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
    lines = int(node.end_lineno or node.lineno) - start + 1
    first = node.body[0]
    has_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    if has_doc and isinstance(first.value.value, str) and not with_docstring:  # type: ignore[union-attr]
        lines -= int(first.end_lineno or first.lineno) - first.lineno + 1
    return lines


def oversized(include_all: bool = False, with_docstring: bool = False) -> tuple[list[str], list[str]]:
    """``(modules over MAX_MODULE_LINES, functions over MAX_FUNCTION_LINES)`` as readable lines."""
    modules, functions = [], []
    for path in _modules(include_all):
        source = path.read_text(encoding="utf-8")
        name = path.relative_to(PACKAGE.parent).as_posix()
        count = len(source.splitlines())
        if count > MAX_MODULE_LINES:
            modules.append(f"{name}: {count} lines")
        for qualname, node in _functions(ast.parse(source)):
            lines = function_lines(node, with_docstring)
            if lines > MAX_FUNCTION_LINES and f"{name}:{qualname}" not in ALLOWED:
                functions.append(f"{name}:{node.lineno} {qualname}: {lines} lines")
    return modules, functions


def test_no_module_is_over_the_limit():
    modules, _ = oversized()
    assert not modules, f"split these by concern (limit {MAX_MODULE_LINES} lines): {modules}"


def test_no_function_is_over_the_limit():
    _, functions = oversized()
    assert not functions, f"split these by concern (limit {MAX_FUNCTION_LINES} lines of code): {functions}"


def test_the_allow_list_names_functions_that_exist_and_need_it():
    sizes = {}
    for path in _modules(include_all=True):
        name = path.relative_to(PACKAGE.parent).as_posix()
        for qualname, node in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            sizes[f"{name}:{qualname}"] = function_lines(node)
    for key, reason in ALLOWED.items():
        assert reason.strip(), f"{key}: give the reason it is allowed"
        assert sizes.get(key, 0) > MAX_FUNCTION_LINES, f"{key} is not over the limit (or gone): drop it"


def test_function_lines_count_decorators_and_leave_out_the_docstring():
    source = '@dec\ndef f(x):\n    """Doc.\n\n    More.\n    """\n    y = x\n    return y\n'
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.FunctionDef)
    assert function_lines(node) == 4 and function_lines(node, with_docstring=True) == 8


# --- the import graph -----------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module-level imports between tensornet's modules (imports inside functions are not followed)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    if f"{target}.{alias.name}" in paths:  # a submodule: its package is already loading
                        deps.add(f"{target}.{alias.name}")
                    elif target in paths:
                        deps.add(target)
            elif isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names if alias.name in paths}
        graph[name] = deps - {name}
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += graph.get(name, ())
    return seen


def test_the_argument_checks_sit_below_the_train_classes():
    # _checks and tt used to import each other (the train checks needed the classes); the train checks
    # now live above tt (tensornet._train_checks), so _checks reaches nothing but the backend helpers
    graph = import_graph()
    assert _reachable(graph, "tensornet._checks") <= {"tensornet._backend"}
    assert "tensornet._checks" not in _reachable(graph, "tensornet._checks")
    assert "tensornet.tt" in graph["tensornet._train_checks"] and "tensornet._checks" in graph["tensornet.tt"]


def test_nn_uses_the_linear_binding_only():
    # tensornet.nn reaches the product's kernels, plan and autograd Function through one interface
    used = set()
    for path in (PACKAGE / "nn").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tensornet._linear"):
                used |= {node.module} if node.module != "tensornet._linear" else {a.name for a in node.names}
    assert used <= {"binding", "tensornet._linear.binding"}, used


if __name__ == "__main__":
    over_modules, over_functions = oversized("--all" in sys.argv, "--with-docstrings" in sys.argv)
    print("\n".join(["modules:", *over_modules, "functions:", *over_functions]))
