"""Stage `world_binding`: does the world's diffusion model bind each class word to its object?

The text encoder's class-word states (pairwise cosine over classes) and the UNet's cross-attention to
the class word on seeded one-object images, read against the world's detector: DAAM's mIoU and, per
cross-attention layer, the attention inside vs outside the object (`groundiff.worlds.binding`).
Metrics: the headline numbers and whether each bar of `BARS` is met; the report has every layer.
"""

from __future__ import annotations

from groundiff.core import paths, tracking
from groundiff.core.io import write_json
from groundiff.diffusion.pipeline import load_pipeline
from groundiff.stages.common import open_stage, run_stage
from groundiff.worlds.binding import attention_binding, bars_met, binding_report, class_word_cosine

STAGE = "world_binding"
METRICS, REPORT = paths.metrics(STAGE), paths.WORLD_BINDING_REPORT


def headline(metrics: dict) -> dict:
    """The numbers a reader compares across world models, flat, and the bars met."""
    cos, att = metrics["cosine"], metrics["attention"]
    return {
        "class_word_cosine_mean": cos["class_word"]["mean"],
        "class_word_cosine_max": cos["class_word"]["max"],
        "eos_cosine_mean": cos["eos"]["mean"],
        "daam_miou": att["daam_miou"],
        "layers_inside_gt_outside": att["layers_inside_gt_outside"],
        "n_layers": att["n_layers"],
        "images": att["images"],
        "scored": att["scored"],
        "bars_met": bars_met(metrics),
    }


def main() -> None:
    params, world = open_stage(STAGE)
    cfg = params.section(STAGE)
    with tracking.stage_run(STAGE, params.logged()) as run:
        pipe = load_pipeline(world.pipeline, params.world.device)
        oracle = world.load_oracle(cfg.oracle_score_threshold)
        metrics = {"cosine": class_word_cosine(pipe, world.classes, cfg.template),
                   "attention": attention_binding(pipe, oracle, world.classes, cfg, progress=True)}
        metrics["attention"].pop("per_image")  # one row per image: the report's tables carry the rest
        summary = headline(metrics)
        write_json(METRICS, {**summary, "cosine": metrics["cosine"], "attention": metrics["attention"]})
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(f"# Does the world's model bind class words to objects? ({params.world.name})\n\n"
                          + binding_report(metrics))
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
        run.log_artifact(REPORT)
    print(f"{STAGE}: class-word cosine {summary['class_word_cosine_mean']:.3f}, DAAM {summary['daam_miou']} mIoU, "
          f"inside > outside in {summary['layers_inside_gt_outside']}/{summary['n_layers']} layers")


if __name__ == "__main__":
    run_stage(main)
