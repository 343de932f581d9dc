"""studies.yaml: a study's fields, its runs, and every check made before anything is queued.

`parse_study` checks one entry on its own (names, types, duplicates, keys the study itself sets);
`check_study` checks it against the project: its keys exist in params.yaml, its variants and stages
in dvc.yaml, and every run's params.yaml (the study's values applied) validates as a stage would
validate it. Each mistake is one StudyError naming the file, the study and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STUDIES = Path("studies.yaml")
SPLITS = ("val", "dev")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: params.yaml keys every run sets: the seed, what eval_zs3 scores, and the MLflow grouping.
SEED_KEY = "train_segmenter.segmenter.seed"
SPLIT_KEY = "eval_zs3.split"
VARIANTS_KEY = "eval_zs3.variants"
RESERVED = (SEED_KEY, SPLIT_KEY, VARIANTS_KEY)


class StudyError(ValueError):
    """studies.yaml names something wrong, or a study's experiments cannot run as asked."""


@dataclass(frozen=True)
class Study:
    """One entry of studies.yaml (see that file's header for each field)."""

    name: str
    description: str
    variants: tuple[str, ...]  # train_segmenter variants trained and scored (eval_zs3.variants)
    seeds: tuple[int, ...] = (0,)  # train_segmenter.segmenter.seed values
    split: str = "dev"  # eval_zs3.split of every run
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # params key -> values
    set: dict[str, Any] = field(default_factory=dict)  # params key -> value, every run
    stages: tuple[str, ...] = ()  # extra dvc.yaml stages run before the trainers
    reference: str | None = None  # the variant whose mean hIoU the others are a share of

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values ([{}] without a grid), in the file's order."""
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.grid[k] for k in keys))]

    def runs(self) -> list[Run]:
        """One experiment per grid point x seed, points outermost."""
        return [Run(self.name, seed, point) for point in self.points() for seed in self.seeds]


FIELDS = {f.name for f in dataclasses.fields(Study)} - {"name"}


def label_part(value: Any) -> str:
    """A value as a piece of a git ref (an experiment name) or an MLflow metric name."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ""))
    return re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._]+", "_", text)).strip("._") or "x"


@dataclass(frozen=True)
class Run:
    """One DVC experiment of a study: a grid point at one seed."""

    study: str
    seed: int
    point: dict[str, Any]

    @property
    def label(self) -> str:
        """The grid point as `key=value,...` (full keys): the MLflow tag and the report's row name."""
        return ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in self.point.items())

    @property
    def name(self) -> str:
        """The experiment's name, a valid git ref: `<study>[-<last key part><value>...]-s<seed>`."""
        parts = [f"{k.split('.')[-1]}{label_part(v)}" for k, v in self.point.items()]
        return "-".join([self.study, *parts, f"s{self.seed}"])

    def overrides(self, study: Study) -> dict[str, Any]:
        """params.yaml key -> value for this run, the study's grouping tags left out."""
        return {SEED_KEY: self.seed, SPLIT_KEY: study.split, VARIANTS_KEY: list(study.variants),
                **study.set, **self.point}


# --------------------------------------------------------------------------- the file on its own


def _fail(path: Path, where: str, message: str) -> StudyError:
    return StudyError(f"{path}: {where}: {message}")


def parse_study(name: Any, body: Any, path: Path = STUDIES) -> Study:
    """A study from its studies.yaml mapping; every mistake is one StudyError naming file, study and key."""
    if not isinstance(name, str) or not NAME.match(name):
        raise _fail(path, repr(name), "a study name is lower case letters, digits and _ (it names DVC "
                    "experiments and reports/studies/<name>.md), e.g. seeds")
    if not isinstance(body, dict):
        raise _fail(path, name, f"expected a mapping of {', '.join(sorted(FIELDS))}, got {body!r}")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise _fail(path, name, f"unknown key(s) {', '.join(map(str, unknown))}; a study has: "
                    f"{', '.join(sorted(FIELDS))}")
    for key in ("description", "variants"):
        if key not in body:
            raise _fail(path, name, f"missing {key!r}")

    def where(key: str) -> str:
        return f"{name}.{key}"

    description = body["description"]
    if not isinstance(description, str) or not description.strip():
        raise _fail(path, where("description"), "one line saying what the study measures")
    variants = body["variants"]
    if (not isinstance(variants, list) or not variants or not all(isinstance(v, str) for v in variants)):
        raise _fail(path, where("variants"), f"a non-empty list of variant names, e.g. [C, real_all]; got {variants!r}")
    if len(set(variants)) != len(variants):
        raise _fail(path, where("variants"), f"{variants} names a variant twice")
    seeds = body.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise _fail(path, where("seeds"), f"a non-empty list of seeds (integers >= 0), e.g. [0, 1, 2]; got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise _fail(path, where("seeds"), f"{seeds} lists a seed twice")
    split = body.get("split", "dev")
    if split not in SPLITS:
        raise _fail(path, where("split"), f"{split!r} is not one of {', '.join(SPLITS)} (dev: for choosing "
                    "settings; val: the headline split)")
    grid = body.get("grid") or {}
    if not isinstance(grid, dict):
        raise _fail(path, where("grid"), f"a mapping of params.yaml key -> list of values; got {grid!r}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise _fail(path, where(f"grid.{key}"), f"a non-empty list of values, e.g. [0.001, 0.0003]; got {values!r}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise _fail(path, where(f"grid.{key}"), f"{values} lists a value twice")
    fixed = body.get("set") or {}
    if not isinstance(fixed, dict):
        raise _fail(path, where("set"), f"a mapping of params.yaml key -> value; got {fixed!r}")
    for key in (*grid, *fixed):
        if not isinstance(key, str) or not key:
            raise _fail(path, name, f"{key!r} is not a params.yaml key (dotted, e.g. train_segmenter.segmenter.lr)")
        if key in RESERVED or key.split(".")[0] == "tracking":
            raise _fail(path, name, f"{key} is set by the study itself (seeds, split, variants); "
                        "use those fields instead")
    both = sorted(set(grid) & set(fixed))
    if both:
        raise _fail(path, name, f"{', '.join(both)} both in grid and set; keep each key in one")
    stages = body.get("stages") or []
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        raise _fail(path, where("stages"), f"a list of dvc.yaml stage names, e.g. [synth_dataset]; got {stages!r}")
    reference = body.get("reference")
    if reference is not None and reference not in variants:
        raise _fail(path, where("reference"), f"{reference!r} is not among the study's variants {variants}")
    return Study(name=name, description=description.strip(), variants=tuple(variants), seeds=tuple(seeds),
                 split=split, grid={k: tuple(v) for k, v in grid.items()}, set=dict(fixed),
                 stages=tuple(stages), reference=reference)


def load_studies(path: str | Path = STUDIES) -> dict[str, Study]:
    """Every study of studies.yaml, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run from the project root (where dvc.yaml and studies.yaml are)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise StudyError(f"{path}: expected a mapping of study name -> study")
    return {name: parse_study(name, body, path) for name, body in data.items()}


def load_study(name: str, path: str | Path = STUDIES) -> Study:
    """One study of studies.yaml, checked; a StudyError listing the file's studies if it has no `name`."""
    studies = load_studies(path)
    if name not in studies:
        raise StudyError(f"{path}: no study {name!r}; it defines: {', '.join(studies) or 'none'}")
    return studies[name]


# --------------------------------------------------------------------------- against the project


def check_study(study: Study, root: Path, path: Path = STUDIES) -> list[str]:
    """Check the study against params.yaml and dvc.yaml; return its DVC targets, in run order.

    Every run's params.yaml (the study's values applied) is validated as a stage would validate it,
    so a bad value stops here, before anything is queued.
    """
    from groundiff.core.dvcfile import assign, lookup, read_stages
    from groundiff.core.params import Params, load_params
    from groundiff.eval.zs3 import dvc_stage
    from groundiff.worlds.active import check

    raw = load_params(root / "params.yaml")
    for key in (*study.grid, *study.set):
        try:
            lookup(raw, key)
        except KeyError:
            raise _fail(path, study.name, f"params.yaml has no key {key}; a study may only change keys "
                        "params.yaml writes") from None
    variants = (raw.get("train_segmenter") or {}).get("variants") or {}
    unknown = [v for v in study.variants if v not in variants]
    if unknown:
        raise _fail(path, f"{study.name}.variants", f"{', '.join(unknown)} not in params.yaml "
                    f"train_segmenter.variants ({', '.join(variants)})")
    stages = read_stages(root / "dvc.yaml", raw)
    missing = [s for s in study.stages if s not in stages]
    if missing:
        raise _fail(path, f"{study.name}.stages", f"{', '.join(missing)} not in dvc.yaml; stages: {', '.join(stages)}")
    for point in study.points():
        edited = copy.deepcopy(raw)
        for key, value in Run(study.name, study.seeds[0], point).overrides(study).items():
            assign(edited, key, value)
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "params.yaml"
            file.write_text(yaml.safe_dump(edited, sort_keys=False))
            try:
                params = Params(file)
                check(params)
            except ValueError as err:  # ParamsError, WorldError
                text = str(err).replace(str(file), "params.yaml")
                raise _fail(path, study.name, f"{Run(study.name, 0, point).label or 'its values'} make an "
                            f"invalid params.yaml: {text}") from err
    trainers = [dvc_stage(v, params.section("train_segmenter").variant(v)) for v in study.variants]
    return [*study.stages, *trainers, "eval_zs3"]
