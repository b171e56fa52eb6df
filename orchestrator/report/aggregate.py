"""Aggregates over result rows: accuracy over folds, confusion matrices, paired comparisons.

Pure functions over plain rows (dicts) and numpy arrays, so they are easy to check by hand
and the report never stores a number it could recompute. Accuracies here are in percent
(the store keeps fractions); standard deviations are sample stds (ddof=1) between folds and,
with replicates, between seeds: the spreads a reader needs to judge a difference of a few
images. The tests themselves live in `significance`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fer_core.errors import FerError
from fer_core.loss_registry import LOSSES
from fer_core.metrics import is_imbalanced, metrics
from orchestrator.report import paper_numbers as paper
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


FoldSeed = tuple[int, int]  # (test fold, seed): one unit of a strategy; fold 0 = fixed split
# The runs columns every table shows, in this order; one of them is a dataset's headline.
METRICS = {
    "test_accuracy": "accuracy",
    "mean_class_accuracy": "mean-class accuracy",
    "macro_f1": "macro-F1",
}


@dataclass(frozen=True)
class Headline:
    """Which metric leads a dataset's tables and comparisons, and why (docs/METHOD.md D-22)."""

    column: str  # a key of METRICS
    reason: str

    @property
    def name(self) -> str:
        return METRICS[self.column]


def headline_of(kind: str, class_counts: Sequence[int] | None) -> Headline:
    """Overall accuracy on the paper's datasets (its metric: its numbers compare like with
    like); elsewhere mean-class accuracy when the test set is imbalanced (`class_counts`:
    test images per class, pooled over the units), else overall accuracy, which then
    coincides with it."""
    if kind in paper.PAPER_KINDS:
        return Headline("test_accuracy", "the paper's metric, so its tables compare directly")
    if not class_counts or not any(class_counts):
        return Headline("test_accuracy", "these rows record no per-class test counts")
    present = [n for n in class_counts if n > 0]
    ratio = max(present) / min(present)
    if is_imbalanced(present):
        return Headline(
            "mean_class_accuracy",
            f"the test set is imbalanced (largest class {ratio:.1f}× the smallest), where "
            "overall accuracy mostly measures the largest classes",
        )
    return Headline("test_accuracy", f"the test set is balanced ({ratio:.2f}: largest/smallest)")


@dataclass
class StrategyResult:
    """One strategy's headline metric (percent) per fold and seed within a group, and every
    metric of METRICS and the per-class recalls beside it."""

    group: Group
    strategy: str
    cells: dict[FoldSeed, float] = field(default_factory=dict)  # (fold, seed) -> headline %
    scores: dict[str, dict[FoldSeed, float]] = field(default_factory=dict)  # column -> cells
    recalls: dict[FoldSeed, list[float]] = field(default_factory=dict)  # per class, %
    classes: list[str] = field(default_factory=list)
    unit_ids: dict[int, list[str]] = field(default_factory=dict)  # fold -> its run rows' units
    n_test: dict[int, int] = field(default_factory=dict)  # fold -> test images
    n_train: dict[int, int] = field(default_factory=dict)  # fold -> training images (if known)
    expected_folds: int = 0  # how many folds the grid asks for (0 = unknown)

    @property
    def fixed(self) -> bool:
        """True for a fixed split (fold 0): one test set, replicates are seeds only."""
        return set(self.folds) == {0}

    def metric(self, column: str) -> StrategyResult:
        """The same units scored by another METRICS column (mean/std as for the headline)."""
        return StrategyResult(
            self.group,
            self.strategy,
            dict(self.scores.get(column, {})),
            n_test=self.n_test,
            n_train=self.n_train,
            expected_folds=self.expected_folds,
        )

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
    """Strategy `a` minus strategy `b` over the (fold, seed) units both have (points).

    `corrected` is Nadeau & Bengio's corrected resampled t-test (None when undefined or when
    the training-set sizes are unknown), `paired_t` the ordinary paired t-test; both carry
    the 95 % interval of the mean difference under their variance.
    """

    a: str
    b: str
    units: tuple[FoldSeed, ...]
    differences: tuple[float, ...]
    mean_difference: float
    test_train_ratio: float | None  # mean n_test / n_train over the units
    corrected: sig.TTest | None
    paired_t: sig.TTest | None
    wilcoxon_pvalue: float | None

    @property
    def n(self) -> int:
        return len(self.units)

    @property
    def folds(self) -> tuple[int, ...]:
        return tuple(sorted({fold for fold, _ in self.units}))

    @property
    def fold_differences(self) -> dict[int, float]:
        """Per-fold difference, averaged over the seeds both have on that fold."""
        return _means(dict(zip(self.units, self.differences, strict=True)), position=0)


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
    runs: Iterable[Mapping[str, Any]],
    points: Mapping[str, tuple[str, ...]] | None = None,
    headlines: Mapping[str, Headline] | None = None,
) -> dict[tuple[Group, str], StrategyResult]:
    """Per (group, strategy): the dataset's headline metric (`headlines`; default overall
    accuracy) per (fold, seed), in percent, with every METRICS column and the per-class
    recalls a row records.

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
        headline = (headlines or {}).get(str(row["dataset"]))
        accuracy = row.get(headline.column if headline else "test_accuracy")
        if accuracy is None or not math.isfinite(float(accuracy)):
            continue
        fold = int(row["fold"])
        unit = (fold, int(row.get("seed") or 0))
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
            result.cells[unit] = 100.0 * float(accuracy)
            for column in METRICS:
                if row.get(column) is not None:
                    result.scores.setdefault(column, {})[unit] = 100.0 * float(row[column])
            if row.get("per_class_recall") is not None:
                result.recalls[unit] = [100.0 * float(v) for v in row["per_class_recall"]]
                result.classes = list(row.get("classes") or [])
            result.unit_ids.setdefault(fold, []).append(found[0])
            result.n_test[fold] = int(row.get("n_test") or 0)
            if row.get("n_train"):
                result.n_train[fold] = int(row["n_train"])
    for result in out.values():
        result.cells = dict(sorted(result.cells.items()))
    return out


def headlines_of(
    runs: Iterable[Mapping[str, Any]], kinds: Mapping[str, str]
) -> dict[str, Headline]:
    """Each dataset's headline (`headline_of`), its test class counts pooled over its rows."""
    counts: dict[str, np.ndarray] = {}
    for row in runs:
        found = row.get("test_class_counts")
        if found:
            name = str(row["dataset"])
            counts[name] = counts.get(name, 0) + np.asarray(found, dtype=np.int64)
    names = {str(row["dataset"]) for row in runs} | set(counts)
    return {
        name: headline_of(kinds.get(name, name), counts[name].tolist() if name in counts else None)
        for name in names
    }


def net_images(a: StrategyResult, b: StrategyResult) -> tuple[float, int]:
    """(test images `a` got right minus those `b` got right, images scored) over shared folds,
    per seed (a fold's difference is averaged over its seeds first).

    Puts a difference in points into the unit that matters on small datasets: on CK+ 0.6
    points is about 6 of 981 images.
    """
    a_folds, b_folds = a.folds, b.folds
    folds = sorted(set(a_folds) & set(b_folds))
    images = sum(a.n_test.get(f, 0) for f in folds)
    net = sum((a_folds[f] - b_folds[f]) * a.n_test.get(f, 0) / 100.0 for f in folds)
    return net, images


def test_train_ratio(result: StrategyResult, units: Sequence[FoldSeed]) -> float | None:
    """Mean n_test / n_train over `units` (Nadeau & Bengio's correction term); None when a
    unit's sizes are unknown. 0 on a fixed split: its seeds train on the same images and
    score the same test set, so no training data is resampled and nothing needs correcting
    (the corrected test is then the paired t-test over seeds)."""
    if units and all(fold == 0 for fold, _ in units):
        return 0.0
    ratios = []
    for fold, _ in units:
        n_test, n_train = result.n_test.get(fold), result.n_train.get(fold)
        if not n_test or not n_train:
            return None
        ratios.append(n_test / n_train)
    return float(np.mean(ratios)) if ratios else None


def paired_comparison(a: StrategyResult, b: StrategyResult) -> Paired:
    """`a` vs `b` on the (fold, seed) units both have: differences, their mean, the corrected
    resampled t-test (sizes from `a`, which shares its folds with `b`), the paired t-test and
    the Wilcoxon signed-rank test. Undefined tests (fewer than 2 units, no variation) are None.
    """
    units = tuple(sorted(set(a.cells) & set(b.cells)))
    diffs = [a.cells[u] - b.cells[u] for u in units]
    ratio = test_train_ratio(a, units)
    return Paired(
        a=a.strategy,
        b=b.strategy,
        units=units,
        differences=tuple(float(d) for d in diffs),
        mean_difference=float(np.mean(diffs)) if diffs else math.nan,
        test_train_ratio=ratio,
        corrected=None if ratio is None else sig.resampled_t(diffs, ratio),
        paired_t=sig.resampled_t(diffs, 0.0),
        wilcoxon_pvalue=sig.wilcoxon_pvalue(diffs),
    )


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its total; a class with no images keeps a row of zeros."""
    totals = counts.sum(axis=1, keepdims=True)
    normalised: np.ndarray = counts / np.maximum(totals, 1)
    return normalised


def per_class_accuracy(counts: np.ndarray) -> list[float]:
    """Recall of each class in percent (NaN for a class with no test images)."""
    return [100.0 * r for r in metrics(counts).per_class_recall]


def class_names(prepared: str | None, label_names: Mapping[int, str], n_classes: int) -> list[str]:
    """Class names in label order: the prepare row's comma-joined `classes` when present,
    else the names seen in predictions, else `class <i>`."""
    if prepared:
        names = [c.strip() for c in prepared.split(",") if c.strip()]
        if len(names) >= n_classes:
            return names
    return [label_names.get(i, f"class {i}") for i in range(n_classes)]
