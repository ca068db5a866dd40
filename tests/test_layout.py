"""The package's shape: the library never imports the CLI, imports form no cycle, config is
light, functions are short, and the README's architecture table names every module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

PACKAGE = REPO / "mnistkit"
MODULES = {
    p: ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for p in sorted(PACKAGE.rglob("*.py"))
}


def _imports(path: Path, module: str) -> set[str]:
    """Every mnistkit module that ``module`` imports, at any depth of its code."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("mnistkit")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("mnistkit"):
                names = [f"{base}.{a.name}" for a in node.names]
                out |= {n if n in MODULES.values() else base for n in names}
    return out - {module}


GRAPH = {m: _imports(p, m) for p, m in MODULES.items()}


def test_the_library_never_imports_the_cli():
    offenders = {
        m: sorted(i for i in deps if i == "mnistkit.cli" or i.startswith("mnistkit.cli."))
        for m, deps in GRAPH.items()
        if not m.startswith("mnistkit.cli")
    }
    assert {m: d for m, d in offenders.items() if d} == {}


def test_no_import_cycles():
    """Module-level and function-level imports alike; the package facade (mnistkit/__init__)
    only re-exports lazily and is left out."""
    graph = {m: {d for d in deps if d != "mnistkit"} for m, deps in GRAPH.items() if m != "mnistkit"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d) :] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize(
    "module",
    [
        "mnistkit.config",
        "mnistkit.settings",
        "mnistkit.client",
        "mnistkit.imageref",
        "mnistkit.pixels",
        "mnistkit.protocol_v2",
        "mnistkit.cli.query",
    ],
)
def test_light_modules_load_neither_torch_nor_docker(module):
    code = f"import sys, {module}; heavy = {{'torch', 'docker'}} & set(sys.modules); assert not heavy, heavy"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_function_is_under_60_lines():
    long = []
    for path, module in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n >= 60:
                    long.append(f"{module}.{node.name}: {n} lines")
    assert long == []


def test_the_readme_architecture_table_names_every_module():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Architecture") :]
    table = table[: table.index("\n## ", 5)]
    missing = [
        str(p.relative_to(PACKAGE))
        for p in MODULES
        if p.name != "__init__.py" and f"`{p.relative_to(PACKAGE)}`" not in table and f"`{p.name}`" not in table
    ]
    assert missing == []
