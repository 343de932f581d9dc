"""Stage `eval_grounding`: Protocol I (the paper's Table 1), the grounding module vs DAAM on the same
generated test images, oracle masks as truth (`groundiff.eval.protocol1`). Writes metrics/protocol1.json
(mIoU % per method and category, ours in `eval_grounding.norm_at_test` mode), metrics/protocol1_details.json
(pair counts, per-class mIoU, the mask-threshold sweep, ours in the other test mode), reports/protocol1.md and reports/figures/protocol1_overlays.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

from groundiff.core import paths, tracking
from groundiff.core.io import project_path, write_json
from groundiff.diffusion.pipeline import load_pipeline
from groundiff.eval.protocol1 import (check_against_training, evaluate, markdown_report, overlay_figure,
                                      protocol1_prompts)
from groundiff.method.grounding import GroundingModule
from groundiff.stages.common import open_stage, run_stage

METRICS = paths.metrics("protocol1")
DETAILS = paths.PROTOCOL1_DETAILS
TABLE = paths.PROTOCOL1_TABLE
GRID = paths.PROTOCOL1_GRID


def main() -> None:
    params, world = open_stage("eval_grounding")
    cfg = params.section("eval_grounding")
    split = world.split
    warning = check_against_training(cfg, params.get("prompts.seed"), params.get("synthesize.capture_t"),
                                     params.get("synthesize.sampling.steps"))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    device = params.world.device
    project_path(cfg.grounding_dir)  # a module folder from params must stay inside the project
    with tracking.stage_run("eval_grounding", params.logged()) as run:
        pipe = load_pipeline(world.pipeline, device)
        oracle = world.load_oracle(score_threshold=cfg.oracle_score_threshold)
        model = GroundingModule.from_pretrained(Path(cfg.grounding_dir), device)
        result = evaluate(pipe, oracle, model, protocol1_prompts(split, cfg), split, cfg)
        write_json(METRICS, result.metrics)
        write_json(DETAILS, result.details())
        GRID.parent.mkdir(parents=True, exist_ok=True)  # reports/figures/, reports/ with it
        setting = f"{split.world} world, split {params.world.split} (unseen: {', '.join(split.unseen)})"
        TABLE.write_text(markdown_report(result, cfg, setting))
        overlay_figure(result.examples).save(GRID)
        run.log_metrics(result.logged_metrics())
        run.log_metrics({f"oracle_missed_{c}": n["oracle_missed"] for c, n in result.counts.items()})
        for path in (METRICS, TABLE, DETAILS):
            run.log_artifact(path)
        run.log_figure(GRID)
    print(f"eval_grounding: {result.summary()}")


if __name__ == "__main__":
    run_stage(main)
