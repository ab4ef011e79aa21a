"""The small files DVC reads: ``metrics/`` (the headline numbers), ``tables/accuracy.csv`` and
``tables/history.csv`` (tidy tables its plot templates overlay across commits).

summary.json holds every statistic (thousands of values); ``dvc metrics show``, ``dvc metrics diff``
and ``dvc exp show`` need the few a reader compares between two commits: per arm of the ablations
(references included, sweep points not) the mean and 95% CI of linear, kNN (the first k) and
semi-supervised top-1, and how many comparisons were tested and resolved; per robustness study each
arm's mean and CI at each point and the verdict counts. DVC prints one row per metrics file and one
column per key, so each cell is a file of its own (``metrics/<metric>/<arm>.json`` holding ``mean``,
``ci_low``, ``ci_high``): a profile is a few dozen rows of six columns, one screen. The tables and the
metrics come from the same rows, so they never disagree.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from embreg.analysis.aggregate import Results
from embreg.analysis.compare import Comparison
from embreg.analysis.references import REFERENCES
from embreg.analysis.stats import describe
from embreg.analysis.studies import (
    CONTRADICTED,
    EMBEDDING_USE,
    LEARNING_RATE,
    SUPPORTED,
    USABLE,
    StudyResult,
    arm_kind,
)
from embreg.analysis.summary import Analysis

METRICS_DIR = "metrics"
OLD_METRICS_FILE = "metrics.json"  # the single file of an earlier layout: one row thousands of columns wide
ACCURACY_TABLE = "accuracy.csv"
HISTORY_TABLE = "history.csv"
# values per profile, about what `dvc metrics diff --all` lists on one screen: the one-GPU grid (ten
# arms, 36 cells with their CIs, four counts) holds 112, the robustness studies (37 points) 117
MAX_METRICS = 120
DECIMALS = 3  # the tables show one decimal; three keep a diff's change readable without float noise
ACCURACY_COLUMNS = ["arm", "metric", "mean", "ci_low", "ci_high", "n"]
_KNN = re.compile(r"^knn(\d+)_top1$")


def first_knn(results: Results, runs: list[str]) -> str | None:
    """The kNN top-1 key of the first k the runs were evaluated with (``eval.knn_k``), else the smallest k
    any finished run reports."""
    found = sorted({int(m.group(1)) for r in runs for s in results.done(r) for k in s.metrics
                    if (m := _KNN.match(k))})
    configured = next((results.config_value(r, "eval.knn_k") for r in runs
                       if results.config_value(r, "eval.knn_k") is not None), None)
    first = configured[0] if isinstance(configured, list) and configured else configured
    if isinstance(first, int) and first in found:
        return f"knn{first}_top1"
    return f"knn{found[0]}_top1" if found else None


def headline_keys(results: Results, runs: list[str]) -> list[str]:
    """linear, kNN (first k), 10% and 1% top-1: the ones some run reports."""
    keys = ["linear_top1", first_knn(results, runs), "semi_10pct_top1", "semi_1pct_top1"]
    return [k for k in keys if k and any(results.values(r, k) for r in runs)]


def ablation_arms(an: Analysis) -> list[str]:
    """References, then every ablation's baselines and arms, without sweep points."""
    rows = [r for runs in an.runs.values() for r in runs if "@" not in r]
    return [r for r in dict.fromkeys([*REFERENCES, *rows]) if r in rows and r in an.results.runs]


def _point(x: float, kind: str, digits: int) -> str:
    """``lr03x`` / ``b032``: zero-padded, because `dvc metrics show` sorts its columns as text."""
    text = f"{x:g}".zfill(digits)
    return f"lr{text}x" if kind == LEARNING_RATE else f"b{text}"


def study_rows(results: Results, study: StudyResult) -> list[tuple[str, str, str, list[float]]]:
    """(arm, metric key, point label, values) for every point of a study."""
    out = []
    digits = max((len(f"{x:g}") for x in study.xs()), default=1)
    for arm in study.arms():
        key = USABLE.get(arm_kind(results, arm), USABLE["ssl"])[1] if study.kind == LEARNING_RATE else EMBEDDING_USE[1]
        for x in study.xs(arm):
            pt = study.at(arm, x)
            if pt is not None:
                out.append((arm, key, _point(x, study.kind, digits), results.values(pt.run_id, key)))
    return out


def accuracy_table(an: Analysis) -> pd.DataFrame:
    """Tidy (arm, metric, mean, ci_low, ci_high, n): the ablations' arms on the headline keys, then each
    study's arms per point (metric ``<key> @ <point>``)."""
    res, rows = an.results, []
    arms = ablation_arms(an)
    for arm in arms:
        for key in headline_keys(res, arms):
            rows.append((arm, key, res.values(arm, key)))
    for study in an.studies.values():
        rows += [(arm, f"{key} @ {point}", vals) for arm, key, point, vals in study_rows(res, study)]
    out = []
    for arm, metric, vals in rows:
        s = describe(vals)
        if s.n:
            out.append([arm, metric, s.mean, s.ci_low, s.ci_high, s.n])
    return pd.DataFrame(out, columns=ACCURACY_COLUMNS).round(DECIMALS)


def _finite(value: float) -> float | None:
    return round(float(value), DECIMALS) if value is not None and math.isfinite(value) else None


def _cell(mean: float, low: float, high: float) -> dict[str, float]:
    """mean with its CI bounds; a bound that does not exist (one seed) is left out, not written null."""
    cell = {"mean": _finite(mean), "ci_low": _finite(low), "ci_high": _finite(high)}
    return {k: v for k, v in cell.items() if v is not None}


def _counts(comps: list[Comparison]) -> dict[str, int]:
    return {"supported": sum(c.significant for c in comps), "tested": sum(c.test.testable for c in comps)}


def _verdicts(study: StudyResult) -> dict[str, int]:
    """The study's points judged (``tested``; the rest not resolved), supported and contradicted."""
    found = [v["verdict"] for v in study.verdicts.values()]
    return {"supported": found.count(SUPPORTED), "contradicted": found.count(CONTRADICTED), "tested": len(found)}


def metrics(an: Analysis) -> dict[str, dict[str, Any]]:
    """The metrics files, by path under ``metrics/``: ``findings/{accuracy,collapse}.json`` (Holm-
    supported and tested comparisons), ``<metric>/<arm>.json`` per arm of the ablations and headline
    metric, ``<study>/verdicts.json`` and ``<study>/<point>/<arm>.json`` per robustness study; each
    cell ``{mean, ci_low, ci_high}`` (one seed: the mean alone)."""
    out: dict[str, dict[str, Any]] = {}
    if an.runs:
        out["findings/accuracy.json"] = _counts([c for cs in an.accuracy.values() for c in cs])
        out["findings/collapse.json"] = _counts([c for cs in an.collapse.values() for c in cs])
    for r in accuracy_table(an).itertuples():
        if " @ " not in r.metric:  # a study's point: below, under the study's name
            out[f"{r.metric}/{r.arm}.json"] = _cell(r.mean, r.ci_low, r.ci_high)
    for name, study in an.studies.items():
        out[f"{name}/verdicts.json"] = _verdicts(study)
        for arm, _, point, vals in study_rows(an.results, study):
            s = describe(vals)
            if s.n:
                out[f"{name}/{point}/{arm}.json"] = _cell(s.mean, s.ci_low, s.ci_high)
    if count_values(out) > MAX_METRICS:  # a larger grid: the means alone, so the files stay one screen
        out = _means_only(out)
    return out


def write_metrics(an: Analysis, results_dir: Path) -> Path:
    """Write ``results_dir/metrics/`` whole, by a swap: a cell no longer computed does not linger,
    and an interrupted analysis leaves the previous files."""
    final = results_dir / METRICS_DIR
    new = Path(tempfile.mkdtemp(prefix=f".{METRICS_DIR}-", dir=results_dir))
    old = results_dir / f".{METRICS_DIR}-old"
    try:
        for rel, cell in metrics(an).items():
            (new / rel).parent.mkdir(parents=True, exist_ok=True)
            # allow_nan=False: a NaN that slipped through fails here rather than writing invalid JSON
            (new / rel).write_text(json.dumps(cell, indent=2, sort_keys=True, allow_nan=False) + "\n")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        new.rename(final)
    finally:
        if old.exists() and not final.exists():
            old.rename(final)
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    (results_dir / OLD_METRICS_FILE).unlink(missing_ok=True)
    return final


def read_metrics(results_dir: Path) -> dict[str, dict[str, Any]]:
    """``results_dir/metrics/``'s files by path under it, as ``metrics`` returns them."""
    root = Path(results_dir) / METRICS_DIR
    return {p.relative_to(root).as_posix(): json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))}


def _means_only(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _means_only(v) for k, v in obj.items() if k not in ("ci_low", "ci_high")}
    return obj


def count_values(obj: Any) -> int:
    """The number of leaves ``dvc metrics show`` prints."""
    if isinstance(obj, dict):
        return sum(count_values(v) for v in obj.values())
    return 1
