"""A run's aggregates arranged for the report: which groups and strategies exist, which pairs
to compare, and pooled confusion matrices.

Rows come from the grid's DAG (what should exist) merged with the store (what does), so a
strategy with no finished fold still gets a row that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fer_core.data.folds import inner_validation_fold
from fer_core.metrics import confusion_matrix
from orchestrator.report import aggregate as agg
from orchestrator.report import significance as sig
from orchestrator.report.aggregate import Group, Paired, StrategyResult
from orchestrator.report.results import Results

BASELINE = "ce"


@dataclass(frozen=True)
class Comparison:
    """One test of the report's family: `paired.a` minus `paired.b` within `group`.

    `holm_pvalue` is the corrected resampled t-test's p after Holm's correction over every
    comparison of the report; `headline` marks the comparisons the report leads with (the
    `inner` ones when the run has any: their test folds chose nothing)."""

    group: Group
    paired: Paired
    holm_pvalue: float | None
    headline: bool
    rounds: tuple[int, int]  # selection rounds of `paired.a`, `paired.b` (agg.selection_rounds)


@dataclass
class Study:
    """Strategy results by (group, strategy), in report order, and the comparisons."""

    results: Results
    by_key: dict[tuple[Group, str], StrategyResult]
    groups: list[Group]
    comparisons: list[Comparison] = field(default_factory=list)
    derived_n_train: set[Group] = field(default_factory=set)  # sizes not in the runs rows
    headlines: dict[str, agg.Headline] = field(default_factory=dict)  # dataset -> its metric

    def headline(self, dataset: str) -> agg.Headline:
        return self.headlines.get(dataset) or agg.headline_of(self.results.kind_of(dataset), None)

    def strategies(self, group: Group) -> list[str]:
        found = {s for g, s in self.by_key if g == group}
        return sorted(found, key=agg.strategy_sort_key)

    def result(self, group: Group, strategy: str) -> StrategyResult:
        return self.by_key[(group, strategy)]

    def pairs(self, group: Group) -> list[tuple[str, str]]:
        """(a, b) comparisons: every strategy against the `ce` baseline, every chain against
        the chain it continues (`focal>ce` vs `focal`), and a chain against the same stages
        in another order (`ce>focal` vs `focal>ce`, the ordering question of Table 4); each
        pair once."""
        present = self.strategies(group)
        pairs: list[tuple[str, str]] = []
        for strategy in present:
            reordered = [
                other
                for other in present
                if other != strategy
                and ">" in other
                and sorted(other.split(">")) == sorted(strategy.split(">"))
                and agg.strategy_sort_key(other) < agg.strategy_sort_key(strategy)
            ]
            for other in (BASELINE, agg.parent_strategy(strategy), *reordered):
                if other is None or other == strategy or other not in present:
                    continue
                if (strategy, other) not in pairs:
                    pairs.append((strategy, other))
        return pairs

    @property
    def multi_seed(self) -> bool:
        """True when some strategy has results of more than one seed (replicates)."""
        return any(len(r.seeds) > 1 for r in self.by_key.values())

    @property
    def headline_selection(self) -> str | None:
        """`inner` when the run has inner results (the headline comparisons use them)."""
        return "inner" if any(g.selection == "inner" for g in self.groups) else None

    def stage_pairs(self, group: Group) -> list[tuple[str, str]]:
        """(stage before, chain) for every multi-stage chain whose parent is in the group."""
        present = self.strategies(group)
        return [
            (parent, s)
            for s in present
            if (parent := agg.parent_strategy(s)) is not None and parent in present
        ]

    def classes(self, dataset: str, table_names: dict[int, str], n_classes: int) -> list[str]:
        row = self.results.prepare.get(dataset, {})
        return agg.class_names(row.get("classes"), table_names, n_classes)

    def confusion(
        self, group: Group, strategy: str, folds: tuple[int, ...] | None = None
    ) -> tuple[np.ndarray, list[str]] | None:
        """Pooled counts over `folds` (default: all finished folds) and the class names."""
        result = self.result(group, strategy)
        folds = tuple(sorted(result.folds)) if folds is None else folds
        units = [u for f in folds for u in result.unit_ids.get(f, [])]
        table = self.results.predictions(units) if units else None
        if table is None or table.num_rows == 0:
            return None
        labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
        predicted = np.asarray(table.column("predicted").to_pylist(), dtype=np.int64)
        names = dict(zip(labels.tolist(), table.column("label_name").to_pylist(), strict=True))
        prepared = self.results.prepare.get(group.dataset, {}).get("classes")
        n_classes = len(prepared.split(",")) if prepared else 0
        n_classes = max(n_classes, int(labels.max()) + 1, int(predicted.max()) + 1)
        counts = confusion_matrix(labels, predicted, n_classes)
        return counts, self.classes(group.dataset, names, n_classes)


def _order(values: list[str]) -> dict[str, int]:
    return {v: i for i, v in enumerate(dict.fromkeys(values))}


def build_study(results: Results) -> Study:
    """Merge expected (DAG) and finished (store) results into one ordered structure."""
    kinds = {name: info.kind for name, info in results.datasets.items()}
    headlines = agg.headlines_of(results.runs, kinds)
    by_key = agg.strategy_results(results.runs, results.points, headlines)
    for key, folds in results.expected.items():
        entry = by_key.setdefault(key, StrategyResult(*key))
        entry.expected_folds = len(folds)
    # a search's development split is scored on inner folds, not on test folds: no test
    # accuracy to report (the α/γ section reports the search)
    searched = {name for name, info in results.datasets.items() if info.search_of}
    by_key = {key: r for key, r in by_key.items() if key[0].dataset not in searched}
    dataset_rank = _order([u.dataset for u in results.units])
    backbone_rank = _order([u.backbone for u in results.train_units])
    point_rank = _order(results.sweep_points)
    groups = sorted(
        {g for g, _ in by_key},
        key=lambda g: (
            dataset_rank.get(g.dataset, len(dataset_rank)),
            g.dataset,
            backbone_rank.get(g.backbone, len(backbone_rank)),
            g.backbone,
            g.selection,
            point_rank.get(g.point, -1),
        ),
    )
    study = Study(results, by_key, groups, headlines=headlines)
    study.derived_n_train = _fill_training_sizes(study)
    study.comparisons = _compare(study)
    return study


def _fill_training_sizes(study: Study) -> set[Group]:
    """Training-set sizes of folds whose runs rows do not record `n_train` (rows written
    before the column existed), from the prepare row's image count minus the test fold
    (and, under `inner`, minus the inner-validation fold). Returns the groups derived so."""
    fold_sizes: dict[str, dict[int, int]] = {}
    for (group, _), result in study.by_key.items():
        fold_sizes.setdefault(group.dataset, {}).update(result.n_test)
    derived: set[Group] = set()
    for (group, _), result in study.by_key.items():
        total = study.results.prepare.get(group.dataset, {}).get("images")
        info = study.results.datasets.get(group.dataset)
        for fold, n_test in result.n_test.items():
            if fold in result.n_train or not total or not n_test:
                continue
            held_out = n_test
            if group.selection == "inner" and info is not None:
                inner = fold_sizes[group.dataset].get(inner_validation_fold(fold, info.n_folds))
                if inner is None:
                    continue
                held_out += inner
            result.n_train[fold] = int(total) - held_out
            derived.add(group)
    return derived


def _compare(study: Study) -> list[Comparison]:
    """Every pair of every group, tested, with Holm's correction over the whole family (a
    sweep's points are groups: each point's comparisons stay within it, and all points'
    comparisons form one family)."""
    found = [
        (group, agg.paired_comparison(study.result(group, a), study.result(group, b)))
        for group in study.groups
        for a, b in study.pairs(group)
    ]
    adjusted = sig.holm([p.corrected.pvalue if p.corrected else None for _, p in found])
    headline = study.headline_selection
    return [
        Comparison(
            group,
            paired,
            holm_p,
            headline is None or group.selection == headline,
            (study.result(group, paired.a).rounds, study.result(group, paired.b).rounds),
        )
        for (group, paired), holm_p in zip(found, adjusted, strict=True)
    ]
