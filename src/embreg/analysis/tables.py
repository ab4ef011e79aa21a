"""The result tables: built from :class:`Results`, written as Markdown, CSV and LaTeX.

A cell without a number is never blank: it shows ``—`` with a footnote marker saying why (the
run failed / diverged / is missing, with its error, or the metric is absent by design).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from embreg.analysis.aggregate import (
    COST_KEYS,
    SEMI_KEYS,
    Results,
    ablation_methods,
    all_methods,
    fmt_mean_std,
    mean_std,
    sweep_points,
)

_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "`": "",
          "±": r"$\pm$", "—": "---", "÷": r"$\div$", "|": r"\textbar{}", "<": r"\textless{}",
          ">": r"\textgreater{}", **{s: rf"\textsuperscript{{{d}}}" for d, s in enumerate("⁰¹²³⁴⁵⁶⁷⁸⁹")}}
NO_VALUE = "—"
RANDOM_INIT_SEMI = ("no semi-supervised result by design: fine-tuning a random initialization on the 1% / 10% "
                    "labels is exactly the supervised baseline's from-scratch fine-tuning (see its columns).")
RANDOM_INIT_COST = "no per-step cost by design: the random-init baseline is never pretrained."
# (header, metrics.json key after flattening, decimals)
Column = tuple[str, str, int]
MAIN_COLUMNS: list[Column] = [
    ("linear top-1", "linear_top1", 1), ("top-5", "linear_top5", 1),
    ("1% top-1", "semi_1pct_top1", 1), ("top-5", "semi_1pct_top5", 1),
    ("10% top-1", "semi_10pct_top1", 1), ("top-5", "semi_10pct_top5", 1),
]
ABLATION_EXTRA: list[Column] = [("kNN-20 top-1", "knn20_top1", 1), ("projector RankMe", "projector_rankme", 1)]
COST_COLUMN: Column = ("s/step", "sec_per_step", 4)
COST_ABLATIONS = ("layers",)  # ablations whose question includes "at what cost"
COLLAPSE_EMBEDDINGS = ("projector", "backbone")


class Footnotes:
    """Numbered footnotes of one table; the same text always gets the same number."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        """The superscript marker for ``text`` (registered on first use)."""
        if text not in self.texts:
            self.texts.append(text)
        return str(self.texts.index(text) + 1).translate(_SUPERSCRIPT)

    def lines(self) -> list[str]:
        return [f"{str(i + 1).translate(_SUPERSCRIPT)} {t}" for i, t in enumerate(self.texts)]


@dataclass
class Table:
    """A formatted table (all cells strings) with its footnotes."""

    name: str
    title: str
    frame: pd.DataFrame
    notes: Footnotes = field(default_factory=Footnotes)

    def markdown(self) -> str:
        """The table followed by its footnotes (one per line)."""
        text = self.frame.to_markdown(index=False, disable_numparse=True) if len(self.frame) else "_(no rows)_"
        return text + ("\n\n" + "  \n".join(self.notes.lines()) if self.notes.texts else "") + "\n"


def latex_escape(text: str) -> str:
    """LaTeX-safe text (underscores, ±, —, superscript markers ...) in a single pass."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def short_error(error: str | None, limit: int = 200) -> str:
    """The first line of an error message, cut to ``limit`` characters."""
    line = (error or "").strip().splitlines()[0] if (error or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def problem_text(results: Results, run_id: str) -> str | None:
    """Why some seeds of a run have no numbers (state and error per seed), or None if all finished."""
    problems = results.problems(run_id)
    if not problems:
        return None
    seeds = results.seeds(run_id)
    if not seeds:
        return f"`{run_id}`: no run found (not in the manifest and no run directory)."
    parts = [f"seed {r.seed} {r.state}" + (f" ({short_error(r.error)})" if r.error else "") for r in problems]
    return f"`{run_id}`: {'; '.join(parts)} — {len(seeds) - len(problems)} of {len(seeds)} seeds finished."


def missing_reason(results: Results, run_id: str, metric: str) -> str:
    """The footnote for a cell without any value."""
    if not results.done(run_id):
        return problem_text(results, run_id) or f"`{run_id}`: no finished seed."
    if results.is_untrained(run_id) and metric in SEMI_KEYS:
        return f"`{run_id}`: {RANDOM_INIT_SEMI}"
    if results.is_untrained(run_id) and metric in COST_KEYS:
        return f"`{run_id}`: {RANDOM_INIT_COST}"
    return f"`{run_id}`: no finished seed reports `{metric}`."


def metric_cell(results: Results, run_id: str, metric: str, notes: Footnotes, decimals: int = 1) -> str:
    """``mean ± std`` over the finished seeds, or a marked ``—``."""
    values = results.values(run_id, metric)
    if values:
        return fmt_mean_std(values, decimals)
    return NO_VALUE + notes.mark(missing_reason(results, run_id, metric))


def method_cell(results: Results, run_id: str, notes: Footnotes) -> str:
    """The run's name, marked when any of its seeds did not finish."""
    text = problem_text(results, run_id)
    return run_id + (notes.mark(text) if text else "")


def metric_table(results: Results, name: str, title: str, methods: list[str], columns: list[Column]) -> Table:
    """One row per method: the given metric columns and n (number of finished seeds)."""
    table = Table(name, title, pd.DataFrame())
    rows = [[method_cell(results, m, table.notes)]
            + [metric_cell(results, m, key, table.notes, dec) for _, key, dec in columns]
            + [str(len(results.done(m)))] for m in methods]
    table.frame = pd.DataFrame(rows, columns=["method", *[c[0] for c in columns], "n"])
    return table


def main_table(results: Results) -> Table:
    """The VICReg paper's Table 1 layout over every arm, baselines first."""
    return metric_table(results, "main", "All arms: linear and semi-supervised evaluation (top-1 / top-5 %)",
                        all_methods(results.manifest), MAIN_COLUMNS)


def ablation_table(results: Results, name: str) -> Table:
    """One ablation's arms and baselines, with kNN, projector RankMe (and s/step for `layers`)."""
    abl = results.manifest["ablations"][name]
    columns = MAIN_COLUMNS + ABLATION_EXTRA + ([COST_COLUMN] if name in COST_ABLATIONS else [])
    return metric_table(results, name, abl.get("title", name), ablation_methods(abl), columns)


def _collapse_row(results: Results, m: str, emb: str, notes: Footnotes) -> list[str]:
    """One collapse-table row: method, embedding and its metrics."""
    def cell(key: str, dec: int) -> str:
        return metric_cell(results, m, f"{emb}_{key}", notes, dec)

    s_mu = cell("s_mu", 3)
    if results.values(m, f"{emb}_s_mu"):  # the bounds depend only on (n, d): one pair per arm
        lower, upper = (mean_std(results.values(m, f"{emb}_s_mu_{b}"))[0] for b in ("lower", "upper"))
        s_mu += f" [{lower:.3f}, {upper:.3f}]"
    dim = results.values(m, f"{emb}_dim")
    return [method_cell(results, m, notes), emb, s_mu, cell("s_mu_score", 3), cell("rankme", 1),
            f"{dim[0]:.0f}" if dim else NO_VALUE, cell("frac_dead_dims", 3), cell("mean_abs_corr", 3),
            str(len(results.done(m)))]


def collapse_table(results: Results) -> Table:
    """Per arm and embedding (projector, backbone): s_mu with its bounds and the other collapse metrics."""
    table = Table("collapse", "Collapse metrics on the test set (mean ± std over seeds)", pd.DataFrame())
    rows = [_collapse_row(results, m, emb, table.notes)
            for m in all_methods(results.manifest) for emb in COLLAPSE_EMBEDDINGS]
    table.frame = pd.DataFrame(rows, columns=["method", "embedding", "s_mu [L, U]", "normalized score", "RankMe",
                                              "dim", "dead dims (std < 1e-2)", "mean abs off-diag corr", "n"])
    return table


def cost_reference(results: Results, methods: list[str]) -> str | None:
    """The arm the s/step ratios are relative to: vicreg, else the first arm with a cost."""
    timed = [m for m in methods if results.values(m, "sec_per_step")]
    return "vicreg" if "vicreg" in timed else (timed[0] if timed else None)


def cost_table(results: Results) -> Table:
    """Training cost per arm and its s/step relative to the reference arm."""
    methods = all_methods(results.manifest)
    ref = cost_reference(results, methods)
    columns: list[Column] = [COST_COLUMN, ("images/s", "images_per_sec", 0),
                             ("peak memory (MB)", "peak_memory_mb", 0), ("pretrain (s)", "pretrain_seconds", 0)]
    table = metric_table(results, "cost", "Training cost (mean ± std over seeds)", methods, columns)
    ref_mean = mean_std(results.values(ref, "sec_per_step"))[0] if ref else float("nan")
    ratios = []
    for m in methods:
        mean = mean_std(results.values(m, "sec_per_step"))[0]
        ratios.append(f"{mean / ref_mean:.2f}" if ref and mean == mean and ref_mean > 0
                      else NO_VALUE + table.notes.mark(missing_reason(results, m, "sec_per_step")))
    table.frame.insert(len(columns) + 1, f"s/step ÷ {ref or 'reference'}", ratios)
    return table


def sensitivity_table(results: Results) -> Table:
    """Every sweep point (the arm's own run included): coefficient vs linear top-1 and projector RankMe."""
    table = Table("sensitivity", "Coefficient sensitivity (mean ± std over seeds)", pd.DataFrame())
    rows = []
    for abl_name, abl in results.manifest.get("ablations", {}).items():
        for sweep in abl.get("sweeps", []):
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


def build_tables(results: Results) -> list[Table]:
    """Main, one per ablation, collapse, cost and sensitivity, in report order."""
    ablations = [ablation_table(results, name) for name in results.manifest.get("ablations", {})]
    return [*ablations, main_table(results), collapse_table(results), cost_table(results),
            sensitivity_table(results)]


def write_table(table: Table, tables_dir: Path) -> list[Path]:
    """``<name>.md`` (with footnotes), ``.csv`` (cells only) and ``.tex`` (booktabs + footnotes)."""
    tables_dir.mkdir(parents=True, exist_ok=True)
    md, csv, tex = (tables_dir / f"{table.name}.{ext}" for ext in ("md", "csv", "tex"))
    md.write_text(table.markdown())
    table.frame.to_csv(csv, index=False)
    escaped = table.frame.map(latex_escape)
    escaped.columns = [latex_escape(c) for c in table.frame.columns]
    body = escaped.to_latex(index=False, escape=False) if len(table.frame) else "% no rows\n"
    notes = "".join(f"\\par\\footnotesize {latex_escape(line)}\n" for line in table.notes.lines())
    tex.write_text(f"% {latex_escape(table.title)}\n{body}{notes}")
    return [md, csv, tex]
