"""Stage `pseudo_label`: the oracle's top instance per prompted class, missing ones recorded
(`groundiff.method.pseudo_label`). Resumable: labelled shards are kept."""

from __future__ import annotations

from groundiff.core import paths, tracking
from groundiff.core.io import write_json
from groundiff.method.pseudo_label import pseudo_label
from groundiff.method.synthesis import model_fingerprint
from groundiff.stages.common import open_stage, run_stage

SYNTH = paths.SYNTH_TRAIN
OUT = paths.SYNTH_LABELS
METRICS = paths.metrics("pseudo_label")


def main() -> None:
    params, world = open_stage("pseudo_label")
    cfg = params.section("pseudo_label")
    source = world.oracle_id
    with tracking.stage_run("pseudo_label", params.logged()) as run:
        oracle = world.load_oracle(score_threshold=cfg.score_threshold)
        stats = pseudo_label(oracle, SYNTH, OUT, cfg, oracle_id=model_fingerprint(source))
        write_json(METRICS, stats)
        run.log_metrics(stats)
        run.log_metrics({f"found_rate_{k}": v for k, v in stats["found_rate_per_class"].items()})
    print(f"pseudo_label: {stats['class_instances']} class instances, {100 * stats['found_rate']:.1f}% found")


if __name__ == "__main__":
    run_stage(main)
