"""Stage `train_grounding`: the grounding module on the seen classes' pseudo-labelled images.

Output: `models/grounding/` (`GroundingModule.from_pretrained` loads it), its metrics and loss
curve. Training state in `models/grounding_state/` makes an interrupted run resume; it is deleted
once the module is saved, so that `dvc repro --force train_grounding` trains from scratch.
"""

from __future__ import annotations

from groundiff.core import paths, tracking
from groundiff.core.training import publish
from groundiff.diffusion.pipeline import load_pipeline
from groundiff.method.grounding.train import train_grounding
from groundiff.stages.common import open_stage, run_stage

STAGE = "train_grounding"


def main() -> None:
    params, world = open_stage(STAGE)
    cfg = params.section(STAGE)
    split, source = world.split, world.pipeline
    logged = {**params.logged(), "seen_classes": list(split.seen)}
    with tracking.stage_run(STAGE, logged) as run:
        pipe = load_pipeline(source, params.world.device)
        model, metrics = train_grounding(pipe, paths.SYNTH_TRAIN, paths.SYNTH_LABELS, split.seen, cfg,
                                         paths.GROUNDING_STATE, params.world.device,
                                         on_log=lambda m: run.log_metrics({"loss": m["loss"]}, step=m["step"]))
        publish(run, paths.GROUNDING_STATE, metrics, paths.metrics(STAGE), paths.loss_plot(STAGE),
                out=paths.GROUNDING, save=model.save_pretrained)
    print(f"{STAGE}: {metrics['steps']} steps on {metrics['images_used']} images "
          f"({', '.join(metrics['classes'])}), final loss {metrics['final_loss']:.4f}; saved to {paths.GROUNDING}")


if __name__ == "__main__":
    run_stage(main)
