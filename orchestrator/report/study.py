"""A run's aggregates arranged for the report: which groups and strategies exist, which pairs
to compare, and pooled confusion matrices.

Rows come from the grid's DAG (what should exist) merged with the store (what does), so a
strategy with no finished fold still gets a row that says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.report import aggregate as agg
from orchestrator.report.aggregate import Group, StrategyResult
from orchestrator.report.results import Results

BASELINE = "ce"


@dataclass
class Study:
    """Strategy results by (group, strategy), in report order."""

    results: Results
    by_key: dict[tuple[Group, str], StrategyResult]
    groups: list[Group]

    def strategies(self, group: Group) -> list[str]:
        found = {s for g, s in self.by_key if g == group}
        return sorted(found, key=agg.strategy_sort_key)

    def result(self, group: Group, strategy: str) -> StrategyResult:
        return self.by_key[(group, strategy)]

    def pairs(self, group: Group) -> list[tuple[str, str]]:
        """(a, b) comparisons: every strategy against the `ce` baseline, and every chain
        against the chain it continues (`focal>ce` vs `focal`); each pair once."""
        present = self.strategies(group)
        pairs: list[tuple[str, str]] = []
        for strategy in present:
            for other in (BASELINE, agg.parent_strategy(strategy)):
                usable = other and other != strategy and other in present
                if usable and (strategy, other) not in pairs:
                    pairs.append((strategy, other))
        return pairs

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
        counts = agg.confusion_counts(labels, predicted, n_classes)
        return counts, self.classes(group.dataset, names, n_classes)


def _order(values: list[str]) -> dict[str, int]:
    return {v: i for i, v in enumerate(dict.fromkeys(values))}


def build_study(results: Results) -> Study:
    """Merge expected (DAG) and finished (store) results into one ordered structure."""
    by_key = agg.strategy_results(results.runs)
    for key, folds in results.expected.items():
        entry = by_key.setdefault(key, StrategyResult(*key))
        entry.expected_folds = len(folds)
    dataset_rank = _order([u.dataset for u in results.units])
    backbone_rank = _order([u.backbone for u in results.train_units])
    groups = sorted(
        {g for g, _ in by_key},
        key=lambda g: (
            dataset_rank.get(g.dataset, len(dataset_rank)),
            g.dataset,
            backbone_rank.get(g.backbone, len(backbone_rank)),
            g.backbone,
            g.selection,
        ),
    )
    return Study(results, by_key, groups)
