"""Safety: weights never unpickled, no shell, params paths stay inside the project.

The scans read the source's syntax tree (not text), so a comment like "never pickle" is fine and
an aliased import is still caught.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import re
import typing
from pathlib import Path

import pytest

from groundiff.core.params import ParamsError
from groundiff.core.io import project_path

ROOT = Path(__file__).resolve().parents[1]
UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _calls(tree: ast.AST):
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def _name(func: ast.expr) -> str:
    """`torch.load` -> "torch.load"; `load` -> "load"."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _true(call: ast.Call, keyword: str) -> bool:
    return any(k.arg == keyword and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def test_weights_load_only_from_safetensors_or_weights_only_torch_load():
    problems = []
    for path in _sources("src"):
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                problems += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                             if a.name.split(".")[0] in UNPICKLERS]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLERS:
                problems.append(f"{where}:{node.lineno}: from {node.module} import ...")
            elif isinstance(node, ast.ImportFrom) and node.module == "torch" and "load" in [a.name for a in node.names]:
                problems.append(f"{where}:{node.lineno}: from torch import load (use torch.load(weights_only=True))")
        for call in _calls(tree):
            name = _name(call.func)
            if name.endswith("torch.load") and not _true(call, "weights_only"):
                problems.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
            if name.endswith(("read_pickle", "to_pickle")) or _true(call, "allow_pickle"):
                problems.append(f"{where}:{call.lineno}: {name}(...) unpickles")
    assert not problems, "load weights from safetensors (or torch.load(weights_only=True)):\n" + "\n".join(problems)


def test_no_shell_commands():
    problems = []
    for path in _sources("src", "flows", "benchmarks"):
        for call in _calls(ast.parse(path.read_text(), str(path))):
            name = _name(call.func)
            if _true(call, "shell") or name in ("os.system", "os.popen", "system", "popen"):
                problems.append(f"{path.relative_to(ROOT)}:{call.lineno}: {name}(...)")
    assert not problems, "run commands as argument lists, never through a shell:\n" + "\n".join(problems)


def test_the_scans_catch_what_they_look_for():
    """The scanners above, run on code that does everything they forbid."""
    bad = ast.parse("import pickle as p\nimport torch\ntorch.load('x')\nsubprocess.run('ls', shell=True)\n"
                    "torch.load('y', weights_only=True)\n")
    assert [_name(c.func) for c in _calls(bad) if _name(c.func) == "torch.load" and not _true(c, "weights_only")] \
        == ["torch.load"]
    assert any(_true(c, "shell") for c in _calls(bad))
    assert any(isinstance(n, ast.Import) and n.names[0].name == "pickle" for n in ast.walk(bad))


# --------------------------------------------------------------------------- params paths


def test_project_path_refuses_paths_that_leave_the_project(tmp_path):
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    assert project_path("data/x.csv", root) == root.resolve() / "data/x.csv"
    assert project_path(".", root) == root.resolve()
    for escaping in ("../elsewhere", "data/../../elsewhere", "/etc/passwd", str(tmp_path)):
        with pytest.raises(ParamsError, match="leaves the project"):
            project_path(escaping, root)
    os.symlink(tmp_path, root / "data" / "link")  # inside by name, outside in fact
    with pytest.raises(ParamsError, match="leaves the project"):
        project_path("data/link/secret", root)


PATHLIKE = re.compile(r"(^|_)(path|paths|root|dir|folder|file|out|output)$")


def _path_fields(cls, prefix: str = "") -> list[str]:
    """Fields of a params dataclass (nested ones too) that hold a path: by type or by name."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            found += _path_fields(tp, f"{prefix}{f.name}.")
        elif tp is Path or "Path" in str(tp) or PATHLIKE.search(f.name):
            found.append(prefix + f.name)
    return found


def test_stages_that_read_paths_from_params_keep_them_inside_the_project():
    """Every stage whose params sections hold a path must resolve it with `project_path`."""
    problems = []
    for path in sorted((ROOT / "src/groundiff/stages").glob("*.py")):
        if path.stem in ("__init__", "common"):
            continue
        source = path.read_text()
        module = importlib.import_module(f"groundiff.stages.{path.stem}")
        for call in _calls(ast.parse(source)):
            if not (isinstance(call.func, ast.Attribute) and call.func.attr == "section" and len(call.args) == 2):
                continue
            cls = getattr(module, _name(call.args[1]), None)
            if cls is None or not dataclasses.is_dataclass(cls):
                continue
            fields = _path_fields(cls)
            if fields and "project_path(" not in source:
                problems.append(f"{path.name}: {cls.__name__} has path params {fields} but never calls project_path")
    assert not problems, "\n".join(problems)
    # the check itself sees a path field
    assert _path_fields(dataclasses.make_dataclass("P", [("data_root", str), ("n", int)])) == ["data_root"]
