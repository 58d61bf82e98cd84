"""tests/test_module_graph.py: the modules of tllm_sched import each other without a cycle.

Every import statement counts, at module level or inside a function (a lazy import hides a cycle
from the interpreter, not from a reader). Importing `a.b.c` also runs the packages `a` and
`a.b`, so those are edges too, except from a module to its own enclosing packages: those are
already initialising when it runs (a package `__init__` that re-exports its submodules is fine).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import tllm_sched

PACKAGE_DIR = Path(tllm_sched.__file__).resolve().parent


def _modules() -> Dict[str, Path]:
    """Module name -> source file, for every .py file of the package."""
    out = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = ["tllm_sched", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _with_packages(name: str) -> List[str]:
    """`name` and the packages importing it runs: a.b.c -> [a, a.b, a.b.c]."""
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]


def _imports(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The package modules `name` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                anchor = here[: len(here) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    enclosing = set(_with_packages(name))
    return {m for t in targets for m in _with_packages(t) if m in modules and m not in enclosing}


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle of `graph` (its modules in order, the first repeated at the end), or []."""
    done, stack, on_stack = set(), [], set()

    def visit(m):
        stack.append(m)
        on_stack.add(m)
        for n in sorted(graph[m]):
            if n in on_stack:
                return stack[stack.index(n):] + [n]
            if n not in done:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        on_stack.discard(m)
        done.add(m)
        return []

    for m in sorted(graph):
        if m not in done:
            found = visit(m)
            if found:
                return found
    return []


def test_the_graph_sees_module_and_function_level_imports():
    graph = _graph()
    assert "tllm_sched.py_scheduler" in graph["tllm_sched.scheduler"]  # module level
    assert "tllm_sched.replay" in graph["tllm_sched.__main__"]  # inside a function
    assert "tllm_sched.policies" in graph["tllm_sched.registry"]  # the package a submodule import runs


def test_module_graph_is_acyclic():
    cycle = _cycle(_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)
