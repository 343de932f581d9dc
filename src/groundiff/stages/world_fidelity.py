"""Stage `world_fidelity`: does the world's diffusion model draw the classes it is prompted with?

Generates a fixed, seeded set of one- and two-object prompts over all classes and asks the
world's detector which classes it finds. Bars (issue: world models): one-object recall >= 0.85,
two-object both-found recall >= 0.60.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from groundiff.core import tracking
from groundiff.core.params import to_dict
from groundiff.diffusion.pipeline import SamplingConfig, generate, load_pipeline
from groundiff.figures import captioned_grid
from groundiff.core.io import write_json
from groundiff.stages.common import open_stage, run_stage
from groundiff.worlds.fidelity import FidelityConfig, fidelity_metrics, fidelity_prompts
from groundiff.core.schema import WorldFidelityParams

METRICS = Path("metrics/world_fidelity.json")
TABLE = Path("reports/world_fidelity.md")
GRID = Path("reports/figures/world_fidelity_samples.png")


def markdown_table(metrics: dict) -> str:
    rows = [
        "| class | one-object recall | recall inside two-object images |",
        "|---|---|---|",
    ]
    for name, m in metrics["per_class"].items():
        fmt = lambda v: "—" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        rows.append(f"| {name} | {fmt(m['one_object_recall'])} | {fmt(m['in_two_object_recall'])} |")
    head = (
        f"One-object recall: **{100 * metrics['one_object_recall']:.1f}%** (bar 85%); "
        f"two-object both-found recall: **{100 * metrics['two_object_both_recall']:.1f}%** (bar 60%), "
        f"over {metrics['images']} generated images.\n\n"
    )
    return head + "\n".join(rows) + "\n"


def main() -> None:
    params, world = open_stage("world_fidelity")
    p = params.section("world_fidelity")
    split = world.split
    device = params.world.device
    with tracking.stage_run("world_fidelity", {"world_fidelity": to_dict(p), **params.logged()}) as run:
        pipe = load_pipeline(world.pipeline, device)
        oracle = world.load_oracle()
        table = fidelity_prompts(split.classes, p.prompts)
        images = []
        for i in tqdm(range(0, len(table), p.sampling.batch_size), desc="world_fidelity", mininterval=5):
            chunk = table.iloc[i:i + p.sampling.batch_size]
            images.extend(generate(pipe, list(chunk["prompt"]), list(chunk["seed"]), p.sampling))
        detections = oracle.detect(images)
        metrics = fidelity_metrics(table, detections, split.classes, p.prompts.score_threshold)
        write_json(METRICS, metrics)
        TABLE.parent.mkdir(parents=True, exist_ok=True)
        TABLE.write_text("# World fidelity\n\n" + markdown_table(metrics))
        # Sample grid: two one-object images of (up to 12 evenly spread) classes, then two-object images.
        n = p.prompts.one_per_class
        shown = list(range(0, len(split.classes), max(1, len(split.classes) // 12)))[:12]
        picks = [c * n + j for c in shown for j in range(min(2, n))]
        picks += list(range(len(split.classes) * p.prompts.one_per_class, len(table)))[:16]
        GRID.parent.mkdir(parents=True, exist_ok=True)
        captioned_grid([images[i] for i in picks], [table.iloc[i]["prompt"].removeprefix("a photograph of ") for i in picks],
                       columns=6).save(GRID)
        run.log_metrics({"one_object_recall": metrics["one_object_recall"],
                         "two_object_both_recall": metrics["two_object_both_recall"]})
        run.log_artifact(GRID)
        run.log_artifact(TABLE)
    print(f"world_fidelity: one-object recall {metrics['one_object_recall']:.3f}, "
          f"two-object both {metrics['two_object_both_recall']:.3f}")


if __name__ == "__main__":
    run_stage(main)
