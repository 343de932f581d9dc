"""Stage `world_fidelity`: does the world's diffusion model draw the classes it is prompted with?

Seeded one- and two-object prompts over all classes (whatever the split), generated and read by the
world's detector (`groundiff.worlds.fidelity`).
"""

from __future__ import annotations

from groundiff.core import paths, tracking
from groundiff.core.io import write_json
from groundiff.diffusion.pipeline import load_pipeline
from groundiff.stages.common import open_stage, run_stage
from groundiff.worlds.fidelity import report_markdown, run_fidelity, sample_grid

METRICS = paths.metrics("world_fidelity")
TABLE = paths.WORLD_FIDELITY_TABLE
GRID = paths.WORLD_FIDELITY_GRID


def main() -> None:
    params, world = open_stage("world_fidelity")
    cfg = params.section("world_fidelity")
    classes, device = world.classes, params.world.device
    with tracking.stage_run("world_fidelity", params.logged()) as run:
        pipe = load_pipeline(world.pipeline, device)
        oracle = world.load_oracle()
        metrics, images, table = run_fidelity(pipe, oracle, classes, cfg)
        write_json(METRICS, metrics)
        TABLE.parent.mkdir(parents=True, exist_ok=True)
        TABLE.write_text(report_markdown(metrics))
        GRID.parent.mkdir(parents=True, exist_ok=True)
        sample_grid(images, table, len(classes), cfg.prompts).save(GRID)
        run.log_metrics({"one_object_recall": metrics["one_object_recall"],
                         "two_object_both_recall": metrics["two_object_both_recall"]})
        run.log_artifact(GRID)
        run.log_artifact(TABLE)
    print(f"world_fidelity: one-object recall {metrics['one_object_recall']:.3f}, "
          f"two-object both {metrics['two_object_both_recall']:.3f}")


if __name__ == "__main__":
    run_stage(main)
