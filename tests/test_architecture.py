"""The shape of the code, checked from its source: data flows one way (no import cycle), the agent
and the reports never reach the engine, and a long module says at its top why it is long.

Imports are read with ``ast`` (nothing is imported). Imports under ``if TYPE_CHECKING:`` are left
out of the cycle check (they never run) but count for "never reaches the engine".
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The installed namespace (pyproject's package-dir): folder -> package name.
PACKAGES = {"autoresearch": "autoresearch", "agent": "autoresearch.agent", "sandbox": "autoresearch.sandbox",
            "baselines": "autoresearch.baselines", "prompts": "autoresearch.prompts"}
LONG = 420  # "no product module over ~400 lines without a reason written at its top"


@functools.cache
def product_modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):  # not harnesses/: they run inside the sandbox
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, module: str, *, typing_too: bool) -> set[str]:
    """Product modules that ``module`` imports (anywhere in the file, lazy imports included)."""
    known = product_modules()
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not typing_too:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package
                pkg = module.rsplit(".", node.level)[0]
                base = f"{pkg}.{base}" if base else pkg
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name in known and name != module}


def test_no_import_cycle_among_product_modules():
    modules = product_modules()
    graph = {m: imports(p, m, typing_too=False) for m, p in modules.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if n.endswith("__init__") or n in PACKAGES.values():
                continue  # a package's __init__ imports nothing of ours here; importing a submodule runs it
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif state.get(n) is None:
                walk(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_agent_and_the_reports_never_reach_the_engine():
    modules = product_modules()
    # autoresearch.agent_port is the adapter that implements the agent's port over the engine; the
    # agent itself sees only the port.
    readers = [m for m in modules if m.startswith("autoresearch.agent.")] + ["autoresearch.reports"]
    for m in readers:
        reached = imports(modules[m], m, typing_too=True)
        assert "autoresearch.engine" not in reached, f"{m} imports the engine"
    # The reports read plain facts: not the ledger or the repo either.
    reached = imports(modules["autoresearch.reports"], "autoresearch.reports", typing_too=True)
    assert not reached & {"autoresearch.ledger", "autoresearch.records", "autoresearch.run_view"}, reached


def test_a_long_module_says_why_at_its_top():
    too_long = []
    for name, path in product_modules().items():
        lines = path.read_text().splitlines()
        head = "\n".join(lines[:30])
        if len(lines) > LONG and "lines" not in head:
            too_long.append(f"{name} ({len(lines)} lines)")
    assert not too_long, "long modules with no reason at their top: " + ", ".join(too_long)
