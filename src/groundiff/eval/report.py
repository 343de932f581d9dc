"""The run's results beside the paper's and the targets: reports/report.md, docs/results.md and the
README's results block, all from the metrics the stages wrote (never recomputed, never pasted).

1. `protocol1_table` / `protocol2_table`: the headline tables, this run's rows, the targets (met or
   missed) and the paper's numbers, labelled as the paper's (Stable Diffusion + PASCAL VOC, not this
   world).
2. `build_report`: reports/report.md: the world, its models' quality, the settings, both tables,
   the figures.
3. `results_page`: docs/results.md, the user's page: the same tables, the pair counts and the
   calibrated threshold, the studies under reports/studies/ when there are any, the figures.
4. `readme_block` / `replace_readme_block`: the README's short results table, the same numbers,
   between the `<!-- results:begin -->` and `<!-- results:end -->` markers.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from groundiff.core import paths
from groundiff.core.schema import ShapesParams
from groundiff.eval.protocol1 import CATEGORIES as P1_KEYS
from groundiff.eval.protocol1 import CATEGORY_LABELS, PAPER_PASCAL_SIM
from groundiff.eval.zs3 import PAPER_TABLE2_VOC
from groundiff.worlds.bars import BINDING_BARS, DETECTOR_BAR, FIDELITY_BARS

P1_HEAD = tuple(CATEGORY_LABELS[c] for c in P1_KEYS)
#: The paper's Protocol I rows (PASCAL-sim, average of 3 splits), in table order.
PAPER_P1 = {"DAAM": PAPER_PASCAL_SIM["daam"], "Grounded Diffusion": PAPER_PASCAL_SIM["ours"]}
#: The params.yaml sections of the method whose settings the report lists, in its order.
SETTINGS: tuple[str, ...] = ("synthesize", "train_grounding", "synth_dataset", "train_segmenter")

#: The project's Protocol I targets for the grounding module's headline row: category -> (margin,
#: over what): ("abs", 85) is mIoU >= 85; ("daam", 20) is at least 20 points above DAAM's mIoU.
P1_TARGETS: dict[str, tuple[str, float]] = {"one_seen": ("abs", 85.0), "one_unseen": ("daam", 20.0),
                                            "two_unseen": ("daam", 10.0)}
#: Protocol II: the variant whose hIoU is 100%, and each target's share of it.
P2_REFERENCE = "real_all"
P2_TARGETS: dict[str, float] = {"C": 0.80, "D": 0.90}
#: Bars of the world models (worlds/fidelity.py, the world-models issue).

README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"
_README_BLOCK = re.compile(re.escape(README_BEGIN) + r"\n.*?" + re.escape(README_END), re.S)
STUDIES = paths.REPORTS / "studies"


def _load(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.1f}"


def _stage(stage: str) -> str:
    return f"stage `{stage}`"


@dataclass(frozen=True)
class Facts:
    """How the numbers were made, as the report stage's params say (the tables' captions)."""

    mask_threshold: float = 0.5  # eval_grounding.mask_threshold: ours' headline mask
    zs3_split: str = "val"  # eval_zs3.split: the real split Protocol II scored


# --- 1. the headline tables -------------------------------------------------------------------


def protocol1_rows(metrics: Mapping[str, Any], details: Mapping[str, Any] | None = None,
                   facts: Facts = Facts()) -> list[tuple[str, dict]]:
    """This run's rows (label, {category: mIoU}): DAAM, ours, then ours in the other test-time
    normalisation when eval_grounding scored it (protocol1_details.json's `norm_at_test`, or a third
    entry of protocol1.json itself)."""
    norm = (details or {}).get("norm_at_test") or {}
    mode = f", norm_at_test {norm['headline']}" if norm.get("headline") else ""
    rows = [("DAAM (this run)", metrics["daam"]),
            (f"grounding module (this run, p > {facts.mask_threshold}{mode})", metrics["ours"])]
    if norm.get("ours_other"):
        rows.append((f"grounding module (this run, p > {facts.mask_threshold}, norm_at_test {norm['other']})",
                     norm["ours_other"]))
    for key, values in metrics.items():  # a further row written into protocol1.json itself
        if key not in ("ours", "daam") and isinstance(values, Mapping) and set(values) >= set(P1_KEYS):
            rows.append((f"grounding module (this run, {key})", dict(values)))
    return rows


def protocol1_targets(metrics: Mapping[str, Any]) -> dict[str, str]:
    """{category: "≥ 85 (met)"}: each target of the headline row, with its bar and whether it was met."""
    out = {}
    for cat, (kind, margin) in P1_TARGETS.items():
        ours, daam = metrics["ours"].get(cat), metrics["daam"].get(cat)
        if kind == "abs":
            bar, text = margin, f"≥ {margin:.0f}"
        else:
            bar = None if daam is None else daam + margin
            text = f"≥ DAAM + {margin:.0f}"
        met = None if ours is None or bar is None else ours >= bar
        out[cat] = text + ("" if met is None else " (met)" if met else " (missed)")
    return out


_P1_HEADER = "| method | " + " | ".join(P1_HEAD) + " |\n|---|" + "---|" * len(P1_HEAD)


def _paper_p1_rows() -> list[str]:
    return [f"| {name} (paper, SD + PASCAL-sim) | " + " | ".join(_fmt(values[k]) for k in P1_KEYS) + " |"
            for name, values in PAPER_P1.items()]


def protocol1_table(metrics: Mapping[str, Any], details: Mapping[str, Any] | None = None,
                    facts: Facts = Facts()) -> str:
    """Protocol I: this run's rows, the targets, the paper's rows, one markdown table."""
    lines = [_P1_HEADER]
    for label, values in protocol1_rows(metrics, details, facts):
        lines.append(f"| {label} | " + " | ".join(_fmt(values.get(k)) for k in P1_KEYS) + " |")
    targets = protocol1_targets(metrics)
    lines.append("| target (the first grounding module row) | " + " | ".join(targets.get(k, "") for k in P1_KEYS) + " |")
    return "\n".join([*lines, *_paper_p1_rows()]) + "\n"


def _variants(metrics: Mapping[str, Any]) -> dict[str, dict]:
    return {k: v for k, v in metrics.items() if isinstance(v, Mapping) and "hiou" in v}


def share(metrics: Mapping[str, Any], variant: str) -> float | None:
    """Variant's hIoU as a fraction of the reference's (real_all); None without one."""
    ref = _variants(metrics).get(P2_REFERENCE, {}).get("hiou")
    h = _variants(metrics).get(variant, {}).get("hiou")
    return None if not ref or h is None else h / ref


def protocol2_table(metrics: Mapping[str, Any]) -> str:
    """Protocol II: each variant's seen / unseen / hIoU, its share of real_all's hIoU, the target, and
    the paper's hIoU of the same model (Model-A..E) on PASCAL VOC."""
    lines = [f"| variant | seen | unseen | hIoU | share of {P2_REFERENCE}'s hIoU | target | paper's hIoU (VOC) |",
             "|---|---|---|---|---|---|---|"]
    for name, m in _variants(metrics).items():
        s = share(metrics, name)
        shown = "—" if s is None else f"{100 * s:.0f}%"
        target = ""
        if name in P2_TARGETS:
            target = f"≥ {100 * P2_TARGETS[name]:.0f}%"
            if s is not None:
                target += " (met)" if s >= P2_TARGETS[name] else " (missed)"
        paper = PAPER_TABLE2_VOC.get(f"Model-{name}")
        lines.append(f"| {name} | {_fmt(m.get('miou_seen'))} | {_fmt(m.get('miou_unseen'))} | {_fmt(m.get('hiou'))} "
                     f"| {shown} | {target} | {_fmt(paper[2]) if paper else '—'} |")
    return "\n".join(lines) + "\n"


def paper_table2() -> str:
    lines = ["| method (paper) | VOC seen | VOC unseen | VOC hIoU |", "|---|---|---|---|"]
    lines += [f"| {name} (paper) | {s} | {u} | {h} |" for name, (s, u, h) in PAPER_TABLE2_VOC.items()]
    return "\n".join(lines) + "\n"


def paper_table1() -> str:
    """The paper's Protocol I rows alone."""
    return "\n".join([_P1_HEADER, *_paper_p1_rows()]) + "\n"


def protocol1_section(metrics: dict | None, how_to_run: Callable[[str], str] = _stage,
                      details: dict | None = None, facts: Facts = Facts()) -> str:
    lines = ["## Protocol I: grounding on synthetic images (mIoU %, oracle masks as ground truth)", ""]
    if metrics:
        lines += [protocol1_table(metrics, details, facts)]
    else:
        lines += [f"*Not yet run: {how_to_run('eval_grounding')}.*", "",
                  "The paper's (Stable Diffusion + PASCAL-sim, average of 3 splits):", "", paper_table1()]
    return "\n".join(lines)


def protocol2_section(metrics: dict | None, how_to_run: Callable[[str], str] = _stage,
                      facts: Facts = Facts()) -> str:
    lines = [f"## Protocol II: zero-shot semantic segmentation on real data (`{facts.zs3_split}` split, mIoU %)", ""]
    if metrics and _variants(metrics):
        lines += [protocol2_table(metrics)]
    else:
        lines += [f"*Not yet run: {how_to_run('eval_zs3')}.*", ""]
    lines += ["The paper's (PASCAL VOC):", "", paper_table2()]
    return "\n".join(lines)


# --- 2. reports/report.md ---------------------------------------------------------------------


def world_lines(root: Path) -> list[str]:
    """The world models' quality against their bars, from world_detector / world_fidelity / world_binding metrics."""
    lines = []
    detector = _load(root / paths.metrics("world_detector"))
    fidelity = _load(root / paths.metrics("world_fidelity"))
    binding = _load(root / paths.metrics("world_binding"))
    if detector and "mask_ap50" in detector:
        lines.append(f"- oracle detector: mask AP@0.5 {detector['mask_ap50']:.3f} on rendered val "
                     f"(bar {DETECTOR_BAR})")
    if fidelity:
        lines.append(f"- diffusion fidelity: prompted class found in {100 * fidelity['one_object_recall']:.1f}% "
                     f"of one-object images (bar {100 * FIDELITY_BARS['one_object_recall']:.0f}%), both classes "
                     f"in {100 * fidelity['two_object_both_recall']:.1f}% of two-object images "
                     f"(bar {100 * FIDELITY_BARS['two_object_both_recall']:.0f}%)")
    if binding and "class_word_cosine_mean" in binding:
        daam = "—" if binding["daam_miou"] is None else f"{binding['daam_miou']:.1f}"
        lines.append(f"- word binding: class-word states' pairwise cosine {binding['class_word_cosine_mean']:.3f} "
                     f"(bar ≤ {BINDING_BARS['class_word_cosine_mean_at_most']}), DAAM {daam} mIoU on one-object "
                     f"images (bar ≥ {BINDING_BARS['daam_miou_at_least']:g}), class word attended more inside the "
                     f"object than outside in {binding['layers_inside_gt_outside']} of {binding['n_layers']} "
                     f"cross-attention layers (bar: most)")
    return lines


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
    lines += world_lines(root)
    for key, value in settings.items():
        lines.append(f"- `{key}`: `{json.dumps(value, sort_keys=True)}`")
    return "\n".join(lines) + "\n"


FIGURES = (
    ("World samples (prompt under each image)", "figures/world_fidelity_samples.png"),
    ("Protocol I overlays: image | oracle | ours | DAAM", "figures/protocol1_overlays.png"),
    ("Protocol II predictions", "figures/zs3_predictions.png"),
)


def _figures(root: Path, prefix: str) -> list[str]:
    """The FIGURES that exist under root/reports, linked as `prefix` + their path below reports/."""
    parts = []
    for caption, rel in FIGURES:
        if (root / paths.REPORTS / rel).is_file():
            parts += [f"**{caption}**", "", f"![{caption}]({prefix}{rel})", ""]
    return parts


def build_report(world: str, split: int, settings: Mapping[str, Any], *, root: Path = Path("."),
                 shapes: ShapesParams | None = None, paper: Mapping[str, Any] | None = None,
                 how_to_run: Callable[[str], str] = _stage, facts: Facts = Facts()) -> str:
    """The whole report as markdown, from the metrics under `root`; figures are linked relative to reports/.

    world, split: `world.name` and `world.split`; settings: the SETTINGS sections (typed), listed as
    given; shapes: the shapes world's section (its split is listed when metrics/world_setup.json is
    absent); paper: a paper world's `voc` / `coco` section; how_to_run: names how a stage that has
    not run yet is run; facts: the captions' settings (ours' mask threshold, the scored real split).
    """
    parts = ["# groundiff report", "",
             "Numbers are this run's, read from `metrics/`; the paper's are labelled as such (Stable Diffusion "
             "+ PASCAL VOC, not this world).", "",
             world_section(root, world, split, settings, shapes, paper),
             protocol1_section(_load(root / paths.metrics("protocol1")), how_to_run,
                               _load(root / paths.PROTOCOL1_DETAILS), facts),
             protocol2_section(_load(root / paths.metrics("zs3")), how_to_run, facts), "## Figures", ""]
    return "\n".join(parts + _figures(root, ""))


# --- 3. docs/results.md -----------------------------------------------------------------------


def calibrated_row(details: Mapping[str, Any] | None) -> tuple[float, dict] | None:
    """(threshold, {category: mIoU}) at the sweep's best threshold over seen-class pairs (the one
    synth_dataset's threshold is chosen by), or None without a sweep."""
    curve = (details or {}).get("threshold_curve") or {}
    seen = {float(t): v for t, v in curve.get("seen_classes", {}).items() if v is not None}
    if not seen:
        return None
    best = max(seen, key=lambda t: (seen[t], -abs(t - 0.5)))
    key = next(k for k in curve["seen_classes"] if float(k) == best)
    return best, {c: curve.get(c, {}).get(key) for c in P1_KEYS}


def _relink(markdown: str, source_dir: Path, target_dir: Path) -> str:
    """Markdown links and images of a file in source_dir, rewritten to resolve from target_dir."""
    def fix(match: re.Match) -> str:
        link = match.group(2)
        if re.match(r"[a-z]+:|#|/", link):
            return match.group(0)
        moved = os.path.relpath(os.path.normpath(source_dir / link), target_dir)
        return f"{match.group(1)}({Path(moved).as_posix()})"
    return re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", fix, markdown)


def _demote(markdown: str, levels: int = 2) -> str:
    """Markdown headings pushed `levels` down (at most to ######), to sit under a page's own."""
    return re.sub(r"^(#{1,6}) ", lambda m: "#" * min(len(m.group(1)) + levels, 6) + " ", markdown, flags=re.M)


def studies_section(root: Path, page_dir: Path = Path("docs")) -> list[str]:
    """reports/studies/<name>.md (and .json) as the study command wrote them, each under its name,
    headings pushed two levels down and links made to resolve from `page_dir`; a line saying there
    is none yet otherwise."""
    folder = root / STUDIES
    names = sorted({p.stem for p in folder.glob("*.md")} | {p.stem for p in folder.glob("*.json")}) \
        if folder.is_dir() else []
    if not names:
        return ["## Studies", "", f"None in `{STUDIES.as_posix()}/` yet: `groundiff study <name>` runs one of "
                "`studies.yaml` (e.g. `groundiff study seeds`) and writes it there.", ""]
    up = os.path.relpath(STUDIES, page_dir)
    lines = ["## Studies", "",
             f"Written by `groundiff study <name>` (`studies.yaml`) into `{STUDIES.as_posix()}/`; each is shown "
             "as it wrote it.", ""]
    for name in names:
        md, js = folder / f"{name}.md", folder / f"{name}.json"
        lines += [f"### {name}", ""]
        if md.is_file():
            parts = re.split(r"(^```.*?^```)", md.read_text(), flags=re.M | re.S)  # odd parts: code blocks
            body = "".join(part if i % 2 else _relink(_demote(part), STUDIES, page_dir) for i, part in enumerate(parts))
            lines += [body.strip(), ""]
        links = [f"[{p.name}]({up}/{p.name})" for p in (md, js) if p.is_file()]
        lines += ["Source: " + ", ".join(links) + ".", ""]
    return lines


def results_page(root: Path = Path("."), *, world: str = "shapes", split: int | None = None,
                 facts: Facts = Facts(), how_to_run: Callable[[str], str] = _stage) -> str:
    """docs/results.md: the headline tables with their context, the studies, the figures."""
    p1, details = _load(root / paths.metrics("protocol1")), _load(root / paths.PROTOCOL1_DETAILS)
    zs3 = _load(root / paths.metrics("zs3"))
    where = f"the `{world}` world" + ("" if split is None else f", split {split}")
    lines = ["# Results", "",
             f"Generated by the `report` stage from `metrics/` and `{STUDIES.as_posix()}/` ({where}); "
             "do not edit by hand. The README's results table holds the same numbers. How these settings "
             "were chosen, and what was tried and not kept: [experiments.md](experiments.md). The paper's "
             "numbers were measured on Stable Diffusion + PASCAL VOC, not in this world: they are a reference "
             "for the shape of the results, not a bar for their size.", ""]
    world_quality = world_lines(root)
    if world_quality:
        lines += ["## The world's models", "", *world_quality, ""]
    lines += ["## Protocol I: grounding on generated images", "",
              "mIoU (%) over (image, prompted class) pairs, against the oracle's masks; DAAM is scored on the "
              "same pairs. Details: [reports/protocol1.md](../reports/protocol1.md).", ""]
    if p1:
        lines.append(protocol1_table(p1, details, facts))
        calibrated = calibrated_row(details)
        if calibrated:
            t, values = calibrated
            lines += [f"At the threshold the sweep picks on seen-class pairs alone ({t}), the grounding module "
                      "scores " + ", ".join(f"{CATEGORY_LABELS[c]} {_fmt(values[c])}" for c in P1_KEYS)
                      + " (the headline keeps the paper's threshold).", ""]
        counts = (details or {}).get("counts")
        if counts:
            lines += ["Pairs scored / prompted (the oracle's misses are left out for both methods): "
                      + ", ".join(f"{CATEGORY_LABELS[c]} {counts[c]['evaluated']} / {counts[c]['pairs']}"
                                  for c in P1_KEYS if c in counts) + ".", ""]
    else:
        lines += [f"*Not yet run: {how_to_run('eval_grounding')}.*", ""]
    lines += [f"## Protocol II: zero-shot semantic segmentation of the real `{facts.zs3_split}` images", "",
              "MaskFormer variants (mIoU %, background ignored); hIoU = 2·seen·unseen / (seen + unseen). The "
              "targets are shares of the real-data reference's hIoU. Details: [reports/zs3.md](../reports/zs3.md).", ""]
    if zs3 and _variants(zs3):
        lines.append(protocol2_table(zs3))
    else:
        lines += [f"*Not yet run: {how_to_run('eval_zs3')}.*", ""]
    lines += ["The paper's Table 2 (PASCAL VOC):", "", paper_table2()]
    lines += studies_section(root)
    figures = _figures(root, "../reports/")
    if figures:
        lines += ["## Figures", "", *figures]
    return "\n".join(lines).rstrip() + "\n"


# --- 4. the README's block --------------------------------------------------------------------


def readme_block(root: Path = Path("."), facts: Facts = Facts()) -> str:
    """The README's results block (markers included): both headline tables, from root/metrics."""
    p1, details = _load(root / paths.metrics("protocol1")), _load(root / paths.PROTOCOL1_DETAILS)
    zs3 = _load(root / paths.metrics("zs3"))
    if not p1 or not zs3 or not _variants(zs3):
        raise FileNotFoundError(f"{root / paths.metrics('protocol1')} and {root / paths.metrics('zs3')}: the README's "
                                "results come from both; run the pipeline first")
    return "\n".join([
        README_BEGIN,
        "<!-- written from metrics/ by `python -m groundiff.stages.report --readme`; tests/test_readme.py "
        "compares it with metrics/ -->",
        "**Protocol I**: the grounding module against DAAM on generated images, mIoU % against the "
        "oracle's masks (`metrics/protocol1.json`).", "",
        protocol1_table(p1, details, facts),
        f"**Protocol II**: zero-shot segmentation of the real `{facts.zs3_split}` images, mIoU % "
        "(`metrics/zs3.json`).", "",
        protocol2_table(zs3).rstrip("\n"),
        README_END])


def replace_readme_block(readme: str, block: str) -> str:
    """`readme` with the text between the results markers replaced by `block` (markers included)."""
    if not _README_BLOCK.search(readme):
        raise ValueError(f"README.md has no {README_BEGIN} ... {README_END} block; put the two markers "
                         "where the results table goes")
    return _README_BLOCK.sub(lambda _: block, readme, count=1)
