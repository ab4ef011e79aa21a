"""The robustness studies (an ablation config with ``study``): curves over one swept setting, their
tables, their tests and one verdict per claim, computed from the numbers.

``learning_rate`` (the SVMax paper's Fig. 9): every arm at 1x (the arm's own run) and at each swept
multiple of its learning rate. Claim: with SVMax the embedding stays usable where the same method
without it degrades or diverges. For each (SVMax arm, counterpart) pair and multiple m > 1 the test is
the difference of the two arms' changes from 1x, (S_m - S_1) - (C_m - C_1) (Welch-Satterthwaite t
over the four groups of seeds), Holm-corrected across the study; diverged seeds are compared with
Fisher's exact test on the diverged / finished counts over every m > 1.

``batch_size`` (the SVMax paper's Fig. 6): every arm at each batch size, images seen held equal.
Claim: networks trained with SVMax use the embedding markedly better, i.e. a higher test-set s_mu of
the embedding, at every batch size; Welch per batch size, Holm across the study. Spearman's rank
correlation between the normalized score and linear top-1 over every finished seed of the study.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from scipy import stats as sps

from embreg.analysis.aggregate import Results
from embreg.analysis.compare import Comparison, set_holm
from embreg.analysis.stats import ALPHA, WelchTest, change_difference, welch
from embreg.rundir import State

LEARNING_RATE, BATCH_SIZE = "learning_rate", "batch_size"
SUPPORTED, CONTRADICTED, NOT_RESOLVED = "supported", "contradicted", "not resolved at this scale"
# (SVMax arm, counterpart): the pairs each study tests, where the study has both arms
LR_PAIRS = [("svmax", "inv_only"), ("svmax", "vicreg_nocov"), ("svmax", "vicreg"), ("contrastive_svmax", "contrastive")]
BATCH_PAIRS = [("svmax", "inv_only"), ("svmax", "vicreg")]
# the metric that says whether an arm's embedding is usable: linear top-1 for the self-supervised
# arms, recall@1 on the held-out classes for the metric-learning arms (the paper's Fig. 9)
USABLE = {"ssl": ("linear top-1", "linear_top1"), "metric": ("recall@1 (held-out classes)", "recall_at_1")}
EMBEDDING_USE = ("embedding s_mu", "projector_s_mu")
RANK_PAIRS = [("projector_s_mu_score", "linear_top1"), ("backbone_s_mu_score", "linear_top1")]


@dataclass
class Point:
    """One run of a study: its arm, the swept setting's value (learning-rate multiple or batch size)."""

    arm: str
    x: float
    run_id: str


@dataclass
class StudyResult:
    """A study's points, its tests (one Holm family), divergence tests, verdicts and correlations."""

    name: str
    kind: str
    points: list[Point]
    tests: list[Comparison] = field(default_factory=list)
    divergence: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    verdicts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    spearman: list[dict[str, Any]] = field(default_factory=list)

    def arms(self) -> list[str]:
        return list(dict.fromkeys(p.arm for p in self.points))

    def at(self, arm: str, x: float) -> Point | None:
        return next((p for p in self.points if p.arm == arm and math.isclose(p.x, x)), None)

    def xs(self, arm: str | None = None) -> list[float]:
        return sorted({p.x for p in self.points if arm is None or p.arm == arm})


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def study_points(results: Results, abl: dict[str, Any]) -> list[Point]:
    """The study's runs with their x: a learning-rate multiple of the arm's own run (read from the runs'
    config.yaml, else from the manifest's value), or the batch size."""
    pts: list[Point] = []
    lr = abl.get("study") == LEARNING_RATE
    for arm in abl.get("arms", []):
        pts.append(Point(arm, 1.0, arm))
    for sw in abl.get("sweeps", []):
        base = _float(results.config_value(sw["arm"], sw["key"])) if lr else None
        for value, rid in zip(sw.get("values", []), sw.get("runs", []), strict=False):
            v = _float(results.config_value(rid, sw["key"])) or _float(value)
            if v is None or (lr and not base):
                continue
            pts.append(Point(sw["arm"], round(v / base, 6) if lr and base else v, rid))
    return sorted(pts, key=lambda p: (p.arm, p.x))


def seed_counts(results: Results, rid: str) -> dict[str, int]:
    """Seeds of a run: expected, finished, diverged, and not finished for another reason."""
    seeds = results.seeds(rid)
    done = sum(r.ok for r in seeds)
    diverged = sum(r.state == State.DIVERGED for r in seeds)
    return {"seeds": len(seeds), "done": done, "diverged": diverged, "other": len(seeds) - done - diverged}


def arm_kind(results: Results, arm: str) -> str:
    return str(results.config_value(arm, "objective.kind") or "ssl")


def _values(results: Results, pt: Point | None, key: str) -> list[float]:
    return results.values(pt.run_id, key) if pt else []


def _verdict(better: bool, worse: bool) -> str:
    if better and not worse:
        return SUPPORTED
    if worse and not better:
        return CONTRADICTED
    return NOT_RESOLVED


Passes = Callable[[Comparison], bool]


def _lr_verdict(mine: list[Comparison], div: dict[str, Any], fewer: float, passes: Passes) -> str:
    """Better: a change from 1x resolved in the SVMax arm's favour, or fewer diverged seeds
    (Fisher); worse: the opposite."""
    div_sig = not math.isnan(div["p"]) and div["p"] < ALPHA
    better = any(passes(c) and c.test.effect > 0 for c in mine) or (div_sig and fewer < 0)
    worse = any(passes(c) and c.test.effect < 0 for c in mine) or (div_sig and fewer > 0)
    return _verdict(better, worse)


def _batch_verdict(mine: list[Comparison], passes: Passes) -> str:
    """"Markedly better at every batch size": every point resolved in the SVMax arm's favour."""
    better = bool(mine) and all(passes(c) and c.test.effect > 0 for c in mine)
    worse = any(passes(c) and c.test.effect < 0 for c in mine)
    return _verdict(better, worse)


def _with_margin(verdict: Callable[[Passes], str], metric: str | None) -> dict[str, Any]:
    """The verdict, marked ``borderline`` when it changes once the borderline tests are taken as
    not passing: it rests on a claim a rerun on another machine could overturn (stats.BORDERLINE_SE)."""
    stated = verdict(lambda c: c.significant)
    firm = verdict(lambda c: c.significant and not c.borderline)
    return {"verdict": stated, "metric": metric, "borderline": stated != firm}


def _fisher(results: Results, study: StudyResult, arm: str, ref: str) -> dict[str, Any]:
    """Diverged vs finished seeds of both arms over every point beyond the first (x > 1x)."""
    counts = {}
    for a in (arm, ref):
        c = [seed_counts(results, p.run_id) for x in study.xs(a)[1:] if (p := study.at(a, x))]
        counts[a] = (sum(k["diverged"] for k in c), sum(k["done"] for k in c))
    (da, fa), (dr, fr) = counts[arm], counts[ref]
    p = float(sps.fisher_exact([[da, fa], [dr, fr]])[1]) if (da + dr) and (fa + fr) else math.nan
    return {"arm_diverged": da, "arm_finished": fa, "arm_seeds": da + fa, "ref_diverged": dr, "ref_finished": fr,
            "ref_seeds": dr + fr, "p": p}


def _lr_study(results: Results, study: StudyResult) -> None:
    arms = set(study.arms())
    pairs = [(a, r) for a, r in LR_PAIRS if a in arms and r in arms]
    for arm, ref in pairs:
        label, key = USABLE.get(arm_kind(results, arm), USABLE["ssl"])
        s1, c1 = _values(results, study.at(arm, 1.0), key), _values(results, study.at(ref, 1.0), key)
        for x in [x for x in study.xs(arm) if x > 1.0 and study.at(ref, x)]:
            sm, cm = _values(results, study.at(arm, x), key), _values(results, study.at(ref, x), key)
            study.tests.append(Comparison(study.name, arm, ref, key, f"{label}: change from 1x at {x:g}x",
                                          change_difference(s1, sm, c1, cm)))
        study.divergence[(arm, ref)] = _fisher(results, study, arm, ref)
    _holm(study)
    for arm, ref in pairs:
        mine = [c for c in study.tests if (c.arm, c.reference) == (arm, ref)]
        div = study.divergence[(arm, ref)]
        fewer = div["arm_diverged"] / max(div["arm_seeds"], 1) - div["ref_diverged"] / max(div["ref_seeds"], 1)
        study.verdicts[(arm, ref)] = _with_margin(partial(_lr_verdict, mine, div, fewer),
                                                  mine[0].metric if mine else None)


def _batch_study(results: Results, study: StudyResult) -> None:
    arms = set(study.arms())
    pairs = [(a, r) for a, r in BATCH_PAIRS if a in arms and r in arms]
    label, key = EMBEDDING_USE
    for arm, ref in pairs:
        for x in [x for x in study.xs(arm) if study.at(ref, x)]:
            study.tests.append(Comparison(study.name, arm, ref, key, f"{label} at b = {x:g}",
                                          welch(_values(results, study.at(arm, x), key),
                                                _values(results, study.at(ref, x), key))))
    _holm(study)
    for arm, ref in pairs:
        mine = [c for c in study.tests if (c.arm, c.reference) == (arm, ref)]
        study.verdicts[(arm, ref)] = _with_margin(partial(_batch_verdict, mine), key)


def _holm(study: StudyResult) -> None:
    set_holm(study.tests)


def rank_correlations(results: Results, study: StudyResult) -> list[dict[str, Any]]:
    """Spearman's rho (and its p) between a normalized score and linear top-1 over every finished seed."""
    out = []
    for x_key, y_key in RANK_PAIRS:
        pairs = [(r.metrics[x_key], r.metrics[y_key]) for p in study.points for r in results.done(p.run_id)
                 if x_key in r.metrics and y_key in r.metrics]
        xs, ys = [a for a, _ in pairs], [b for _, b in pairs]
        ranked = len(pairs) >= 3 and len(set(xs)) > 1 and len(set(ys)) > 1  # a constant has no rank order
        rho, p = sps.spearmanr(xs, ys) if ranked else (math.nan, math.nan)
        out.append({"x": x_key, "y": y_key, "rho": float(rho), "p": float(p), "n": len(pairs)})
    return out


def analyze_study(results: Results, name: str, abl: dict[str, Any]) -> StudyResult:
    """One study's points, tests, verdicts and (for every study) the score-accuracy rank correlations."""
    study = StudyResult(name, abl["study"], study_points(results, abl))
    if study.kind == LEARNING_RATE:
        _lr_study(results, study)
    elif study.kind == BATCH_SIZE:
        _batch_study(results, study)
    study.spearman = rank_correlations(results, study)
    return study


def changes_from_first(results: Results, study: StudyResult, arm: str, key: str) -> dict[float, WelchTest]:
    """Each point's value minus the arm's first point (1x): how much the arm itself degrades."""
    first = study.xs(arm)[0] if study.xs(arm) else None
    base = _values(results, study.at(arm, first), key) if first is not None else []
    return {x: welch(_values(results, study.at(arm, x), key), base) for x in study.xs(arm)[1:]}
