"""Segmentation metrics, pure numpy: binary-mask IoU (Protocol I) and confusion-matrix IoU (Protocol II).

Protocol I — grounding on generated images, the oracle's masks as ground truth (PAPER.md):
    Each (image, prompted class) pair has a predicted binary mask P and the oracle's mask G, and
    IoU(P, G) = |P & G| / |P | G|. A category's mIoU is the plain mean of that IoU over its pairs:
    every pair counts once — not a per-class average first, and not one dataset-wide ratio of
    summed intersections to summed unions. (The authors released no evaluation code; this is the
    reading of "mIoU over the test set" that treats every generated image alike.)
    Both masks empty -> IoU 1 (nothing to find and nothing predicted is a perfect answer); one
    empty, the other not -> 0. In Protocol I the empty-target case only arises when the oracle
    reports an instance whose thresholded mask is empty; a class the oracle misses entirely is
    excluded before any IoU is taken (see `groundiff.eval.protocol1`).

Protocol II — zero-shot semantic segmentation over label maps (standard VOC / COCO-stuff):
    Pixels are accumulated over the whole dataset in a confusion matrix (rows = ground truth,
    columns = prediction); ground-truth pixels equal to `ignore_index` (255, VOC's boundary label)
    are skipped. IoU_c = TP_c / (TP_c + FP_c + FN_c); a class absent from both ground truth and
    prediction has no IoU (NaN) and is left out of means. mIoU over a class subset (seen, unseen)
    is the mean of those classes' IoUs; hIoU = 2 S U / (S + U), 0 when S = U = 0.

Fractions in [0, 1] throughout; callers that report percent multiply by 100.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE_INDEX = 255  # VOC's "void" label: object boundaries and unlabelled pixels


# --- Protocol I: binary masks ---------------------------------------------------------------


def pairwise_iou(preds: np.ndarray, targets: np.ndarray, empty: float = 1.0) -> np.ndarray:
    """IoU of each predicted mask with its target: (N, H, W) x (N, H, W) -> (N,).

    Masks are booleans (anything non-zero counts as foreground). `empty` is the IoU of a pair
    whose masks are both empty (1.0: agreeing that there is nothing is a perfect answer).
    """
    preds, targets = np.asarray(preds).astype(bool), np.asarray(targets).astype(bool)
    if preds.shape != targets.shape:
        raise ValueError(f"predicted masks {preds.shape} and target masks {targets.shape} differ in shape")
    if preds.ndim < 1:
        raise ValueError("pairwise_iou needs a stack of masks (N, ...), got a scalar")
    n = preds.shape[0]
    p, t = preds.reshape(n, -1), targets.reshape(n, -1)
    inter = np.count_nonzero(p & t, axis=1)
    union = np.count_nonzero(p | t, axis=1)
    out = np.full(n, float(empty))
    np.divide(inter, union, out=out, where=union > 0)
    return out


def iou(pred: np.ndarray, target: np.ndarray, empty: float = 1.0) -> float:
    """IoU of one predicted binary mask with its target; `empty` when both are empty."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"predicted mask {pred.shape} and target mask {target.shape} differ in shape")
    return float(pairwise_iou(pred[None], target[None], empty)[0])


def mean_iou(ious: Sequence[float] | np.ndarray) -> float:
    """Protocol I mIoU: the mean over (image, class) pairs; NaN when there are no pairs."""
    values = np.asarray(ious, dtype=float)
    return float(values.mean()) if values.size else float("nan")


# --- Protocol II: label maps ----------------------------------------------------------------


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(num_classes, num_classes) int64 pixel counts: [true label, predicted label].

    pred, target: integer label maps of one shape (one image or a stack). Target pixels equal to
    `ignore_index` are skipped; any other label outside [0, num_classes) is an error. Sum the
    matrices of several batches to accumulate over a dataset.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {target.shape} differ in shape")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    valid = target != ignore_index
    t, p = target[valid].astype(np.int64), pred[valid].astype(np.int64)
    for name, labels in (("ground truth", t), ("prediction", p)):
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            raise ValueError(
                f"{name} holds label {int(labels[bad][0])}, outside 0..{num_classes - 1}"
                + (f" (only the ground truth may use the ignore label {ignore_index})" if name == "prediction" else "")
            )
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def class_iou(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU from a confusion matrix: TP / (TP + FP + FN); NaN where the class is absent
    from both ground truth and prediction."""
    conf = np.asarray(conf, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"a confusion matrix is square (C, C), got {conf.shape}")
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp  # predicted + true - both
    out = np.full(len(tp), np.nan)
    np.divide(tp, union, out=out, where=union > 0)
    return out


def mean_class_iou(ious: np.ndarray, classes: Sequence[int] | None = None) -> float:
    """Mean of per-class IoUs over `classes` (label indices; all when None), skipping NaN
    (classes absent from ground truth and prediction). NaN when none is left."""
    ious = np.asarray(ious, dtype=float)
    subset = ious if classes is None else ious[np.asarray(list(classes), dtype=np.int64)]
    subset = subset[~np.isnan(subset)]
    return float(subset.mean()) if subset.size else float("nan")


def harmonic_iou(seen: float, unseen: float) -> float:
    """hIoU = 2 S U / (S + U); 0 when both are 0 (and NaN if either is NaN)."""
    if np.isnan(seen) or np.isnan(unseen):
        return float("nan")
    total = seen + unseen
    return 0.0 if total == 0 else float(2 * seen * unseen / total)


def zero_shot_scores(conf: np.ndarray, seen: Sequence[int], unseen: Sequence[int]) -> dict[str, float]:
    """{"seen", "unseen", "hiou"} (fractions) from a dataset's confusion matrix and the label
    indices of the seen and unseen classes (whether background counts as seen is the caller's
    choice: list label 0 in `seen` or not)."""
    overlap = set(seen) & set(unseen)
    if overlap:
        raise ValueError(f"labels {sorted(overlap)} are listed as both seen and unseen")
    ious = class_iou(conf)
    s, u = mean_class_iou(ious, seen), mean_class_iou(ious, unseen)
    return {"seen": s, "unseen": u, "hiou": harmonic_iou(s, u)}


__all__ = [
    "IGNORE_INDEX", "class_iou", "confusion_matrix", "harmonic_iou", "iou", "mean_class_iou", "mean_iou",
    "pairwise_iou", "zero_shot_scores",
]
