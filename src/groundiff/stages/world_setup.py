"""Stage `world_setup`: check that the chosen world is complete before any long stage runs.

shapes: validates the vocabulary and split (its models are made by the world_* stages).
voc / coco: checks the Stable Diffusion checkpoint, the COCO oracle weights and the dataset
root, and fails with one message listing everything missing and how to provide it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from groundiff.stages.common import Params, project_path, run_stage, write_json
from groundiff.worlds.paper import vocabulary
from groundiff.worlds.preflight import PaperWorldParams, require_paper_world

OUT = Path("metrics/world_setup.json")


def main() -> None:
    params = Params()
    world = params.world.name
    if world == "shapes":
        split = params.class_split()
        # Its models are made by the world_* stages (or shipped in git), so there is nothing to fetch.
        summary = {"world": world, "split": params.world.split, "seen": list(split.seen), "unseen": list(split.unseen)}
    else:
        settings = params.section(world, PaperWorldParams)
        # Datasets live inside the project (e.g. data/VOCdevkit/VOC2012): paths from params may not leave it.
        settings = replace(settings, data_root=str(project_path(settings.data_root)) if settings.data_root else "")
        require_paper_world(world, settings)
        classes, splits = vocabulary(world)
        unseen = splits.get(params.world.split)
        if unseen is None:
            raise ValueError(f"world.split {params.world.split} does not exist for {world}; choose one of {sorted(splits)}")
        summary = {"world": world, "split": params.world.split, "unseen": unseen,
                   "seen": [c for c in classes if c not in unseen], "diffusion": settings.diffusion,
                   "data_root": settings.data_root}
    write_json(OUT, summary)
    print(f"world_setup: {world} world ready (split {params.world.split}: {len(summary['seen'])} seen, "
          f"{len(summary['unseen'])} unseen classes)")


if __name__ == "__main__":
    run_stage(main)
