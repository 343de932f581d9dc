"""Stage `synth_dataset`: diffusion + grounding module -> a labelled VOC-layout dataset, all classes
(`groundiff.method.synth_dataset`).

Resumable (output `persist: true`): finished shards are kept; other params or models start over.
With `distributed.scheduler` set, the shards are made on a Dask cluster (groundiff.method.distributed).
With `synth_dataset.labels: oracle` the world's oracle labels the images (the oracle_labels study).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from groundiff.core import paths, tracking
from groundiff.core.io import project_path, write_json
from groundiff.method.distributed import run_synth_dataset
from groundiff.stages.common import open_stage, run_stage

OUT = paths.SYNTH_SEGMENTATION
METRICS = paths.metrics("synth_dataset")


def main() -> None:
    params, world = open_stage("synth_dataset")
    cfg = params.section("synth_dataset")
    dist = params.section("distributed")
    split, source, device = world.split, world.pipeline, params.world.device
    project_path(cfg.grounding_dir)  # a module folder from params must stay inside the project
    # passed as written (models/grounding), not resolved: it names the module in the output's fingerprint
    grounding = Path(cfg.grounding_dir)
    oracle = ((world.oracle_id, partial(world.load_oracle, score_threshold=cfg.oracle_score))
              if cfg.labels == "oracle" else None)
    with tracking.stage_run("synth_dataset", params.logged()) as run:
        stats = run_synth_dataset(source, grounding, split, cfg, OUT, dist, device, oracle=oracle)
        write_json(METRICS, stats)
        run.log_metrics({f"images_{k}": v for k, v in stats["images"].items()})
        run.log_metrics({f"pixel_share_{k}": v for k, v in stats["pixel_share"].items()})
        if "label_agreement" in stats:
            run.log_metrics({"label_agreement": stats["label_agreement"]})
    print(f"synth_dataset: {stats['images']} images under {OUT}")


if __name__ == "__main__":
    run_stage(main)
