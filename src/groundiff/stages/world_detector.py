"""Stage `world_detector`: train the shapes world's oracle Mask R-CNN and measure its mask AP.

Output: `worlds/shapes/detector/` (config.json + model.safetensors), committed to git so a fresh
clone does not retrain. Training state in `worlds/shapes/state/detector/` makes an interrupted
run resume; it is deleted once the detector is saved.

voc / coco: the oracle is a COCO-trained Mask R-CNN from outside. The stage loads it (so a bad
checkpoint fails here, not hours later) and writes `worlds/<world>/detector/source.json`.
"""

from __future__ import annotations

from groundiff.core import paths, tracking
from groundiff.core.io import write_json
from groundiff.core.training import publish
from groundiff.stages.common import open_stage, run_stage
from groundiff.worlds.paper_models import record_paper_oracle
from groundiff.worlds.shapes_detector import evaluate_mask_ap, train_detector

STAGE = "world_detector"
DATA, STATE = paths.real_data("shapes"), paths.world_state("shapes", "detector")
METRICS, LOSS_PLOT = paths.metrics(STAGE), paths.loss_plot(STAGE)


def main() -> None:
    params, world = open_stage(STAGE)
    name = params.world.name
    if name != "shapes":
        write_json(METRICS, record_paper_oracle(world, paths.world_detector(name)))
        LOSS_PLOT.write_text("step,loss\n")  # nothing was trained here
        print(f"{STAGE}: the {name} world's oracle loads (recorded in {paths.world_detector(name)}/source.json)")
        return
    cfg = params.section(STAGE)
    with tracking.stage_run(STAGE, params.logged()) as run:
        oracle = train_detector(DATA, world.classes, cfg, STATE, device=params.world.device,
                                on_log=lambda m: run.log_metrics({"loss": m["loss"]}, step=m["step"]))
        metrics = evaluate_mask_ap(oracle, DATA, "val")
        run.log_metrics({f"ap50_{k}": v for k, v in metrics["per_class_ap50"].items()})
        publish(run, STATE, metrics, METRICS, LOSS_PLOT, out=paths.world_detector(name), save=oracle.save_pretrained)
    print(f"{STAGE}: mask AP@0.5 on rendered val = {metrics['mask_ap50']:.3f}; saved to {paths.world_detector(name)}")


if __name__ == "__main__":
    run_stage(main)
