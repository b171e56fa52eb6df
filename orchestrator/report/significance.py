"""Tests for "is strategy A better than strategy B?" over cross-validation units, and Holm's
correction across the comparisons of one report.

Pure functions over per-fold differences (a unit = one test fold), so each number can be
checked by hand. Why more than a paired t-test: the training sets of k-fold cross-validation
overlap, so the per-fold differences are positively correlated and the plain paired t-test
(variance / J) is anti-conservative. Nadeau & Bengio (2003) inflate the variance of the J
differences by (1/J + n_test/n_train) instead of 1/J (the "corrected resampled t-test"). It
is a heuristic: its level is only approximately the nominal one. The r·k units of
Bouckaert & Frank (2004) are for repeated cross-validation with a new random partition per
repetition; seeds on this project's fixed, subject-independent folds share each fold's
training and test images, so the caller averages them within a fold and J = k. The 95 %
interval of the mean difference uses the same corrected standard error. A report that
prints several tests also corrects for their number (Holm 1979, step-down).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class TTest:
    """A t-test of mean difference = 0 and the two-sided interval of the mean difference."""

    statistic: float
    pvalue: float
    low: float
    high: float
    df: int


def resampled_t(differences: Sequence[float], test_train_ratio: float) -> TTest | None:
    """t-test of the mean of `differences` with variance factor (1/J + test_train_ratio).

    `test_train_ratio` = n_test / n_train of the units (Nadeau & Bengio's correction);
    0 gives the ordinary paired t-test. None when undefined: fewer than 2 units, or no
    variation between them (a t statistic of ±inf or 0/0 is not evidence).
    """
    d = np.asarray(differences, dtype=float)
    j = len(d)
    if j < 2:
        return None
    variance = float(d.var(ddof=1))
    if not variance > 0:
        return None
    se = math.sqrt((1.0 / j + test_train_ratio) * variance)
    mean = float(d.mean())
    statistic = mean / se
    df = j - 1
    pvalue = float(2.0 * stats.t.sf(abs(statistic), df))
    half = float(stats.t.ppf(0.5 + LEVEL / 2.0, df)) * se
    return TTest(statistic, pvalue, mean - half, mean + half, df)


def wilcoxon_pvalue(differences: Sequence[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank p (scipy's default: exact for small J without ties or
    zeros); None with fewer than 2 units or when every difference is 0. Equal differences
    must be equal floats to count as ties: the caller computes them from image counts."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2 or not np.any(d):
        return None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            value = float(stats.wilcoxon(d).pvalue)
        except ValueError:
            return None
    return value if math.isfinite(value) else None


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values, in the input order; None (an undefined test) stays None and
    does not count towards the number of tests m.

    Sorted ascending, the i-th smallest (0-based) becomes (m − i)·p, made monotone by a
    running maximum and capped at 1: reject where the adjusted p is below the level, which
    keeps the family-wise error rate at that level.
    """
    defined = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(defined)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, index) in enumerate(defined):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted
