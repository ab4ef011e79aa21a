"""Text generated from the tests: only Holm-significant differences are stated, with effect and p.

Run ids and metric labels are written as code spans, so every bare number in a finding is a
statistic that summary.json holds (effect, CI bounds, adjusted p).
"""

from __future__ import annotations

from embreg.analysis.cells import fmt_effect
from embreg.analysis.compare import TESTED_METRICS, Comparison
from embreg.analysis.stats import ALPHA, BORDERLINE, BORDERLINE_SE, CONFIDENCE, fmt_p
from embreg.analysis.summary import Analysis
from embreg.analysis.tables import metric_decimals

ACCURACY_KEYS = {key for _, key in TESTED_METRICS}
NOT_RESOLVED = "not resolved at this scale"
NOT_TESTABLE = "not testable (a run has fewer than two seeds, or neither run varies across seeds)"


def finding(c: Comparison) -> str:
    """``"`svmax` vs `vicreg_nocov`, `linear top-1`: +2.7 [1.2, 4.2] points, p (Holm) = 0.012"``, with
    ``" (borderline)"`` after a claim with less margin than a rerun may move it (stats.BORDERLINE_SE)."""
    unit = " points" if c.metric in ACCURACY_KEYS else ""
    return (f"`{c.arm}` vs `{c.reference}`, `{c.label}`: {fmt_effect(c.test, metric_decimals(c.metric))}{unit}, "
            f"p (Holm) = {fmt_p(c.p_holm)}" + (f" ({BORDERLINE})" if c.borderline else ""))


def _grouped(comps: list[Comparison]) -> str:
    """``"`a` vs `b` (`linear top-1`, `kNN-20 top-1`); `c` vs `b` (...)"``."""
    by_pair: dict[tuple[str, str], list[str]] = {}
    for c in comps:
        by_pair.setdefault((c.arm, c.reference), []).append(f"`{c.label}`")
    return "; ".join(f"`{a}` vs `{r}` ({', '.join(labels)})" for (a, r), labels in by_pair.items())


def findings(comps: list[Comparison], list_rest: bool = True) -> list[str]:
    """Significant differences one per line; then the rest as "not resolved at this scale" and the
    untestable ones (listed by name, or only counted when ``list_rest`` is false)."""
    sig = [finding(c) for c in comps if c.significant]
    rest = [c for c in comps if c.test.testable and not c.significant]
    untestable = [c for c in comps if not c.test.testable]
    lines = sig or [f"no difference passes Welch's t-test with Holm's correction (adjusted p < {ALPHA})."]
    if rest:
        lines.append(f"{NOT_RESOLVED}: " + _grouped(rest) if list_rest
                     else f"every other comparison: {NOT_RESOLVED} (each listed in the report).")
    if untestable:
        lines.append(f"{NOT_TESTABLE}: " + _grouped(untestable) if list_rest
                     else f"some comparisons are {NOT_TESTABLE} (each listed in the report).")
    return lines


def method_note() -> str:
    """How the findings were computed (its numbers are the protocol constants, kept in summary.json)."""
    return (f"Only differences that pass Welch's t-test after Holm's correction across each table's "
            f"comparisons (adjusted p < {ALPHA}) are stated, as difference of means [{CONFIDENCE * 100:.0f}% CI]; "
            f"everything else is {NOT_RESOLVED}. A stated difference that would not pass with its effect "
            f"{BORDERLINE_SE:g} standard error closer to zero (the other tests of its table unchanged) is marked "
            f"({BORDERLINE}): a rerun on another machine, whose floating-point kernels move every trained "
            f"network's cells within their intervals, can carry it to either side of the threshold.")


def resolution_line(an: Analysis, res: dict) -> str:
    """What this profile can and cannot resolve, from the median CI half-widths of its comparisons."""
    labels = {key: label for label, key in TESTED_METRICS}
    widths = ", ".join(f"{w:.1f} points in `{labels[k]}`" for k, w in res["ci_halfwidth"].items() if w is not None)
    if not widths:
        return "No comparison is testable yet: every arm needs at least two finished seeds."
    profile = an.results.manifest.get("profile", "unknown")
    return (f"With n = {res['seeds']} seeds per arm, the `{profile}` profile resolves differences larger than about "
            f"{widths} (median half-width of the comparisons' {CONFIDENCE * 100:.0f}% CIs); smaller differences are "
            f"{NOT_RESOLVED} and need more seeds or a larger profile (`cifar10`, `imagenet100`).")
