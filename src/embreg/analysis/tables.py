"""The result tables, built from :class:`Results` and the tests of :mod:`embreg.analysis.compare`.

Every cell is ``mean [95% CI]`` over the finished seeds with n in its own column (or in the cell
when it differs across the row). Ablation tables start with the reference rows (pixels, random
init, supervised with its budget), show each row's linear top-1 difference to pixels and to
random init, and mark with ``†`` the cells that differ from the arm's reference arm after
Holm's correction; the tests themselves (effect, CI, t, dof, p, Holm p) sit in ``<name>_tests``.
"""

from __future__ import annotations

import math

import pandas as pd

from embreg.analysis.aggregate import Results, all_methods, sweep_points
from embreg.analysis.cells import (
    NO_VALUE,
    TOP5,
    Footnotes,
    Table,
    fmt_effect,
    metric_cell,
    missing_cell,
    problem_text,
    row_n,
)
from embreg.analysis.compare import Comparison, reference_deltas
from embreg.analysis.references import PIXELS, RANDOM_INIT, REFERENCES, by_design, kind, row_label
from embreg.analysis.stats import describe, fmt_p

# (header, metrics.json key after flattening, decimals)
Column = tuple[str, str, int]
ACCURACY_COLUMNS: list[Column] = [
    ("linear top-1", "linear_top1", 1), (TOP5, "linear_top5", 1), ("kNN-20 top-1", "knn20_top1", 1),
    ("10% top-1", "semi_10pct_top1", 1), (TOP5, "semi_10pct_top5", 1),
    ("1% top-1", "semi_1pct_top1", 1), (TOP5, "semi_1pct_top5", 1),
]
RANKME_COLUMN: Column = ("projector RankMe", "projector_rankme", 1)
COST_COLUMN: Column = ("s/step", "sec_per_step", 4)
COST_ABLATIONS = ("layers",)  # ablations whose question includes "at what cost"
DELTA_HEADERS = {PIXELS: "Δ pixels (linear)", RANDOM_INIT: "Δ random_init (linear)"}


def ssl_run(results: Results) -> str | None:
    """A self-supervised arm whose budget the supervised label is compared with."""
    return next((m for m in all_methods(results.manifest) if kind(results, m) == "ssl"), None)


def method_cell(results: Results, run_id: str, notes: Footnotes) -> str:
    """The run's label (supervised runs with their budget), marked when any of its seeds did not finish."""
    text = problem_text(results, run_id)
    return row_label(results, run_id, ssl_run(results)) + (notes.mark(text) if text else "")


def delta_cell(results: Results, run_id: str, ref: str, deltas: dict, notes: Footnotes) -> str:
    """``+1.5 [-0.3, 3.3]``: the row's linear top-1 minus the reference's, with its Welch 95% CI."""
    if run_id == ref:
        return "(reference)"
    test = deltas[ref][run_id]
    if math.isnan(test.effect):
        side = ref if not results.values(ref, "linear_top1") else run_id
        return missing_cell(results, side, "linear_top1", notes)
    return fmt_effect(test)


def empty_by_design(results: Results, runs: list[str], key: str) -> bool:
    """No run has the metric, and each lacks it by design (a failed run's cell keeps the column)."""
    return all(not results.values(m, key) and by_design(results, m, key) for m in runs)


def metric_table(results: Results, name: str, title: str, runs: list[str], columns: list[Column],
                 comps: list[Comparison] | None = None, deltas: bool = False) -> Table:
    """One row per run: the metric columns (``†`` on significant cells), optional Δ columns, n.
    The semi-supervised columns are left out, with a remark, when every cell would be empty by design."""
    table = Table(name, title, pd.DataFrame())
    semi = [c for c in columns if c[1].startswith("semi_")]
    if semi and all(empty_by_design(results, runs, key) for _, key, _ in semi):
        columns = [c for c in columns if c not in semi]
        table.remark = ("No semi-supervised columns: no run here fine-tunes, by design (this profile switches "
                        "`eval.semi_supervised` off: no fine-tuning budget it can afford measures the representation "
                        "rather than the optimizer: see docs/evaluation.md; the references never do).")
    marked = {(c.arm, c.metric) for c in comps or [] if c.significant}
    delta = reference_deltas(results, runs) if deltas else {}
    rows = []
    for m in runs:
        n_text, per_cell = row_n(results, m, [key for _, key, _ in columns])
        cells = [metric_cell(results, m, key, table.notes, dec, per_cell, (m, key) in marked)
                 for _, key, dec in columns]
        if deltas:
            cells[1:1] = [delta_cell(results, m, ref, delta, table.notes) for ref in DELTA_HEADERS]
        rows.append([method_cell(results, m, table.notes), *cells, n_text])
    headers = [c[0] for c in columns]
    if deltas:
        headers[1:1] = list(DELTA_HEADERS.values())
    table.frame = pd.DataFrame(rows, columns=["method", *headers, "n"])
    return table


def main_runs(results: Results) -> list[str]:
    """The references first (those some ablation expects; all three when none is known), then every arm."""
    refs = [r for r in REFERENCES if r in results.runs] if results.manifest.get("ablations") else list(REFERENCES)
    return list(dict.fromkeys([*refs, *all_methods(results.manifest)]))


def main_table(results: Results) -> Table:
    """Every arm with the references: linear (with Δ to pixels and random init), kNN, semi-supervised."""
    table = metric_table(results, "main", "All arms: linear, kNN and semi-supervised top-1 (%), mean [95% CI]",
                         main_runs(results), ACCURACY_COLUMNS, deltas=True)
    if table.remark:
        table.title = "All arms: linear and kNN top-1 (%), mean [95% CI]"
    return table


def versus_cell(run_id: str, comps: list[Comparison], metric: str = "linear_top1") -> str:
    """``"vs vicreg_nocov: +2.7, p (Holm) = 0.012†"`` for each reference arm of the row (linear top-1)."""
    mine = [c for c in comps if c.arm == run_id and c.metric == metric]
    if not mine:
        return "(reference arm)" if any(c.reference == run_id for c in comps) else "(not compared)"
    return "; ".join(f"vs {c.reference}: {c.test.effect:+.1f}, p (Holm) = {fmt_p(c.p_holm)}"
                     + ("†" if c.significant else "") for c in mine)


def ablation_table(results: Results, name: str, runs: list[str], comps: list[Comparison]) -> Table:
    """One ablation's references and arms; ``†`` marks the cells its Holm-corrected tests resolve, and a
    column gives each arm's linear top-1 difference to its reference arm with the adjusted p."""
    abl = results.manifest["ablations"][name]
    columns = [*ACCURACY_COLUMNS, RANKME_COLUMN, *([COST_COLUMN] if name in COST_ABLATIONS else [])]
    table = metric_table(results, name, abl.get("title", name), runs, columns, comps, deltas=True)
    table.frame.insert(len(table.frame.columns) - 1, "linear top-1 vs reference arm",
                       [versus_cell(m, comps) for m in runs])
    return table


def metric_decimals(key: str) -> int:
    """Accuracies and ranks to 0.1; fractions and scores (in [0, 1]) to 0.001."""
    return 3 if key.endswith(("_s_mu_score", "_frac_dead_dims", "_frac_dead_dims_l2", "_std_l2", "_mean_abs_corr",
                              "_s_mu")) else 1


def tests_table(name: str, title: str, comps: list[Comparison]) -> Table:
    """Every test of one family: effect [Welch 95% CI], n, t, dof, p and Holm-adjusted p."""
    table = Table(name, title, pd.DataFrame())
    rows = []
    for c in comps:
        t = c.test
        if math.isnan(t.effect):
            effect = NO_VALUE + table.notes.mark("no finished seed in one of the two runs.")
        else:
            effect = fmt_effect(t, metric_decimals(c.metric))
        verdict = ("yes" if c.significant else "no") if t.testable else "not testable" + table.notes.mark(
            "a test needs two seeds per run with some spread between them.")
        rows.append([c.pair, c.label, effect, f"{t.n_a} vs {t.n_b}",
                     f"{t.t:.2f}" if t.testable else "n/a", f"{t.dof:.1f}" if t.testable else "n/a",
                     fmt_p(t.p), fmt_p(c.p_holm), verdict])
    table.frame = pd.DataFrame(rows, columns=["comparison", "metric", "effect [95% CI]", "n", "t", "dof", "p",
                                              "p (Holm)", "significant"])
    return table


def cost_reference(results: Results, methods: list[str]) -> str | None:
    """The arm the s/step ratios are relative to: vicreg, else the first arm with a cost."""
    timed = [m for m in methods if results.values(m, "sec_per_step")]
    return "vicreg" if "vicreg" in timed else (timed[0] if timed else None)


def cost_table(results: Results) -> Table:
    """Training cost per arm and its s/step relative to the reference arm."""
    methods = main_runs(results)
    ref = cost_reference(results, methods)
    columns: list[Column] = [COST_COLUMN, ("images/s", "images_per_sec", 0),
                             ("peak memory (MB)", "peak_memory_mb", 0), ("pretrain (s)", "pretrain_seconds", 0)]
    table = metric_table(results, "cost", "Training cost, mean [95% CI]", methods, columns)
    ref_mean = describe(results.values(ref, "sec_per_step")).mean if ref else math.nan
    ratios = []
    for m in methods:
        mean = describe(results.values(m, "sec_per_step")).mean
        ratios.append(f"{mean / ref_mean:.2f}" if ref and not math.isnan(mean) and ref_mean > 0
                      else missing_cell(results, m, "sec_per_step", table.notes))
    table.frame.insert(len(columns) + 1, f"s/step ÷ {ref or 'reference'}", ratios)
    return table


def sensitivity_table(results: Results) -> Table:
    """Every sweep point (the arm's own run included): coefficient vs linear top-1 and projector RankMe."""
    table = Table("sensitivity", "Coefficient sensitivity, mean [95% CI]", pd.DataFrame())
    rows = []
    for abl_name, abl in results.manifest.get("ablations", {}).items():
        for sweep in [] if abl.get("study") else abl.get("sweeps", []):  # a study's sweeps are its curves
            for p in sweep_points(results, sweep):
                value = (f"{p.value:g}" if p.value is not None
                         else "?" + table.notes.mark(f"`{p.run_id}`: `{sweep['key']}` not found in its config.yaml."))
                rows.append([abl_name, sweep["arm"], sweep["key"], value + (" (base)" if p.is_base else ""),
                             method_cell(results, p.run_id, table.notes),
                             metric_cell(results, p.run_id, "linear_top1", table.notes),
                             metric_cell(results, p.run_id, "projector_rankme", table.notes),
                             str(len(results.done(p.run_id)))])
    table.frame = pd.DataFrame(rows, columns=["ablation", "arm", "coefficient", "value", "run", "linear top-1",
                                              "projector RankMe", "n"])
    return table
