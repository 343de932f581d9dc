"""Stage `world_data`: the world's real labelled data, in VOC layout under `data/<world>/real`, and
its dev split (held-out train images, every class labelled) under `data/<world>/dev`.

shapes: rendered (VOC layout + COCO JSON). voc: PASCAL VOC 2012 (+ SBD) linked in. coco: COCO
2017 instances converted to semantic label PNGs. Every later stage reads the same layout.
"""

from __future__ import annotations

from groundiff.core import paths, tracking
from groundiff.core.io import write_json
from groundiff.stages.common import open_stage, run_stage
from groundiff.worlds.real_data import build_real_data, preview

METRICS = paths.metrics("world_data")
PREVIEW = paths.WORLD_DATA_PREVIEW


def main() -> None:
    params, world = open_stage("world_data")
    world.split  # noqa: B018  (read before the run is logged: shapes' train labels hide its unseen classes)
    out, dev = paths.real_data(world.name), paths.dev_data(world.name)
    cfg = params.section("world_data")
    with tracking.stage_run("world_data", params.logged()) as run:
        stats = build_real_data(world, cfg, out, dev)
        write_json(METRICS, stats)
        PREVIEW.parent.mkdir(parents=True, exist_ok=True)
        preview(out).save(PREVIEW)
        run.log_metrics({
            f"{name}_{key}": value
            for name, s in stats.items() for key, value in s.items() if isinstance(value, (int, float))
        })
        run.log_artifact(PREVIEW)
    print(f"world_data: {stats['train']['images']} train and {stats['val']['images']} val images of the "
          f"{world.name} world in {out}, {stats['dev']['images']} held-out dev images in {dev}")


if __name__ == "__main__":
    run_stage(main)
