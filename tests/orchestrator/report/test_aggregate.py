"""Aggregates checked against hand computation (and scipy on the same data)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats

from orchestrator.report import aggregate as agg
from orchestrator.report.aggregate import Group
from orchestrator.report.results import load_results
from orchestrator.report.study import build_study
from tests.orchestrator.report.fake_results import ERRORS, accuracy, make_run

HELDOUT = Group("ckplus", "inception_v3", "heldout")


def test_mean_and_sample_std():
    assert agg.mean_std([80.0, 90.0, 70.0]) == (80.0, 10.0)
    mean, std = agg.mean_std([91.0])
    assert mean == 91.0 and math.isnan(std)
    assert all(math.isnan(v) for v in agg.mean_std([]))


def _row(fold, accuracy, strategy="ce", unit=None, n_test=10, **extra):
    return {
        "unit_id": unit or f"{strategy}-{fold}",
        "dataset": "ckplus",
        "backbone": "inception_v3",
        "selection": "heldout",
        "strategy": strategy,
        "fold": fold,
        "test_accuracy": accuracy,
        "n_test": n_test,
        **extra,
    }


def test_strategy_results_per_fold_in_percent():
    rows = [_row(1, 0.8), _row(2, 0.9), _row(3, 0.7), _row(1, 0.9, "ce>focal")]
    results = agg.strategy_results(rows)
    ce = results[(HELDOUT, "ce")]
    assert ce.folds == pytest.approx({1: 80.0, 2: 90.0, 3: 70.0})
    assert (ce.n, ce.mean, ce.std) == (3, pytest.approx(80.0), pytest.approx(10.0))
    assert results[(HELDOUT, "ce>focal")].folds == pytest.approx({1: 90.0})


def test_duplicate_folds_are_averaged_and_missing_accuracies_skipped():
    rows = [_row(1, 0.8, unit="a"), _row(1, 0.9, unit="b"), _row(2, float("nan")), _row(3, None)]
    ce = agg.strategy_results(rows)[(HELDOUT, "ce")]
    assert ce.folds == pytest.approx({1: 85.0})
    assert ce.unit_ids == {1: ["a", "b"]}


def test_selection_protocols_are_kept_apart():
    rows = [_row(1, 0.8), {**_row(1, 0.6), "selection": "inner"}]
    keys = set(agg.strategy_results(rows))
    assert keys == {(HELDOUT, "ce"), (Group("ckplus", "inception_v3", "inner"), "ce")}


def test_paired_comparison_matches_hand_and_scipy():
    a = {1: 92.0, 2: 95.0, 3: 97.0, 4: 99.0}
    b = {1: 90.0, 2: 94.0, 3: 97.5, 4: 96.0, 5: 80.0}  # fold 5 has no partner
    paired = agg.paired_comparison("ce>focal", a, "ce", b)
    assert paired.folds == (1, 2, 3, 4) and paired.n == 4
    assert paired.differences == pytest.approx((2.0, 1.0, -0.5, 3.0))
    assert paired.mean_difference == pytest.approx(1.375)
    diffs = np.array([2.0, 1.0, -0.5, 3.0])
    t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(4))
    assert paired.t_pvalue == pytest.approx(2 * stats.t.sf(abs(t), df=3))
    assert paired.t_pvalue == pytest.approx(
        stats.ttest_rel([92, 95, 97, 99], [90, 94, 97.5, 96]).pvalue
    )
    assert paired.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(diffs).pvalue)
    # exact signed-rank: ranks 3, 2, 1(neg), 4 -> W- = 1; P(W <= 1) * 2 = 2 * 2 / 16
    assert paired.wilcoxon_pvalue == pytest.approx(0.25)


def test_paired_comparison_undefined_cases_are_none():
    one = agg.paired_comparison("a", {1: 90.0, 2: 91.0}, "b", {1: 89.0})
    assert one.n == 1 and one.t_pvalue is None and one.wilcoxon_pvalue is None
    assert one.mean_difference == pytest.approx(1.0)
    same = agg.paired_comparison("a", {1: 90.0, 2: 91.0}, "b", {1: 90.0, 2: 91.0})
    assert same.t_pvalue is None and same.wilcoxon_pvalue is None
    none = agg.paired_comparison("a", {}, "b", {1: 90.0})
    assert none.n == 0 and math.isnan(none.mean_difference)


def test_confusion_row_normalised_and_per_class():
    counts = agg.confusion_counts([0, 0, 1, 2, 2, 2], [0, 1, 1, 0, 2, 2], n_classes=4)
    assert counts.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    normalised = agg.row_normalised(counts)
    assert normalised[0].tolist() == [0.5, 0.5, 0.0, 0.0]
    assert normalised[2].tolist() == pytest.approx([1 / 3, 0.0, 2 / 3, 0.0])
    assert normalised[3].tolist() == [0.0] * 4  # no images of class 3
    per_class = agg.per_class_accuracy(counts)
    assert per_class[:3] == pytest.approx([50.0, 100.0, 200 / 3]) and math.isnan(per_class[3])


def test_class_names_prefer_the_prepare_row():
    assert agg.class_names("anger,fear", {0: "x"}, 2) == ["anger", "fear"]
    assert agg.class_names(None, {0: "anger", 1: "fear"}, 3) == ["anger", "fear", "class 2"]


def test_net_images():
    a = agg.StrategyResult(HELDOUT, "ce>focal", {1: 100.0, 2: 90.0}, n_test={1: 10, 2: 10})
    b = agg.StrategyResult(HELDOUT, "ce", {1: 90.0, 2: 90.0, 3: 50.0}, n_test={1: 10, 2: 10})
    net, images = agg.net_images(a, b)
    assert (net, images) == (pytest.approx(1.0), 20)


def test_strategy_names():
    assert agg.parent_strategy("ce>focal") == "ce" and agg.parent_strategy("ce") is None
    assert agg.parent_strategy("a>b>c") == "a>b"
    names = ["zeta", "ce>focal", "ce", "x>y", "joint", "focal>ce", "focal"]
    assert sorted(names, key=agg.strategy_sort_key) == [
        "ce",
        "focal",
        "joint",
        "focal>ce",
        "ce>focal",
        "zeta",
        "x>y",
    ]


# --- over a fake store ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("agg") / "run", skip={("oulu", "ce>focal", 3)})
    return build_study(load_results(run.path))


def test_study_from_the_store_matches_the_fake(study):
    ce = study.result(HELDOUT, "ce")
    expected = [accuracy("ckplus", "ce", f) for f in (1, 2, 3)]
    assert list(ce.folds.values()) == pytest.approx(expected)
    assert ce.mean == pytest.approx(statistics.mean(expected))
    assert ce.std == pytest.approx(statistics.stdev(expected))
    assert ce.expected_folds == 3
    oulu = study.result(Group("oulu", "inception_v3", "heldout"), "ce>focal")
    assert (oulu.n, oulu.expected_folds) == (2, 3)


def test_pooled_confusion_from_predictions(study):
    counts, classes = study.confusion(HELDOUT, "ce")
    assert classes[1] == "contempt" and counts.shape == (7, 7)
    wrong = sum(ERRORS[("ckplus", "ce")])  # the fake's first `wrong` images -> next class
    assert counts.sum() == 42 and counts.trace() == 42 - wrong
    # errors per fold 2, 1, 3 hit image 0 (anger) 3 times, image 1 (contempt) 2, image 2 once
    assert counts[0, 1] == 3 and counts[1, 2] == 2 and counts[2, 3] == 1
    per_class = agg.per_class_accuracy(counts)
    assert per_class[0] == pytest.approx(50.0) and per_class[1] == pytest.approx(100 * 4 / 6)
    sub, _ = study.confusion(HELDOUT, "ce", folds=(2,))
    assert sub.sum() == 14 and sub.trace() == 13


def test_pairs_cover_baseline_and_parent(tmp_path):
    errors = {
        (d, s): [1, 2, 0]
        for d in ("ckplus",)
        for s in ("ce", "focal", "joint", "focal>ce", "ce>focal")
    }
    run = make_run(
        tmp_path / "run",
        datasets=("ckplus",),
        strategies=("ce", "focal", "joint", "focal>ce", "ce>focal"),
        errors=errors,
    )
    study = build_study(load_results(run.path))
    assert study.strategies(HELDOUT) == ["ce", "focal", "joint", "focal>ce", "ce>focal"]
    assert study.pairs(HELDOUT) == [
        ("focal", "ce"),
        ("joint", "ce"),
        ("focal>ce", "ce"),
        ("focal>ce", "focal"),
        ("ce>focal", "ce"),
    ]
    assert study.stage_pairs(HELDOUT) == [("focal", "focal>ce"), ("ce", "ce>focal")]


def test_only_units_of_the_current_dag_count(tmp_path):
    run = make_run(tmp_path / "run", datasets=("ckplus",), folds=(1,))
    run.rundir.store.write("runs", "stale-unit", [_row(1, 0.1, unit="stale-unit")])
    study = build_study(load_results(run.path))
    assert study.result(HELDOUT, "ce").folds == pytest.approx({1: accuracy("ckplus", "ce", 1)})
