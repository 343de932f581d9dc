"""Stage `prompts`: the table of training prompts over the seen classes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from groundiff.core import tracking
from groundiff.core.params import to_dict
from groundiff.data.prompts import PromptConfig, class_list, sample_prompts
from groundiff.core.io import write_json
from groundiff.stages.common import open_stage, run_stage

OUT = Path("data/prompts/train.csv")
METRICS = Path("metrics/prompts.json")


def main() -> None:
    params, world = open_stage("prompts")
    cfg = params.section("prompts")
    split = world.split
    with tracking.stage_run("prompts", {"prompts": to_dict(cfg), **params.logged()}) as run:
        table = sample_prompts(split.seen, cfg)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        tmp = OUT.with_suffix(".csv.partial")
        table.to_csv(tmp, index=False)
        tmp.replace(OUT)
        counts = Counter(c for cell in table["classes"] for c in class_list(cell))
        metrics = {
            "rows": len(table),
            "two_object_share": float((table["n_objects"] == 2).mean()),
            "class_counts": dict(sorted(counts.items())),
        }
        write_json(METRICS, metrics)
        run.log_metrics({"rows": metrics["rows"], "two_object_share": metrics["two_object_share"]})
        run.log_artifact(OUT)
    print(f"prompts: wrote {len(table)} rows over {len(split.seen)} seen classes to {OUT}")


if __name__ == "__main__":
    run_stage(main)
