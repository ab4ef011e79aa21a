"""The statistics of a results directory in one object, and summary.json built from it.

:func:`build` runs every test once (no plots, no files), so the report, the README block and
summary.json all read the same numbers; a README number can be checked against summary.json.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embreg.analysis.aggregate import Results
from embreg.analysis.collapse import regime_rows
from embreg.analysis.compare import (
    TESTED_METRICS,
    Comparison,
    ablation_pairs,
    accuracy_tests,
    collapse_tests,
    reference_deltas,
    table_runs,
)
from embreg.analysis.references import budget_steps
from embreg.analysis.stats import ALPHA, BORDERLINE_SE, CONFIDENCE, describe
from embreg.analysis.studies import StudyResult, analyze_study
from embreg.analysis.study_report import study_summary
from embreg.analysis.tables import main_runs

# the headline metrics (dvc metrics show prints every key: the per-layer collapse metrics and costs
# stay in tables/*.csv, the raw per-seed numbers in tables/runs.csv)
SUMMARY_METRICS = ("linear_top1", "linear_top5", "knn20_top1", "knn200_top1", "semi_10pct_top1", "semi_10pct_top5",
                   "semi_1pct_top1", "semi_1pct_top5", "projector_rankme", "projector_s_mu_score", "sec_per_step")


@dataclass
class Analysis:
    """Per ablation: its table rows, its (arm, reference) pairs and both test families; per robustness
    study (an ablation with ``study``): its curves, tests and verdicts."""

    results: Results
    runs: dict[str, list[str]] = field(default_factory=dict)
    pairs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    accuracy: dict[str, list[Comparison]] = field(default_factory=dict)
    collapse: dict[str, list[Comparison]] = field(default_factory=dict)
    studies: dict[str, StudyResult] = field(default_factory=dict)

    def all_runs(self) -> list[str]:
        """Main-table runs, then every other run of the ablations and studies, then every run found on disk."""
        extra = [r for rows in self.runs.values() for r in rows]
        extra += [p.run_id for st in self.studies.values() for p in st.points]
        return list(dict.fromkeys([*main_runs(self.results), *extra, *self.results.runs]))


def build(results: Results, conf_dir: Path | None = None) -> Analysis:
    """Every ablation's rows and tests (raises ValueError on a comparison naming an unknown run)."""
    an = Analysis(results)
    for name, abl in results.manifest.get("ablations", {}).items():
        if abl.get("study"):
            an.studies[name] = analyze_study(results, name, abl)
            continue
        pairs = ablation_pairs(name, abl, conf_dir)
        an.pairs[name], an.runs[name] = pairs, table_runs(results, abl, pairs)
        an.accuracy[name] = accuracy_tests(results, name, pairs)
        an.collapse[name] = collapse_tests(results, f"{name}_collapse", pairs)
    return an


def _clean(value: Any) -> Any:
    """NaN / inf become None (JSON has no NaN, and dvc metrics would choke); numbers kept exact."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _metric_keys(results: Results, rid: str) -> list[str]:
    return [k for k in SUMMARY_METRICS if results.values(rid, k)]


def resolution(an: Analysis) -> dict[str, Any]:
    """What the profile resolves: typical seeds per arm, and per tested metric the median half-width
    of the Welch 95% CIs of the ablations' comparisons (a difference much smaller is not resolved)."""
    comps = [c for cs in an.accuracy.values() for c in cs if c.test.testable]
    widths = {key: statistics.median([c.test.ci_high - c.test.effect for c in comps if c.metric == key])
              for _, key in TESTED_METRICS if any(c.metric == key for c in comps)}
    ns = [len(an.results.done(r)) for r in main_runs(an.results) if an.results.done(r)]
    return {"seeds": statistics.mode(ns) if ns else 0, "ci_halfwidth": widths}


def summarize(an: Analysis) -> dict[str, Any]:
    """summary.json: per run and headline metric mean / CI / n / std; per comparison (every table) its
    test; the references' differences; the regularizers' b-vs-d regime; the resolution. NaN -> null."""
    res = an.results
    arms = {rid: {"n": len(res.done(rid)), "budget_steps": budget_steps(res, rid),
                  "metrics": {k: describe(res.values(rid, k)).as_dict() for k in _metric_keys(res, rid)}}
            for rid in an.all_runs()}
    comparisons: dict[str, dict[str, dict[str, Any]]] = {}
    for table, comps in [*an.accuracy.items(), *((f"{k}_collapse", v) for k, v in an.collapse.items())]:
        for c in comps:
            comparisons.setdefault(table, {}).setdefault(c.pair, {})[c.metric] = c.as_dict()
    deltas = reference_deltas(res, main_runs(res) + [r for rows in an.runs.values() for r in rows])
    references = {ref: {rid: {"effect": t.effect, "ci_low": t.ci_low, "ci_high": t.ci_high, "p": t.p}
                        for rid, t in by_run.items() if rid != ref}
                  for ref, by_run in deltas.items()}
    regime: dict[str, dict[str, Any]] = {}
    for row in regime_rows(res, an.all_runs()):
        regime.setdefault(str(row["run"]), {})[str(row["embedding"])] = {
            k: row[k] for k in ("b", "d", "regime", "random_score")}
    return _clean({"profile": res.manifest.get("profile", "unknown"), "arms": arms, "comparisons": comparisons,

                   "references": references, "regime": regime, "resolution": resolution(an),
                   "studies": {name: study_summary(st) for name, st in an.studies.items()},
                   # the protocol's constants, so every number of the generated text is found here
                   "protocol": {"alpha": ALPHA, "borderline_se": BORDERLINE_SE, "confidence": CONFIDENCE,
                                "confidence_percent": round(CONFIDENCE * 100)}})

