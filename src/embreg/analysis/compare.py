"""Which differences each ablation tests, and the tests: Welch per (comparison, metric), Holm per table.

An ablation's comparisons are ``[[arm, reference], ...]`` pairs of run ids, read from the
ablation's entry in ``runs/manifest.json`` (where the sweep copies its config), else from
``conf/ablation/<name>.yaml``, else every arm against the ablation's first arm. Each table is one
Holm family: the accuracy table tests linear / kNN-20 / 10% / 1% top-1, the collapse table the
collapse metrics of every embedding both runs report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from embreg.analysis.aggregate import LAYER_ORDER, Results, ablation_methods
from embreg.analysis.references import PIXELS, RANDOM_INIT, REFERENCES, by_design
from embreg.analysis.stats import WelchTest, holm, holm_borderline, significant, welch

CONF_ABLATION_DIR = Path("conf/ablation")  # relative to the repository root (DVC's working directory)
# (label, flat metric key): the accuracy columns every ablation tests
TESTED_METRICS: list[tuple[str, str]] = [("linear top-1", "linear_top1"), ("kNN-20 top-1", "knn20_top1"),
                                         ("10% top-1", "semi_10pct_top1"), ("1% top-1", "semi_1pct_top1")]
# (label, suffix after "<embedding>_"): the collapse metrics tested per embedding
# direction-based measures lead: a collapsed embedding cannot hide behind varied row lengths in any
# of them (embreg.metrics.collapse_metrics); the raw dead-dimension count is shown, never tested
COLLAPSE_METRICS: list[tuple[str, str]] = [("RankMe", "rankme"), ("normalized score", "s_mu_score"),
                                           ("std (l2)", "std_l2"), ("dead dims (l2)", "frac_dead_dims_l2"),
                                           ("mean abs corr", "mean_abs_corr")]


@dataclass
class Comparison:
    """One test: ``arm`` minus ``reference`` on ``metric``, with its Holm-adjusted p in its table."""

    table: str
    arm: str
    reference: str
    metric: str
    label: str
    test: WelchTest
    p_holm: float = math.nan
    borderline: bool = False  # passes, with less margin than a rerun may move it (stats.BORDERLINE_SE)

    @property
    def significant(self) -> bool:
        return significant(self.p_holm)

    @property
    def pair(self) -> str:
        return f"{self.arm} vs {self.reference}"

    def as_dict(self) -> dict[str, Any]:
        t = self.test
        return {"effect": t.effect, "ci_low": t.ci_low, "ci_high": t.ci_high, "t": t.t, "dof": t.dof,
                "p": t.p, "p_holm": self.p_holm, "significant": self.significant,
                "borderline": self.borderline, "n_arm": t.n_a, "n_ref": t.n_b}


def sweep_runs(abl: dict[str, Any]) -> list[str]:
    return [r for sw in abl.get("sweeps", []) for r in sw.get("runs", [])]


def _conf_comparisons(name: str, conf_dir: Path | None) -> Any:
    path = (conf_dir or CONF_ABLATION_DIR) / f"{name}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    return data.get("comparisons") if isinstance(data, dict) else None


def ablation_pairs(name: str, abl: dict[str, Any], conf_dir: Path | None = None) -> list[tuple[str, str]]:
    """The ablation's (arm, reference) pairs; raises ValueError naming the valid runs on an unknown one."""
    raw = abl.get("comparisons")
    if raw is None:
        raw = _conf_comparisons(name, conf_dir)
    arms = list(abl.get("arms", []))
    if raw is None:
        return [(a, arms[0]) for a in arms[1:]]
    valid = list(dict.fromkeys([*REFERENCES, *ablation_methods(abl), *sweep_runs(abl)]))
    pairs = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise ValueError(f"ablation {name}: a comparison is [arm, reference], got {item!r}")
        for rid in item:
            # a sweep point of a known arm may be absent from an older manifest: it then shows as a
            # marked "no run found" row, while a misspelt arm name is an error
            if rid not in valid and rid.split("@")[0] not in valid:
                raise ValueError(f"ablation {name}: comparison names unknown run {rid!r}; valid: {', '.join(valid)}")
        pairs.append((str(item[0]), str(item[1])))
    return pairs


def table_runs(results: Results, abl: dict[str, Any], pairs: list[tuple[str, str]]) -> list[str]:
    """An ablation table's rows: the references, its baselines, its arms, then compared sweep runs."""
    return list(dict.fromkeys([*REFERENCES, *abl.get("baselines", []), *abl.get("arms", []),
                               *[r for p in pairs for r in p]]))


def _welch(results: Results, table: str, arm: str, ref: str, metrics: list[tuple[str, str]]) -> list[Comparison]:
    """Welch per metric of one pair, skipping the metrics either run lacks by design."""
    return [Comparison(table, arm, ref, key, label, welch(results.values(arm, key), results.values(ref, key)))
            for label, key in metrics
            if by_design(results, arm, key) is None and by_design(results, ref, key) is None]


def set_holm(comps: list[Comparison]) -> None:
    """Each comparison's Holm-adjusted p and borderline mark within ``comps``, one family."""
    tests = [c.test for c in comps]
    for comp, p, near in zip(comps, holm([t.p for t in tests]), holm_borderline(tests), strict=True):
        comp.p_holm, comp.borderline = p, near


def _holm(comps: list[Comparison]) -> list[Comparison]:
    """Holm's correction across one table's tests (its family), in place."""
    set_holm(comps)
    return comps


def accuracy_tests(results: Results, table: str, pairs: list[tuple[str, str]]) -> list[Comparison]:
    """The accuracy table's family: linear, kNN-20, 10% and 1% top-1 (where the runs have them)."""
    return _holm([c for arm, ref in pairs for c in _welch(results, table, arm, ref, TESTED_METRICS)])


def embeddings(results: Results, runs: list[str]) -> list[str]:
    """The embeddings (layer names) with collapse metrics in any finished seed of ``runs``, network order."""
    seen = {k[: -len("_s_mu_score")] for rid in runs for r in results.done(rid) for k in r.metrics
            if k.endswith("_s_mu_score")}
    return [lay for lay in LAYER_ORDER if lay in seen] + sorted(seen - set(LAYER_ORDER))


def collapse_tests(results: Results, table: str, pairs: list[tuple[str, str]]) -> list[Comparison]:
    """The collapse table's family: every collapse metric of every embedding both runs report."""
    comps: list[Comparison] = []
    metrics = [(f"{emb} {label}", f"{emb}_{suffix}") for emb in embeddings(results, [r for p in pairs for r in p])
               for label, suffix in COLLAPSE_METRICS]
    for arm, ref in pairs:  # an embedding neither run reports (e.g. a failed pair) is not a test
        have = [(lab, key) for lab, key in metrics if results.values(arm, key) or results.values(ref, key)]
        comps += _welch(results, table, arm, ref, have)
    return _holm(comps)


def reference_deltas(results: Results, runs: list[str], metric: str = "linear_top1") -> dict[str, dict[str, WelchTest]]:
    """``{reference: {run: Welch(run - reference)}}`` against pixels and random init (not Holm-corrected)."""
    return {ref: {rid: welch(results.values(rid, metric), results.values(ref, metric)) for rid in runs}
            for ref in (PIXELS, RANDOM_INIT)}
