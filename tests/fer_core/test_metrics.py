"""The test-set metrics on hand-made confusion matrices (rows = truth, columns = prediction)."""

from __future__ import annotations

import math

import pytest

from fer_core.metrics import confusion_matrix, is_imbalanced, metrics


def test_an_imbalanced_matrix_parts_accuracy_from_mean_class_accuracy():
    # 90 images of class 0, all right; 10 of class 1, 1 right and 9 called class 0.
    m = metrics([[90, 0], [9, 1]])
    assert m.accuracy == pytest.approx(91 / 100)
    assert m.per_class_recall == pytest.approx([1.0, 0.1])
    assert m.mean_class_accuracy == pytest.approx(0.55)
    # F1 = 2TP / (2TP + FP + FN): class 0: 180 / (180 + 9 + 0); class 1: 2 / (2 + 0 + 9)
    assert m.per_class_f1 == pytest.approx([180 / 189, 2 / 11])
    assert m.macro_f1 == pytest.approx((180 / 189 + 2 / 11) / 2)


def test_three_classes_by_hand():
    counts = [[5, 1, 0], [2, 6, 2], [0, 0, 4]]
    m = metrics(counts)
    assert m.accuracy == pytest.approx(15 / 20)
    assert m.per_class_recall == pytest.approx([5 / 6, 6 / 10, 4 / 4])
    assert m.mean_class_accuracy == pytest.approx((5 / 6 + 0.6 + 1.0) / 3)
    # class 0: TP 5, FP 2, FN 1; class 1: TP 6, FP 1, FN 4; class 2: TP 4, FP 2, FN 0
    f1 = [10 / 13, 12 / 17, 8 / 10]
    assert m.per_class_f1 == pytest.approx(f1)
    assert m.macro_f1 == pytest.approx(sum(f1) / 3)


def test_a_class_absent_from_the_test_set_is_left_out_of_the_means():
    # Class 2 has no test images, but the model predicted it twice (errors of class 1).
    m = metrics([[4, 0, 0], [0, 2, 2], [0, 0, 0]])
    assert math.isnan(m.per_class_recall[2]) and math.isnan(m.per_class_f1[2])
    assert m.per_class_recall[:2] == pytest.approx([1.0, 0.5])
    assert m.mean_class_accuracy == pytest.approx(0.75)  # over the two present classes
    # the stray predictions still count: as class 1's misses
    assert m.macro_f1 == pytest.approx((1.0 + 4 / 6) / 2)
    assert m.accuracy == pytest.approx(6 / 8)


def test_a_present_class_never_predicted_has_f1_zero():
    m = metrics([[3, 0], [2, 0]])
    assert m.per_class_f1 == pytest.approx([6 / 8, 0.0])
    assert m.per_class_recall == pytest.approx([1.0, 0.0])


def test_no_images_is_nan_everywhere():
    m = metrics([[0, 0], [0, 0]])
    assert math.isnan(m.accuracy) and math.isnan(m.mean_class_accuracy)
    assert math.isnan(m.macro_f1)


def test_a_balanced_matrix_gives_equal_accuracies():
    m = metrics([[7, 3], [1, 9]])
    assert m.accuracy == pytest.approx(m.mean_class_accuracy)


def test_confusion_matrix_counts_truth_by_prediction():
    counts = confusion_matrix([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_imbalance_is_largest_over_smallest_present_class():
    assert not is_imbalanced([240, 240, 240])
    assert not is_imbalanced([150, 100, 0])  # an absent class does not count
    assert is_imbalanced([151, 100])
    assert not is_imbalanced([])
