"""Stage `eval_zs3`: score every trained segmenter variant on the world's real `val` split.

Outputs: `metrics/zs3.json` ({variant: {miou_seen, miou_unseen, hiou, per_class}}, percent),
`reports/zs3.md` (Table 2 for this run, the paper's VOC numbers beneath, labelled as the paper's)
and `reports/figures/zs3_predictions.png` (image | truth | each variant, VOC colours).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from groundiff.core import tracking
from groundiff.core.params import to_dict
from groundiff.data.voc import read_split
from groundiff.segmenter import Segmenter
from groundiff.core.io import write_json
from groundiff.stages.common import open_stage, run_stage
from groundiff.stages.train_segmenter import MODELS, TrainSegmenterParams, dvc_stage
from groundiff.eval.zs3 import BACKGROUND_MODES, evaluate, markdown_table, pick_figure_images, prediction_figure
from groundiff.core.schema import EvalZS3Params

METRICS = Path("metrics/zs3.json")
REPORT = Path("reports/zs3.md")
FIGURE = Path("reports/figures/zs3_predictions.png")


def main() -> None:
    params, world = open_stage("eval_zs3")
    cfg = params.section("eval_zs3")
    specs = params.section("train_segmenter").variants
    variants = list(specs)
    split = world.split
    real = world.real_data
    missing = [v for v in variants if not (MODELS / v / "segmenter.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"no trained segmenter for variant(s) {', '.join(missing)} under {MODELS}/; train them with "
            + " && ".join(f"`dvc repro {dvc_stage(v, specs[v])}`" for v in missing)
            + " (or `dvc repro eval_zs3`, which trains whatever is missing first)")
    with tracking.stage_run("eval_zs3", {"eval_zs3": to_dict(cfg), **params.logged(),
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
