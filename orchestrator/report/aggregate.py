"""Aggregates over result rows: accuracy over folds, confusion matrices, paired comparisons.

Pure functions over plain rows (dicts) and numpy arrays, so they are easy to check by hand
and the report never stores a number it could recompute. Accuracies here are in percent
(the store keeps fractions); standard deviations are sample stds (ddof=1) between folds and,
with replicates, between seeds: the spreads a reader needs to judge a difference of a few
images. A unit's result is kept as its count of correct test predictions, so a difference
between strategies is a whole number of images before it is put into points: tied
differences stay tied (a rank test depends on that). The tests themselves live in
`significance`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from fer_core.errors import FerError
from fer_core.loss_registry import LOSSES
from orchestrator.report import significance as sig

# The single-stage strategies in registry order (the paper's Table 4 order for its three),
# then the paper's two chains in its Table 4 order; other chains sort after them, by name.
PAPER_CHAINS = ("focal>ce", "ce>focal")
STRATEGY_ORDER = (*LOSSES, *PAPER_CHAINS)


@dataclass(frozen=True, order=True)
class Group:
    """Results that may be compared: same dataset, backbone, model-selection protocol and
    sweep point (`Unit.points`; "" without a sweep): two points are two configurations."""

    dataset: str
    backbone: str
    selection: str
    point: str = ""


FoldSeed = tuple[int, int]  # (test fold, seed): one cross-validation unit of a strategy


@dataclass
class StrategyResult:
    """One strategy's correct test predictions per fold and seed within a group."""

    group: Group
    strategy: str
    correct: dict[FoldSeed, int] = field(default_factory=dict)  # (fold, seed) -> images right
    unit_ids: dict[int, list[str]] = field(default_factory=dict)  # fold -> its run rows' units
    n_test: dict[int, int] = field(default_factory=dict)  # fold -> test images
    n_train: dict[int, int] = field(default_factory=dict)  # fold -> training images (if known)
    expected_folds: int = 0  # how many folds the grid asks for (0 = unknown)

    @property
    def cells(self) -> dict[FoldSeed, float]:
        """Test accuracy in percent per (fold, seed)."""
        return {u: 100.0 * c / self.n_test[u[0]] for u, c in self.correct.items()}

    @property
    def folds(self) -> dict[int, float]:
        """Accuracy per fold, averaged over the seeds that fold has."""
        return _means(self.cells, position=0)

    @property
    def seeds(self) -> dict[int, float]:
        """Accuracy per seed, averaged over the folds that seed has."""
        return _means(self.cells, position=1)

    @property
    def n(self) -> int:
        return len(self.folds)

    @property
    def mean(self) -> float:
        return mean_std(list(self.folds.values()))[0]

    @property
    def std(self) -> float:
        """Spread between folds (sample std of the per-fold means)."""
        return mean_std(list(self.folds.values()))[1]

    @property
    def seed_std(self) -> float:
        """Spread between seeds (sample std of the per-seed means); NaN with one seed."""
        return mean_std(list(self.seeds.values()))[1]


def _means(cells: Mapping[FoldSeed, float], position: int) -> dict[int, float]:
    grouped: dict[int, list[float]] = {}
    for key, value in cells.items():
        grouped.setdefault(key[position], []).append(value)
    return {k: float(np.mean(v)) for k, v in sorted(grouped.items())}


@dataclass(frozen=True)
class Paired:
    """Strategy `a` minus strategy `b` over the test folds both have, in points.

    The unit of every test is the test fold: seeds on one fold share its training and test
    images, so they are pseudo-replicates, not independent units. A fold's difference is
    the mean over the seeds both strategies have on it; `seed_differences` (the mean
    difference of each seed over its folds) only describes how much a re-run with another
    seed moves the result. `corrected` is Nadeau & Bengio's corrected resampled t-test (None
    when undefined or when the training-set sizes are unknown), `paired_t` the ordinary
    paired t-test; both carry the 95 % interval of the mean difference under their variance.
    """

    a: str
    b: str
    fold_differences: dict[int, float]  # fold -> points, mean over the seeds both have
    seed_differences: dict[int, float]  # seed -> points, mean over the folds both have
    net_images: float  # test images a got right minus b, summed over folds, mean over seeds
    images: int  # test images of the paired folds
    test_train_ratio: float | None  # mean n_test / n_train over the folds
    corrected: sig.TTest | None
    paired_t: sig.TTest | None
    wilcoxon_pvalue: float | None

    @property
    def n(self) -> int:
        """Independent units: the paired test folds."""
        return len(self.fold_differences)

    @property
    def folds(self) -> tuple[int, ...]:
        return tuple(self.fold_differences)

    @property
    def differences(self) -> tuple[float, ...]:
        return tuple(self.fold_differences.values())

    @property
    def mean_difference(self) -> float:
        return mean_std(self.differences)[0]

    @property
    def seed_std(self) -> float:
        """Spread of the difference between seeds (sample std of the per-seed means); NaN
        with one seed. Descriptive: no test uses it."""
        return mean_std(list(self.seed_differences.values()))[1]


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


def group_of(row: Mapping[str, Any], point: str = "") -> Group:
    return Group(str(row["dataset"]), str(row["backbone"]), str(row.get("selection") or "?"), point)


def strategy_results(
    runs: Iterable[Mapping[str, Any]], points: Mapping[str, tuple[str, ...]] | None = None
) -> dict[tuple[Group, str], StrategyResult]:
    """Per (group, strategy): test accuracy per (fold, seed), in percent.

    A run row belongs to the strategy its `strategy` column names (the chain up to its
    stage), so `ce` is read from stage-1 units and `ce>focal` from stage-2 units, and to
    every sweep point `points` lists for its unit (a stage 1 that a stage-2 sweep shares is
    each point's baseline). A row's `n_train` (training images) is kept where the row
    records it.

    Two rows for one (group, strategy, fold, seed) are two configurations in one cell, which
    a grid cannot produce (a sweep's points are groups of their own): an error naming both,
    never an average that would blend them into a number no configuration scored.
    """
    out: dict[tuple[Group, str], StrategyResult] = {}
    seen: dict[tuple[Group, str, FoldSeed], tuple[str, str]] = {}  # -> (unit id, label)
    for row in runs:
        accuracy = row.get("test_accuracy")
        if accuracy is None or not math.isfinite(float(accuracy)):
            continue
        fold = int(row["fold"])
        unit = (fold, int(row.get("seed") or 0))
        n_test = int(row.get("n_test") or 0)
        correct = _correct(row, float(accuracy), n_test)
        found = (str(row["unit_id"]), str(row.get("unit_label") or row["unit_id"]))
        for point in (points or {}).get(found[0]) or ("",):
            key = (group_of(row, point), str(row["strategy"]))
            if (other := seen.setdefault(key + (unit,), found)) != found:
                raise FerError(
                    f"two results for {key[1]} on fold {fold}, seed {unit[1]}"
                    + (f" at sweep point {point}" if point else "")
                    + f": {other[1]} and {found[1]}; a dag.json written before units recorded "
                    "their sweep points does not tell the points apart: launch the grid "
                    "again with the same --set (finished units are kept) to rewrite it"
                )
            result = out.setdefault(key, StrategyResult(*key))
            result.correct[unit] = correct
            result.unit_ids.setdefault(fold, []).append(found[0])
            result.n_test[fold] = n_test
            if row.get("n_train"):
                result.n_train[fold] = int(row["n_train"])
    for result in out.values():
        result.correct = dict(sorted(result.correct.items()))
    return out


def _correct(row: Mapping[str, Any], accuracy: float, n_test: int) -> int:
    """The unit's correct test predictions: its accuracy times its test images, which a
    scored unit makes a whole number; anything else is a row no training wrote."""
    correct = accuracy * n_test
    if n_test <= 0 or abs(correct - round(correct)) > 1e-6:
        raise FerError(
            f"runs row of unit {row['unit_id']}: test_accuracy {accuracy!r} is not a whole "
            f"number of its n_test = {n_test} test images"
        )
    return round(correct)


def test_train_ratio(result: StrategyResult, folds: Sequence[int]) -> float | None:
    """Mean n_test / n_train over `folds` (Nadeau & Bengio's correction term); None when a
    fold's sizes are unknown."""
    ratios = []
    for fold in folds:
        n_test, n_train = result.n_test.get(fold), result.n_train.get(fold)
        if not n_test or not n_train:
            return None
        ratios.append(n_test / n_train)
    return float(np.mean(ratios)) if ratios else None


def paired_comparison(a: StrategyResult, b: StrategyResult) -> Paired:
    """`a` vs `b` on the test folds both have (each fold's difference averaged over the seeds
    both have on it): the mean difference, the corrected resampled t-test (sizes from `a`,
    which shares its folds with `b`), the paired t-test and the Wilcoxon signed-rank test,
    all on the fold differences. Undefined tests (fewer than 2 folds, no variation) are None.

    A fold's difference is computed from whole image counts, 100 · Σ_seeds (c_a − c_b) /
    (seeds · n_test), one rounding of an exact ratio: folds whose differences are equal get
    bitwise-equal numbers, which the Wilcoxon test then ranks as ties.
    """
    units = sorted(set(a.correct) & set(b.correct))
    net: dict[FoldSeed, int] = {u: a.correct[u] - b.correct[u] for u in units}
    by_fold: dict[int, list[int]] = {}
    for (fold, _), d in net.items():
        by_fold.setdefault(fold, []).append(d)
    fold_differences = {
        f: 100.0 * sum(d) / (len(d) * a.n_test[f]) for f, d in sorted(by_fold.items())
    }
    seed_differences = _means({u: 100.0 * d / a.n_test[u[0]] for u, d in net.items()}, 1)
    diffs = list(fold_differences.values())
    ratio = test_train_ratio(a, list(fold_differences))
    return Paired(
        a=a.strategy,
        b=b.strategy,
        fold_differences=fold_differences,
        seed_differences=seed_differences,
        net_images=float(sum(sum(d) / len(d) for d in by_fold.values())),
        images=sum(a.n_test[f] for f in by_fold),
        test_train_ratio=ratio,
        corrected=None if ratio is None else sig.resampled_t(diffs, ratio),
        paired_t=sig.resampled_t(diffs, 0.0),
        wilcoxon_pvalue=sig.wilcoxon_pvalue(diffs),
    )


def confusion_counts(labels: ArrayLike, predicted: ArrayLike, n_classes: int) -> np.ndarray:
    """Counts, rows = ground truth, columns = prediction (the paper's Figs 3 and 5)."""
    flat = np.asarray(labels, dtype=np.int64) * n_classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its total; a class with no images keeps a row of zeros."""
    totals = counts.sum(axis=1, keepdims=True)
    normalised: np.ndarray = counts / np.maximum(totals, 1)
    return normalised


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
