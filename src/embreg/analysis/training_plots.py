"""Training-side figures: coefficient sensitivity and the loss terms per epoch.

Sensitivity puts every sweep on one axis, the coefficient as a multiple of the arm's own default,
so the question the SVMax paper raises (is its coefficient easier to tune?) is read as which curve is
flatter across the same relative range. A loss term spanning decades is drawn on a log axis
(embreg.analysis.figure.axis_scale): on a linear one an arm near 2,500 flattens every other line.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullFormatter

from embreg.analysis.aggregate import Results, loss_terms, sweep_points
from embreg.analysis.figure import (
    WHISKERS,
    apply_scale,
    axis_scale,
    caption,
    ci_error,
    empty,
    legend_below,
    save,
    width,
)
from embreg.analysis.palette import arm_color
from embreg.analysis.stats import describe

SENSITIVITY_PANELS = {"linear top-1 (%)": "linear_top1", "projector RankMe": "projector_rankme"}


def ablation_sweeps(results: Results) -> list[dict]:
    """The coefficient sweeps of the ablations, one per (arm, key); a study's sweeps are its own curves."""
    sweeps = [s for abl in results.manifest.get("ablations", {}).values() if not abl.get("study")
              for s in abl.get("sweeps", [])]
    return list({(s["arm"], s["key"]): s for s in sweeps}.values())


def _multiples(results: Results, sweep: dict) -> tuple[list[tuple[float, str]], float | None]:
    """(x, run id) per point, x the value over the arm's default (the value itself when the default is
    not positive), and the default."""
    points = [p for p in sweep_points(results, sweep) if p.value is not None and p.value > 0]
    base = next((p.value for p in sweep_points(results, sweep) if p.is_base), None)
    scale = base if base and base > 0 else 1.0
    return [(p.value / scale, p.run_id) for p in points], base


def _sweep_curve(ax: plt.Axes, results: Results, sweep: dict, key: str, offset: float) -> Line2D | None:
    """Mean and 95% t-interval per point, seeds as dots, an ``x`` under a point that never finished."""
    pts, _ = _multiples(results, sweep)
    color = arm_color(sweep["arm"])
    xs, stats = [], []
    for x, rid in pts:
        vals = results.values(rid, key)
        if vals:
            xs.append(x * offset)
            stats.append(describe(vals))
            ax.scatter([x * offset] * len(vals), vals, s=8, color=color, alpha=0.45, linewidths=0)
        else:
            ax.plot(x * offset, 0.03, marker="x", color=color, markersize=7, transform=ax.get_xaxis_transform())
    if not xs:
        return None
    bars = ax.errorbar(xs, [s.mean for s in stats], yerr=ci_error(stats), marker="o", markersize=5,
                       capsize=3, color=color)
    return bars.lines[0]


def sensitivity_plot(results: Results, path: Path) -> Path:
    """Linear top-1 and projector RankMe against each sweep's coefficient, as a multiple of its default."""
    sweeps = ablation_sweeps(results)
    if not sweeps:
        return empty(path, "Coefficient sensitivity", "no sweeps in the manifest")
    fig, axes = plt.subplots(1, len(SENSITIVITY_PANELS), figsize=(width(11.0), 4.0))
    handles: dict[str, Line2D] = {}
    ticks = sorted({round(x, 6) for s in sweeps for x, _ in _multiples(results, s)[0]})
    for ax, (label, key) in zip(axes, SENSITIVITY_PANELS.items(), strict=True):
        for i, sweep in enumerate(sweeps):
            line = _sweep_curve(ax, results, sweep, key, 1.0 + 0.03 * (i - len(sweeps) / 2))
            base = _multiples(results, sweep)[1]
            if line is not None:
                handles[f"{sweep['arm']}: {sweep['key'].split('.')[-1]} (default {base:g})" if base
                        else f"{sweep['arm']}: {sweep['key'].split('.')[-1]} (absolute value)"] = line
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())  # the decade's 2x..9x labels collide
        values = [v for s in sweeps for _, rid in _multiples(results, s)[0] for v in results.values(rid, key)]
        apply_scale(ax, "y", axis_scale(values), values)
        ax.set(xlabel="coefficient (multiple of the arm's default; log scale)", ylabel=label)
    fig.tight_layout()
    legend_below(fig, list(handles.values()), list(handles), ncol=3)
    caption(fig, f"Coefficient sensitivity\npoint: mean; {WHISKERS} where n > 1; dots: seeds; "
                 "x at the bottom: no finished run")
    return save(fig, path)


def loss_frame(results: Results, methods: list[str]) -> pd.DataFrame:
    """Long frame (arm, seed, epoch, term, value) of the logged loss terms of the SSL arms."""
    rows = [{"arm": m, "seed": r.seed, "epoch": h.get("epoch", i + 1), "term": term, "value": h[term]}
            for m in methods for r in results.done(m) for i, h in enumerate(r.history or [])
            for term in loss_terms() if isinstance(h.get(term), int | float) and not isinstance(h.get(term), bool)]
    return pd.DataFrame(rows, columns=["arm", "seed", "epoch", "term", "value"])


def ablation_arms(results: Results) -> list[str]:
    """The arms of every ablation (no references, no sweep points), in manifest order."""
    return list(dict.fromkeys(a for abl in results.manifest.get("ablations", {}).values()
                              for a in abl.get("arms", [])))


def term_means(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (term, arm, epoch)."""
    return df.groupby(["term", "arm", "epoch"], sort=False)["value"].mean().reset_index()


def term_scales(means: pd.DataFrame) -> dict[str, str]:
    """Each term's axis scale, decided on the curves it draws (embreg.analysis.figure.axis_scale)."""
    return {t: axis_scale(list(g["value"])) for t, g in means.groupby("term", sort=False)}


def loss_terms_plot(results: Results, path: Path) -> Path:
    """Per-epoch loss terms, one panel per logged term (any number), one line per arm (mean over seeds)."""
    df = loss_frame(results, ablation_arms(results))
    if df.empty:
        return empty(path, "Loss terms per epoch", "no training history")
    means = term_means(df)
    terms = [t for t in loss_terms() if t in set(means["term"])]
    scales = term_scales(means)
    ncols = min(2, len(terms))
    nrows = math.ceil(len(terms) / ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(width(5.2 * ncols), 3.0 * nrows + 0.4))
    handles: dict[str, Line2D] = {}
    for ax, term in zip(axes.flat, terms, strict=False):
        data = means[means["term"] == term]
        for arm, g in data.groupby("arm", sort=False):
            (line,) = ax.plot(g["epoch"], g["value"], marker="o", markersize=3, color=arm_color(str(arm)))
            handles[str(arm)] = line
        apply_scale(ax, "y", scales[term], list(data["value"]))
        ax.set(title=term + ("" if scales[term] == "linear" else f" ({scales[term]} scale)"), xlabel="epoch",
               ylabel="term value (unweighted)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes.flat[len(terms):]:
        ax.set_axis_off()
    fig.tight_layout()
    legend_below(fig, list(handles.values()), list(handles), ncol=min(len(handles), 5))
    caption(fig, "Loss terms per epoch (unweighted, mean over seeds)\na panel whose values span two decades "
                 "or more is on a log scale")
    return save(fig, path)


def history_table(results: Results) -> pd.DataFrame:
    """Tidy per-epoch loss terms: (term, arm, epoch, value), mean over seeds (DVC's per-epoch plot)."""
    df = loss_frame(results, ablation_arms(results))
    if df.empty:
        return pd.DataFrame(columns=["term", "arm", "epoch", "value"])
    out = term_means(df)[["term", "arm", "epoch", "value"]]
    return out.assign(epoch=out["epoch"].astype(int)).reset_index(drop=True)

