"""Accuracy as points with intervals: one figure per ablation, and the headline figure.

The findings are differences of 2-6 points between arms near 75%: a bar from 0 would hide them, so
each arm is a point (the mean) with its 95% Student-t interval over seeds, the seeds as dots, on an
axis that spans the data. Arms run down the y axis, so long run ids never collide. The raw-pixel and
random-init references are vertical lines: every arm is read against them.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from embreg.analysis.aggregate import Results
from embreg.analysis.compare import Comparison
from embreg.analysis.figure import WHISKERS, caption, ci_error, empty, fixed_jitter, legend_below, save, width
from embreg.analysis.palette import arm_color, reference_line
from embreg.analysis.references import PIXELS, RANDOM_INIT
from embreg.analysis.stats import ALPHA, describe

# (panel label, flat metric key), in the tables' order
ACCURACY_PANELS = {"linear probe": "linear_top1", "kNN-20": "knn20_top1", "10% labels": "semi_10pct_top1",
                   "1% labels": "semi_1pct_top1"}
LINE_REFERENCES = (PIXELS, RANDOM_INIT)  # drawn as lines, not rows: every arm is read against them
SIGNIFICANT = "†"
HEADER_CHARS = 30  # a group header wider than its arms' labels would squeeze the panels
HEADER_GAP = 0.5  # extra rows above a header: room for a wrapped second line and the separator


@dataclass(frozen=True)
class Row:
    """One slot of the y axis: an arm (``run_id``) or a group's header (``header``)."""

    run_id: str | None = None
    header: str | None = None


def row_label(results: Results, run_id: str) -> str:
    n = len(results.done(run_id))
    return f"{run_id} (n={n})" if n else f"{run_id} (n=0: no finished seed)"


def _draw_arm(ax: plt.Axes, results: Results, run_id: str, key: str, y: float, marked: bool) -> None:
    """Seeds as dots, the mean as a point with its interval, ``†`` beside a resolved difference."""
    vals = results.values(run_id, key)
    if not vals:
        return
    color = arm_color(run_id)
    ax.scatter(vals, y + fixed_jitter(len(vals)), s=9, color=color, alpha=0.45, linewidths=0, zorder=2)
    s = describe(vals)
    ax.errorbar([s.mean], [y], xerr=ci_error([s]), fmt="o", color=color, markersize=6, capsize=3,
                elinewidth=1.4, zorder=3)
    if marked:
        right = s.ci_high if s.has_ci else s.mean
        ax.annotate(SIGNIFICANT, (right, y), xytext=(4, -1), textcoords="offset points", va="center",
                    fontsize=10, color=color)


def _references(ax: plt.Axes, results: Results, key: str) -> list[tuple[Line2D, str]]:
    out = []
    for ref in LINE_REFERENCES:
        vals = results.values(ref, key)
        if vals:
            mean = describe(vals).mean
            line = ax.axvline(mean, zorder=1, **reference_line(ref))  # type: ignore[arg-type]
            out.append((line, f"{ref} (n={len(vals)})"))
    return out


def row_positions(rows: list[Row]) -> list[float]:
    """y of each row, top to bottom; a header below another group gets extra room (it may wrap)."""
    ys, y = [], 0.0
    for i, row in enumerate(rows):
        y -= 1.0 + (HEADER_GAP if row.header is not None and i else 0.0)
        ys.append(y)
    return ys


def points_panel(ax: plt.Axes, results: Results, rows: list[Row], key: str,
                 marked: set[tuple[str, str]] | None = None) -> list[tuple[Line2D, str]]:
    """Rows top to bottom; returns the reference lines drawn (handle, label) for a shared legend."""
    ys = row_positions(rows)
    for i, (y, row) in enumerate(zip(ys, rows, strict=True)):
        if row.header is not None and i:
            ax.axhline(y + 0.5 + HEADER_GAP / 2, color="#bbbbbb", linewidth=0.8)  # between two groups
        elif row.run_id is not None:
            _draw_arm(ax, results, row.run_id, key, y, (row.run_id, key) in (marked or set()))
    refs = _references(ax, results, key)
    ax.set_ylim(ys[-1] - 0.7, ys[0] + 0.7)
    # a group's header is a bold tick label of its own row: it sits beside the data, never on it
    ax.set_yticks(ys, [r.header if r.header is not None else row_label(results, str(r.run_id)) for r in rows])
    headers = {r.header for r in rows if r.header is not None}
    for tick in ax.yaxis.get_major_ticks():
        if tick.label1.get_text() in headers:
            tick.label1.set_fontweight("bold")
            tick.tick1line.set_visible(False)
    ax.grid(axis="x", color="#eeeeee", zorder=0)
    ax.margins(x=0.08)
    return refs


def _panels(results: Results, runs: list[str], keys: dict[str, str]) -> dict[str, str]:
    """The panels some run has a value for (a profile without fine-tuning has no 1% / 10% panel)."""
    return {label: key for label, key in keys.items() if any(results.values(r, key) for r in runs)}


def _figure(results: Results, rows: list[Row], panels: dict[str, str], marked: set[tuple[str, str]],
            text: str, path: Path) -> Path:
    fig, axes = plt.subplots(1, len(panels), sharey=True, squeeze=False,
                             figsize=(width(2.4 + 2.7 * len(panels)), 1.3 + 0.32 * -row_positions(rows)[-1]))
    refs: dict[str, Line2D] = {}
    for ax, (label, key) in zip(axes[0], panels.items(), strict=True):
        refs.update({lab: h for h, lab in points_panel(ax, results, rows, key, marked)})
        ax.set(title=label, xlabel="top-1 accuracy (%)")
    fig.tight_layout()
    legend_below(fig, list(refs.values()), [f"reference: {lab}" for lab in refs])
    caption(fig, text)
    return save(fig, path)


def accuracy_plot(results: Results, name: str, runs: list[str], path: Path,
                  comps: list[Comparison] | None = None) -> Path:
    """One ablation: a panel per evaluation (linear, kNN-20, 10% and 1% where they exist), a row per arm."""
    title = results.manifest["ablations"][name].get("title", name)
    rows = [Row(r) for r in runs if r not in LINE_REFERENCES]
    panels = _panels(results, runs, ACCURACY_PANELS)
    if not panels:
        return empty(path, title, "no finished runs")
    marked = {(c.arm, c.metric) for c in comps or [] if c.significant}
    text = (f"{title}: top-1 accuracy per arm\npoint: mean; {WHISKERS} (n per arm in the labels); dots: seeds"
            + (f"; {SIGNIFICANT}: differs from its reference arm (Welch, Holm p < {ALPHA:g})" if comps else ""))
    return _figure(results, rows, panels, marked, text, path)


def headline_rows(results: Results) -> list[Row]:
    """Every ablation's arms under its title (an arm in two ablations appears in both)."""
    rows = []
    for abl in results.manifest.get("ablations", {}).values():
        if abl.get("study") or not abl.get("arms"):
            continue
        # the title up to its colon, wrapped: the question itself is in the report, not in a tick label
        title = str(abl.get("title", "")).split(":")[0]
        rows.append(Row(header=textwrap.fill(title, HEADER_CHARS)))
        rows += [Row(a) for a in abl["arms"]]
    return rows


def headline_plot(results: Results, path: Path) -> Path:
    """Linear and kNN-20 top-1 of every ablation's arms, grouped by ablation, references as lines."""
    rows = headline_rows(results)
    runs = [r.run_id for r in rows if r.run_id]
    panels = _panels(results, runs, dict(list(ACCURACY_PANELS.items())[:2]))
    if not panels:
        return empty(path, "Top-1 accuracy per arm", "no finished runs")
    profile = results.manifest.get("profile", "unknown")
    text = (f"Top-1 accuracy per arm, grouped by ablation (profile `{profile}`)\n"
            f"point: mean; {WHISKERS} (n per arm in the labels); dots: seeds")
    return _figure(results, rows, panels, set(), text, path)
