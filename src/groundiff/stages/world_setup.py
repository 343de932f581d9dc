"""Stage `world_setup`: check that the chosen world is complete before any long stage runs.

shapes: validates the vocabulary and split (its models are made by the world_* stages).
voc / coco: checks the Stable Diffusion checkpoint, the COCO oracle weights and the dataset
roots, and fails with one message listing everything missing and how to provide it.

Besides the summary in metrics/, it writes `worlds/<world>/sources.json`: what the world's
models and data are (hub snapshot, file hashes). The world_* stages depend on that file, so
pointing a paper world at another checkpoint re-runs them, while changing only the split does not.
"""

from __future__ import annotations

from pathlib import Path

from groundiff.stages.common import SHAPES_DETECTOR, SHAPES_PIPELINE, Params, run_stage, write_json
from groundiff.worlds.preflight import describe_sources, require_paper_world

OUT = Path("metrics/world_setup.json")


def sources_path(world: str) -> Path:
    return Path("worlds") / world / "sources.json"


def main() -> None:
    params = Params()
    world = params.world.name
    split = params.class_split()
    summary = {"world": world, "split": params.world.split, "seen": list(split.seen), "unseen": list(split.unseen)}
    if world == "shapes":
        # Made here by the world_* stages (or shipped in git): nothing to fetch.
        sources = {"world": world, "diffusion": {"trained_by": "world_diffusion", "folder": str(SHAPES_PIPELINE)},
                   "oracle": {"trained_by": "world_detector", "folder": str(SHAPES_DETECTOR)},
                   "data": {"rendered_by": "world_data"}}
    else:
        settings = params.paper_world()
        require_paper_world(world, settings)
        sources = describe_sources(world, settings)
        summary.update(diffusion=settings.diffusion, data_root=settings.data_root)
    write_json(sources_path(world), sources)
    write_json(OUT, summary)
    print(f"world_setup: {world} world ready (split {params.world.split}: {len(summary['seen'])} seen, "
          f"{len(summary['unseen'])} unseen classes)")


if __name__ == "__main__":
    run_stage(main)
