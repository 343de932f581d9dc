"""Metrics against values computed by hand: binary IoU (Protocol I), confusion-matrix IoU and hIoU (Protocol II)."""

import math

import numpy as np
import pytest

from groundiff.eval.metrics import (class_iou, confusion_matrix, harmonic_iou, iou, mean_class_iou, mean_iou,
                               pairwise_iou, zero_shot_scores)

# --- Protocol I: binary masks ----------------------------------------------------------------


def test_binary_iou_by_hand():
    pred = np.array([[1, 1, 0],
                     [1, 0, 0]], bool)
    target = np.array([[0, 1, 1],
                       [1, 0, 0]], bool)
    # intersection {(0,1), (1,0)} = 2; union {(0,0), (0,1), (0,2), (1,0)} = 4
    assert iou(pred, target) == 0.5
    assert iou(pred, pred) == 1.0
    assert iou(pred, ~pred) == 0.0
    assert iou(np.array([[0, 3]]), np.array([[0, 1]])) == 1.0  # any non-zero value is foreground


def test_binary_iou_empty_cases():
    empty, full = np.zeros((4, 4), bool), np.ones((4, 4), bool)
    assert iou(empty, empty) == 1.0  # both empty: perfect agreement (documented choice)
    assert iou(empty, empty, empty=0.0) == 0.0
    assert iou(full, empty) == 0.0 and iou(empty, full) == 0.0


def test_pairwise_iou_is_per_pair_and_mean_is_over_pairs():
    preds = np.zeros((3, 2, 2), bool)
    targets = np.zeros((3, 2, 2), bool)
    preds[0, 0, :] = True  # 2 px
    targets[0, :, 0] = True  # 2 px, 1 shared -> 1/3
    preds[1] = True  # 4 px vs target 1 px -> 1/4
    targets[1, 1, 1] = True
    # pair 2: both empty -> 1
    ious = pairwise_iou(preds, targets)
    np.testing.assert_allclose(ious, [1 / 3, 1 / 4, 1.0])
    # mIoU is the plain mean over pairs, not sum(intersections) / sum(unions) = 2/7
    assert mean_iou(ious) == pytest.approx((1 / 3 + 1 / 4 + 1) / 3)
    assert math.isnan(mean_iou([]))
    with pytest.raises(ValueError, match="differ in shape"):
        pairwise_iou(preds, targets[:2])


# --- Protocol II: label maps -----------------------------------------------------------------

# 3 classes (0 = background), 255 = ignore
TARGET = np.array([[0, 0, 1, 1],
                   [0, 255, 1, 2],
                   [2, 2, 255, 2]])
PRED = np.array([[0, 1, 1, 1],
                 [0, 1, 2, 2],
                 [2, 0, 0, 2]])


def test_confusion_matrix_by_hand_skips_ignore():
    conf = confusion_matrix(PRED, TARGET, num_classes=3)
    # rows = truth, columns = prediction; the two 255 pixels (predicted 1 and 0) are skipped
    expected = np.array([[2, 1, 0],   # truth 0: (0,0)->0, (0,1)->1, (1,0)->0
                         [0, 2, 1],   # truth 1: (0,2)->1, (0,3)->1, (1,2)->2
                         [1, 0, 3]])  # truth 2: (1,3)->2, (2,0)->2, (2,1)->0, (2,3)->2
    np.testing.assert_array_equal(conf, expected)
    assert conf.sum() == TARGET.size - 2
    # accumulating over images = the matrix of the stack
    stacked = confusion_matrix(np.stack([PRED, PRED]), np.stack([TARGET, TARGET]), 3)
    np.testing.assert_array_equal(stacked, 2 * expected)


def test_class_iou_and_subset_means_by_hand():
    ious = class_iou(confusion_matrix(PRED, TARGET, num_classes=3))
    # class 0: TP 2, FP 1 (truth 2 -> 0), FN 1 -> 2/4; class 1: TP 2, FP 1, FN 1 -> 2/4;
    # class 2: TP 3, FP 1 (truth 1 -> 2), FN 1 -> 3/5
    np.testing.assert_allclose(ious, [0.5, 0.5, 0.6])
    assert mean_class_iou(ious) == pytest.approx(1.6 / 3)
    assert mean_class_iou(ious, [1, 2]) == pytest.approx(0.55)
    scores = zero_shot_scores(confusion_matrix(PRED, TARGET, 3), seen=[0, 1], unseen=[2])
    assert scores["seen"] == pytest.approx(0.5) and scores["unseen"] == pytest.approx(0.6)
    assert scores["hiou"] == pytest.approx(2 * 0.5 * 0.6 / 1.1)


def test_absent_class_is_nan_and_skipped():
    conf = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 255]), num_classes=4)
    ious = class_iou(conf)
    assert ious[0] == 1.0 and ious[1] == 1.0 and np.isnan(ious[2]) and np.isnan(ious[3])
    assert mean_class_iou(ious) == 1.0  # classes 2, 3 appear nowhere: no IoU to average
    assert math.isnan(mean_class_iou(ious, [2, 3]))
    # a class in the ground truth but never predicted has IoU 0, not NaN
    assert class_iou(confusion_matrix(np.array([0, 0]), np.array([0, 3]), 4))[3] == 0.0


def test_confusion_matrix_rejects_bad_labels():
    with pytest.raises(ValueError, match="label 5, outside 0..2"):
        confusion_matrix(np.array([0, 1]), np.array([0, 5]), 3)
    with pytest.raises(ValueError, match="only the ground truth may use the ignore label"):
        confusion_matrix(np.array([255, 1]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="both seen and unseen"):
        zero_shot_scores(np.eye(3), seen=[0, 1], unseen=[1, 2])


def test_harmonic_iou():
    assert harmonic_iou(0.0, 0.0) == 0.0
    assert harmonic_iou(0.5, 0.0) == 0.0
    assert harmonic_iou(0.6, 0.6) == pytest.approx(0.6)
    # the paper's Model-E VOC row: S 83.4, U 74.4 -> hIoU 78.7 (78.64 from the rounded S, U); scale-free
    assert harmonic_iou(83.4, 74.4) == pytest.approx(78.7, abs=0.1)
    assert math.isnan(harmonic_iou(float("nan"), 0.5))
