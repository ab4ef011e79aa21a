"""``analyze(results_dir)``: tables, plots, REPORT.md and summary.json from the run directories.

The report only states what is computed from the numbers (tables, and one-line findings that
rank or compare means); it draws no conclusions of its own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from embreg.analysis.aggregate import (
    Results,
    ablation_methods,
    all_methods,
    load_results,
    mean_std,
)
from embreg.analysis.plots import make_plots
from embreg.analysis.tables import Table, build_tables, short_error, write_table

SUMMARY_KEYS = {"linear_top1": "linear_top1", "semi_1pct_top1": "semi_1pct_top1",
                "semi_10pct_top1": "semi_10pct_top1", "projector_rankme": "projector_rankme"}
HOW_TO_READ = (
    "Every number is the mean ± sample standard deviation (ddof = 1) over the finished seeds of a run; "
    "`n` is how many seeds finished (a single seed shows its value alone). Accuracies are top-1 / top-5 "
    "percentages on the test set: *linear* is a linear probe on the frozen backbone, *1%* and *10%* "
    "fine-tune on that fraction of the labels, *kNN-20* is a 20-nearest-neighbour classifier on the "
    "backbone features. *RankMe* is the effective rank of an embedding (at most its dimension); the "
    "*normalized score* places the mean singular value s_mu of the l2-normalized embeddings between its "
    "lower bound L (0: all embeddings on one direction) and upper bound U (1: maximally spread). "
    "A `—` followed by a superscript number has no value: the footnote with that number, under the "
    "table, says why (a missing, failed or diverged run with its error, or a value absent by design)."
)


def _mean(results: Results, run_id: str, metric: str) -> float:
    return mean_std(results.values(run_id, metric))[0]


def _clean(value: float) -> float | None:
    """Rounded to 3 decimals; NaN / inf become None (JSON has no NaN, and dvc metrics would choke)."""
    return round(value, 3) if isinstance(value, int | float) and math.isfinite(value) else None


def summarize(results: Results) -> dict[str, dict[str, Any]]:
    """Per arm (baselines included): the means of the headline metrics and n (finished seeds)."""
    return {m: {**{out: _clean(_mean(results, m, key)) for out, key in SUMMARY_KEYS.items()},
                "n": len(results.done(m))}
            for m in all_methods(results.manifest)}


def _ranked(results: Results, methods: list[str], metric: str) -> list[tuple[str, float, int]]:
    """(method, mean, n) for the methods with a value, highest mean first."""
    rows = [(m, _mean(results, m, metric), len(results.values(m, metric))) for m in methods]
    return sorted([r for r in rows if not math.isnan(r[1])], key=lambda r: -r[1])


def findings(results: Results, name: str) -> list[str]:
    """Computed one-liners for an ablation: rankings of means and differences to its reference arm."""
    abl = results.manifest["ablations"][name]
    methods, arms = ablation_methods(abl), list(abl.get("arms", []))
    lines = []
    top1 = _ranked(results, methods, "linear_top1")
    if top1:
        lines.append("linear top-1, highest mean first: " + ", ".join(f"{m} {v:.1f} (n={n})" for m, v, n in top1))
    ranks = [(m, _mean(results, m, "projector_rankme")) for m in methods]
    ranks = [(m, v) for m, v in ranks if not math.isnan(v)]
    if ranks:
        lines.append("projector RankMe: " + ", ".join(f"{m} {v:.1f}" for m, v in ranks))
    ref = "vicreg" if "vicreg" in arms else (arms[0] if arms else None)
    ref_top1 = _mean(results, ref, "linear_top1") if ref else math.nan
    diffs = [(m, _mean(results, m, "linear_top1") - ref_top1) for m in arms if m != ref]
    diffs = [(m, d) for m, d in diffs if not math.isnan(d)]
    if diffs:
        lines.append(f"linear top-1 minus {ref}'s ({ref_top1:.1f}): " + ", ".join(f"{m} {d:+.1f}" for m, d in diffs))
    cost = [(m, _mean(results, m, "sec_per_step")) for m in arms]
    ref_cost = _mean(results, ref, "sec_per_step") if ref else math.nan
    ratios = [(m, c / ref_cost) for m, c in cost if m != ref and not math.isnan(c) and ref_cost > 0]
    if name == "layers" and ratios:
        lines.append(f"s/step relative to {ref}: " + ", ".join(f"{m} {r:.2f}×" for m, r in ratios))
    return lines


def runs_frame(results: Results) -> pd.DataFrame:
    """One row per (run, seed): state, error and every flat metric (the raw numbers behind the tables)."""
    rows = [{"run_id": r.run_id, "seed": r.seed, "state": r.state, "error": short_error(r.error),
             "seconds": r.seconds, **r.metrics}
            for rid in results.runs for r in results.seeds(rid)]
    return pd.DataFrame(rows)


def _md_cell(text: Any) -> str:
    """Safe inside a Markdown table cell (no pipe, no newline)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def runs_section(results: Results) -> list[str]:
    """The list of every expected run and seed with its state (and error)."""
    lines = ["| run | seed | state | seconds | error |", "|:--|--:|:--|--:|:--|"]
    for rid in results.runs:
        for r in results.seeds(rid):
            secs = f"{r.seconds:.0f}" if isinstance(r.seconds, int | float) and math.isfinite(r.seconds) else ""
            lines.append(f"| {_md_cell(rid)} | {r.seed} | {r.state} | {secs} | {_md_cell(short_error(r.error))} |")
    counts = pd.Series([r.state for rid in results.runs for r in results.seeds(rid)]).value_counts()
    summary = ", ".join(f"{n} {state}" for state, n in counts.items()) or "none"
    return [f"Seed runs by state: {summary}.", "", *lines]


def _image(plots: dict[str, Path], errors: dict[str, str], name: str, alt: str) -> str:
    if name in plots:
        return f"![{alt}](plots/{plots[name].name})"
    return f"_(plot `{name}` could not be drawn: {_md_cell(errors.get(name, 'unknown error'))})_"


def render_report(results: Results, tables: dict[str, Table], plots: dict[str, Path],
                  errors: dict[str, str]) -> str:
    """The whole REPORT.md text."""
    man = results.manifest
    out = [f"# Embedding-regularizer ablations — profile `{man.get('profile', 'unknown')}`", "",
           "## How to read this report", "", HOW_TO_READ, ""]
    if man.get("discovered"):
        out += ["_No readable `runs/manifest.json`: the runs below were discovered from the run directories._", ""]
    for name, abl in man.get("ablations", {}).items():
        out += [f"## {abl.get('title', name)}", "", f"**Question:** {abl.get('question', '')}", "",
                tables[name].markdown(), _image(plots, errors, f"{name}_bars", f"{name} accuracies"), ""]
        facts = findings(results, name)
        if facts:
            out += ["Computed from the table:", "", *[f"- {f}" for f in facts], ""]
    sections = [("All arms", "main", None), ("Collapse metrics", "collapse", None),
                ("Training cost", "cost", None), ("Coefficient sensitivity", "sensitivity", "sensitivity")]
    for title, table, plot in sections:
        out += [f"## {title}", "", tables[table].markdown()]
        out += [_image(plots, errors, plot, title), ""] if plot else []
    out += ["## Training curves and collapse per layer", "",
            _image(plots, errors, "loss_terms", "loss terms per epoch"), "",
            _image(plots, errors, "layer_collapse_heatmap", "collapse per layer"), "",
            _image(plots, errors, "spectra", "singular-value spectra"), "",
            "## Runs", "", *runs_section(results), ""]
    return "\n".join(out)


def _write_json(path: Path, obj: Any) -> None:
    # allow_nan=False: a NaN that slipped through fails here rather than writing invalid JSON
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def analyze(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Read ``results_dir/runs``; write ``tables/``, ``plots/``, ``REPORT.md`` and ``summary.json``.

    Returns the summary (per arm: mean linear / 1% / 10% top-1, projector RankMe and n). Missing,
    failed or diverged runs appear as marked cells with footnotes; they never raise.
    """
    results_dir = Path(results_dir)
    results = load_results(results_dir)
    tables = {t.name: t for t in build_tables(results)}
    tables_dir = results_dir / "tables"
    for table in tables.values():
        write_table(table, tables_dir)
    runs_frame(results).to_csv(tables_dir / "runs.csv", index=False)
    plots, errors = make_plots(results, results_dir / "plots")
    summary = summarize(results)
    _write_json(results_dir / "summary.json", summary)
    (results_dir / "REPORT.md").write_text(render_report(results, tables, plots, errors))
    return summary
