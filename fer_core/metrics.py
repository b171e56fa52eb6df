"""Test-set metrics from a confusion matrix: overall and mean-class accuracy, macro-F1,
per-class recall.

Why more than accuracy: on an imbalanced test set (RAF-DB's test split is 38 % happiness)
overall accuracy rewards a model for its largest classes; mean-class accuracy (balanced
accuracy: the mean of the per-class recalls) and macro-F1 weigh every class alike.

A class with no test images (absent from the labels) has no recall: its per-class recall is
NaN, and it is left out of both means (they average over the classes the test set has). Its
false positives are not lost: each is an error of a class that is present and lowers that
class's recall and F1. F1 per class is 2·TP / (2·TP + FP + FN), which needs no precision
0/0 rule: a present class the model never predicts has F1 0.

Torch-free, so the report can recompute the same figures from stored predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class Metrics:
    """The figures of one confusion matrix, as fractions (NaN where undefined)."""

    accuracy: float
    mean_class_accuracy: float
    macro_f1: float
    per_class_recall: list[float]  # in class order; NaN for a class absent from the labels
    per_class_f1: list[float]  # in class order; NaN for a class absent from the labels


def confusion_matrix(labels: ArrayLike, predicted: ArrayLike, n_classes: int) -> np.ndarray:
    """Counts, rows = ground truth, columns = prediction."""
    flat = np.asarray(labels, dtype=np.int64) * n_classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def metrics(counts: ArrayLike) -> Metrics:
    """Every figure of a square confusion matrix (rows = truth, columns = prediction)."""
    matrix = np.asarray(counts, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {matrix.shape}")
    total = matrix.sum()
    true_positive = np.diagonal(matrix)
    support = matrix.sum(axis=1)  # test images per class
    predicted = matrix.sum(axis=0)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, true_positive / support, math.nan)
        # 2·TP / (2·TP + FP + FN), with FP = predicted − TP and FN = support − TP
        f1 = np.where(present, 2 * true_positive / (predicted + support), math.nan)
    return Metrics(
        accuracy=float(true_positive.sum() / total) if total > 0 else math.nan,
        mean_class_accuracy=float(recall[present].mean()) if present.any() else math.nan,
        macro_f1=float(f1[present].mean()) if present.any() else math.nan,
        per_class_recall=[float(v) for v in recall],
        per_class_f1=[float(v) for v in f1],
    )


def is_imbalanced(class_counts: ArrayLike, ratio: float = 1.5) -> bool:
    """True when the largest class of a test set has more than `ratio` times the images of
    the smallest present one: then overall and mean-class accuracy part ways, and the report
    heads with mean-class accuracy."""
    counts = np.asarray(class_counts, dtype=np.float64)
    counts = counts[counts > 0]
    return bool(counts.size and counts.max() > ratio * counts.min())
