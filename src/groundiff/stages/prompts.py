"""Stage `prompts`: the table of training prompts over the seen classes (`groundiff.data.prompts`)."""

from __future__ import annotations

from groundiff.core import paths, tracking
from groundiff.core.io import write_json
from groundiff.data.prompts import prompt_stats, sample_prompts, write_prompts
from groundiff.stages.common import open_stage, run_stage

OUT = paths.PROMPTS
METRICS = paths.metrics("prompts")


def main() -> None:
    params, world = open_stage("prompts")
    cfg = params.section("prompts")
    split = world.split
    with tracking.stage_run("prompts", params.logged()) as run:
        table = sample_prompts(split.seen, cfg)
        write_prompts(table, OUT)
        metrics = prompt_stats(table)
        write_json(METRICS, metrics)
        run.log_metrics(metrics)
        run.log_artifact(OUT)
    print(f"prompts: wrote {len(table)} rows over {len(split.seen)} seen classes to {OUT}")


if __name__ == "__main__":
    run_stage(main)
