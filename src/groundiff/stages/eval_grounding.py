"""Stage `eval_grounding`: Protocol I (the paper's Table 1) — the grounding module vs DAAM.

Generates the seeded test prompts of the five categories (one seen, one unseen, two seen, two
seen+unseen, two unseen) once each, scores both methods against the world oracle's masks on the
same (image, class) pairs (`groundiff.eval.protocol1`), and writes:

    metrics/protocol1.json          {"ours": {5 categories}, "daam": {5 categories}}, mIoU in %
    metrics/protocol1_details.json  pair counts (incl. oracle misses), per-class mIoU, and ours'
                                    mIoU at other mask thresholds (seen-class row: synth_dataset.threshold)
    reports/protocol1.md            the table, with the paper's PASCAL-sim numbers beneath
    reports/figures/protocol1_overlays.png   image | oracle | ours | DAAM, seen and unseen classes
"""

from __future__ import annotations

import sys
from pathlib import Path

from groundiff.core import tracking
from groundiff.core.params import ParamsError, to_dict
from groundiff.data.prompts import PromptConfig
from groundiff.diffusion.pipeline import load_pipeline
from groundiff.method.grounding import GroundingModule
from groundiff.eval.protocol1 import (EvalConfig, evaluate, flat_metrics, markdown_report, overlay_figure,
                                 protocol1_prompts)
from groundiff.core.io import write_json
from groundiff.stages.common import open_stage, run_stage

GROUNDING = Path("models/grounding")
METRICS = Path("metrics/protocol1.json")
DETAILS = Path("metrics/protocol1_details.json")
TABLE = Path("reports/protocol1.md")
GRID = Path("reports/figures/protocol1_overlays.png")


def check_against_training(params, cfg: EvalConfig) -> None:
    """Refuse a test seed equal to the training prompts'; warn if features come from another step."""
    train = params.section("prompts")
    if cfg.seed == train.seed:
        raise ParamsError(
            f"params.yaml: eval_grounding.seed is {cfg.seed}, the same as prompts.seed: the test prompts "
            "need their own seed stream; pick another eval_grounding.seed"
        )
    synth = params.raw.get("synthesize") or {}
    trained = (synth.get("capture_t"), (synth.get("sampling") or {}).get("steps"))
    if None not in trained and trained != (cfg.capture_t, cfg.sampling.steps):
        print(f"warning: the grounding module was trained on features at t={trained[0]} of {trained[1]} steps "
              f"(synthesize), but eval_grounding captures t={cfg.capture_t} of {cfg.sampling.steps}",
              file=sys.stderr)


def main() -> None:
    params, world = open_stage("eval_grounding")
    cfg = params.section("eval_grounding")
    split = world.split
    check_against_training(params, cfg)
    device = params.world.device
    logged = {"eval_grounding": to_dict(cfg), **params.logged()}
    with tracking.stage_run("eval_grounding", logged) as run:
        pipe = load_pipeline(world.pipeline, device)
        oracle = world.load_oracle(score_threshold=cfg.oracle_score_threshold)
        model = GroundingModule.from_pretrained(GROUNDING, device)
        table = protocol1_prompts(split, cfg)
        result = evaluate(pipe, oracle, model, table, split, cfg)

        write_json(METRICS, result.metrics)
        write_json(DETAILS, result.details())
        TABLE.parent.mkdir(parents=True, exist_ok=True)
        setting = f"{split.world} world, split {params.world.split} (unseen: {', '.join(split.unseen)})"
        TABLE.write_text(markdown_report(result, cfg, setting))
        GRID.parent.mkdir(parents=True, exist_ok=True)
        overlay_figure(result.examples).save(GRID)

        run.log_metrics(flat_metrics(result.metrics))
        run.log_metrics({f"oracle_missed_{c}": n["oracle_missed"] for c, n in result.counts.items()})
        run.log_artifact(METRICS)
        run.log_artifact(TABLE)
        run.log_artifact(DETAILS)
        run.log_figure(GRID)

    def row(method: str) -> str:
        return " ".join(f"{c}={v if v is None else round(v, 1)}" for c, v in result.metrics[method].items())

    scored = sum(n["evaluated"] for n in result.counts.values())
    missed = sum(n["oracle_missed"] for n in result.counts.values())
    print(f"eval_grounding: mIoU (%) over {scored} (image, class) pairs ({missed} missed by the oracle, "
          f"left out)\n  ours: {row('ours')}\n  daam: {row('daam')}\n"
          f"  ours' best mask threshold on seen-class pairs: {result.best_seen_threshold()} "
          f"(synth_dataset.threshold is {(params.raw.get('synth_dataset') or {}).get('threshold')})")


if __name__ == "__main__":
    run_stage(main)
