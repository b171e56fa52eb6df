from collections import Counter

import pytest

from fer_core.data.folds import inner_validation_fold, subject_folds
from fer_core.errors import FerError


def test_interleaves_sorted_subjects():
    folds = subject_folds(["S011", "S005", "S010", "S014", "S005"], n_folds=2)
    assert folds == {"S005": 1, "S010": 2, "S011": 1, "S014": 2}


def test_folds_are_balanced_and_one_based():
    subjects = [f"P{i:03d}" for i in range(1, 81)]
    folds = subject_folds(reversed(subjects))
    assert set(folds.values()) == set(range(1, 11))
    assert set(Counter(folds.values()).values()) == {8}  # Oulu: 10 folds of 8 subjects
    assert folds["P001"] == 1 and folds["P010"] == 10 and folds["P011"] == 1


def test_matches_the_published_ckplus_split(roster_rows):
    folds = subject_folds(row["subject"] for row in roster_rows)
    for row in roster_rows:
        assert folds[row["subject"]] == int(row["published_fold"]), row


def test_contiguous_blocks_of_sorted_subjects():
    """Oulu's other reading of "10 groups of 8 subjects": P001-P008 fold 1, P009-P016 fold 2."""
    subjects = [f"P{i:03d}" for i in range(1, 81)]
    folds = subject_folds(reversed(subjects), rule="contiguous")
    assert [folds[s] for s in subjects] == [k for k in range(1, 11) for _ in range(8)]
    uneven = subject_folds([f"s{i:02d}" for i in range(10)], n_folds=3, rule="contiguous")
    assert list(uneven.values()) == [1, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_rejects_an_unknown_fold_rule():
    with pytest.raises(FerError, match="fold_rule: 'blocks'"):
        subject_folds(["a", "b", "c"], n_folds=2, rule="blocks")


@pytest.mark.parametrize("n_folds", [1, 0, -3, 2.5, True])
def test_rejects_bad_fold_counts(n_folds):
    with pytest.raises(FerError, match="n_folds"):
        subject_folds(["a", "b", "c"], n_folds=n_folds)


def test_rejects_more_folds_than_subjects():
    with pytest.raises(FerError, match="has 3"):
        subject_folds(["a", "b", "c"], n_folds=4)


def test_inner_validation_fold_is_the_next_fold():
    assert [inner_validation_fold(k, 10) for k in range(1, 11)] == [*range(2, 11), 1]
    assert inner_validation_fold(2, 2) == 1


@pytest.mark.parametrize("fold", [0, 11, "3", 1.0])
def test_inner_validation_fold_rejects_bad_test_fold(fold):
    with pytest.raises(FerError, match="test_fold"):
        inner_validation_fold(fold, 10)
