"""Stage `synthesize`: generate an image per prompt-table row; store it with its capture-step latent.

Resumable: finished shards are kept (the output is `persist: true` in dvc.yaml) and only missing
ones are generated; a changed table, setting or model starts over. With `distributed.scheduler`
set, the shards are generated on a Dask cluster (groundiff.method.distributed): the same bytes.
"""

from __future__ import annotations

from pathlib import Path

from groundiff.core import tracking
from groundiff.core.params import to_dict
from groundiff.data.prompts import read_prompts
from groundiff.diffusion.pipeline import load_pipeline
from groundiff.method.distributed import DistributedConfig, synthesize_distributed
from groundiff.core.io import write_json
from groundiff.stages.common import open_stage, run_stage
from groundiff.method.synthesis import SynthesisConfig, model_fingerprint, synthesize

PROMPTS = Path("data/prompts/train.csv")
OUT = Path("data/synth/train")
METRICS = Path("metrics/synthesize.json")


def main() -> None:
    params, world = open_stage("synthesize")
    cfg = params.section("synthesize")
    dist = params.section("distributed")
    table = read_prompts(PROMPTS)
    source = world.pipeline
    model_id = model_fingerprint(source)  # by content: a retrained model does not resume old shards
    logged = {"synthesize": to_dict(cfg), **params.logged(), "distributed": to_dict(dist)}
    with tracking.stage_run("synthesize", logged) as run:
        if dist.serial:
            pipe = load_pipeline(source, params.world.device)
            stats = synthesize(pipe, table, cfg, OUT, model_id=model_id)
        else:  # each Dask worker loads the pipeline itself, from `source`
            stats = synthesize_distributed(source, table, cfg, OUT, model_id=model_id, dist=dist,
                                           device=params.world.device)
        write_json(METRICS, stats)
        run.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float))})
    print(f"synthesize: {stats['images']} images in {stats['shards']} shards under {OUT} "
          f"({stats['resumed_shards']} shards already done)")


if __name__ == "__main__":
    run_stage(main)
