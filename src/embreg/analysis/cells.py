"""Formatted cells and tables: ``mean [lo, hi]`` cells, footnotes, Markdown / CSV / LaTeX output.

A cell without a number is never blank: it shows ``—`` with a footnote marker saying why (the
run failed / diverged / is missing, with its error) or ``— (by design)`` with a footnote when the
run was never meant to produce it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from embreg.analysis.aggregate import Results
from embreg.analysis.references import by_design
from embreg.analysis.stats import CellStats, WelchTest, describe

_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "`": "",
          "±": r"$\pm$", "—": "---", "÷": r"$\div$", "|": r"\textbar{}", "<": r"\textless{}",
          ">": r"\textgreater{}", "≥": r"$\geq$", "†": r"$^\dagger$", "Δ": r"$\Delta$", "−": "-", "×": r"$\times$",
          **{s: rf"\textsuperscript{{{d}}}" for d, s in enumerate("⁰¹²³⁴⁵⁶⁷⁸⁹")}}
NO_VALUE = "—"
BY_DESIGN = "— (by design)"
NO_CI = "n/a"  # the interval of a single seed is undefined
SIGNIFICANT = "†"  # the cell differs from its reference arm (Welch, Holm-adjusted p < 0.05)
TOP5 = "top-5"  # kept in the CSV; dropped from Markdown / LaTeX (it saturates near 99 and says nothing)


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
    """A formatted table (all cells strings) with its footnotes; ``md_drop`` columns are CSV-only."""

    name: str
    title: str
    frame: pd.DataFrame
    notes: Footnotes = field(default_factory=Footnotes)
    md_drop: tuple[str, ...] = (TOP5,)
    # one sentence under the table (e.g. which columns are left out, and why); footnotes follow it
    remark: str = ""

    def footer(self) -> list[str]:
        """What follows the table: its remark, then its numbered footnotes."""
        return [*([self.remark] if self.remark else []), *self.notes.lines()]

    def shown(self) -> pd.DataFrame:
        return self.frame.drop(columns=[c for c in self.md_drop if c in self.frame.columns])

    def markdown(self) -> str:
        """The table (CSV-only columns dropped) followed by its footnotes (one per line)."""
        frame = self.shown().map(lambda c: str(c).replace("|", "\\|"))  # a bare pipe would split the cell
        text = frame.to_markdown(index=False, disable_numparse=True) if len(frame) else "_(no rows)_"
        lines = self.footer()
        return text + ("\n\n" + "  \n".join(lines) if lines else "") + "\n"


def latex_escape(text: str) -> str:
    """LaTeX-safe text (underscores, ±, —, superscript markers ...) in a single pass."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def short_error(error: str | None, limit: int = 200) -> str:
    """The first line of an error message, cut to ``limit`` characters."""
    line = (error or "").strip().splitlines()[0] if (error or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def num(x: float, decimals: int, sign: bool = False) -> str:
    """``x`` to ``decimals`` places (``+`` on positives when ``sign``); -0.0 prints as 0.0."""
    text = f"{x:+.{decimals}f}" if sign else f"{x:.{decimals}f}"
    if float(text) == 0.0:  # a difference that rounds to zero has no sign
        text = text.replace("-", "+" if sign else "")
    return text


def fmt_stats(s: CellStats, decimals: int = 1, show_n: bool = False) -> str:
    """``"79.1 [78.2, 80.0]"``; one seed: ``"78.0 [n/a]"``; ``" n=3"`` appended when ``show_n``."""
    interval = f"[{num(s.ci_low, decimals)}, {num(s.ci_high, decimals)}]" if s.has_ci else f"[{NO_CI}]"
    return f"{num(s.mean, decimals)} {interval}" + (f" n={s.n}" if show_n else "")


def fmt_effect(t: WelchTest, decimals: int = 1) -> str:
    """``"+1.5 [-0.3, 3.3]"``: difference of means and its Welch 95% interval (``[n/a]`` if untestable)."""
    if math.isnan(t.ci_low):
        return f"{num(t.effect, decimals, sign=True)} [{NO_CI}]"
    return f"{num(t.effect, decimals, sign=True)} [{num(t.ci_low, decimals)}, {num(t.ci_high, decimals)}]"


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


def missing_cell(results: Results, run_id: str, metric: str, notes: Footnotes) -> str:
    """The cell of a metric without any value: by design, or why the run has none."""
    design = by_design(results, run_id, metric)
    if design:
        return BY_DESIGN + notes.mark(design)
    if not results.done(run_id):
        return NO_VALUE + notes.mark(problem_text(results, run_id) or f"`{run_id}`: no finished seed.")
    return NO_VALUE + notes.mark(f"`{run_id}`: no finished seed reports `{metric}`.")


def row_n(results: Results, run_id: str, metrics: list[str]) -> tuple[str, bool]:
    """The row's n column and whether cells must carry their own n (when n differs across the row)."""
    ns = {len(results.values(run_id, m)) for m in metrics if by_design(results, run_id, m) is None} - {0}
    if len(ns) <= 1:
        return str(ns.pop() if ns else len(results.done(run_id))), False
    return f"{min(ns)}–{max(ns)} (per cell)", True


def metric_cell(results: Results, run_id: str, metric: str, notes: Footnotes, decimals: int = 1,
                show_n: bool = False, mark: bool = False) -> str:
    """``mean [lo, hi]`` over the finished seeds (``†`` when ``mark``), or a marked ``—``."""
    values = results.values(run_id, metric)
    if by_design(results, run_id, metric) or not values:
        return missing_cell(results, run_id, metric, notes)
    return fmt_stats(describe(values), decimals, show_n) + (SIGNIFICANT if mark else "")


def write_table(table: Table, tables_dir: Path) -> list[Path]:
    """``<name>.md`` (with footnotes), ``.csv`` (every column, cells only) and ``.tex`` (booktabs + footnotes)."""
    tables_dir.mkdir(parents=True, exist_ok=True)
    md, csv, tex = (tables_dir / f"{table.name}.{ext}" for ext in ("md", "csv", "tex"))
    md.write_text(table.markdown())
    table.frame.to_csv(csv, index=False)
    shown = table.shown()
    escaped = shown.map(latex_escape)
    escaped.columns = [latex_escape(c) for c in shown.columns]
    body = escaped.to_latex(index=False, escape=False) if len(shown) else "% no rows\n"
    notes = "".join(f"\\par\\footnotesize {latex_escape(line)}\n" for line in table.footer())
    tex.write_text(f"% {latex_escape(table.title)}\n{body}{notes}")
    return [md, csv, tex]
