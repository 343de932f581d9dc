"""dvc.yaml, read the way DVC reads it: `foreach` groups expanded to `<group>@<item>` stages and
`${...}` templates filled from params.yaml. The stage layer asks it which params keys a stage
declares; tests ask it for every stage's deps and outs. `lookup` and `assign` walk params.yaml's data
by a dotted key as DVC spells it (in `params:`, `${...}` and `dvc exp run -S key=value`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from groundiff.core.errors import ParamsError

_TEMPLATE = re.compile(r"\$\{\s*([\w.]+)\s*\}")


@dataclass(frozen=True)
class DvcStage:
    name: str  # e.g. "prompts", "train_segmenter@A"
    cmd: str
    deps: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # params.yaml keys (templates filled)
    outs: tuple[str, ...] = ()  # outs, metrics and plots
    extra: dict = field(default_factory=dict)


def typed_key(node: dict[str, Any], part: str) -> Any:
    """One part of a dotted key as the mapping's keys are typed: split numbers are int keys in params.yaml."""
    if part not in node and part.lstrip("-").isdigit() and int(part) in node:
        return int(part)
    return part


def lookup(data: dict[str, Any], key: str) -> Any:
    """The value at a dotted key (`train_segmenter.segmenter.seed`, `shapes.splits.1`) of params.yaml's
    mapping; KeyError(key) when a part is missing."""
    value: Any = data
    for part in key.split("."):
        if not isinstance(value, dict) or (hit := typed_key(value, part)) not in value:
            raise KeyError(key)
        value = value[hit]
    return value


def assign(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in params.yaml's mapping, in place; its parent must exist (KeyError otherwise),
    the last part is added if new."""
    *parents, last = key.split(".")
    node = lookup(data, ".".join(parents)) if parents else data
    if not isinstance(node, dict):
        raise KeyError(key)
    node[typed_key(node, last)] = value


def _template(key: str, context: dict[str, Any]) -> Any:
    try:
        return lookup(context, key)
    except KeyError:
        raise ParamsError(f"dvc.yaml uses ${{{key}}}, but params.yaml has no {key}") from None


def _fill(value: Any, context: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return _TEMPLATE.sub(lambda m: str(_template(m.group(1), context)), value)
    if isinstance(value, list):
        return [_fill(v, context) for v in value]
    if isinstance(value, dict):
        return {_fill(k, context): _fill(v, context) for k, v in value.items()}
    return value


def _names(entries: list | None) -> tuple[str, ...]:
    """Paths or keys of a deps / params / outs list (an entry may be a one-key mapping with options)."""
    out: list[str] = []
    for entry in entries or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                # params may be grouped by file: {"other.yaml": [keys]}; outs carry options
                out.extend(value if isinstance(value, list) else [key])
        else:
            out.append(str(entry))
    return tuple(out)


def read_stages(dvc_yaml: str | Path = "dvc.yaml", params: dict[str, Any] | None = None) -> dict[str, DvcStage]:
    """Every stage of dvc.yaml, `foreach` expanded, templates filled from `params` (params.yaml's mapping)."""
    path = Path(dvc_yaml)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found. Run from the project root (where dvc.yaml is).")
    spec = yaml.safe_load(path.read_text()) or {}
    params = params if params is not None else (yaml.safe_load(Path(path.parent / "params.yaml").read_text())
                                                if (path.parent / "params.yaml").is_file() else {})
    stages: dict[str, DvcStage] = {}
    for group, body in (spec.get("stages") or {}).items():
        if "foreach" in body:
            items = [(f"{group}@{item}", {**params, "item": item}) for item in body["foreach"]]
            body = body["do"]
        else:
            items = [(group, params)]
        for name, context in items:
            filled = _fill(body, context)
            stages[name] = DvcStage(
                name=name, cmd=filled.get("cmd", ""), deps=_names(filled.get("deps")),
                params=_names(filled.get("params")),
                outs=_names(filled.get("outs")) + _names(filled.get("metrics")) + _names(filled.get("plots")),
            )
    return stages


def declared_params(stage: str, dvc_yaml: str | Path = "dvc.yaml", params: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The params.yaml keys dvc.yaml declares for `stage`."""
    stages = read_stages(dvc_yaml, params)
    if stage not in stages:
        raise ParamsError(f"dvc.yaml has no stage {stage!r}; it has: {', '.join(stages)}")
    return stages[stage].params


def require_declared_params(stages: dict[str, DvcStage], params: dict[str, Any], where: str | Path) -> None:
    """Every params key a stage declares is written in `params` (params.yaml's mapping): DVC refuses a stage
    whose declared key is missing, after deleting its outputs."""
    missing = []
    for name, stage in stages.items():
        for key in stage.params:
            try:
                lookup(params, key)
            except KeyError:
                missing.append(f"{name}: {key}")
    if missing:
        raise ParamsError(f"{where}: dvc.yaml's stages declare params that it does not write "
                          f"({'; '.join(missing)}); add them to params.yaml (DVC refuses a stage without them)")
