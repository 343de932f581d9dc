"""The import graph of the groundiff package, read from the source with `ast` (nothing is imported).

Used by the architecture tests: layering, cycles, and each DVC stage's import closure against its deps.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_path(module: str) -> Path | None:
    """The file of a groundiff module (a package's __init__.py), or None."""
    base = SRC / Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def all_modules() -> list[str]:
    out = []
    for path in sorted((SRC / "groundiff").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


@cache
def imports_of(module: str) -> frozenset[str]:
    """The groundiff modules `module` imports (anywhere in the file: lazy imports count too).

    `from groundiff.core import tracking` names the module groundiff.core.tracking; importing a
    submodule also imports its parent packages' __init__ files.
    """
    path = module_path(module)
    if path is None:
        return frozenset()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                 for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:  # `if TYPE_CHECKING:` imports never run
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if not name.startswith("groundiff"):
                continue
            if module_path(name) is not None:
                found.add(name)
    # importing a.b.c runs a/__init__.py and a/b/__init__.py (those above `module` itself already ran)
    own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
    for name in list(found):
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent not in own and module_path(parent) is not None:
                found.add(parent)
    found.discard(module)
    return frozenset(found)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def closure(module: str) -> set[str]:
    """Every groundiff module that importing `module` (and calling it) may load, itself included."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(imports_of(m))
        parts = m.split(".")  # importing a module runs its packages' __init__ files
        todo.extend(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if module_path(p) is not None)
    return seen


def find_cycle(modules: list[str]) -> list[str] | None:
    """One import cycle among `modules` (a list of module names that close it), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(imports_of(m)):
            if n not in modules_set:
                continue
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    modules_set = set(modules)
    for m in modules:
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def needed_files(module: str) -> set[str]:
    """The source files a stage module loads (relative to the repository root); empty package
    __init__ files change nothing and are left out."""
    files = set()
    for m in closure(module):
        path = module_path(m)
        if path is not None and not (path.name == "__init__.py" and not path.read_text().strip()):
            files.add(str(path.relative_to(ROOT)))
    return files
