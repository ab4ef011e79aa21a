"""Statistics over seeds: per-cell mean with a Student-t interval, Welch's t-test, Holm's correction.

Distributions come from ``scipy.stats`` (no hand-rolled quantiles). Every function takes plain
sequences of per-seed values, drops ``None`` / NaN first (a missing seed is not a zero), and
returns NaN where a quantity is undefined instead of raising: n = 1 has no interval, and a test
needs at least two values per arm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from scipy import stats as sps

CONFIDENCE = 0.95
ALPHA = 0.05
# A difference that passes is marked borderline when it would fail with its effect BORDERLINE_SE
# standard errors closer to zero (the other tests of its Holm family unchanged). A rerun on another
# machine moves every trained network's cells within their intervals (other float kernels, other
# training trajectories), so a claim with less margin than that can land on either side of ALPHA.
BORDERLINE_SE = 1.0
BORDERLINE = "borderline"  # the mark such a claim carries in the generated text


def clean(values: Sequence[float | None]) -> list[float]:
    """The finite values (None and NaN dropped: a seed without the metric contributes nothing)."""
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


@dataclass(frozen=True)
class CellStats:
    """Mean, 95% Student-t interval (n - 1 dof), sample std (ddof = 1) and n of one cell.

    ``ci_low`` / ``ci_high`` / ``std`` are NaN below two values; all but ``n`` are NaN at n = 0.
    """

    mean: float
    ci_low: float
    ci_high: float
    n: int
    std: float

    @property
    def has_ci(self) -> bool:
        return not math.isnan(self.ci_low)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def describe(values: Sequence[float | None], confidence: float = CONFIDENCE) -> CellStats:
    """Mean with its ``confidence`` Student-t interval over the finite values."""
    vals = clean(values)
    n = len(vals)
    if n == 0:
        return CellStats(math.nan, math.nan, math.nan, 0, math.nan)
    mean = math.fsum(vals) / n
    if n == 1:
        return CellStats(mean, math.nan, math.nan, 1, math.nan)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    if std == 0.0:  # scipy returns NaN for a zero scale; the interval of identical values is the point
        return CellStats(mean, mean, mean, n, 0.0)
    lo, hi = sps.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return CellStats(mean, float(lo), float(hi), n, std)


@dataclass(frozen=True)
class WelchTest:
    """Welch's unequal-variance t-test of ``a - b``.

    ``effect`` = mean(a) - mean(b); ``ci_low`` / ``ci_high`` its interval with the Welch-
    Satterthwaite ``dof``; ``p`` two-sided. ``p`` is NaN when the test is undefined (fewer than
    two values in an arm, or both arms without spread); ``effect`` is still given when both arms
    have a value.
    """

    effect: float
    ci_low: float
    ci_high: float
    t: float
    dof: float
    p: float
    n_a: int
    n_b: int

    @property
    def testable(self) -> bool:
        return not math.isnan(self.p)


def _contrast(groups: list[list[float]], signs: Sequence[float], n_a: int, n_b: int, confidence: float) -> WelchTest:
    """The signed sum of the groups' means with its t (Welch-Satterthwaite dof over the groups),
    two-sided p and interval; NaN where undefined (an empty group; a group of one; no spread)."""
    nan = math.nan
    ns = [len(g) for g in groups]
    if min(ns) == 0:
        return WelchTest(nan, nan, nan, nan, nan, nan, n_a, n_b)
    means = [math.fsum(g) / len(g) for g in groups]
    effect = math.fsum(sign * m for sign, m in zip(signs, means, strict=True))
    if min(ns) < 2:
        return WelchTest(effect, nan, nan, nan, nan, nan, n_a, n_b)
    # squared standard errors
    v = [math.fsum((x - m) ** 2 for x in g) / (len(g) - 1) / len(g) for g, m in zip(groups, means, strict=True)]
    se = math.sqrt(math.fsum(v))
    if se == 0.0:
        # scipy reports t = ±inf, p = 0 here; two or three identical seeds per arm are a saturated
        # or quantized metric, not infinite evidence, so the difference is left untested
        return WelchTest(effect, nan, nan, nan, nan, nan, n_a, n_b)
    dof = math.fsum(v) ** 2 / math.fsum(vi**2 / (n - 1) for vi, n in zip(v, ns, strict=True))
    t = effect / se
    p = float(2.0 * sps.t.sf(abs(t), dof))
    half = float(sps.t.ppf(0.5 + confidence / 2.0, dof)) * se
    return WelchTest(effect, effect - half, effect + half, t, dof, p, n_a, n_b)


def welch(a: Sequence[float | None], b: Sequence[float | None], confidence: float = CONFIDENCE) -> WelchTest:
    """Welch's t-test of mean(a) - mean(b) (the same t, dof and p as scipy's ``ttest_ind(equal_var=False)``)."""
    xa, xb = clean(a), clean(b)
    return _contrast([xa, xb], (1.0, -1.0), len(xa), len(xb), confidence)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order.

    NaN entries (untestable comparisons) are not part of the family: they stay NaN and do not
    count in m. Sorted ascending, p_(i) becomes max_{j <= i} min(1, (m - j + 1) p_(j)); tied
    p-values get the same adjusted value whatever their order.
    """
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def significant(p_adjusted: float, alpha: float = ALPHA) -> bool:
    """Whether an adjusted p-value passes ``alpha`` (NaN never does)."""
    return not math.isnan(p_adjusted) and p_adjusted < alpha


def shifted_p(test: WelchTest, by: float = BORDERLINE_SE) -> float:
    """The two-sided p of ``test`` with its effect ``by`` standard errors closer to zero."""
    return float(2.0 * sps.t.sf(max(abs(test.t) - by, 0.0), test.dof))


def holm_borderline(tests: Sequence[WelchTest], alpha: float = ALPHA, by: float = BORDERLINE_SE) -> list[bool]:
    """For each test of one Holm family: it passes at ``alpha`` but would not with its effect ``by``
    standard errors closer to zero, the family's other p-values unchanged (see BORDERLINE_SE)."""
    ps = [t.p for t in tests]
    adjusted = holm(ps)
    out = []
    for i, test in enumerate(tests):
        moved = [shifted_p(test, by) if j == i else p for j, p in enumerate(ps)]
        out.append(significant(adjusted[i], alpha) and not significant(holm(moved)[i], alpha))
    return out


def fmt_p(p: float, alpha: float = ALPHA) -> str:
    """``0.012``; below 0.001 in scientific notation (``3.2e-05``); ``n/a`` when untested. Near
    ``alpha`` more digits are shown, until the text falls on the same side of it as ``p``:
    0.0498 passes and is never printed as ``0.050``, which would read as failing."""
    if math.isnan(p):
        return "n/a"
    if p < 1e-3:
        return f"{p:.1e}"
    for digits in (3, 4, 5, 6):
        text = f"{p:.{digits}f}"
        shown = float(text)
        if p == alpha or (shown != alpha and (shown < alpha) == (p < alpha)):
            break
    return text


def change_difference(a_first: Sequence[float | None], a_then: Sequence[float | None],
                      b_first: Sequence[float | None], b_then: Sequence[float | None],
                      confidence: float = CONFIDENCE) -> WelchTest:
    """Whether arm a changes less (or more) than arm b between two settings, four independent groups
    of seeds: effect = (mean a_then - mean a_first) - (mean b_then - mean b_first), its t with the
    Welch-Satterthwaite degrees of freedom over the four groups, two-sided p and interval.
    ``n_a`` / ``n_b`` count a_then / b_then. NaN p when a group has fewer than two values or none varies."""
    groups = [clean(g) for g in (a_then, a_first, b_then, b_first)]
    return _contrast(groups, (1.0, -1.0, -1.0, 1.0), len(groups[0]), len(groups[2]), confidence)
