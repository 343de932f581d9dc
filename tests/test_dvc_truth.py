"""dvc.yaml tells the truth: each stage's deps are exactly the groundiff modules its command loads,
its params are real keys of params.yaml that decide its result, its outs are locations that
`groundiff.core.paths` names, and its module opens its params the way that enforces all this.

Stage commands are `python -m groundiff.stages.<name> [...]`; the import closure is read from the
source (tests/_imports.py). A stage reading a key it does not declare fails at run time
(`Params.for_stage`), so the stage tests that run stages check the reading side too.
"""

from __future__ import annotations

import ast
import inspect
import re

import pytest
import yaml

from _imports import ROOT, module_path, needed_files
from groundiff.core import paths
from groundiff.core.dvcfile import read_stages
from groundiff.core.params import Params, run_only

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
STAGES = read_stages(ROOT / "dvc.yaml", PARAMS)


def stage_module(cmd: str) -> str:
    match = re.match(r"python -m (groundiff\.stages\.\w+)\b", cmd)
    assert match, f"stage command {cmd!r} is not `python -m groundiff.stages.<name>`"
    return match.group(1)


@pytest.mark.parametrize("name", list(STAGES))
def test_deps_are_the_import_closure(name):
    stage = STAGES[name]
    declared = {d.rstrip("/") for d in stage.deps if d.startswith("src/")}
    needed = needed_files(stage_module(stage.cmd))
    missing, extra = sorted(needed - declared), sorted(declared - needed)
    assert not missing and not extra, (
        f"dvc.yaml stage {name}: deps missing modules it imports: {missing}; deps it never imports: {extra}")


@pytest.mark.parametrize("name", list(STAGES))
def test_params_are_real_result_keys(name):
    params = Params(ROOT / "params.yaml")
    for key in STAGES[name].params:
        params.peek(key)  # a typo is a ParamsError naming the key
        assert not run_only(key), f"{name} declares run-only key {key}: changing it must rerun nothing"


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_module_opens_its_declared_params(name):
    """Every stage goes through open_stage (validation of all params, declared reads, pinned threads);
    `validate` reads the whole file (it depends on params.yaml itself, not on declared keys)."""
    source = inspect.getsource(__import__(stage_module(STAGES[name].cmd), fromlist=["main"]))
    if name == "validate":
        assert "Params(paths.PARAMS)" in source and "check(params)" in source
        return
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
             and getattr(n.func, "id", getattr(n.func, "attr", None)) == "open_stage"]
    assert calls, f"{stage_module(STAGES[name].cmd)} never calls open_stage"
    literal = [c.args[0].value for c in calls if c.args and isinstance(c.args[0], ast.Constant)]
    if literal:  # foreach stages pass their name at run time
        assert name in literal, f"{name}'s module opens params of stage {literal}"


def _named_locations() -> set[str]:
    names = set()
    for value in vars(paths).values():
        if isinstance(value, paths.Path):
            names.add(str(value))
    for world in ("shapes", "voc", "coco"):
        for fn in (paths.world_sources, paths.world_diffusion, paths.world_detector, paths.real_data,
                   paths.dev_data):
            names.add(str(fn(world)))
    for stage in STAGES:
        base = stage.split("@")[0]
        names |= {str(paths.metrics(base)), str(paths.loss_plot(base))}
    names |= {str(paths.metrics(n)) for n in ("protocol1", "zs3")}
    return names


def test_outs_are_named_in_paths():
    named = _named_locations()
    variants = {str(paths.SEGMENTERS), str(paths.SEGMENTER_METRICS)}
    unnamed = [f"{name}: {out}" for name, stage in STAGES.items() for out in stage.outs
               if out not in named and str(paths.Path(out).parent) not in variants]
    assert not unnamed, "outs that groundiff.core.paths does not name:\n" + "\n".join(unnamed)
