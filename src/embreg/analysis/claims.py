"""Verdicts on published claims an ablation answers (its ``claims`` in conf/ablation/), by a rule
fixed before the run, from the ablation's own Holm-corrected tests (accuracy and collapse).

A claim names [arm, reference] pairs (the arm adds the thing claimed to help) and the metrics
that would show it. Per pair and metric, a test that passes (adjusted p < 0.05) counts as better
or worse in the metric's own direction (``higher_is_better``); the verdict is:
supported (better somewhere, worse nowhere), contradicted (worse somewhere, better nowhere),
mixed (both), or not resolved at this scale (neither). A test that cannot be run (too few seeds)
is listed as such; a borderline pass keeps its mark.
"""

from __future__ import annotations

from typing import Any

from embreg.analysis.compare import Comparison
from embreg.analysis.findings import NOT_RESOLVED, finding

SUPPORTED, CONTRADICTED, MIXED = "supported", "contradicted", "mixed"
LOWER_IS_BETTER = ("frac_dead_dims", "frac_dead_dims_l2", "mean_abs_corr")
RULE = ("a claim is supported when, on at least one of its pairs, the arm is better than its reference in one of "
        "its metrics after Holm's correction and worse in none; contradicted when worse somewhere and better "
        "nowhere; mixed when both; otherwise not resolved at this scale")


def higher_is_better(metric: str) -> bool:
    return not metric.endswith(LOWER_IS_BETTER)


def verdict(claim: dict[str, Any], comps: list[Comparison]) -> dict[str, Any]:
    """The claim's verdict and the significant tests it rests on (each a finding line)."""
    pairs = {tuple(p) for p in claim["pairs"]}
    mine = [c for c in comps if (c.arm, c.reference) in pairs and c.metric in claim["metrics"]]
    better = [c for c in mine if c.significant and (c.test.effect > 0) == higher_is_better(c.metric)]
    worse = [c for c in mine if c.significant and c not in better]
    state = (MIXED if better and worse else SUPPORTED if better else CONTRADICTED if worse else NOT_RESOLVED)
    borderline = state in (SUPPORTED, CONTRADICTED) and all(c.borderline for c in better + worse)
    return {"claim": claim["claim"], "verdict": state, "borderline": borderline,
            "tests": len(mine), "testable": sum(c.test.testable for c in mine),
            "better": [finding(c) for c in better], "worse": [finding(c) for c in worse]}


def verdicts(abl: dict[str, Any], comps: list[Comparison]) -> list[dict[str, Any]]:
    return [verdict(c, comps) for c in abl.get("claims") or []]


def verdict_line(v: dict[str, Any]) -> str:
    """``"<claim>: **supported** (2 of 10 tests pass: ...)"``."""
    mark = " (borderline)" if v["borderline"] else ""
    rest = "; ".join(v["better"] + [f"worse: {w}" for w in v["worse"]])
    passed = len(v["better"]) + len(v["worse"])
    return (f"{v['claim']}: **{v['verdict']}**{mark} ({passed} of {v['testable']} testable comparisons pass"
            + (f": {rest}" if rest else "") + ")")
