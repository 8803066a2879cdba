"""The shape of the source tree: no import cycles, the report does not depend on the
evaluation, the training loops stay readable, every shipped config loads (test_config)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "distalign"
RUN_MAX_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.AST, bool]]:
    """Import statements under ``node`` and whether they run only when a function is called.
    Class bodies run at import time, so their imports count as module-level; imports under
    ``if TYPE_CHECKING:`` never run and are left out."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, in_function
        elif isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield from _imports(ast.Module(body=[other], type_ignores=[]), in_function)
        else:
            nested = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from _imports(child, in_function or nested)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The distalign modules an import statement loads (``from pkg import sub`` loads the
    submodule ``pkg.sub`` when there is one, else ``pkg`` itself)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "distalign"]
    base = node.module or ""
    if node.level:  # relative: from the module's package
        package = module.split(".")
        if MODULES[module].name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    if base.split(".")[0] != "distalign":
        return []
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in MODULES else base)
    return out


def import_graph() -> dict[str, dict[str, bool]]:
    """module -> {imported distalign module: imported at module level}."""
    graph: dict[str, dict[str, bool]] = {m: {} for m in MODULES}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, in_function in _imports(tree, False):
            for target in _targets(module, node):
                assert target in MODULES, f"{module} imports {target}, which does not exist"
                if target != module:
                    graph[module][target] = graph[module].get(target, False) or not in_function
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_sees_the_package():
    graph = import_graph()
    assert {"distalign", "distalign.cli", "distalign.rm.train", "distalign.rl.train"} <= set(graph)
    assert graph["distalign.rm.train"]["distalign.config"] is True  # module level
    assert graph["distalign.cli"]["distalign.rm.train"] is False  # inside a function


def test_no_import_cycle_at_module_level():
    """A cycle of module-level imports breaks whichever module is imported first. Cycles
    that pass through a function-level import are allowed (the import runs when the
    function is called, after both modules loaded); at the time of writing there are none."""
    graph = import_graph()
    module_level = {m: {t for t, top in targets.items() if top} for m, targets in graph.items()}
    assert cycles(module_level) == []


def test_report_does_not_import_eval():
    """The report renders saved numbers; it must not reach back into the evaluation."""
    graph = import_graph()
    offending = {
        module: sorted(
            t for t in targets if t == "distalign.eval" or t.startswith("distalign.eval.")
        )
        for module, targets in graph.items()
        if module.startswith("distalign.report")
    }
    assert {m: t for m, t in offending.items() if t} == {}
    assert "distalign.report.html" in offending  # the check looked at the report modules


@pytest.mark.parametrize("loop", ["rm/train.py", "rl/train.py"])
def test_training_loop_run_is_short(loop):
    tree = ast.parse((PACKAGE / loop).read_text(encoding="utf-8"))
    (run,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"]
    lines = run.end_lineno - run.lineno + 1
    assert lines <= RUN_MAX_LINES, f"{loop}: run() is {lines} lines (at most {RUN_MAX_LINES})"


def test_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
