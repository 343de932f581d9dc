"""Stage `pseudo_label`: the oracle's top instance per prompted class, missing ones recorded."""

from __future__ import annotations

from pathlib import Path

from groundiff import tracking
from groundiff.config import to_dict
from groundiff.pseudo_label import PseudoLabelConfig, pseudo_label
from groundiff.synthesis import model_fingerprint
from groundiff.stages.common import Params, load_oracle, oracle_id, pin_threads, run_stage, write_json

SYNTH = Path("data/synth/train")
OUT = Path("data/synth/train_labels")
METRICS = Path("metrics/pseudo_label.json")


def main() -> None:
    params = Params()
    pin_threads(params.world)
    cfg = params.section("pseudo_label", PseudoLabelConfig)
    source = oracle_id(params)
    with tracking.stage_run("pseudo_label", {"pseudo_label": to_dict(cfg), "world": to_dict(params.world)}) as run:
        oracle = load_oracle(params, score_threshold=cfg.score_threshold)
        stats = pseudo_label(oracle, SYNTH, OUT, cfg, oracle_id=model_fingerprint(source))
        write_json(METRICS, stats)
        run.log_metrics({"found_rate": stats["found_rate"], "images": stats["images"]})
        run.log_metrics({f"found_rate_{k}": v for k, v in stats["found_rate_per_class"].items()})
    print(f"pseudo_label: {stats['class_instances']} class instances, {100 * stats['found_rate']:.1f}% found")


if __name__ == "__main__":
    run_stage(main)
