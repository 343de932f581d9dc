"""Stage `synthesize`: an image per prompt-table row, stored with its capture-step latent.

Resumable (the output is `persist: true`): finished shards are kept and only missing ones are
generated; a changed table, setting or model starts over. With `distributed.scheduler` set, the
shards are generated on a Dask cluster (`groundiff.method.distributed`): the same bytes.
"""

from __future__ import annotations

from groundiff.core import paths, tracking
from groundiff.core.io import write_json
from groundiff.data.prompts import read_prompts
from groundiff.method.distributed import run_synthesize
from groundiff.stages.common import open_stage, run_stage

PROMPTS = paths.PROMPTS
OUT = paths.SYNTH_TRAIN
METRICS = paths.metrics("synthesize")


def main() -> None:
    params, world = open_stage("synthesize")
    cfg = params.section("synthesize")
    dist = params.section("distributed")
    table = read_prompts(PROMPTS)
    source, device = world.pipeline, params.world.device
    with tracking.stage_run("synthesize", params.logged()) as run:
        stats = run_synthesize(source, table, cfg, OUT, dist, device)
        write_json(METRICS, stats)
        run.log_metrics(stats)
    print(f"synthesize: {stats['images']} images in {stats['shards']} shards under {OUT} "
          f"({stats['resumed_shards']} shards already done)")


if __name__ == "__main__":
    run_stage(main)
