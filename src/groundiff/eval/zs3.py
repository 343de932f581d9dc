"""Protocol II — zero-shot semantic segmentation: which data each segmenter variant trains on, and
how the trained variants are scored on real data.

Variants (PAPER.md, Table 2). Each names synthetic splits of the synthetic segmentation dataset
and whether real training images come along:

    A          synthetic one-object prompts
    B          synthetic two-object prompts
    C          A + B (the mixture)
    D          real images labelled for seen classes only + C
    E          D + the synthetic "complicated" prompts. The paper says only "D with more
               complicated prompts"; we read it as adding, not replacing, so E differs from D
               by the richer prompts alone.
    real_seen  real images, seen classes only: the classic zero-shot baseline (unseen never shown)
    real_all   real images with every class labelled: an oracle upper bound

Scoring. Real `val` labels every class. Pixels are accumulated in one confusion matrix over the
split (`groundiff.eval.metrics`); per-class IoU, mIoU over the seen and over the unseen classes, and
their harmonic mean hIoU, all in percent. Background: the paper's Table 2 copies ZegFormer's VOC
numbers, and ZegFormer evaluates VOC over its 20 object classes with background pixels ignored;
`background="ignore"` (default) does the same — ground-truth background is skipped, so only
object pixels are scored (a prediction of background on an object is still a miss).
`background="seen"` instead scores background as a class and counts it among the seen classes
(SPNet / ZS3Net's VOC protocol).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from groundiff.data.voc import IGNORE, RealData, read_split, voc_palette
from groundiff.eval.appearance import Alteration
from groundiff.figures import MAX_TILE, captioned_grid
from groundiff.eval.metric_names import zs3_metric_names as flat_metrics
from groundiff.eval.metrics import class_iou, confusion_matrix, zero_shot_scores
from groundiff.segmenter import DataSource, TrainedSegmenter, load_segmenter
from groundiff.worlds.base import ClassSplit
from groundiff.core.schema import BACKGROUND_MODES, REAL_MODES, EvalZS3Params, VariantSpec

#: The paper's variants (Table 2) and two real-data references.
PAPER_VARIANTS: dict[str, VariantSpec] = {
    "A": VariantSpec(["one"]),
    "B": VariantSpec(["two"]),
    "C": VariantSpec(["one", "two"]),
    # real_share chosen on held-out real train images (studies.yaml: real_share), not on val
    "D": VariantSpec(["one", "two"], real="seen", real_share=0.25),
    "E": VariantSpec(["one", "two", "complicated"], real="seen", real_share=0.25),
    "real_seen": VariantSpec([], real="seen"),
    "real_all": VariantSpec([], real="all"),
}

#: PAPER.md, Protocol II, PASCAL VOC columns (mIoU %): seen, unseen, hIoU — measured by the
#: authors with Stable Diffusion + PASCAL VOC, not in this world.
PAPER_TABLE2_VOC: dict[str, tuple[float, float, float]] = {
    "ZegFormer": (86.4, 63.6, 73.3),
    "Model-A": (62.8, 50.0, 55.7),
    "Model-B": (65.8, 60.1, 62.8),
    "Model-C": (69.5, 63.2, 66.2),
    "Model-D": (83.0, 71.3, 76.7),
    "Model-E": (83.4, 74.4, 78.7),
}


def dvc_stage(name: str, spec: VariantSpec) -> str:
    """The DVC stage that trains variant `name`: train_reference@ for real data alone, else train_segmenter@."""
    return f"{'train_segmenter' if spec.synthetic else 'train_reference'}@{name}"


def variant_sources(spec: VariantSpec, split: ClassSplit, real: RealData, synth_root: str | Path) -> list[DataSource]:
    """The variant's training sources, real data first, then the synthetic splits in order.

    real="seen" hides the unseen classes' labels at load time (255), whatever the folder holds —
    the same code serves the shapes world (already hidden on disk) and VOC (full labels on disk).
    """
    sources = []
    if spec.real == "seen":
        unseen = tuple(split.label(c) for c in split.unseen)
        sources.append(DataSource(str(real.root), real.split, real.seen_labels, unseen, share=spec.real_share))
    elif spec.real == "all":
        sources.append(DataSource(str(real.root), real.split, real.full_labels, share=spec.real_share))
    sources += [DataSource(str(synth_root), name, synthetic=True) for name in spec.synthetic]
    return sources


# --------------------------------------------------------------------------- scoring


def _pct(value: float) -> float | None:
    """Fraction -> percent, NaN -> None (JSON null: a class absent from truth and prediction)."""
    return None if value is None or math.isnan(value) else round(100.0 * float(value), 4)


def score_confusion(conf: np.ndarray, split: ClassSplit, background: str = "ignore") -> dict:
    """{"miou_seen", "miou_unseen", "hiou", "per_class": {class: IoU}} in percent from a
    (K + 1, K + 1) confusion matrix over labels 0..K."""
    if background not in BACKGROUND_MODES:
        raise ValueError(f"background: {background!r} is not one of {', '.join(BACKGROUND_MODES)}")
    seen = [split.label(c) for c in split.seen] + ([0] if background == "seen" else [])
    unseen = [split.label(c) for c in split.unseen]
    scores = zero_shot_scores(conf, seen, unseen)
    ious = class_iou(conf)
    names = (["background"] if background == "seen" else []) + list(split.classes)
    per_class = {name: _pct(ious[0 if name == "background" else split.label(name)]) for name in names}
    return {"miou_seen": _pct(scores["seen"]), "miou_unseen": _pct(scores["unseen"]),
            "hiou": _pct(scores["hiou"]), "per_class": per_class}


def evaluate(segmenter: TrainedSegmenter, root: str | Path, split_name: str, split: ClassSplit,
             background: str = "ignore", batch_size: int = 64,
             appearance: Alteration | None = None) -> tuple[dict, np.ndarray]:
    """Score a segmenter on a fully labelled VOC-layout split; returns (scores, confusion matrix).

    appearance: each image altered before it is segmented (`groundiff.eval.appearance`); None: as it is.
    """
    if tuple(segmenter.classes) != tuple(split.classes):
        raise ValueError(f"the segmenter was trained on classes {list(segmenter.classes)}, but the world's "
                         f"are {list(split.classes)}; retrain it (train_segmenter)")
    if background not in BACKGROUND_MODES:
        raise ValueError(f"background: {background!r} is not one of {', '.join(BACKGROUND_MODES)}")
    n = len(split.classes) + 1
    conf = np.zeros((n, n), np.int64)
    images, truths = [], []

    def flush() -> None:
        nonlocal conf
        for pred, truth in zip(segmenter.predict(images, batch_size=batch_size), truths):
            if background == "ignore":
                truth = np.where(truth == 0, IGNORE, truth)
            conf += confusion_matrix(pred, truth, n)
        images.clear()
        truths.clear()

    for _, image, label in read_split(Path(root), split_name):
        images.append(image if appearance is None else appearance(image, label))
        truths.append(label)
        if len(images) == batch_size:
            flush()
    flush()
    return score_confusion(conf, split, background), conf


def missing_variants(models: Path, variants: Sequence[str]) -> list[str]:
    """The variants with no trained segmenter under `models/<variant>/`."""
    return [v for v in variants if not (Path(models) / v / "segmenter.json").is_file()]


def score_variants(models: Path, variants: Sequence[str], real: RealData, split: ClassSplit, cfg: EvalZS3Params,
                   device: str = "cpu", appearance: Alteration | None = None
                   ) -> tuple[dict[str, dict], dict[str, TrainedSegmenter]]:
    """Each variant's segmenter (from `models/<variant>/`) scored on the real split `cfg.split`, its
    images altered by `appearance` if given: ({variant: scores}, {variant: segmenter})."""
    results, segmenters = {}, {}
    for name in variants:
        segmenters[name] = load_segmenter(Path(models) / name, device=device)
        results[name], _ = evaluate(segmenters[name], real.root, cfg.split, split, cfg.background, cfg.batch_size,
                                    appearance)
    return results, segmenters


# --------------------------------------------------------------------------- reporting


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def markdown_table(results: dict[str, dict], split: ClassSplit, background: str = "ignore",
                   world: str = "shapes", scored: str = "val") -> str:
    """Table 2 for this run (rows: variants; seen / unseen / hIoU), the paper's VOC numbers beneath."""
    bg = ("background pixels ignored (ZegFormer's VOC protocol)" if background == "ignore"
          else "background scored as a seen class")
    lines = [
        "# Protocol II: zero-shot semantic segmentation", "",
        f"MaskFormer variants trained on synthetic (and real) data, scored on the real `{scored}` split of the "
        f"`{world}` world; mIoU %, {bg}. Seen: {', '.join(split.seen)}. Unseen: {', '.join(split.unseen)}.", "",
        "| variant | seen | unseen | hIoU |", "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {_fmt(r['miou_seen'])} | {_fmt(r['miou_unseen'])} | {_fmt(r['hiou'])} |")
    lines += ["", "Per-class IoU (%; * = unseen):", "",
              "| variant | " + " | ".join(f"{c}{'*' if c in split.unseen else ''}" for c in split.classes) + " |",
              "|---|" + "---|" * len(split.classes)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r["per_class"].get(c)) for c in split.classes) + " |")
    lines += ["", "**The paper's numbers** (Table 2, Stable Diffusion + PASCAL VOC 2012, 15 seen / 5 unseen; "
              "not comparable in absolute terms with this world):", "",
              "| method (paper) | VOC seen | VOC unseen | VOC hIoU |", "|---|---|---|---|"]
    for name, (s, u, h) in PAPER_TABLE2_VOC.items():
        lines.append(f"| {name} | {s} | {u} | {h} |")
    return "\n".join(lines) + "\n"


_PALETTE = np.array(voc_palette(), np.uint8).reshape(256, 3)


def colourise(label: np.ndarray) -> np.ndarray:
    """(H, W) label map -> (H, W, 3) VOC palette colours (255 = VOC's cream boundary colour)."""
    return _PALETTE[np.asarray(label, np.uint8)]


def pick_figure_images(truths: Sequence[np.ndarray], split: ClassSplit, n: int) -> list[int]:
    """Indices of up to n images: about two thirds showing an unseen class, the rest seen-only."""
    unseen = {split.label(c) for c in split.unseen}
    with_unseen = [i for i, t in enumerate(truths) if unseen & set(np.unique(t).tolist())]
    seen_only = [i for i, t in enumerate(truths) if i not in set(with_unseen) and (t != 0).any()]
    m = min(len(seen_only), n - min(len(with_unseen), math.ceil(2 * n / 3)))
    k = min(len(with_unseen), n - m)
    return sorted(with_unseen[:k] + seen_only[:m])


def variants_figure(segmenters: dict[str, TrainedSegmenter], real: RealData, split: ClassSplit, cfg: EvalZS3Params,
                    path: Path) -> Path:
    """`prediction_figure` of `cfg.figure_images` real images (`pick_figure_images`), every variant's
    prediction beside the truth."""
    samples = list(read_split(Path(real.root), cfg.split))
    truths = [label for _, _, label in samples]
    picked = pick_figure_images(truths, split, cfg.figure_images)
    images = [samples[i][1] for i in picked]
    predictions = {name: seg.predict(images) for name, seg in segmenters.items()}
    return prediction_figure(images, [truths[i] for i in picked], predictions, split, path)


def prediction_figure(images: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                      predictions: dict[str, Sequence[np.ndarray]], split: ClassSplit, path: Path, scale: int = 4,
                      truth_caption: str = "truth") -> Path:
    """Rows of image | ground truth | each variant's prediction, in VOC colours, then a colour legend;
    unseen classes starred. `truth_caption` names the second column (labels that are not ground truth)."""
    tiles, captions = [], []
    for i, (image, truth) in enumerate(zip(images, truths)):
        present = [split.classes[v - 1] + ("*" if split.classes[v - 1] in split.unseen else "")
                   for v in np.unique(truth).tolist() if 0 < v <= len(split.classes)]
        tiles += [image, colourise(truth)]
        captions += [", ".join(present) or "(background)", truth_caption]
        for name, preds in predictions.items():
            tiles.append(colourise(preds[i]))
            captions.append(name)
    h, w = images[0].shape[:2]  # legend: one swatch per label, on rows of their own
    for label, name in enumerate(("background", *split.classes)):
        tiles.append(colourise(np.full((h, w), label, np.uint8)))
        captions.append(f"{label}: {name}{'*' if name in split.unseen else ''}")
    grid = captioned_grid(tiles, captions, columns=2 + len(predictions), scale=scale, caption_lines=2,
                          chars_per_line=max(8, min(scale * images[0].shape[1], MAX_TILE) // 6))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


__all__ = [
    "BACKGROUND_MODES", "PAPER_TABLE2_VOC", "PAPER_VARIANTS", "REAL_MODES", "RealData", "VariantSpec",
    "colourise", "dvc_stage", "evaluate", "flat_metrics", "markdown_table", "missing_variants", "pick_figure_images",
    "prediction_figure", "score_confusion", "score_variants", "variant_sources", "variants_figure",
]
