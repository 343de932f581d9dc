"""What every stage shares: reading params.yaml into typed configs, the world's class split,
output paths kept inside the project, atomic directory outputs, and JSON metrics.

Stages are thin: read params, build configs (all validation happens here, before any output is
touched), call one library function, write outputs, log to MLflow.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from groundiff.config import ParamsError, from_params, load_params
from groundiff.worlds.base import ClassSplit, WorldError, check_world_name, make_split
from groundiff.worlds.shapes import CLASSES as SHAPE_CLASSES

T = TypeVar("T")


@dataclass(frozen=True)
class WorldParams:
    """params.yaml `world`: which world the whole pipeline runs on."""

    name: str = "shapes"  # shapes | voc | coco
    split: int = 1  # which seen/unseen split of that world
    device: str = "cpu"  # torch device for every stage ("cuda", "cuda:1", ...)

    def __post_init__(self) -> None:
        check_world_name(self.name)


@dataclass(frozen=True)
class ShapesParams:
    """params.yaml `shapes`: the shapes world's vocabulary and splits."""

    classes: list[str] = field(default_factory=lambda: list(SHAPE_CLASSES))
    image_size: int = 32
    # split number -> unseen classes (seen = the rest), like the paper's three VOC 15/5 splits.
    splits: dict[int, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in SHAPE_CLASSES]
        if unknown:
            raise ValueError(
                f"classes: the renderer cannot draw {unknown}; it draws {', '.join(SHAPE_CLASSES)}"
            )


class Params:
    """params.yaml, with typed accessors that fail early and name the bad key."""

    def __init__(self, path: str | Path = "params.yaml") -> None:
        self.path = Path(path)
        self.raw = load_params(self.path)
        self.world = self.section("world", WorldParams)

    def section(self, name: str, cls: type[T]) -> T:
        return from_params(cls, self.raw.get(name), name)

    def class_split(self) -> ClassSplit:
        """The active world's vocabulary and its seen/unseen split."""
        if self.world.name != "shapes":
            raise WorldError(
                f"world {self.world.name!r} is not available in this version of groundiff; "
                "set world.name: shapes in params.yaml"
            )
        shapes = self.section("shapes", ShapesParams)
        if self.world.split not in shapes.splits:
            raise WorldError(
                f"world.split is {self.world.split}, but shapes.splits defines only "
                f"{sorted(shapes.splits)}; pick one of those or add the split to params.yaml"
            )
        return make_split("shapes", shapes.classes, shapes.splits[self.world.split],
                          where=f"params.yaml: shapes.splits.{self.world.split}")


#: Where the shapes world's models live (shipped in git, written by the world_* stages).
SHAPES_PIPELINE = Path("worlds/shapes/diffusion")
SHAPES_DETECTOR = Path("worlds/shapes/detector")


def world_pipeline(params: "Params") -> str:
    """The diffusers pipeline (folder or hub id) of the active world."""
    params.class_split()  # validates the world
    return str(SHAPES_PIPELINE)


def world_detector(params: "Params") -> str:
    """The oracle detector folder of the active world."""
    params.class_split()
    return str(SHAPES_DETECTOR)


def project_path(path: str | Path, root: Path | None = None) -> Path:
    """Resolve a path from params relative to the project root and refuse ones that escape it."""
    root = (root or Path.cwd()).resolve()
    resolved = (root / path).resolve()
    if resolved != root and root not in resolved.parents:
        raise ParamsError(f"path {str(path)!r} leaves the project ({root}); use a path inside it")
    return resolved


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a directory output in `<path>.partial` and swap it in only when complete."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    partial.rename(path)


def write_json(path: Path, data: Any) -> None:
    from groundiff.checkpoint import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def run_stage(main_fn) -> None:
    """Run a stage's main; expected user errors print one clear line instead of a traceback."""
    try:
        main_fn()
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _user_errors() -> tuple[type[Exception], ...]:
    """Bad params or damaged input files: the message says what to fix, a traceback would not help."""
    from groundiff.checkpoint import CheckpointError  # imported only once a stage failed (torch)
    from groundiff.data.shards import ShardError

    return (ParamsError, WorldError, FileNotFoundError, ShardError, CheckpointError, ValueError)
