"""The comparison tests against values computed by hand (closed forms where they exist), and
against scipy where scipy has the same test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from orchestrator.report import significance as sig


def test_corrected_t_two_units_by_hand():
    # d = (1, 3): mean 2, sample variance 2; n_test/n_train = 1/2 -> factor 1/2 + 1/2 = 1,
    # se = sqrt(2), t = sqrt(2), df = 1. The t(1) law is Cauchy: P(|T| > x) = 1 - 2 atan(x)/pi,
    # and its 97.5 % quantile is tan(0.475 pi).
    test = sig.resampled_t([1.0, 3.0], 0.5)
    assert test.statistic == pytest.approx(math.sqrt(2))
    assert test.df == 1
    assert test.pvalue == pytest.approx(1 - 2 * math.atan(math.sqrt(2)) / math.pi)
    assert test.pvalue == pytest.approx(0.391827, abs=1e-6)
    half = math.tan(0.475 * math.pi) * math.sqrt(2)
    assert (test.low, test.high) == (pytest.approx(2 - half), pytest.approx(2 + half))


def test_corrected_t_inflates_the_plain_paired_t():
    d = [2.0, 1.0, -0.5, 3.0]  # mean 1.375, sample variance 6.6875 / 3
    variance = 6.6875 / 3
    plain = sig.resampled_t(d, 0.0)
    corrected = sig.resampled_t(d, 10 / 40)  # folds of 10 test images, 40 training images
    assert plain.statistic == pytest.approx(1.375 / math.sqrt(variance / 4))
    assert plain.pvalue == pytest.approx(
        stats.ttest_rel([92, 95, 97, 99], [90, 94, 97.5, 96]).pvalue
    )
    # Nadeau-Bengio: variance x (1/J + n_test/n_train) = variance x (1/4 + 1/4)
    assert corrected.statistic == pytest.approx(1.375 / math.sqrt(variance * 0.5))
    assert corrected.statistic == pytest.approx(plain.statistic / math.sqrt(2))
    assert corrected.pvalue == pytest.approx(2 * stats.t.sf(corrected.statistic, 3))
    assert corrected.pvalue > plain.pvalue
    assert corrected.high - corrected.low == pytest.approx(math.sqrt(2) * (plain.high - plain.low))
    assert (plain.low + plain.high) / 2 == pytest.approx(1.375)


@pytest.mark.parametrize("differences", [[], [1.0], [2.0, 2.0, 2.0], [0.0, 0.0]])
def test_t_undefined_without_two_varying_units(differences):
    assert sig.resampled_t(differences, 0.1) is None


def test_wilcoxon_exact_by_hand_and_scipy():
    d = [2.0, 1.0, -0.5, 3.0]
    # ranks of |d|: 3, 2, 1 (negative), 4 -> W- = 1; P(W <= 1) = 2/16; two-sided 0.25
    assert sig.wilcoxon_pvalue(d) == pytest.approx(0.25)
    assert sig.wilcoxon_pvalue(d) == pytest.approx(stats.wilcoxon(np.array(d)).pvalue)
    assert sig.wilcoxon_pvalue([0.0, 0.0, 0.0]) is None
    assert sig.wilcoxon_pvalue([1.0]) is None


def test_holm_by_hand():
    # m = 4 defined: sorted 0.01, 0.03, 0.04, 0.5 -> 4*0.01, 3*0.03, max(2*0.04, 0.09), 0.5
    adjusted = sig.holm([0.01, 0.04, 0.03, None, 0.5])
    assert adjusted[3] is None
    assert adjusted[:3] == pytest.approx([0.04, 0.09, 0.09])
    assert adjusted[4] == pytest.approx(0.5)


def test_holm_caps_at_one_and_keeps_order_monotone():
    assert sig.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert sig.holm([0.02]) == pytest.approx([0.02])  # one test: nothing to correct
    assert sig.holm([None, None]) == [None, None]
    assert sig.holm([]) == []
