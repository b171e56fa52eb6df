"""Aggregates over result rows: accuracy over folds, confusion matrices, paired comparisons.

Pure functions over plain rows (dicts) and numpy arrays, so they are easy to check by hand
and the report never stores a number it could recompute. Accuracies here are in percent
(the store keeps fractions); standard deviations are sample stds (ddof=1) between folds and,
with replicates, between seeds: the spreads a reader needs to judge a difference of a few
images. A unit's overall accuracy is kept as its count of correct test predictions, so a
difference in accuracy between strategies is a whole number of images before it is put into
points: tied differences stay tied (a rank test depends on that); other headline metrics
(mean-class accuracy) are differenced as percentages rounded to 1e-9 points, for the same
reason. The tests themselves live in `significance`.
"""

from __future__ import annotations

import json
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
    """Which metric leads a dataset's tables and comparisons, and why (docs/METHOD.md D-19)."""

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
    correct: dict[FoldSeed, int] = field(default_factory=dict)  # (fold, seed) -> images right
    exact: bool = True  # the headline is overall accuracy: differences from `correct`
    scores: dict[str, dict[FoldSeed, float]] = field(default_factory=dict)  # column -> cells
    recalls: dict[FoldSeed, list[float]] = field(default_factory=dict)  # per class, %
    classes: list[str] = field(default_factory=list)
    unit_ids: dict[int, list[str]] = field(default_factory=dict)  # fold -> its run rows' units
    n_test: dict[int, int] = field(default_factory=dict)  # fold -> test images
    n_train: dict[int, int] = field(default_factory=dict)  # fold -> training images (if known)
    expected_folds: int = 0  # how many folds the grid asks for (0 = unknown)
    final_epoch: str = "best"  # which epoch its final stage kept (the runs rows' config)

    @property
    def rounds(self) -> int:
        """Its rounds of model selection (`selection_rounds`)."""
        return selection_rounds(self.strategy, self.final_epoch)

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
            correct=self.correct,
            exact=column == "test_accuracy",
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
    """Strategy `a` minus strategy `b` over the units both have, in points of the headline.

    The unit of every test is the test fold: seeds on one fold share its training and test
    images, so they are pseudo-replicates, not independent units. A fold's difference is
    the mean over the seeds both strategies have on it; `seed_differences` (the mean
    difference of each seed over its folds) only describes how much a re-run with another
    seed moves the result. A fixed split (`fixed`: every unit is fold 0, one test set) has no
    fold variance: there the seeds are the units. `corrected` is Nadeau & Bengio's corrected
    resampled t-test (None when undefined or when the training-set sizes are unknown),
    `paired_t` the ordinary paired t-test; both carry the 95 % interval of the mean
    difference under their variance.
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
    fixed: bool = False  # a fixed split: the seeds are the units

    @property
    def unit_differences(self) -> dict[int, float]:
        """The differences the tests use: per fold, or per seed on a fixed split."""
        return self.seed_differences if self.fixed else self.fold_differences

    @property
    def n(self) -> int:
        """Independent units: the paired test folds (the seeds on a fixed split)."""
        return len(self.unit_differences)

    @property
    def folds(self) -> tuple[int, ...]:
        return tuple(self.fold_differences)

    @property
    def differences(self) -> tuple[float, ...]:
        return tuple(self.unit_differences.values())

    @property
    def mean_difference(self) -> float:
        return mean_std(self.differences)[0]

    @property
    def seed_std(self) -> float:
        """Spread of the difference between seeds (sample std of the per-seed means); NaN
        with one seed. Descriptive on k folds: no test uses it."""
        return mean_std(list(self.seed_differences.values()))[1]


def selection_rounds(strategy: str, final_epoch: str = "best") -> int:
    """Rounds of model selection a chain had: one per stage that kept its best epoch, which
    is every stage but a final one that kept its last (`final_epoch: last`, D-14). Under
    `heldout` each round looked at the test fold."""
    return strategy.count(">") + (final_epoch != "last")


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
        accuracy = row.get("test_accuracy")
        value = row.get(headline.column) if headline else accuracy
        if accuracy is None or value is None or not math.isfinite(float(value)):
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
            result.final_epoch = str(_config(row).get("final_epoch", "best"))
            result.correct[unit] = correct
            if headline is None or headline.column == "test_accuracy":
                result.cells[unit] = 100.0 * correct / n_test
            else:
                result.cells[unit] = 100.0 * float(value)
                result.exact = False
            for column in METRICS:
                if row.get(column) is not None:
                    result.scores.setdefault(column, {})[unit] = 100.0 * float(row[column])
            if row.get("per_class_recall") is not None:
                result.recalls[unit] = [100.0 * float(v) for v in row["per_class_recall"]]
                result.classes = list(row.get("classes") or [])
            result.unit_ids.setdefault(fold, []).append(found[0])
            result.n_test[fold] = n_test
            if row.get("n_train"):
                result.n_train[fold] = int(row["n_train"])
    for result in out.values():
        result.cells = dict(sorted(result.cells.items()))
        result.correct = dict(sorted(result.correct.items()))
    return out


def _config(row: Mapping[str, Any]) -> dict[str, Any]:
    """A runs row's stage config (JSON; keys left out at their default, as in its spec)."""
    text = row.get("config")
    return dict(json.loads(text)) if text else {}


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


def test_train_ratio(result: StrategyResult, folds: Sequence[int]) -> float | None:
    """Mean n_test / n_train over `folds` (Nadeau & Bengio's correction term); None when a
    fold's sizes are unknown. 0 on a fixed split (fold 0): its seeds train on the same images
    and score the same test set, so no training data is resampled and nothing needs
    correcting (the corrected test is then the paired t-test over seeds)."""
    if folds and all(fold == 0 for fold in folds):
        return 0.0
    ratios = []
    for fold in folds:
        n_test, n_train = result.n_test.get(fold), result.n_train.get(fold)
        if not n_test or not n_train:
            return None
        ratios.append(n_test / n_train)
    return float(np.mean(ratios)) if ratios else None


def paired_comparison(a: StrategyResult, b: StrategyResult) -> Paired:
    """`a` vs `b` on the units both have: the mean difference, the corrected resampled
    t-test (sizes from `a`, which shares its folds with `b`), the paired t-test and the
    Wilcoxon signed-rank test, all on the fold differences (each fold's difference averaged
    over the seeds both have on it), or on the seed differences on a fixed split. Undefined
    tests (fewer than 2 units, no variation) are None.

    With overall accuracy as the headline a fold's difference is computed from whole image
    counts, 100 · Σ_seeds (c_a − c_b) / (seeds · n_test), one rounding of an exact ratio:
    folds whose differences are equal get bitwise-equal numbers, which the Wilcoxon test then
    ranks as ties. Another headline's differences are rounded to 1e-9 points for the same
    reason.
    """
    units = sorted(set(a.cells) & set(b.cells))
    exact = a.exact and b.exact
    net = {u: a.correct[u] - b.correct[u] for u in units}
    by_fold: dict[int, list[FoldSeed]] = {}
    for unit in units:
        by_fold.setdefault(unit[0], []).append(unit)

    def points(group: Sequence[FoldSeed]) -> float:
        if exact:
            return 100.0 * sum(net[u] for u in group) / sum(a.n_test[u[0]] for u in group)
        return round(float(np.mean([a.cells[u] - b.cells[u] for u in group])), 9)

    fold_differences = {f: points(group) for f, group in sorted(by_fold.items())}
    fixed = bool(units) and set(fold_differences) == {0}
    # per seed: each unit's difference (on a fixed split the seed's one unit), then the mean
    # over the seed's folds (descriptive on k folds)
    seed_differences = _means({u: points([u]) for u in units}, position=1)
    diffs = list((seed_differences if fixed else fold_differences).values())
    ratio = test_train_ratio(a, list(fold_differences))
    return Paired(
        a=a.strategy,
        b=b.strategy,
        fold_differences=fold_differences,
        seed_differences=seed_differences,
        net_images=float(sum(np.mean([net[u] for u in g]) for g in by_fold.values())),
        images=sum(a.n_test[f] for f in by_fold),
        test_train_ratio=ratio,
        corrected=None if ratio is None else sig.resampled_t(diffs, ratio),
        paired_t=sig.resampled_t(diffs, 0.0),
        wilcoxon_pvalue=sig.wilcoxon_pvalue(diffs),
        fixed=fixed,
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
