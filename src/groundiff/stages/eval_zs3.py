"""Stage `eval_zs3`: score the trained segmenter variants (`eval_zs3.variants`, default all) on a
real split of the world (`eval_zs3.split`: `val`, the headline, or `dev`, held-out train images on
which every setting is chosen) (`groundiff.eval.zs3`).

Outputs: `metrics/zs3.json` ({variant: {miou_seen, miou_unseen, hiou, per_class}}, percent),
`reports/zs3.md` (Table 2 for this run, the paper's VOC numbers beneath, labelled as the paper's)
and `reports/figures/zs3_predictions.png` (image | truth | each variant, VOC colours).
`eval_zs3.appearance` other than `real` scores the images made to look generated (the appearance
study; `groundiff.eval.appearance`); the figure shows them as they are.
"""

from __future__ import annotations

from groundiff.core import paths, tracking
from groundiff.core.io import write_json
from groundiff.eval.appearance import alteration
from groundiff.eval.zs3 import dvc_stage, flat_metrics, markdown_table, missing_variants, score_variants, variants_figure
from groundiff.stages.common import open_stage, run_stage

MODELS = paths.SEGMENTERS
METRICS = paths.metrics("zs3")
REPORT = paths.ZS3_TABLE
FIGURE = paths.ZS3_FIGURE


def main() -> None:
    params, world = open_stage("eval_zs3")
    cfg = params.section("eval_zs3")
    specs = params.get("train_segmenter.variants")
    specs = {name: specs[name] for name in (cfg.variants or specs)}
    split, real, device = world.split, world.scored_data(cfg.split), params.world.device
    missing = missing_variants(MODELS, list(specs))
    if missing:
        raise FileNotFoundError(
            f"no trained segmenter for variant(s) {', '.join(missing)} under {MODELS}/; train them with "
            + " && ".join(f"`dvc repro {dvc_stage(v, specs[v])}`" for v in missing)
            + " (or `dvc repro eval_zs3`, which trains whatever is missing first)")
    with tracking.stage_run("eval_zs3", {**params.logged(), "variants": list(specs)}) as run:
        appearance = alteration(cfg.appearance, paths.SYNTH_SEGMENTATION)  # None: the images as they are
        results, segmenters = score_variants(MODELS, list(specs), real, split, cfg, device, appearance)
        write_json(METRICS, results)
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        altered = ("" if appearance is None else f"\nThe scored images were made to look generated: "
                   f"`{cfg.appearance}` (groundiff.eval.appearance).\n")
        REPORT.write_text(markdown_table(results, split, cfg.background, params.world.name, cfg.split) + altered)
        variants_figure(segmenters, real, split, cfg, FIGURE)
        run.log_metrics(flat_metrics(results))
        run.log_artifact(REPORT)
        run.log_figure(FIGURE)
    for name, r in results.items():
        print(f"eval_zs3 {name}: seen {r['miou_seen']}, unseen {r['miou_unseen']}, hIoU {r['hiou']}")


if __name__ == "__main__":
    run_stage(main)
