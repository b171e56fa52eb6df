"""Aggregates over result rows: accuracy over folds, confusion matrices, paired comparisons.

Pure functions over plain rows (dicts) and numpy arrays, so they are easy to check by hand
and the report never stores a number it could recompute. Accuracies here are in percent
(the store keeps fractions); standard deviations are the sample std over folds (ddof=1),
the spread a reader needs to judge a difference of a few images.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

# Strategies in the paper's Table 4 order; unknown chains sort after them, by name.
STRATEGY_ORDER = ("ce", "focal", "joint", "focal>ce", "ce>focal")


@dataclass(frozen=True, order=True)
class Group:
    """Results that may be compared: same dataset, backbone and model-selection protocol."""

    dataset: str
    backbone: str
    selection: str


@dataclass
class StrategyResult:
    """One strategy's test accuracy per fold (percent) within a group."""

    group: Group
    strategy: str
    folds: dict[int, float] = field(default_factory=dict)
    unit_ids: dict[int, list[str]] = field(default_factory=dict)  # fold -> its run rows' units
    n_test: dict[int, int] = field(default_factory=dict)  # fold -> test images
    expected_folds: int = 0  # how many folds the grid asks for (0 = unknown)

    @property
    def n(self) -> int:
        return len(self.folds)

    @property
    def mean(self) -> float:
        return mean_std(list(self.folds.values()))[0]

    @property
    def std(self) -> float:
        return mean_std(list(self.folds.values()))[1]


@dataclass(frozen=True)
class Paired:
    """Strategy `a` minus strategy `b` over the folds both have (points of accuracy)."""

    a: str
    b: str
    folds: tuple[int, ...]
    differences: tuple[float, ...]
    mean_difference: float
    t_pvalue: float | None  # paired t-test; None when undefined (n < 2, no variance)
    wilcoxon_pvalue: float | None  # Wilcoxon signed-rank; None when undefined

    @property
    def n(self) -> int:
        return len(self.folds)


def strategy_sort_key(strategy: str) -> tuple[int, int, str]:
    """Paper order first, then shorter chains, then by name."""
    if strategy in STRATEGY_ORDER:
        return (0, STRATEGY_ORDER.index(strategy), strategy)
    return (1, strategy.count(">"), strategy)


def parent_strategy(strategy: str) -> str | None:
    """The chain this one continues from (`ce>focal` -> `ce`); None for a single stage."""
    head, sep, _ = strategy.rpartition(">")
    return head if sep else None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1); NaN where undefined."""
    if not values:
        return math.nan, math.nan
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else math.nan
    return float(array.mean()), std


def group_of(row: Mapping[str, Any]) -> Group:
    return Group(str(row["dataset"]), str(row["backbone"]), str(row.get("selection") or "?"))


def strategy_results(runs: Iterable[Mapping[str, Any]]) -> dict[tuple[Group, str], StrategyResult]:
    """Per (group, strategy): test accuracy per fold, in percent.

    A run row belongs to the strategy its `strategy` column names (the chain up to its
    stage), so `ce` is read from stage-1 units and `ce>focal` from stage-2 units. Two rows
    for the same fold (should not happen within one grid) are averaged.
    """
    out: dict[tuple[Group, str], StrategyResult] = {}
    sums: dict[tuple[Group, str, int], list[float]] = {}
    for row in runs:
        accuracy = row.get("test_accuracy")
        if accuracy is None or not math.isfinite(float(accuracy)):
            continue
        key = (group_of(row), str(row["strategy"]))
        result = out.setdefault(key, StrategyResult(*key))
        fold = int(row["fold"])
        sums.setdefault((*key, fold), []).append(100.0 * float(accuracy))
        result.folds[fold] = float(np.mean(sums[(*key, fold)]))
        result.unit_ids.setdefault(fold, []).append(str(row["unit_id"]))
        result.n_test[fold] = int(row.get("n_test") or 0)
    for result in out.values():
        result.folds = dict(sorted(result.folds.items()))
    return out


def net_images(a: StrategyResult, b: StrategyResult) -> tuple[float, int]:
    """(test images `a` got right minus those `b` got right, images scored) over shared folds.

    Puts a difference in points into the unit that matters on small datasets: on CK+ 0.6
    points is about 6 of 981 images.
    """
    folds = sorted(set(a.folds) & set(b.folds))
    images = sum(a.n_test.get(f, 0) for f in folds)
    net = sum((a.folds[f] - b.folds[f]) * a.n_test.get(f, 0) / 100.0 for f in folds)
    return net, images


def _pvalue(compute) -> float | None:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            value = float(compute().pvalue)
        except ValueError:
            return None
    return value if math.isfinite(value) else None


def paired_comparison(
    a: str, a_folds: Mapping[int, float], b: str, b_folds: Mapping[int, float]
) -> Paired:
    """`a` vs `b` on the folds both have: per-fold differences, mean, t-test and Wilcoxon p.

    With fewer than two paired folds the tests are undefined (None, shown as "n/a").
    """
    folds = tuple(sorted(set(a_folds) & set(b_folds)))
    diffs = np.array([a_folds[f] - b_folds[f] for f in folds], dtype=float)
    if len(folds) < 2:
        t_p = w_p = None
    else:
        x = np.array([a_folds[f] for f in folds])
        y = np.array([b_folds[f] for f in folds])
        t_p = _pvalue(lambda: stats.ttest_rel(x, y))
        w_p = None if not np.any(diffs) else _pvalue(lambda: stats.wilcoxon(diffs))
    return Paired(
        a=a,
        b=b,
        folds=folds,
        differences=tuple(float(d) for d in diffs),
        mean_difference=float(diffs.mean()) if len(diffs) else math.nan,
        t_pvalue=t_p,
        wilcoxon_pvalue=w_p,
    )


def confusion_counts(labels: Sequence[int], predicted: Sequence[int], n_classes: int) -> np.ndarray:
    """Counts, rows = ground truth, columns = prediction (the paper's Figs 3 and 5)."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    flat = labels * n_classes + predicted
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its total; a class with no images keeps a row of zeros."""
    totals = counts.sum(axis=1, keepdims=True)
    return counts / np.maximum(totals, 1)


def per_class_accuracy(counts: np.ndarray) -> list[float]:
    """Recall of each class in percent (NaN for a class with no test images)."""
    totals = counts.sum(axis=1)
    return [
        100.0 * float(counts[i, i]) / float(t) if t > 0 else math.nan for i, t in enumerate(totals)
    ]


def class_names(prepared: str | None, label_names: Mapping[int, str], n_classes: int) -> list[str]:
    """Class names in label order: the prepare row's comma-joined `classes` when present,
    else the names seen in predictions, else `class <i>`."""
    if prepared:
        names = [c.strip() for c in prepared.split(",") if c.strip()]
        if len(names) >= n_classes:
            return names
    return [label_names.get(i, f"class {i}") for i in range(n_classes)]
