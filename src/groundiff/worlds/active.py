"""The active world, as params.yaml names it: its vocabulary and split, its diffusion pipeline, its
oracle and its real data. Every stage asks here instead of branching on the world's name.

    world = World(params)
    world.split            # ClassSplit: classes, seen, unseen
    world.pipeline         # diffusers pipeline folder or hub id
    world.load_oracle()    # the oracle detector
    world.real_data        # RealData: the VOC-layout real images and labels
"""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property
from typing import TYPE_CHECKING

from groundiff.core import paths
from groundiff.core.errors import ParamsError, WorldError
from groundiff.core.io import project_path
from groundiff.core.params import Params
from groundiff.core.schema import SHAPE_CLASSES, PaperWorldParams
from groundiff.data.voc import RealData
from groundiff.worlds.base import ClassSplit, make_split
from groundiff.worlds.paper import PAPER_WORLDS, vocabulary

if TYPE_CHECKING:
    from groundiff.worlds.oracle import Oracle


def check(params: Params) -> None:
    """What the schema alone cannot check: the shapes world's classes and scenes, the chosen split."""
    from groundiff.worlds.shapes import SceneSpec

    unknown = [c for c in params.peek("shapes.classes") if c not in SHAPE_CLASSES]
    if unknown:
        raise ParamsError(f"params.yaml: shapes: classes: the renderer cannot draw {unknown}; "
                          f"it draws {', '.join(SHAPE_CLASSES)}")
    data = params.peek("world_data")
    try:
        SceneSpec(image_size=data.image_size, min_objects=data.min_objects, max_objects=data.max_objects)
    except ValueError as err:
        raise ParamsError(f"params.yaml: world_data: {err}") from err
    World(params, record=False).split  # noqa: B018  (the split must exist)
    variants, scored = params.peek("train_segmenter.variants"), params.peek("eval_zs3.variants")
    if unknown := [v for v in scored if v not in variants]:
        raise ParamsError(f"params.yaml: eval_zs3: variants: {unknown} not in train_segmenter.variants "
                          f"({', '.join(variants)}); list some of those, or [] for all")


class World:
    """The world params.yaml's `world` section names (reads `world` and the world's own section)."""

    def __init__(self, params: Params, record: bool = True) -> None:
        self.params = params
        self._record = record

    def _get(self, key: str):
        return self.params.get(key) if self._record else self.params.peek(key)

    @property
    def name(self) -> str:
        return self._get("world.name")

    @property
    def device(self) -> str:
        return self._get("world.device")

    @property
    def is_paper(self) -> bool:
        return self.name in PAPER_WORLDS

    @cached_property
    def split(self) -> ClassSplit:
        """The world's vocabulary and its seen/unseen split (`world.split`)."""
        number = self._get("world.split")
        if self.is_paper:
            classes, splits = vocabulary(self.name)
            if number not in splits:
                raise WorldError(
                    f"world.split is {number}, but the {self.name} world has splits "
                    f"{sorted(splits)} (PAPER.md; voc split 0 = ZS3Net's unseen set for Protocol II)"
                )
            return make_split(self.name, classes, splits[number], where=f"the {self.name} world's split {number}")
        splits = self._get("shapes.splits")
        if number not in splits:
            raise WorldError(
                f"world.split is {number}, but shapes.splits defines only "
                f"{sorted(splits)}; pick one of those or add the split to params.yaml"
            )
        return make_split("shapes", self._get("shapes.classes"), splits[number],
                          where=f"params.yaml: shapes.splits.{number}")

    @property
    def classes(self) -> tuple[str, ...]:
        """Every class of the world, in label order (whatever the split)."""
        if self.is_paper:
            return tuple(vocabulary(self.name)[0])
        return tuple(self._get("shapes.classes"))

    @cached_property
    def paper(self) -> PaperWorldParams:
        """params.yaml `voc:` / `coco:` of the active paper world, local paths resolved in the project.

        Not counted as a stage's read: what these settings name reaches every stage through files it
        depends on (`worlds/<world>/sources.json` from world_setup, which declares the section, and the
        `source.json` records in `worlds/<world>/diffusion` and `detector`), hashes included.
        """
        if not self.is_paper:
            raise WorldError(f"world {self.name!r} is not a paper world ({', '.join(PAPER_WORLDS)})")
        settings = self.params.peek(self.name)
        diffusion = settings.diffusion
        if not paths.looks_like_hub_id(diffusion):  # a local pipeline folder: it must live in the project
            diffusion = str(project_path(diffusion))
        oracle = settings.oracle
        if oracle.weights != "torchvision":
            oracle = replace(oracle, weights=str(project_path(oracle.weights)))
        if oracle.config:
            oracle = replace(oracle, config=str(project_path(oracle.config)))
        return replace(settings, diffusion=diffusion, oracle=oracle,
                       data_root=str(project_path(settings.data_root)) if settings.data_root else "",
                       sbd_root=str(project_path(settings.sbd_root)) if settings.sbd_root else "")

    @property
    def pipeline(self) -> str:
        """The diffusers pipeline (folder or hub id)."""
        return self.paper.diffusion if self.is_paper else str(paths.world_diffusion("shapes"))

    @property
    def oracle_id(self) -> str:
        """The oracle, as it enters output fingerprints (a folder, a file or an id)."""
        if self.is_paper:
            oracle = self.paper.oracle
            return f"{oracle.backend}:{oracle.arch}" if oracle.weights == "torchvision" else oracle.weights
        return str(paths.world_detector("shapes"))

    def load_oracle(self, score_threshold: float = 0.05) -> "Oracle":
        """The oracle detector: the shapes world's own Mask R-CNN, or a COCO Mask R-CNN (torchvision,
        mmdetection or detectron2) speaking the paper world's class names."""
        from groundiff.worlds.oracle import Detectron2Oracle, MMDetOracle, TorchvisionCOCOOracle, TorchvisionOracle

        device = self.device
        if not self.is_paper:
            return TorchvisionOracle.from_pretrained(paths.world_detector("shapes"), device,
                                                     score_threshold=score_threshold)
        oracle = self.paper.oracle
        if oracle.backend == "mmdet":
            return MMDetOracle(self.name, oracle.config, oracle.weights, device, score_threshold=score_threshold)
        if oracle.backend == "detectron2":
            return Detectron2Oracle(self.name, oracle.config, oracle.weights, device, score_threshold=score_threshold)
        return TorchvisionCOCOOracle.load(self.name, oracle.weights, oracle.arch, device,
                                          score_threshold=score_threshold, min_size=oracle.min_size)

    @property
    def real_data(self) -> RealData:
        """The real labelled data (VOC layout, written by world_data)."""
        root = str(paths.real_data(self.name))
        if self.name == "shapes":
            return RealData(root, "train", "SegmentationClass", "SegmentationClassFull")
        # voc / coco: every class is labelled on disk; seen-only variants hide the unseen ones at load.
        return RealData(root, "train", "SegmentationClass", "SegmentationClass")

    def scored_data(self, split: str) -> RealData:
        """Where the real split eval_zs3 scores lives: `val` in the real data, `dev` (held-out train
        images, every class labelled) in its own folder, so that adding it changed no real-data byte."""
        root = paths.dev_data(self.name) if split == "dev" else paths.real_data(self.name)
        return RealData(str(root), split, "SegmentationClass", "SegmentationClass")

