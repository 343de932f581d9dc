"""Stage `train_grounding`: the grounding module on the seen classes' pseudo-labelled images.

Output: `models/grounding/` (`GroundingModule.from_pretrained` loads it), built in
`models/grounding.partial/` and swapped in when complete. Training state in
`models/grounding_state/` makes an interrupted run resume; it is deleted once the module is saved,
so that `dvc repro --force train_grounding` trains from scratch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from groundiff.core import tracking
from groundiff.core.params import to_dict
from groundiff.diffusion.pipeline import load_pipeline
from groundiff.method.grounding.train import LOG_NAME, TrainConfig, train_grounding
from groundiff.core.io import atomic_dir, write_json
from groundiff.stages.common import open_stage, run_stage

SYNTH = Path("data/synth/train")
LABELS = Path("data/synth/train_labels")
OUT = Path("models/grounding")
STATE = Path("models/grounding_state")
METRICS = Path("metrics/train_grounding.json")
LOSS_PLOT = Path("metrics/train_grounding_loss.csv")


def main() -> None:
    params, world = open_stage("train_grounding")
    cfg = params.section("train_grounding")
    split = world.split
    source = world.pipeline
    logged = {"train_grounding": to_dict(cfg), **params.logged(), "seen_classes": list(split.seen)}
    with tracking.stage_run("train_grounding", logged) as run:
        pipe = load_pipeline(source, params.world.device)
        model, metrics = train_grounding(pipe, SYNTH, LABELS, split.seen, cfg, STATE, params.world.device,
                                         on_log=lambda m: run.log_metrics({"loss": m["loss"]}, step=m["step"]))
        with atomic_dir(OUT) as tmp:
            model.save_pretrained(tmp)
        LOSS_PLOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(STATE / LOG_NAME, LOSS_PLOT)  # columns step, loss: a DVC plot
        write_json(METRICS, metrics)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        run.log_artifact(LOSS_PLOT)
        # The module is saved: drop the resumable state (a forced rerun must not resume at the end).
        shutil.rmtree(STATE)
    print(f"train_grounding: {metrics['steps']} steps on {metrics['images_used']} images "
          f"({', '.join(metrics['classes'])}), final loss {metrics['final_loss']:.4f}; saved to {OUT}")


if __name__ == "__main__":
    run_stage(main)
