"""Stage `eval_zs3`: score every trained segmenter variant on the world's real `val` split.

Outputs: `metrics/zs3.json` ({variant: {miou_seen, miou_unseen, hiou, per_class}}, percent),
`reports/zs3.md` (Table 2 for this run, the paper's VOC numbers beneath, labelled as the paper's)
and `reports/figures/zs3_predictions.png` (image | truth | each variant, VOC colours).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from groundiff import tracking
from groundiff.config import to_dict
from groundiff.data.voc import read_split
from groundiff.segmenter import Segmenter
from groundiff.stages.common import Params, pin_threads, real_data, run_stage, write_json
from groundiff.stages.train_segmenter import MODELS, TrainSegmenterParams, dvc_stage
from groundiff.zs3 import BACKGROUND_MODES, evaluate, markdown_table, pick_figure_images, prediction_figure

METRICS = Path("metrics/zs3.json")
REPORT = Path("reports/zs3.md")
FIGURE = Path("reports/figures/zs3_predictions.png")


@dataclass(frozen=True)
class EvalZS3Params:
    """params.yaml `eval_zs3`."""

    split: str = "val"  # the real split scored (every class labelled)
    background: str = "ignore"  # ignore: background pixels skipped (ZegFormer's VOC) | seen: a seen class
    batch_size: int = 64  # images per forward pass
    figure_images: int = 6  # rows of the prediction figure (about 2/3 showing an unseen class)

    def __post_init__(self) -> None:
        if self.background not in BACKGROUND_MODES:
            raise ValueError(f"background: {self.background!r} is not one of {', '.join(BACKGROUND_MODES)}")
        if self.batch_size <= 0 or self.figure_images <= 0:
            raise ValueError("batch_size and figure_images must be positive")


def main() -> None:
    params = Params()
    pin_threads(params.world)
    cfg = params.section("eval_zs3", EvalZS3Params)
    specs = params.section("train_segmenter", TrainSegmenterParams).variants
    variants = list(specs)
    split = params.class_split()
    real = real_data(params)
    missing = [v for v in variants if not (MODELS / v / "segmenter.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"no trained segmenter for variant(s) {', '.join(missing)} under {MODELS}/; train them with "
            + " && ".join(f"`dvc repro {dvc_stage(v, specs[v])}`" for v in missing)
            + " (or `dvc repro eval_zs3`, which trains whatever is missing first)")
    with tracking.stage_run("eval_zs3", {"eval_zs3": to_dict(cfg), "world": to_dict(params.world),
                                         "variants": variants}) as run:
        results, segmenters = {}, {}
        for name in variants:
            segmenters[name] = Segmenter.from_pretrained(MODELS / name, device=params.world.device)
            results[name], _ = evaluate(segmenters[name], real.root, cfg.split, split, cfg.background, cfg.batch_size)
        write_json(METRICS, results)
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(markdown_table(results, split, cfg.background, params.world.name))
        samples = list(read_split(Path(real.root), cfg.split))
        truths = [label for _, _, label in samples]
        picked = pick_figure_images(truths, split, cfg.figure_images)
        images = [samples[i][1] for i in picked]
        predictions = {name: seg.predict(images) for name, seg in segmenters.items()}
        prediction_figure(images, [truths[i] for i in picked], predictions, split, FIGURE)
        flat = {f"{name}.{key}": value for name, r in results.items() for key, value in r.items()
                if key != "per_class" and value is not None}
        flat.update({f"{name}.iou_{c}": v for name, r in results.items() for c, v in r["per_class"].items()
                     if v is not None and np.isfinite(v)})
        run.log_metrics(flat)
        run.log_artifact(REPORT)
        run.log_figure(FIGURE)
    for name, r in results.items():
        print(f"eval_zs3 {name}: seen {r['miou_seen']}, unseen {r['miou_unseen']}, hIoU {r['hiou']}")


if __name__ == "__main__":
    run_stage(main)
