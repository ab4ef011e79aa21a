"""``analyze(results_dir)``: tables, plots, REPORT.md, summary.json and the README block.

The report states only what the statistics resolve: every "computed from the table" line is a
Holm-significant Welch difference (effect, CI, adjusted p), the rest reads "not resolved at this
scale". It draws no conclusions of its own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from embreg.analysis.aggregate import Results, load_results
from embreg.analysis.cells import Table, short_error, write_table
from embreg.analysis.claims import RULE, verdict_line, verdicts
from embreg.analysis.collapse import collapse_table, regime_table
from embreg.analysis.exports import ACCURACY_TABLE, HISTORY_TABLE, accuracy_table, write_metrics
from embreg.analysis.findings import findings, method_note, resolution_line
from embreg.analysis.plots import HEADLINE, make_plots
from embreg.analysis.provenance import write_provenance
from embreg.analysis.readme import BLOCK_FILE, readme_block
from embreg.analysis.study_plots import study_plot_jobs
from embreg.analysis.study_report import HOW_TO_READ as STUDY_HOW_TO_READ
from embreg.analysis.study_report import study_section, study_tables
from embreg.analysis.summary import Analysis, build, resolution, summarize
from embreg.analysis.tables import ablation_table, cost_table, main_table, sensitivity_table, tests_table
from embreg.analysis.training_plots import history_table

HOW_TO_READ = (
    "Every cell is the mean over the finished seeds of a run followed by its 95% confidence interval "
    "[low, high] (Student t with n - 1 degrees of freedom); `n` is how many seeds finished (given in the "
    "cell when it differs across the row); a single seed has no interval (`[n/a]`). Accuracies are top-1 "
    "percentages on the test set: *linear* is a linear probe on the frozen backbone, *kNN-20* a "
    "20-nearest-neighbour classifier on the backbone features, *10%* and *1%* fine-tune on that fraction "
    "of the labels; top-5 sits near 99 for every arm and is kept in the CSV files only. References: "
    "`pixels` (the same probe and kNN on the standardized raw pixels), `random_init` (the untrained "
    "backbone), `supervised` (labelled with its pretraining budget; its 1% and 10% cells, where a profile "
    "fine-tunes, are a network trained from random initialization on those labels alone: the papers' "
    "*Supervised* row of the semi-supervised table). The Δ columns are a row's linear "
    "top-1 minus the reference's with the Welch 95% interval of the difference (descriptive, not corrected "
    "for multiple comparisons). A `†` marks a cell that differs from the arm's reference arm in this "
    "ablation: Welch's t-test, Holm-corrected across the table's comparisons, adjusted p < 0.05; the "
    "column *linear top-1 vs reference arm* gives that difference with its adjusted p, and every test "
    "with its effect, t, degrees of freedom, p and Holm p is listed under the table. *RankMe* is the "
    "effective rank of an embedding; the *normalized score* places the mean singular value s_mu of the "
    "l2-normalized embeddings between its lower bound L (0: one direction) and upper bound U (1: "
    "maximally spread). `—` with a superscript number has no value (see that footnote: a missing, failed "
    "or diverged run); `— (by design)` was never meant to have one."
)


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


def build_tables(an: Analysis) -> list[Table]:
    """Per ablation: its table, its tests, its collapse table and collapse tests; then the shared tables."""
    res, out = an.results, []
    for name in an.runs:
        title = res.manifest["ablations"][name].get("title", name)
        out += [ablation_table(res, name, an.runs[name], an.accuracy[name]),
                tests_table(f"{name}_tests", f"{title}: Welch tests, Holm-corrected", an.accuracy[name]),
                collapse_table(res, name, an.runs[name], an.collapse[name]),
                tests_table(f"{name}_collapse_tests", f"{title}: collapse tests, Holm-corrected", an.collapse[name])]
    for name, study in an.studies.items():
        out += study_tables(res, study, res.manifest["ablations"][name].get("title", name))
    return [*out, main_table(res), regime_table(res, an.all_runs()), cost_table(res), sensitivity_table(res)]


PROTOCOL_KEYS = ("pretrain.epochs", "pretrain.steps_per_epoch", "pretrain.supervised_epochs", "optim.name", "optim.lr", "optim.batch_size",
                 "eval.probe_train_size", "eval.probe_epochs", "eval.probe_lr", "eval.knn_k", "eval.semi_supervised",
                 "eval.finetune_epochs", "eval.finetune_lr_backbone", "eval.finetune_lr_head",
                 "eval.finetune_batch_size", "eval.finetune_lr_batch")


def protocol_section(an: Analysis) -> list[str]:
    """The training and evaluation settings, read from the runs' config.yaml (one line per setting that
    differs between runs), and which runs fine-tune."""
    res = an.results
    runs = [r for r in an.all_runs() if res.seeds(r)]
    lines = []
    for key in PROTOCOL_KEYS:
        values: dict[str, list[str]] = {}
        for rid in runs:
            value = res.config_value(rid, key)
            if value is not None:
                values.setdefault(json.dumps(value), []).append(rid)
        if len(values) == 1:
            lines.append(f"- `{key}`: {next(iter(values))}")
        elif values:
            lines.append(f"- `{key}`: " + "; ".join(f"{v} ({', '.join(rids)})" for v, rids in values.items()))
    tuned = [r for r in runs if res.done(r) and any(k.startswith("semi_") for s in res.done(r) for k in s.metrics)]
    lines.append("- fine-tuned on 1% / 10% of the labels: " + (", ".join(tuned) or "none")
                 + "; every other run's semi-supervised cells are empty by design or marked as failed"
                 + ("" if tuned else " (why a profile may fine-tune nothing: the budget measurement of "
                    "`pipelines/finetune_budget.py`, `results/budget/finetune_budget.md`)"))
    return ["## Protocol (from the runs' config.yaml)", "", *lines, ""]


def _bullets(lines: list[str]) -> list[str]:
    return [f"- {line}" for line in lines]


def claims_summary(an: Analysis) -> dict[str, Any]:
    """summary.json's ``claims``: each ablation's verdicts on its published claims, and the rule."""
    man = an.results.manifest["ablations"]
    return {"claims": {name: verdicts(man[name], an.accuracy[name] + an.collapse[name])
                       for name in an.runs if man[name].get("claims")}, "claims_rule": RULE}


def claims_section(name: str, abl: dict[str, Any], comps: list) -> list[str]:
    """The verdicts on the ablation's published claims, with the rule fixed before the run."""
    found = verdicts(abl, comps)
    if not found:
        return []
    return [f"### Published claims ({name})", "", f"Rule, fixed before the run: {RULE}.", "",
            *_bullets([verdict_line(v) for v in found]), ""]


def render_report(an: Analysis, tables: dict[str, Table], plots: dict[str, Path], errors: dict[str, str]) -> str:
    """The whole REPORT.md text."""
    man = an.results.manifest
    kind = "robustness studies" if an.studies and not an.runs else "ablations"
    out = [f"# Embedding-regularizer {kind} — profile `{man.get('profile', 'unknown')}`", "",
           "## How to read this report", "", STUDY_HOW_TO_READ if kind != "ablations" else HOW_TO_READ, "",
           method_note(), "",
           *([resolution_line(an, resolution(an)), ""] if an.runs or not an.studies else []),
           *([_image(plots, errors, HEADLINE, "top-1 accuracy per arm"), ""] if HEADLINE in {*plots, *errors} else [])]
    if man.get("discovered"):
        out += ["_No readable `runs/manifest.json`: the runs below were discovered from the run directories._", ""]
    for name in an.runs:
        abl = man["ablations"][name]
        out += [f"## {abl.get('title', name)}", "", f"**Question:** {abl.get('question', '')}", "",
                tables[name].markdown(), _image(plots, errors, f"{name}_accuracy", f"{name} accuracies"), "",
                "Tests against each arm's reference arm:", "", tables[f"{name}_tests"].markdown(),
                "Computed from the table:", "", *_bullets(findings(an.accuracy[name])), "",
                f"### Collapse per layer ({name})", "", tables[f"{name}_collapse"].markdown(),
                _image(plots, errors, f"{name}_collapse", f"{name} collapse per layer"), "",
                tables[f"{name}_collapse_tests"].markdown(),
                "Computed from the collapse table:", "", *_bullets(findings(an.collapse[name])), "",
                *claims_section(name, abl, an.accuracy[name] + an.collapse[name])]
    for name, study in an.studies.items():
        out += study_section(an.results, study, man["ablations"][name], tables,
                             _image(plots, errors, name, f"{name} curves"))
    if not an.runs and an.studies:  # robustness studies alone: the generic sections would be empty
        return "\n".join([*out, *protocol_section(an), "## Every arm at its own learning rate", "",
                          tables["main"].markdown(), "## Training cost", "", tables["cost"].markdown(),
                          "## Runs", "", *runs_section(an.results), ""])
    out += [*protocol_section(an), "## All arms", "", tables["main"].markdown(),
            "## Regime of each regularizer: batch b vs embedding dimension d", "",
            "SVMax's normalized score of a batch is (s_mu - L) / (U - L) with L = sqrt(b) / k, U = sqrt(b / k), "
            "k = min(b, d). The last column is that score for one seeded random Gaussian batch of the same shape "
            "(rows l2-normalized): when it is already near 1 (b < d), the term mostly pushes the batch's rows "
            "towards orthogonality rather than spreading the d dimensions.", "", tables["regime"].markdown(),
            "## Training cost", "", tables["cost"].markdown(),
            "## Coefficient sensitivity", "", tables["sensitivity"].markdown(),
            _image(plots, errors, "sensitivity", "coefficient sensitivity"), "",
            "## Training curves and collapse per layer", "",
            _image(plots, errors, "loss_terms", "loss terms per epoch"), "",
            _image(plots, errors, "layer_collapse_heatmap", "collapse per layer"), "",
            _image(plots, errors, "spectra", "singular-value spectra"), "",
            "## Runs", "", *runs_section(an.results), ""]
    return "\n".join(out)


def display_path(path: Path) -> str:
    """``results/default`` when under the working directory (the README's links are relative to it)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _write_json(path: Path, obj: Any) -> None:
    # allow_nan=False: a NaN that slipped through fails here rather than writing invalid JSON
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def analyze(results_dir: Path, conf_dir: Path | None = None) -> dict[str, Any]:
    """Read ``results_dir/runs``; write ``tables/``, ``plots/``, ``REPORT.md``, ``summary.json``,
    ``metrics/`` (DVC's metrics, embreg.analysis.exports) and ``README_results.md``. ``conf_dir`` holds ``<ablation>.yaml`` for comparisons the manifest lacks
    (default: ``conf/ablation`` of the working directory).

    Returns the summary. Missing, failed or diverged runs appear as marked cells with footnotes;
    they never raise (a comparison naming an unknown run does: that is a config error).
    """
    results_dir = Path(results_dir)
    an = build(load_results(results_dir), conf_dir)
    tables = {t.name: t for t in build_tables(an)}
    tables_dir = results_dir / "tables"
    # the directory is this stage's output alone: a table no longer built must not linger there
    for stale in (p for p in tables_dir.glob("*") if p.suffix in (".md", ".csv", ".tex")):
        stale.unlink()
    for table in tables.values():
        write_table(table, tables_dir)
    runs_frame(an.results).to_csv(tables_dir / "runs.csv", index=False)
    # tidy tables for DVC's plot templates (dvc.yaml's top-level plots), one overlay per commit
    accuracy_table(an).to_csv(tables_dir / ACCURACY_TABLE, index=False)
    history_table(an.results).to_csv(tables_dir / HISTORY_TABLE, index=False)
    plots, errors = make_plots(an, results_dir / "plots", study_plot_jobs(an))
    summary = {**summarize(an), **claims_summary(an)}
    _write_json(results_dir / "summary.json", summary)
    write_metrics(an, results_dir)
    (results_dir / "REPORT.md").write_text(render_report(an, tables, plots, errors))
    (results_dir / BLOCK_FILE).write_text(readme_block(an, display_path(results_dir)))
    write_provenance(an.results, display_path(results_dir))
    return summary
