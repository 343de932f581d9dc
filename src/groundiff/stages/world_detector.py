"""Stage `world_detector`: train the shapes world's oracle Mask R-CNN and measure its mask AP.

Output: `worlds/shapes/detector/` (config.json + model.safetensors), committed to git so a fresh
clone does not retrain. Training state in `worlds/shapes/state/detector/` makes an interrupted
run resume; it is deleted once the detector is saved.

voc / coco: the oracle is a COCO-trained Mask R-CNN from outside. The stage loads it (so a bad
checkpoint fails here, not hours later) and writes `worlds/<world>/detector/source.json`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from groundiff.core import tracking
from groundiff.core.params import to_dict
from groundiff.core.io import atomic_dir, write_json
from groundiff.stages.common import open_stage, run_stage
from groundiff.worlds.active import World
from groundiff.worlds.base import WorldError
from groundiff.worlds.preflight import describe_oracle, require_paper_world
from groundiff.worlds.shapes_detector import DetectorConfig, evaluate_mask_ap, train_detector

DATA = Path("data/shapes/real")
OUT = Path("worlds/shapes/detector")
STATE = Path("worlds/shapes/state/detector")
METRICS = Path("metrics/world_detector.json")
LOSS_PLOT = Path("metrics/world_detector_loss.csv")


def record_paper_oracle(active: World) -> Path:
    """voc / coco: load the external oracle once (it must load) and write its source record."""
    world, settings = active.name, active.paper
    require_paper_world(world, settings)
    oracle = active.load_oracle()
    record = {**describe_oracle(settings.oracle), "classes": list(oracle.classes)}
    missing = sorted(set(active.split.classes) - set(oracle.classes))
    if missing:
        raise WorldError(f"the {world} oracle cannot detect {missing}; it needs every class of the world")
    out = Path("worlds") / world / "detector"
    with atomic_dir(out) as tmp:
        write_json(tmp / "source.json", record)
    write_json(METRICS, {"world": world, "weights": record["weights"], "world_classes_detected": len(oracle.classes)})
    LOSS_PLOT.parent.mkdir(parents=True, exist_ok=True)
    LOSS_PLOT.write_text("step,loss\n")  # nothing was trained here
    return out


def main() -> None:
    params, world = open_stage("world_detector")
    if params.world.name != "shapes":
        out = record_paper_oracle(world)
        print(f"world_detector: the {params.world.name} world's oracle loads (recorded in {out}/source.json)")
        return
    cfg = params.section("world_detector")
    split = world.split
    with tracking.stage_run("world_detector", {"world_detector": to_dict(cfg), **params.logged()}) as run:
        oracle = train_detector(DATA, split.classes, cfg, STATE, device=params.world.device,
                                on_log=lambda m: run.log_metrics({"loss": m["loss"]}, step=m["step"]))
        metrics = evaluate_mask_ap(oracle, DATA, "val")
        with atomic_dir(OUT) as tmp:
            oracle.save_pretrained(tmp)
        LOSS_PLOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(STATE / "log.csv", LOSS_PLOT)
        write_json(METRICS, metrics)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        run.log_metrics({f"ap50_{k}": v for k, v in metrics["per_class_ap50"].items()})
        shutil.rmtree(STATE)
    print(f"world_detector: mask AP@0.5 on rendered val = {metrics['mask_ap50']:.3f}; saved to {OUT}")


if __name__ == "__main__":
    run_stage(main)
