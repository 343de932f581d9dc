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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from groundiff.config import ParamsError, from_params, load_params
from groundiff.worlds.base import ClassSplit, WorldError, check_world_name, make_split
from groundiff.worlds.paper import PAPER_WORLDS, vocabulary
from groundiff.worlds.preflight import PaperWorldParams, looks_like_hub_id
from groundiff.worlds.shapes import CLASSES as SHAPE_CLASSES

if TYPE_CHECKING:
    from groundiff.oracle import Oracle
    from groundiff.zs3 import RealData

T = TypeVar("T")


@dataclass(frozen=True)
class WorldParams:
    """params.yaml `world`: which world the whole pipeline runs on."""

    name: str = "shapes"  # shapes | voc | coco
    split: int = 1  # which seen/unseen split of that world
    device: str = "cpu"  # torch device for every stage ("cuda", "cuda:1", ...)
    # torch CPU threads of every stage of the method (0 = torch's default). Part of the result:
    # more threads sum floats in another order (train_grounding's weights differ after 3 steps),
    # so it is pinned, and a run gives the same bytes on any machine and under any scheduler.
    num_threads: int = 1

    def __post_init__(self) -> None:
        check_world_name(self.name)
        if self.num_threads < 0:
            raise ValueError(f"world.num_threads must be >= 0 (0 = torch's default), got {self.num_threads}")


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

    def paper_world(self) -> PaperWorldParams:
        """params.yaml `voc:` / `coco:` of the active paper world, local paths resolved in the project."""
        if self.world.name not in PAPER_WORLDS:
            raise WorldError(f"world {self.world.name!r} is not a paper world ({', '.join(PAPER_WORLDS)})")
        settings = self.section(self.world.name, PaperWorldParams)
        diffusion = settings.diffusion
        if not looks_like_hub_id(diffusion):  # a local pipeline folder: it must live in the project
            diffusion = str(project_path(diffusion))
        oracle = settings.oracle
        if oracle.weights != "torchvision":
            oracle = replace(oracle, weights=str(project_path(oracle.weights)))
        if oracle.config:
            oracle = replace(oracle, config=str(project_path(oracle.config)))
        return replace(settings, diffusion=diffusion, oracle=oracle,
                       data_root=str(project_path(settings.data_root)) if settings.data_root else "",
                       sbd_root=str(project_path(settings.sbd_root)) if settings.sbd_root else "")

    def class_split(self) -> ClassSplit:
        """The active world's vocabulary and its seen/unseen split."""
        if self.world.name in PAPER_WORLDS:
            classes, splits = vocabulary(self.world.name)
            if self.world.split not in splits:
                raise WorldError(
                    f"world.split is {self.world.split}, but the {self.world.name} world has splits "
                    f"{sorted(splits)} (PAPER.md; voc split 0 = ZS3Net's unseen set for Protocol II)"
                )
            return make_split(self.world.name, classes, splits[self.world.split],
                              where=f"the {self.world.name} world's split {self.world.split}")
        shapes = self.section("shapes", ShapesParams)
        if self.world.split not in shapes.splits:
            raise WorldError(
                f"world.split is {self.world.split}, but shapes.splits defines only "
                f"{sorted(shapes.splits)}; pick one of those or add the split to params.yaml"
            )
        return make_split("shapes", shapes.classes, shapes.splits[self.world.split],
                          where=f"params.yaml: shapes.splits.{self.world.split}")


def pin_threads(world: WorldParams) -> None:
    """Set torch's CPU threads for this stage process to `world.num_threads` (0: leave torch's default)."""
    if world.num_threads:
        import torch

        torch.set_num_threads(world.num_threads)


#: Where the shapes world's models live (shipped in git, written by the world_* stages).
SHAPES_PIPELINE = Path("worlds/shapes/diffusion")
SHAPES_DETECTOR = Path("worlds/shapes/detector")


def world_pipeline(params: "Params") -> str:
    """The diffusers pipeline (folder or hub id) of the active world."""
    params.class_split()  # validates the world
    if params.world.name in PAPER_WORLDS:
        return params.paper_world().diffusion
    return str(SHAPES_PIPELINE)


def oracle_id(params: "Params") -> str:
    """The active world's oracle, as it enters output fingerprints (a folder, a file or an id)."""
    params.class_split()
    if params.world.name in PAPER_WORLDS:
        oracle = params.paper_world().oracle
        return f"{oracle.backend}:{oracle.arch}" if oracle.weights == "torchvision" else oracle.weights
    return str(SHAPES_DETECTOR)


def load_oracle(params: "Params", score_threshold: float = 0.05) -> "Oracle":
    """The active world's oracle detector: the shapes world's own Mask R-CNN, or a COCO Mask R-CNN
    (torchvision, mmdetection or detectron2) speaking the paper world's class names."""
    from groundiff.oracle import Detectron2Oracle, MMDetOracle, TorchvisionCOCOOracle, TorchvisionOracle

    device = params.world.device
    params.class_split()
    if params.world.name not in PAPER_WORLDS:
        return TorchvisionOracle.from_pretrained(SHAPES_DETECTOR, device, score_threshold=score_threshold)
    world, oracle = params.world.name, params.paper_world().oracle
    if oracle.backend == "mmdet":
        return MMDetOracle(world, oracle.config, oracle.weights, device, score_threshold=score_threshold)
    if oracle.backend == "detectron2":
        return Detectron2Oracle(world, oracle.config, oracle.weights, device, score_threshold=score_threshold)
    return TorchvisionCOCOOracle.load(world, oracle.weights, oracle.arch, device, score_threshold=score_threshold,
                                      min_size=oracle.min_size)


def real_data(params: "Params") -> "RealData":
    """The active world's real labelled data (VOC layout, written by world_data)."""
    from groundiff.zs3 import RealData

    params.class_split()
    if params.world.name == "shapes":
        return RealData("data/shapes/real", "train", "SegmentationClass", "SegmentationClassFull")
    # voc / coco: every class is labelled on disk; seen-only variants hide the unseen ones at load.
    return RealData(f"data/{params.world.name}/real", "train", "SegmentationClass", "SegmentationClass")


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
