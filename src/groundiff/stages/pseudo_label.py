"""Stage `pseudo_label`: the oracle's top instance per prompted class, missing ones recorded."""

from __future__ import annotations

from pathlib import Path

from groundiff.core import tracking
from groundiff.core.params import to_dict
from groundiff.method.pseudo_label import PseudoLabelConfig, pseudo_label
from groundiff.method.synthesis import model_fingerprint
from groundiff.core.io import write_json
from groundiff.stages.common import open_stage, run_stage

SYNTH = Path("data/synth/train")
OUT = Path("data/synth/train_labels")
METRICS = Path("metrics/pseudo_label.json")


def main() -> None:
    params, world = open_stage("pseudo_label")
    cfg = params.section("pseudo_label")
    source = world.oracle_id
    with tracking.stage_run("pseudo_label", {"pseudo_label": to_dict(cfg), **params.logged()}) as run:
        oracle = world.load_oracle(score_threshold=cfg.score_threshold)
        stats = pseudo_label(oracle, SYNTH, OUT, cfg, oracle_id=model_fingerprint(source))
        write_json(METRICS, stats)
        run.log_metrics({"found_rate": stats["found_rate"], "images": stats["images"]})
        run.log_metrics({f"found_rate_{k}": v for k, v in stats["found_rate_per_class"].items()})
    print(f"pseudo_label: {stats['class_instances']} class instances, {100 * stats['found_rate']:.1f}% found")


if __name__ == "__main__":
    run_stage(main)
