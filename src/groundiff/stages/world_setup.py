"""Stage `world_setup`: check that the chosen world is complete before any long stage runs.

shapes: validates the vocabulary and split (its models are made by the world_* stages).
voc / coco: checks the Stable Diffusion checkpoint, the COCO oracle weights and the dataset
roots, and fails with one message listing everything missing and how to provide it.

Besides the summary in metrics/, it writes `worlds/<world>/sources.json`: what the world's
models and data are (hub snapshot, file hashes). The world_* stages depend on that file, so
pointing a paper world at another checkpoint re-runs them, while changing only the split does not.
"""

from __future__ import annotations

from groundiff.core import paths
from groundiff.core.io import write_json
from groundiff.stages.common import open_stage, run_stage
from groundiff.worlds.preflight import describe_sources, require_paper_world, shapes_sources


def main() -> None:
    params, active = open_stage("world_setup")
    world, split = active.name, active.split
    summary = {"world": world, "split": params.world.split, "seen": list(split.seen), "unseen": list(split.unseen)}
    if world == "shapes":
        sources = shapes_sources()
    else:
        settings = active.paper
        require_paper_world(world, settings)
        sources = describe_sources(world, settings)
        summary.update(diffusion=settings.diffusion, data_root=settings.data_root)
    write_json(paths.world_sources(world), sources)
    write_json(paths.metrics("world_setup"), summary)
    print(f"world_setup: {world} world ready (split {params.world.split}: {len(summary['seen'])} seen, "
          f"{len(summary['unseen'])} unseen classes)")


if __name__ == "__main__":
    run_stage(main)
