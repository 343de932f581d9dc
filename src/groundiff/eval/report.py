"""reports/report.md: the run's results beside the paper's, in one page.

Reads the metrics JSON files the stages wrote (never recomputes anything) and the params that
matter, and lays out: the world, the world models' quality, Protocol I (grounding vs DAAM) and
Protocol II (zero-shot segmentation), each next to the paper's numbers — labelled as the
paper's, since those were measured on Stable Diffusion + PASCAL VOC, not on this world.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from groundiff.core import paths
from groundiff.core.schema import ShapesParams
from groundiff.eval.protocol1 import CATEGORIES as P1_KEYS
from groundiff.eval.protocol1 import PAPER_PASCAL_SIM
from groundiff.eval.zs3 import PAPER_TABLE2_VOC

P1_HEAD = ("one seen", "one unseen", "two seen", "two seen+unseen", "two unseen")
#: The paper's Protocol I rows (PASCAL-sim, average of 3 splits), in table order.
PAPER_P1 = {"DAAM": PAPER_PASCAL_SIM["daam"], "Grounded Diffusion": PAPER_PASCAL_SIM["ours"]}
#: The params.yaml sections of the method whose settings the report lists, in its order.
SETTINGS: tuple[str, ...] = ("synthesize", "train_grounding", "synth_dataset", "train_segmenter")
#: Settings left out of those lines while at their defaults (the paper's prompt wording, DDIM eta).
def _load(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.1f}"


def _stage(stage: str) -> str:
    return f"stage `{stage}`"


def protocol1_section(metrics: dict | None, how_to_run: Callable[[str], str] = _stage) -> str:
    lines = ["## Protocol I: grounding on synthetic images (mIoU %, oracle masks as ground truth)", ""]
    header = "| method | " + " | ".join(P1_HEAD) + " |\n|---|" + "---|" * len(P1_HEAD)
    if metrics:
        lines += ["This run:", "", header]
        for name, key in (("DAAM", "daam"), ("ours (grounding module)", "ours")):
            lines.append(f"| {name} | " + " | ".join(_fmt(metrics[key].get(k)) for k in P1_KEYS) + " |")
    else:
        lines.append(f"*Not yet run: {how_to_run('eval_grounding')}.*")
    lines += ["", "The paper's (Stable Diffusion + PASCAL-sim, average of 3 splits):", "", header]
    for name, values in PAPER_P1.items():
        lines.append(f"| {name} (paper) | " + " | ".join(_fmt(values[k]) for k in P1_KEYS) + " |")
    return "\n".join(lines) + "\n"


def protocol2_section(metrics: dict | None, how_to_run: Callable[[str], str] = _stage) -> str:
    lines = ["## Protocol II: zero-shot semantic segmentation on real data (mIoU %)", ""]
    header = "| model | seen | unseen | hIoU |\n|---|---|---|---|"
    if metrics:
        lines += ["This run:", "", header]
        for name, m in metrics.items():
            lines.append(f"| {name} | {_fmt(m.get('miou_seen'))} | {_fmt(m.get('miou_unseen'))} | {_fmt(m.get('hiou'))} |")
    else:
        lines.append(f"*Not yet run: {how_to_run('eval_zs3')}.*")
    lines += ["", "The paper's (PASCAL VOC):", "", header]
    for name, (s, u, h) in PAPER_TABLE2_VOC.items():
        lines.append(f"| {name} (paper) | {s} | {u} | {h} |")
    return "\n".join(lines) + "\n"


def world_section(root: Path, world: str, split: int, settings: Mapping[str, Any],
                  shapes: ShapesParams | None = None, paper: Mapping[str, Any] | None = None) -> str:
    """The world and the settings, `settings` and `paper` as params.yaml writes them (`Params.written`)."""
    lines = [f"## The world: `{world}`, split {split}", ""]
    setup = _load(root / paths.metrics("world_setup"))
    if setup:  # world_setup's summary: the split as the stages saw it, for every world
        lines += [f"- seen classes: {', '.join(setup['seen'])}", f"- unseen classes: {', '.join(setup['unseen'])}"]
    elif shapes is not None:
        unseen = shapes.splits.get(split, [])
        seen = [c for c in shapes.classes if c not in unseen]
        lines += [f"- seen classes: {', '.join(seen)}", f"- unseen classes: {', '.join(unseen)}"]
    if paper is not None:
        lines.append(f"- diffusion model: `{paper.get('diffusion')}`; oracle: "
                     f"`{json.dumps(paper.get('oracle', {}), sort_keys=True)}`")
    detector = _load(root / paths.metrics("world_detector"))
    fidelity = _load(root / paths.metrics("world_fidelity"))
    if detector and "mask_ap50" in detector:
        lines.append(f"- oracle detector: mask AP@0.5 {detector['mask_ap50']:.3f} on rendered val")
    if fidelity:
        lines.append(f"- diffusion fidelity: prompted class found in {100 * fidelity['one_object_recall']:.1f}% "
                     f"of one-object images, both classes in {100 * fidelity['two_object_both_recall']:.1f}% "
                     "of two-object images")
    for key, value in settings.items():
        lines.append(f"- `{key}`: `{json.dumps(value, sort_keys=True)}`")
    return "\n".join(lines) + "\n"


FIGURES = (
    ("World samples (prompt under each image)", "figures/world_fidelity_samples.png"),
    ("Protocol I overlays: image | oracle | ours | DAAM", "figures/protocol1_overlays.png"),
    ("Protocol II predictions", "figures/zs3_predictions.png"),
)


def build_report(world: str, split: int, settings: Mapping[str, Any], *, root: Path = Path("."),
                 shapes: ShapesParams | None = None, paper: Mapping[str, Any] | None = None,
                 how_to_run: Callable[[str], str] = _stage) -> str:
    """The whole report as markdown, from the metrics under `root`; figures are linked relative to reports/.

    world, split: `world.name` and `world.split`; settings: the SETTINGS sections (typed), listed as
    given; shapes: the shapes world's section (its split is listed when metrics/world_setup.json is
    absent); paper: a paper world's `voc` / `coco` section; how_to_run: names how a stage that has
    not run yet is run.
    """
    parts = ["# groundiff report", "",
             "Numbers are this run's, read from `metrics/`; the paper's are labelled as such.", "",
             world_section(root, world, split, settings, shapes, paper),
             protocol1_section(_load(root / paths.metrics("protocol1")), how_to_run),
             protocol2_section(_load(root / paths.metrics("zs3")), how_to_run), "## Figures", ""]
    for caption, rel in FIGURES:
        if (root / paths.REPORTS / rel).is_file():
            parts += [f"**{caption}**", "", f"![{caption}]({rel})", ""]
    return "\n".join(parts)
