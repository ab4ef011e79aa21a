"""Verdicts on published claims (embreg.analysis.claims): the rule, metric directions, and the
ablation file's claims checked against its comparisons."""

from __future__ import annotations

import pytest

from embreg.ablation import AblationConfig
from embreg.analysis.claims import CONTRADICTED, MIXED, SUPPORTED, verdict, verdict_line
from embreg.analysis.compare import Comparison
from embreg.analysis.findings import NOT_RESOLVED
from embreg.analysis.stats import welch

CLAIM = {"claim": "x helps", "pairs": [["a_x", "a"], ["b_x", "b"]], "metrics": ["linear_top1", "projector_mean_abs_corr"]}


def comp(arm: str, ref: str, metric: str, shift: float, p_holm: float) -> Comparison:
    """A comparison whose arm is ``shift`` above its reference (three seeds each)."""
    test = welch([50 + shift, 51 + shift, 52 + shift], [50.0, 51.0, 52.0])
    return Comparison("t", arm, ref, metric, metric, test, p_holm=p_holm)


@pytest.mark.parametrize(("comps", "expected"), [
    ([comp("a_x", "a", "linear_top1", 5, 0.01)], SUPPORTED),
    ([comp("a_x", "a", "projector_mean_abs_corr", -0.2, 0.01)], SUPPORTED),  # lower correlation is better
    ([comp("a_x", "a", "linear_top1", -5, 0.01)], CONTRADICTED),
    ([comp("a_x", "a", "linear_top1", 5, 0.01), comp("b_x", "b", "linear_top1", -5, 0.02)], MIXED),
    ([comp("a_x", "a", "linear_top1", 5, 0.2)], NOT_RESOLVED),
    ([comp("c_x", "c", "linear_top1", 5, 0.01)], NOT_RESOLVED),  # not one of the claim's pairs
    ([comp("a_x", "a", "knn20_top1", 5, 0.01)], NOT_RESOLVED),  # not one of the claim's metrics
])
def test_the_rule(comps, expected):
    v = verdict(CLAIM, comps)
    assert v["verdict"] == expected
    assert expected in verdict_line(v)


def test_claims_must_name_tested_pairs():
    with pytest.raises(ValueError, match=r"claim pair \['a_x', 'b'\] is not among its comparisons"):
        AblationConfig(name="d", arms=["a_x", "a", "b"], comparisons=[["a_x", "a"]],
                       claims=[{"claim": "x", "pairs": [["a_x", "b"]], "metrics": ["linear_top1"]}])
    with pytest.raises(ValueError, match="each claim is"):
        AblationConfig(name="d", arms=["a_x", "a"], comparisons=[["a_x", "a"]], claims=[{"claim": "x"}])
