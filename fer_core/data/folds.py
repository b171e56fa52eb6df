"""Subject-independent cross-validation folds.

The paper splits CK+ into ten folds by sorting the subject ids and taking every tenth one
("step size of 10"); the published CK+ split is exactly this rule (`interleaved`). For
Oulu-CASIA the paper's "10 groups of 8 subjects, step size 8" reads either way, so a grid
chooses (`fold_rule`, D-9): `interleaved` (the default) or `contiguous` blocks of sorted
subjects. A subject never appears in two folds, so a test fold only ever holds unseen people.
"""

from __future__ import annotations

from collections.abc import Iterable

from fer_core.errors import FerError

FOLD_RULES = ("interleaved", "contiguous")  # the first is the default


def subject_folds(
    subjects: Iterable[str], n_folds: int = 10, rule: str = "interleaved"
) -> dict[str, int]:
    """Map each unique subject id to its 1-based fold.

    Ids are sorted ascending as strings (CK+ `S005`, Oulu `P001` are zero-padded, so this is
    also numeric order); of n subjects, the one at sorted position i gets fold
    `i % n_folds + 1` (`interleaved`) or `i * n_folds // n + 1` (`contiguous`: consecutive
    blocks whose sizes differ by at most one).
    """
    unique = sorted({str(subject) for subject in subjects})
    _check_n_folds(n_folds)
    if rule not in FOLD_RULES:
        raise FerError(f"fold_rule: {rule!r} is not one of {', '.join(FOLD_RULES)}")
    if len(unique) < n_folds:
        raise FerError(
            f"n_folds: {n_folds} folds need at least {n_folds} subjects but the dataset has "
            f"{len(unique)}; use fewer folds or more subjects"
        )
    if rule == "contiguous":
        return {s: i * n_folds // len(unique) + 1 for i, s in enumerate(unique)}
    return {subject: position % n_folds + 1 for position, subject in enumerate(unique)}


def inner_validation_fold(test_fold: int, n_folds: int) -> int:
    """The fold held out for model selection when `selection: inner` tests on `test_fold`.

    It is the next fold (wrapping round), so it is subject-independent of both the test fold
    and the remaining training folds.
    """
    _check_n_folds(n_folds)
    if isinstance(test_fold, bool) or not isinstance(test_fold, int):
        raise FerError(f"test_fold: {test_fold!r} must be an integer in 1..{n_folds}")
    if not 1 <= test_fold <= n_folds:
        raise FerError(f"test_fold: {test_fold} is outside 1..{n_folds}; folds are 1-based")
    return test_fold % n_folds + 1


def _check_n_folds(n_folds: int) -> None:
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise FerError(f"n_folds: {n_folds!r} must be an integer >= 2")
