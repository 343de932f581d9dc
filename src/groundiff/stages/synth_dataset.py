"""Stage `synth_dataset`: diffusion + grounding module -> a labelled VOC-layout dataset, all classes.

Resumable (output `persist: true`): finished shards are kept; other params or models start over.
With `distributed.scheduler` set, the shards are made on a Dask cluster (groundiff.method.distributed).
"""

from __future__ import annotations

from pathlib import Path

from groundiff.core import tracking
from groundiff.core.params import to_dict
from groundiff.diffusion.pipeline import load_pipeline
from groundiff.method.distributed import DistributedConfig, synth_dataset_distributed
from groundiff.method.grounding import GroundingModule
from groundiff.core.io import write_json
from groundiff.stages.common import open_stage, run_stage
from groundiff.method.synth_dataset import SynthDatasetConfig, synth_dataset
from groundiff.method.synthesis import model_fingerprint

GROUNDING = Path("models/grounding")
OUT = Path("data/synth/segmentation")
METRICS = Path("metrics/synth_dataset.json")


def main() -> None:
    params, world = open_stage("synth_dataset")
    cfg = params.section("synth_dataset")
    dist = params.section("distributed")
    split = world.split
    source = world.pipeline
    model_ids = [model_fingerprint(source), model_fingerprint(GROUNDING)]  # retrained models start over
    logged = {"synth_dataset": to_dict(cfg), **params.logged(), "distributed": to_dict(dist)}
    with tracking.stage_run("synth_dataset", logged) as run:
        if dist.serial:
            module = GroundingModule.from_pretrained(GROUNDING, device=params.world.device)
            pipe = load_pipeline(source, params.world.device)
            stats = synth_dataset(pipe, module, split, cfg, OUT, model_ids=model_ids)
        else:  # each Dask worker loads the pipeline and the grounding module itself
            stats = synth_dataset_distributed(source, GROUNDING, split, cfg, OUT, model_ids=model_ids, dist=dist,
                                              device=params.world.device)
        write_json(METRICS, stats)
        run.log_metrics({f"images_{k}": v for k, v in stats["images"].items()})
        run.log_metrics({f"pixel_share_{k}": v for k, v in stats["pixel_share"].items()})
    print(f"synth_dataset: {stats['images']} images under {OUT}")


if __name__ == "__main__":
    run_stage(main)
