"""Aggregates checked against hand computation (and scipy on the same data)."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
from scipy import stats

from fer_core.errors import FerError
from fer_core.metrics import confusion_matrix
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


def _row(fold, accuracy, strategy="ce", unit=None, n_test=100, **extra):
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


def test_a_final_stage_that_keeps_its_last_epoch_is_no_round_of_selection():
    """`final_epoch: last` (D-14): `ce>focal`'s stage 2 picked nothing, so the chain had one
    round of test-fold selection (its stage 1), as `ce` had one and `ce` under last none."""
    last = json.dumps({"final_epoch": "last"})
    rows = [_row(1, 0.8), _row(1, 0.9, "ce>focal", config=last), _row(1, 0.7, "focal", config=last)]
    results = agg.strategy_results(rows)
    rounds = {s: results[(HELDOUT, s)].rounds for s in ("ce", "ce>focal", "focal")}
    assert rounds == {"ce": 1, "ce>focal": 1, "focal": 0}


def test_strategy_results_per_fold_in_percent():
    rows = [_row(1, 0.8), _row(2, 0.9), _row(3, 0.7), _row(1, 0.9, "ce>focal")]
    results = agg.strategy_results(rows)
    ce = results[(HELDOUT, "ce")]
    assert ce.folds == pytest.approx({1: 80.0, 2: 90.0, 3: 70.0})
    assert (ce.n, ce.mean, ce.std) == (3, pytest.approx(80.0), pytest.approx(10.0))
    assert results[(HELDOUT, "ce>focal")].folds == pytest.approx({1: 90.0})


def test_missing_accuracies_are_skipped():
    rows = [_row(1, 0.8, unit="a"), _row(2, float("nan")), _row(3, None)]
    ce = agg.strategy_results(rows)[(HELDOUT, "ce")]
    assert ce.folds == pytest.approx({1: 80.0}) and ce.unit_ids == {1: ["a"]}


def test_two_configurations_in_one_cell_are_an_error_not_an_average():
    """Two units on one (group, strategy, fold, seed): e.g. the points of a sweep whose
    dag.json does not record them. Averaging would report a number neither scored."""
    rows = [
        _row(1, 0.8, unit="a", unit_label="ckplus/f01/inception_v3/ce@lr=0.01"),
        _row(1, 0.9, unit="b", unit_label="ckplus/f01/inception_v3/ce@lr=0.05"),
    ]
    with pytest.raises(FerError, match=r"two results for ce on fold 1, seed 0: .*ce@lr=0.01 and"):
        agg.strategy_results(rows)
    # the same rows, told apart by the points their units serve, are two groups
    split = agg.strategy_results(rows, {"a": ("train.lr=0.01",), "b": ("train.lr=0.05",)})
    lr = {p: Group("ckplus", "inception_v3", "heldout", f"train.lr={p}") for p in ("0.01", "0.05")}
    assert set(split) == {(lr["0.01"], "ce"), (lr["0.05"], "ce")}
    assert split[(lr["0.01"], "ce")].folds == pytest.approx({1: 80.0})
    assert split[(lr["0.05"], "ce")].folds == pytest.approx({1: 90.0})


def test_a_shared_unit_counts_in_every_point_it_serves():
    """A stage-2 gamma sweep shares its stage 1: `ce` is each point's baseline, and each
    point's `ce>focal` holds only its own rows."""
    points = ("gamma=0", "gamma=2")
    rows = [_row(f, 0.7 + f / 100) for f in (1, 2)]  # ce-1, ce-2: shared
    rows += [_row(f, 0.8, "ce>focal", unit=f"g0-{f}") for f in (1, 2)]
    rows += [_row(f, 0.9, "ce>focal", unit=f"g2-{f}") for f in (1, 2)]
    served = {"ce-1": points, "ce-2": points}
    served |= {f"g{g}-{f}": (f"gamma={g}",) for g in (0, 2) for f in (1, 2)}
    results = agg.strategy_results(rows, served)
    at = {p: Group("ckplus", "inception_v3", "heldout", p) for p in points}
    assert set(results) == {(at[p], s) for p in points for s in ("ce", "ce>focal")}
    for point in points:
        assert results[(at[point], "ce")].folds == pytest.approx({1: 71.0, 2: 72.0})
        assert results[(at[point], "ce")].unit_ids == {1: ["ce-1"], 2: ["ce-2"]}
    assert results[(at["gamma=0"], "ce>focal")].folds == pytest.approx({1: 80.0, 2: 80.0})
    assert results[(at["gamma=2"], "ce>focal")].folds == pytest.approx({1: 90.0, 2: 90.0})
    assert results[(at["gamma=2"], "ce>focal")].unit_ids == {1: ["g2-1"], 2: ["g2-2"]}


def test_seeds_and_training_sizes_from_rows():
    rows = [_row(1, 0.8, seed=0, n_train=90), _row(1, 0.9, seed=1, n_train=90), _row(2, 0.7)]
    ce = agg.strategy_results(rows)[(HELDOUT, "ce")]
    assert ce.cells == pytest.approx({(1, 0): 80.0, (1, 1): 90.0, (2, 0): 70.0})
    assert ce.folds == pytest.approx({1: 85.0, 2: 70.0})
    assert ce.n_train == {1: 90}  # fold 2's row does not record it


def test_selection_protocols_are_kept_apart():
    rows = [_row(1, 0.8), {**_row(1, 0.6), "selection": "inner"}]
    keys = set(agg.strategy_results(rows))
    assert keys == {(HELDOUT, "ce"), (Group("ckplus", "inception_v3", "inner"), "ce")}


def _result(strategy, cells, n_test=200, n_train=800):
    """A StrategyResult from {fold: accuracy %} or {(fold, seed): accuracy %}, each a whole
    number of the fold's `n_test` images."""
    cells = {(k if isinstance(k, tuple) else (k, 0)): v for k, v in cells.items()}
    correct = {u: round(v * n_test / 100) for u, v in cells.items()}
    assert all(100 * correct[u] == v * n_test for u, v in cells.items())
    folds = {f for f, _ in cells}
    return agg.StrategyResult(
        HELDOUT,
        strategy,
        cells,
        correct,
        n_test={f: n_test for f in folds},
        n_train={f: n_train for f in folds} if n_train else {},
    )


def test_paired_comparison_matches_hand_and_scipy():
    a = _result("ce>focal", {1: 92.0, 2: 95.0, 3: 97.0, 4: 99.0})
    b = _result("ce", {1: 90.0, 2: 94.0, 3: 97.5, 4: 96.0, 5: 80.0})  # fold 5 has no partner
    paired = agg.paired_comparison(a, b)
    assert paired.folds == (1, 2, 3, 4) and paired.n == 4
    assert paired.differences == pytest.approx((2.0, 1.0, -0.5, 3.0))
    assert paired.mean_difference == pytest.approx(1.375)
    diffs = np.array([2.0, 1.0, -0.5, 3.0])
    t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(4))
    assert paired.paired_t.pvalue == pytest.approx(2 * stats.t.sf(abs(t), df=3))
    assert paired.paired_t.pvalue == pytest.approx(
        stats.ttest_rel([92, 95, 97, 99], [90, 94, 97.5, 96]).pvalue
    )
    # Nadeau-Bengio with n_test/n_train = 200/800: variance x (1/4 + 1/4) instead of 1/4
    assert paired.test_train_ratio == pytest.approx(0.25)
    assert paired.corrected.statistic == pytest.approx(t / math.sqrt(2))
    assert paired.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert paired.wilcoxon_pvalue == pytest.approx(0.25)  # exact: 2 * 2 / 16


def test_paired_comparison_undefined_cases_are_none():
    one = agg.paired_comparison(_result("a", {1: 90.0, 2: 91.0}), _result("b", {1: 89.0}))
    assert one.n == 1 and one.paired_t is None and one.corrected is None
    assert one.wilcoxon_pvalue is None and one.mean_difference == pytest.approx(1.0)
    same = agg.paired_comparison(_result("a", {1: 90.0, 2: 91.0}), _result("b", {1: 90.0, 2: 91.0}))
    assert same.paired_t is None and same.wilcoxon_pvalue is None
    none = agg.paired_comparison(_result("a", {}), _result("b", {1: 90.0}))
    assert none.n == 0 and math.isnan(none.mean_difference)
    unknown = agg.paired_comparison(
        _result("a", {1: 90.0, 2: 93.0}, n_train=0), _result("b", {1: 89.0, 2: 90.0})
    )
    assert unknown.test_train_ratio is None and unknown.corrected is None
    assert unknown.paired_t is not None  # the plain test needs no sizes


def test_seeds_are_averaged_within_a_fold_and_the_fold_is_the_unit():
    """Seeds on one fold share its training and test images: pseudo-replicates. The tests run
    on the per-fold means over seeds (J = folds, df = folds - 1), never on (fold, seed)
    pairs; the spread between seeds is only described."""
    a = _result("ce>focal", {(1, 0): 90.0, (1, 1): 94.0, (2, 0): 80.0, (2, 1): 82.0})
    b = _result("ce", {(1, 0): 89.0, (1, 1): 90.0, (2, 0): 80.0, (2, 1): 79.0})
    assert a.folds == pytest.approx({1: 92.0, 2: 81.0})
    assert a.seeds == pytest.approx({0: 85.0, 1: 88.0})
    assert a.mean == pytest.approx(86.5)
    assert a.std == pytest.approx(statistics.stdev([92.0, 81.0]))  # between folds
    assert a.seed_std == pytest.approx(statistics.stdev([85.0, 88.0]))  # between seeds
    paired = agg.paired_comparison(a, b)
    # (fold, seed) differences: (1, 0) 1, (1, 1) 4, (2, 0) 0, (2, 1) 3
    assert paired.fold_differences == pytest.approx({1: 2.5, 2: 1.5})
    assert paired.n == 2 and paired.folds == (1, 2)
    assert paired.differences == pytest.approx((2.5, 1.5))
    assert paired.corrected.df == 1 and paired.paired_t.df == 1  # J = 2 folds, not 4 units
    assert paired.paired_t.pvalue == pytest.approx(stats.ttest_1samp([2.5, 1.5], 0).pvalue)
    assert paired.seed_differences == pytest.approx({0: 0.5, 1: 3.5})
    assert paired.seed_std == pytest.approx(statistics.stdev([0.5, 3.5]))
    assert math.isnan(_result("ce", {1: 90.0, 2: 80.0}).seed_std)


def test_seeds_sharing_a_fold_keep_the_false_positive_rate_near_nominal():
    """No true difference; each fold has its own effect (its training and test images) that
    its 3 seeds share, plus seed noise. A t-test on the 30 (fold, seed) pairs rejects at 5 %
    about 29 % of the time here; on the 10 fold means it keeps to about 5 %. (Large folds,
    so that ties are rare and the exact Wilcoxon test stays fast.)"""
    rng = np.random.default_rng(0)
    n_test, runs, rejected = 10_000, 200, 0
    units = [(f, s) for f in range(1, 11) for s in range(3)]
    for _ in range(runs):
        shared = rng.normal(0.0, 3.0, size=10)
        wins = np.rint(100 * (shared[:, None] + rng.normal(0.0, 1.0, size=(10, 3)))).astype(int)
        correct = {
            name: {(f, s): 8000 + int(wins[f - 1, s]) * (name == "a") for f, s in units}
            for name in ("a", "b")
        }
        results = [
            agg.StrategyResult(
                HELDOUT,
                name,
                {u: 100 * c / n_test for u, c in correct[name].items()},
                correct[name],
                n_test=dict.fromkeys(range(1, 11), n_test),
            )
            for name in ("a", "b")
        ]
        rejected += agg.paired_comparison(*results).paired_t.pvalue < 0.05
    assert rejected / runs < 0.08


def test_seeds_a_fold_lacks_on_one_side_are_left_out_of_that_fold():
    a = _result("a", {(1, 0): 90.0, (1, 1): 95.0, (2, 0): 80.0})
    b = _result("b", {(1, 0): 89.0, (2, 0): 79.0, (2, 1): 70.0})
    paired = agg.paired_comparison(a, b)
    assert paired.fold_differences == pytest.approx({1: 1.0, 2: 1.0})
    assert paired.seed_differences == pytest.approx({0: 1.0})


def _counts_rows(strategy, correct, n_test):
    return [
        _row(f, c / n_test, strategy, unit=f"{strategy}-{f}", n_test=n_test)
        for f, c in enumerate(correct, start=1)
    ]


def test_tied_differences_are_ties_whatever_the_accuracies():
    """Ten folds of 144 images; the first wins by 1, 1, 1, 2, 2, 1, 2, 1, -1, 1 images. From
    percentages (100 c_a / n - 100 c_b / n) equal differences differ in the last bit, the
    rank test sees no ties and reports the exact no-tie p (0.0137 here); from the counts the
    ties stay ties."""
    wins = np.array([1, 1, 1, 2, 2, 1, 2, 1, -1, 1])
    second = np.array([100, 99, 98, 97, 96, 95, 94, 100, 99, 98]) - wins
    rows = _counts_rows("a", second + wins, 144) + _counts_rows("b", second, 144)
    results = agg.strategy_results(rows)
    paired = agg.paired_comparison(results[(HELDOUT, "a")], results[(HELDOUT, "b")])
    assert sorted(set(paired.differences)) == pytest.approx([-100 / 144, 100 / 144, 200 / 144])
    assert len(set(paired.differences)) == 3  # bitwise ties
    assert paired.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(wins).pvalue)
    assert paired.wilcoxon_pvalue == pytest.approx(0.015625)


def test_the_same_number_of_images_on_every_fold_is_no_variation():
    """+1 image on every fold is a difference without spread: no t statistic (before, the
    last-bit noise of percentages gave it a variance and a p of the order of 1e-57)."""
    first = np.array([130, 125, 117, 103, 99])
    rows = _counts_rows("a", first + 1, 144) + _counts_rows("b", first, 144)
    results = agg.strategy_results(rows)
    paired = agg.paired_comparison(results[(HELDOUT, "a")], results[(HELDOUT, "b")])
    assert paired.mean_difference == pytest.approx(100 / 144)
    assert paired.paired_t is None and paired.corrected is None


def test_an_accuracy_that_is_no_whole_number_of_images_is_an_error():
    with pytest.raises(FerError, match=r"unit ce-1: test_accuracy 0.123 is not a whole number"):
        agg.strategy_results([_row(1, 0.123, n_test=10)])
    with pytest.raises(FerError, match=r"unit ce-1: .* n_test = 0"):
        agg.strategy_results([_row(1, 0.5, n_test=0)])


def test_confusion_row_normalised_and_per_class():
    counts = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 0, 2, 2], n_classes=4)
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
    a = _result("ce>focal", {1: 100.0, 2: 90.0})
    b = _result("ce", {1: 90.0, 2: 90.0, 3: 50.0})
    paired = agg.paired_comparison(a, b)
    assert (paired.net_images, paired.images) == (20.0, 400)  # 10 % of 200 on fold 1
    seeds = agg.paired_comparison(
        _result("a", {(1, 0): 50.0, (1, 1): 50.5}), _result("b", {(1, 0): 50.0, (1, 1): 50.0})
    )
    assert (seeds.net_images, seeds.images) == (0.5, 200)  # one image on one of two seeds


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
        ("ce>focal", "focal>ce"),  # Table 4's ordering question
    ]
    assert study.stage_pairs(HELDOUT) == [("focal", "focal>ce"), ("ce", "ce>focal")]


def test_only_units_of_the_current_dag_count(tmp_path):
    run = make_run(tmp_path / "run", datasets=("ckplus",), folds=(1,))
    run.rundir.store.write("runs", "stale-unit", [_row(1, 0.1, unit="stale-unit")])
    study = build_study(load_results(run.path))
    assert study.result(HELDOUT, "ce").folds == pytest.approx({1: accuracy("ckplus", "ce", 1)})


# --- comparisons over a fake store ----------------------------------------------------------
def _corrected_by_hand(diffs, ratio):
    """Nadeau-Bengio's t and two-sided p, written out."""
    d = np.asarray(diffs)
    t = d.mean() / math.sqrt((1 / len(d) + ratio) * d.var(ddof=1))
    return t, 2 * stats.t.sf(abs(t), len(d) - 1)


def test_comparisons_are_corrected_and_holm_adjusted(study):
    full = build_study(load_results(make_run(study.results.rundir.path.parent / "full").path))
    assert [(c.group.dataset, c.paired.a, c.paired.b) for c in full.comparisons] == [
        ("ckplus", "ce>focal", "ce"),
        ("oulu", "ce>focal", "ce"),
    ]
    ckplus, oulu = full.comparisons
    # ckplus: 14 test and 9 x 14 = 126 training images per fold; diffs (1/14, 0, 1/14) x 100
    assert ckplus.paired.test_train_ratio == pytest.approx(14 / 126)
    t, p = _corrected_by_hand([100 / 14, 0.0, 100 / 14], 14 / 126)
    assert ckplus.paired.corrected.statistic == pytest.approx(t)
    assert ckplus.paired.corrected.pvalue == pytest.approx(p)
    _, p_oulu = _corrected_by_hand([100 / 12, -100 / 12, 300 / 12], 12 / 108)
    assert oulu.paired.corrected.pvalue == pytest.approx(p_oulu)
    # Holm with m = 2: the smaller p doubled; the larger max(itself, the doubled smaller)
    low, high = sorted([p, p_oulu])
    assert sorted([ckplus.holm_pvalue, oulu.holm_pvalue]) == pytest.approx(
        [2 * low, max(high, 2 * low)]
    )
    assert not full.derived_n_train and all(c.headline for c in full.comparisons)
    assert ckplus.rounds == (2, 1)


@pytest.mark.parametrize(("selection", "ratio"), [("heldout", 14 / 126), ("inner", 14 / 112)])
def test_training_sizes_derived_for_rows_without_them(tmp_path, selection, ratio):
    folds = tuple(range(1, 11))  # under inner, fold f's training set also loses fold f + 1
    errors = {("ckplus", "ce"): [2, 1, 3, 0, 2] * 2, ("ckplus", "ce>focal"): [1, 1, 2, 0, 0] * 2}
    kwargs = {"datasets": ("ckplus",), "selection": selection, "folds": folds, "errors": errors}
    recorded = build_study(load_results(make_run(tmp_path / "a", **kwargs).path))
    derived = build_study(
        load_results(make_run(tmp_path / "b", record_n_train=False, **kwargs).path)
    )
    assert recorded.comparisons[0].paired.test_train_ratio == pytest.approx(ratio)
    assert derived.comparisons[0].paired.test_train_ratio == pytest.approx(ratio)
    assert derived.comparisons[0].paired.corrected.pvalue == pytest.approx(
        recorded.comparisons[0].paired.corrected.pvalue
    )
    assert not recorded.derived_n_train
    assert derived.derived_n_train == {Group("ckplus", "inception_v3", selection)}


def test_unknown_inner_fold_size_leaves_the_corrected_test_undefined(tmp_path):
    # folds 1-3 only: fold 3's inner-validation fold (4) never ran, so its size is unknown
    run = make_run(tmp_path / "run", datasets=("ckplus",), selection="inner", record_n_train=False)
    (comparison,) = build_study(load_results(run.path)).comparisons
    assert comparison.paired.corrected is None and comparison.holm_pvalue is None
    assert comparison.paired.paired_t is not None


def test_inner_results_are_the_headline(tmp_path):
    run = make_run(tmp_path / "run", datasets=("ckplus",), selection=("heldout", "inner"))
    study = build_study(load_results(run.path))
    assert study.headline_selection == "inner"
    roles = {(c.group.selection, c.headline) for c in study.comparisons}
    assert roles == {("heldout", False), ("inner", True)}
    assert len([c for c in study.comparisons if c.holm_pvalue is not None]) == 2  # one family


def test_seeds_multiply_units_and_give_a_between_seed_spread(tmp_path):
    errors = {
        ("ckplus", "ce"): [2, 1, 3],
        ("ckplus", "ce>focal"): [1, 1, 2],
        ("ckplus", "ce", 1): [4, 1, 3],
        ("ckplus", "ce>focal", 1): [1, 0, 2],
    }
    run = make_run(tmp_path / "run", datasets=("ckplus",), seeds=(0, 1), errors=errors)
    study = build_study(load_results(run.path))
    assert study.multi_seed
    ce = study.result(HELDOUT, "ce")
    seed_means = [
        statistics.mean(accuracy("ckplus", "ce", f, errors, seed) for f in (1, 2, 3))
        for seed in (0, 1)
    ]
    assert ce.seeds == pytest.approx(dict(enumerate(seed_means)))
    assert ce.seed_std == pytest.approx(statistics.stdev(seed_means))
    (comparison,) = study.comparisons
    assert comparison.paired.n == 3 and comparison.paired.corrected.df == 2  # folds, not units


def test_the_headline_is_mean_class_accuracy_only_on_an_imbalanced_test_set():
    assert agg.headline_of("rafdb", [329, 74, 160, 1185, 478, 162, 680]).column == (
        "mean_class_accuracy"
    )
    assert agg.headline_of("affectnet", [500] * 7).column == "test_accuracy"  # balanced
    # CK+ is imbalanced, but the paper reports accuracy: its tables compare like with like
    ckplus = agg.headline_of("ckplus", [135, 54, 177, 75, 207, 84, 249])
    assert ckplus.column == "test_accuracy" and "paper" in ckplus.reason
    assert agg.headline_of("manifest", None).column == "test_accuracy"  # older rows


def test_headlines_pool_each_datasets_test_class_counts():
    rows = [
        {"dataset": "mine", "test_class_counts": [10, 4]},
        {"dataset": "mine", "test_class_counts": [2, 8]},  # pooled: 12 vs 12, balanced
        {"dataset": "other", "test_class_counts": [10, 4]},
    ]
    headlines = agg.headlines_of(rows, {"mine": "manifest", "other": "manifest"})
    assert headlines["mine"].column == "test_accuracy"
    assert headlines["other"].column == "mean_class_accuracy"
