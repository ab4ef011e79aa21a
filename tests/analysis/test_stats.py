"""The statistics against scipy.stats and against Holm's procedure computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from embreg.analysis.stats import (
    WelchTest,
    describe,
    fmt_p,
    holm,
    holm_borderline,
    shifted_p,
    significant,
    welch,
)

# scipy warns about (near-)zero variance in the edge cases it is compared against
pytestmark = pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
SAMPLES = [
    ([78.7, 78.1, 79.4], [75.2, 75.9, 75.6]),
    ([10.0, 12.0], [11.0, 15.0, 9.0, 13.5]),
    ([0.51, 0.52, 0.50, 0.55, 0.49], [0.40, 0.61]),
]


@pytest.mark.parametrize("values", [[80.0, 82.0], [78.7, 78.1, 79.4], [1.0, 2.0, 4.0, 8.0, 16.0]])
def test_describe_equals_scipy_t_interval(values: list[float]) -> None:
    s = describe(values)
    n = len(values)
    lo, hi = sps.t.interval(0.95, n - 1, loc=np.mean(values), scale=sps.sem(values))
    assert (s.n, s.mean, s.std) == (n, pytest.approx(np.mean(values)), pytest.approx(np.std(values, ddof=1)))
    assert (s.ci_low, s.ci_high) == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))


def test_describe_two_seeds_known_numbers() -> None:
    # mean 81, std sqrt(2), sem 1, t_{0.975, 1} = 12.7062...
    s = describe([80.0, 82.0])
    assert s.ci_high - s.mean == pytest.approx(12.706204736174707)


def test_describe_edge_cases() -> None:
    one = describe([78.0])
    assert (one.mean, one.n) == (78.0, 1) and math.isnan(one.ci_low) and math.isnan(one.std) and not one.has_ci
    none = describe([])
    assert none.n == 0 and math.isnan(none.mean)
    # NaN / None are missing seeds, not values
    assert describe([1.0, float("nan"), None, 3.0]) == describe([1.0, 3.0])
    flat = describe([0.0, 0.0, 0.0])  # zero variance: the interval is the point, not NaN
    assert (flat.mean, flat.ci_low, flat.ci_high, flat.std) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize(("a", "b"), SAMPLES)
def test_welch_equals_scipy(a: list[float], b: list[float]) -> None:
    w = welch(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert w.effect == pytest.approx(np.mean(a) - np.mean(b))
    assert (w.t, w.dof, w.p) == (pytest.approx(ref.statistic), pytest.approx(ref.df), pytest.approx(ref.pvalue))
    assert (w.ci_low, w.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert (w.n_a, w.n_b) == (len(a), len(b)) and w.testable


def test_welch_edge_cases() -> None:
    single = welch([78.0], [75.0, 76.0])  # n = 1: the difference is known, the test is not
    assert single.effect == pytest.approx(2.5) and math.isnan(single.p) and not single.testable
    empty = welch([], [1.0, 2.0])
    assert math.isnan(empty.effect) and empty.n_a == 0
    # both arms constant: scipy says t = -inf, p = 0; here it is left untested
    flat = welch([1.0, 1.0], [2.0, 2.0])
    assert flat.effect == -1.0 and not flat.testable
    assert sps.ttest_ind([1.0, 1.0], [2.0, 2.0], equal_var=False).pvalue == 0.0
    # one arm constant, the other not: a regular test (scipy agrees)
    half = welch([1.0, 1.0, 1.0], [2.0, 2.5, 3.0])
    assert half.p == pytest.approx(sps.ttest_ind([1.0, 1.0, 1.0], [2.0, 2.5, 3.0], equal_var=False).pvalue)
    nan = welch([1.0, float("nan"), 2.0, 3.0], [5.0, 6.0, None])  # type: ignore[list-item]
    assert nan.p == pytest.approx(sps.ttest_ind([1.0, 2.0, 3.0], [5.0, 6.0], equal_var=False).pvalue)


def test_holm_by_hand() -> None:
    # m = 4: sorted 0.01, 0.02, 0.03, 0.04 -> 0.04, 0.06, 0.06 (running max of 0.06), 0.06 (max(0.06, 0.04))
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # capped at 1 and monotone
    assert holm([0.5, 0.001, 0.3]) == pytest.approx([0.6, 0.003, 0.6])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_holm_ties_nan_and_empty() -> None:
    # ties get the same adjusted value, whatever their order: 3 * 0.01 for both
    assert holm([0.01, 0.01, 0.2]) == pytest.approx([0.03, 0.03, 0.2])
    # untestable comparisons are outside the family: m = 2 here, not 3
    out = holm([0.02, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([]) == []
    assert holm([0.049]) == [0.049]


def test_significant_and_p_format() -> None:
    assert significant(0.049) and not significant(0.05) and not significant(float("nan"))
    assert (fmt_p(0.0123), fmt_p(1.5e-4), fmt_p(float("nan"))) == ("0.012", "1.5e-04", "n/a")
    # never rounded across the threshold: the text reads on the same side of 0.05 as the value
    assert [fmt_p(p) for p in (0.0498, 0.0502, 0.04996, 0.05, 0.0449, 0.0551)] == [
        "0.0498", "0.0502", "0.04996", "0.050", "0.045", "0.055"]


def test_shifted_p_moves_the_effect_one_standard_error_towards_zero() -> None:
    a, b = SAMPLES[0]
    t = welch(a, b)
    assert shifted_p(t, 0.0) == pytest.approx(t.p, rel=1e-12)
    # the same test with the effect one standard error smaller: |t| - 1 at the same dof
    assert shifted_p(t) == pytest.approx(2 * sps.t.sf(abs(t.t) - 1.0, t.dof), rel=1e-12)
    assert shifted_p(t) > t.p
    assert shifted_p(welch(b, a)) == pytest.approx(shifted_p(t), rel=1e-12)  # the sign does not matter


def test_holm_borderline_marks_only_passing_tests_without_a_margin() -> None:
    # dof 4: |t| = 4.2 gives p ~ 0.0137, which Holm beside a failing test (x2) takes to ~0.027: it
    # passes, but |t| = 3.2 (one standard error closer to zero) gives ~0.033, x2 ~0.066: borderline.
    # |t| = 12 keeps passing one standard error closer to zero; |t| = 1 never passed.
    def test_with_t(t: float) -> WelchTest:
        return WelchTest(t, math.nan, math.nan, t, 4.0, float(2 * sps.t.sf(t, 4.0)), 3, 3)

    near, firm, failing = test_with_t(4.2), test_with_t(12.0), test_with_t(1.0)
    assert holm([near.p, failing.p]) == [pytest.approx(2 * near.p), pytest.approx(failing.p)]
    assert significant(2 * near.p) and not significant(2 * shifted_p(near))
    assert holm_borderline([near, failing]) == [True, False]
    assert holm_borderline([firm, failing]) == [False, False]
    # alone in its family (no x2), the same test keeps passing one standard error closer to zero
    assert holm_borderline([near]) == [False]
    # a negative effect is judged the same way
    negative = WelchTest(-4.2, math.nan, math.nan, -4.2, 4.0, near.p, 3, 3)
    assert holm_borderline([negative, failing]) == [True, False]
    # an untestable member stays out of the family and is never borderline
    untested = WelchTest(1.0, math.nan, math.nan, math.nan, math.nan, math.nan, 1, 3)
    assert holm_borderline([untested, near]) == [False, False]
