"""reports/report.md: the run's results beside the paper's, in one page.

Reads the metrics JSON files the stages wrote (never recomputes anything) and the params that
matter, and lays out: the world, the world models' quality, Protocol I (grounding vs DAAM) and
Protocol II (zero-shot segmentation), each next to the paper's numbers — labelled as the
paper's, since those were measured on Stable Diffusion + PASCAL VOC, not on this world.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from groundiff.eval.protocol1 import CATEGORIES as P1_KEYS
from groundiff.eval.protocol1 import PAPER_PASCAL_SIM
from groundiff.eval.zs3 import PAPER_TABLE2_VOC

P1_HEAD = ("one seen", "one unseen", "two seen", "two seen+unseen", "two unseen")
#: The paper's Protocol I rows (PASCAL-sim, average of 3 splits), in table order.
PAPER_P1 = {"DAAM": PAPER_PASCAL_SIM["daam"], "Grounded Diffusion": PAPER_PASCAL_SIM["ours"]}


def _load(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.1f}"


def protocol1_section(metrics: dict | None) -> str:
    lines = ["## Protocol I: grounding on synthetic images (mIoU %, oracle masks as ground truth)", ""]
    header = "| method | " + " | ".join(P1_HEAD) + " |\n|---|" + "---|" * len(P1_HEAD)
    if metrics:
        lines += ["This run:", "", header]
        for name, key in (("DAAM", "daam"), ("ours (grounding module)", "ours")):
            lines.append(f"| {name} | " + " | ".join(_fmt(metrics[key].get(k)) for k in P1_KEYS) + " |")
    else:
        lines.append("*Not yet run: `dvc repro eval_grounding`.*")
    lines += ["", "The paper's (Stable Diffusion + PASCAL-sim, average of 3 splits):", "", header]
    for name, values in PAPER_P1.items():
        lines.append(f"| {name} (paper) | " + " | ".join(_fmt(values[k]) for k in P1_KEYS) + " |")
    return "\n".join(lines) + "\n"


def protocol2_section(metrics: dict | None) -> str:
    lines = ["## Protocol II: zero-shot semantic segmentation on real data (mIoU %)", ""]
    header = "| model | seen | unseen | hIoU |\n|---|---|---|---|"
    if metrics:
        lines += ["This run:", "", header]
        for name, m in metrics.items():
            lines.append(f"| {name} | {_fmt(m.get('miou_seen'))} | {_fmt(m.get('miou_unseen'))} | {_fmt(m.get('hiou'))} |")
    else:
        lines.append("*Not yet run: `dvc repro eval_zs3`.*")
    lines += ["", "The paper's (PASCAL VOC):", "", header]
    for name, (s, u, h) in PAPER_TABLE2_VOC.items():
        lines.append(f"| {name} (paper) | {s} | {u} | {h} |")
    return "\n".join(lines) + "\n"


def world_section(params: dict, root: Path) -> str:
    world = params.get("world", {})
    lines = [f"## The world: `{world.get('name')}`, split {world.get('split')}", ""]
    setup = _load(root / "metrics/world_setup.json")
    if setup:  # world_setup's summary: the split as the stages saw it, for every world
        lines += [f"- seen classes: {', '.join(setup['seen'])}", f"- unseen classes: {', '.join(setup['unseen'])}"]
    elif world.get("name") == "shapes":
        shapes = params.get("shapes", {})
        unseen = shapes.get("splits", {}).get(world.get("split"), [])
        seen = [c for c in shapes.get("classes", []) if c not in unseen]
        lines += [f"- seen classes: {', '.join(seen)}", f"- unseen classes: {', '.join(unseen)}"]
    if world.get("name") in ("voc", "coco"):
        settings = params.get(world["name"], {})
        lines.append(f"- diffusion model: `{settings.get('diffusion')}`; oracle: "
                     f"`{json.dumps(settings.get('oracle', {}), sort_keys=True)}`")
    detector = _load(root / "metrics/world_detector.json")
    fidelity = _load(root / "metrics/world_fidelity.json")
    if detector and "mask_ap50" in detector:
        lines.append(f"- oracle detector: mask AP@0.5 {detector['mask_ap50']:.3f} on rendered val")
    if fidelity:
        lines.append(f"- diffusion fidelity: prompted class found in {100 * fidelity['one_object_recall']:.1f}% "
                     f"of one-object images, both classes in {100 * fidelity['two_object_both_recall']:.1f}% "
                     "of two-object images")
    for key in ("synthesize", "train_grounding", "synth_dataset", "train_segmenter"):
        if key in params:
            lines.append(f"- `{key}`: `{json.dumps(params[key], sort_keys=True)}`")
    return "\n".join(lines) + "\n"


FIGURES = (
    ("World samples (prompt under each image)", "figures/world_fidelity_samples.png"),
    ("Protocol I overlays: image | oracle | ours | DAAM", "figures/protocol1_overlays.png"),
    ("Protocol II predictions", "figures/zs3_predictions.png"),
)


def build_report(params: dict, root: Path) -> str:
    """The whole report as markdown; figures are linked relative to reports/."""
    parts = ["# groundiff report", "",
             "Numbers are this run's, read from `metrics/`; the paper's are labelled as such.", "",
             world_section(params, root),
             protocol1_section(_load(root / "metrics/protocol1.json")),
             protocol2_section(_load(root / "metrics/zs3.json")), "## Figures", ""]
    for caption, rel in FIGURES:
        if (root / "reports" / rel).is_file():
            parts += [f"**{caption}**", "", f"![{caption}]({rel})", ""]
    return "\n".join(parts)
