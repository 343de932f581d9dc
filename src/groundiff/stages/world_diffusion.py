"""Stage `world_diffusion`: train the shapes world's text-to-image model (resumable).

Output: a diffusers StableDiffusionPipeline folder, committed to git (cache: false) so a fresh
clone does not retrain; `dvc repro --force world_diffusion` does. Training state lives in
`worlds/shapes/state/diffusion/` while training runs: an interrupted run resumes from its last
checkpoint; the state is deleted once the pipeline is saved.

voc / coco: Stable Diffusion comes from outside. The stage checks that the pipeline folder (or
the hub id's cached snapshot) is complete and writes `worlds/<world>/diffusion/source.json`:
which pipeline, and the hashes world_setup recorded, so later stages re-run when it changes.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from groundiff import tracking
from groundiff.config import to_dict
from groundiff import losslog
from groundiff.stages.common import Params, atomic_dir, run_stage, write_json
from groundiff.worlds.preflight import describe_diffusion, diffusion_folder, require_paper_world
from groundiff.worlds.shapes_diffusion import DiffusionConfig, RunOptions, train_diffusion

OUT = Path("worlds/shapes/diffusion")
STATE = Path("worlds/shapes/state/diffusion")
METRICS = Path("metrics/world_diffusion.json")
LOSS_PLOT = Path("metrics/world_diffusion_loss.csv")


@dataclass(frozen=True)
class WorldDiffusionParams:
    model: DiffusionConfig = field(default_factory=DiffusionConfig)
    run: RunOptions = field(default_factory=RunOptions)


PIPELINE_PARTS = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                  "tokenizer", "scheduler/scheduler_config.json")


def record_paper_pipeline(params: Params) -> Path:
    """voc / coco: check the external pipeline is complete; write its source record; return the folder."""
    world, settings = params.world.name, params.paper_world()
    require_paper_world(world, settings)
    sources = describe_diffusion(settings.diffusion)
    folder = diffusion_folder(settings.diffusion)
    missing = [part for part in PIPELINE_PARTS if not (folder / part).exists()]
    if missing:
        raise FileNotFoundError(f"{settings.diffusion}: the diffusers pipeline lacks {', '.join(missing)}; "
                                "a Stable Diffusion v1.x folder saved with save_pretrained has them all")
    unet = json.loads((folder / "unet" / "config.json").read_text())
    sources["unet"] = {k: unet.get(k) for k in ("sample_size", "block_out_channels", "cross_attention_dim")}
    out = Path("worlds") / world / "diffusion"
    with atomic_dir(out) as tmp:
        write_json(tmp / "source.json", sources)
    write_json(METRICS, {"world": world, "source": settings.diffusion, **sources["unet"]})
    LOSS_PLOT.write_text("step,loss\n")  # nothing was trained here
    return out


def main() -> None:
    params = Params()
    if params.world.name != "shapes":
        out = record_paper_pipeline(params)
        print(f"world_diffusion: the {params.world.name} world uses {params.paper_world().diffusion} "
              f"(recorded in {out}/source.json)")
        return
    p = params.section("world_diffusion", WorldDiffusionParams)
    opts = RunOptions(**{**to_dict(p.run), "device": params.world.device})
    with tracking.stage_run("world_diffusion", {"model": to_dict(p.model), "run": to_dict(opts)}) as run:
        with atomic_dir(OUT) as tmp:
            metrics = train_diffusion(p.model, opts, tmp, STATE, on_log=lambda m: run.log_metrics(
                {k: v for k, v in m.items() if k != "step"}, step=m["step"]))
        # The UNet loss curve as a DVC plot (smoothed over log intervals to keep the file small).
        rows = losslog.read_rows(STATE / "unet_log.csv")
        LOSS_PLOT.parent.mkdir(parents=True, exist_ok=True)
        with LOSS_PLOT.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "loss"])
            for i in range(0, len(rows), 20):
                chunk = rows[i:i + 20]
                writer.writerow([chunk[-1]["step"], sum(float(r["loss"]) for r in chunk) / len(chunk)])
        write_json(METRICS, metrics)
        # Training is complete and shipped: drop the resumable state, so that a forced rerun
        # (`dvc repro --force world_diffusion`) trains from scratch instead of resuming at the end.
        shutil.rmtree(STATE)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        run.log_artifact(LOSS_PLOT)
    print(f"world_diffusion: saved the pipeline to {OUT}")


if __name__ == "__main__":
    run_stage(main)
