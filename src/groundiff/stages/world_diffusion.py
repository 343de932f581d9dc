"""Stage `world_diffusion`: train the shapes world's text-to-image model (resumable).

Output: a diffusers StableDiffusionPipeline folder, committed to git (cache: false) so a fresh
clone does not retrain; `dvc repro --force world_diffusion` does. Training state lives in
`worlds/shapes/state/diffusion/` while training runs: an interrupted run resumes from its last
checkpoint; the state is deleted once the pipeline is saved.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from groundiff import tracking
from groundiff.config import to_dict
from groundiff import losslog
from groundiff.stages.common import Params, atomic_dir, run_stage, write_json
from groundiff.worlds.shapes_diffusion import DiffusionConfig, RunOptions, train_diffusion

OUT = Path("worlds/shapes/diffusion")
STATE = Path("worlds/shapes/state/diffusion")
METRICS = Path("metrics/world_diffusion.json")
LOSS_PLOT = Path("metrics/world_diffusion_loss.csv")


@dataclass(frozen=True)
class WorldDiffusionParams:
    model: DiffusionConfig = field(default_factory=DiffusionConfig)
    run: RunOptions = field(default_factory=RunOptions)


def main() -> None:
    params = Params()
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
