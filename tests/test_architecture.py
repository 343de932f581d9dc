"""The layering rule (README, "Architecture"): no import cycles, and every import points down.

    L0 core         params, schema, paths, io, errors, checkpoint, losslog, training, tracking, dvcfile
    L1 data, diffusion, figures      formats and diffusion mechanics
    L2 worlds       what the paper downloads, the shapes world makes (models, data, oracle, active world)
    L3 method, segmenter             the paper's method; Protocol II's segmenter
    L4 eval         Protocol I and II, the report
    L5 stages, cli, app, testing     the application edge: DVC stages, the command line, params.yaml writing

A module may import modules of its own layer or of lower ones. Only the application edge's own
modules and the tests may import `groundiff.stages`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from _imports import ROOT, all_modules, find_cycle, imports_of

LAYERS: dict[str, int] = {
    "groundiff": 0,
    "groundiff.core": 0,
    "groundiff.data": 1,
    "groundiff.diffusion": 1,
    "groundiff.figures": 1,
    "groundiff.worlds": 2,
    "groundiff.method": 3,
    "groundiff.segmenter": 3,
    "groundiff.eval": 4,
    "groundiff.stages": 5,
    "groundiff.cli": 5,
    "groundiff.app": 5,
    "groundiff.testing": 5,
}


def layer(module: str) -> int:
    """The layer of a module: that of the longest LAYERS prefix naming its package."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        if name in LAYERS and (i > 1 or len(parts) == 1):
            return LAYERS[name]
    raise KeyError(f"{module}: no layer; add its package to LAYERS (and to the README's layer picture)")


def test_every_module_has_a_layer():
    for module in all_modules():
        layer(module)


def test_no_import_cycle():
    cycle = find_cycle(all_modules())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down():
    upward = [f"{m} (L{layer(m)}) imports {n} (L{layer(n)})"
              for m in all_modules() for n in sorted(imports_of(m)) if layer(n) > layer(m)]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def _stage_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    names += [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    return [n for n in names if n == "groundiff.stages" or n.startswith("groundiff.stages.")]


@pytest.mark.parametrize("folder", ["src/groundiff", "benchmarks", "scripts", "flows"])
def test_only_the_stages_import_stages(folder):
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if path.is_relative_to(ROOT / "src/groundiff/stages"):
            continue
        offenders += [f"{path.relative_to(ROOT)}: {name}" for name in _stage_imports(path)]
    assert not offenders, "import the library, not a stage:\n" + "\n".join(offenders)


def test_the_library_names_no_dvc_command():
    """Library errors say what is wrong; the stage layer adds which `dvc repro` remakes it
    (`groundiff.stages.common.run_stage`, from dvc.yaml's outs). Docstrings may explain DVC."""
    command = re.compile(r"dvc repro (--\w+ )*[a-z_{]")
    offenders = []
    for path in sorted((ROOT / "src/groundiff").rglob("*.py")):
        rel = path.relative_to(ROOT / "src")
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        if layer(module) == 5:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and command.search(node.value)):
                offenders.append(f"{rel}:{node.lineno}: {node.value.strip()[:80]}")
    assert not offenders, "library strings naming a `dvc repro` command:\n" + "\n".join(offenders)
