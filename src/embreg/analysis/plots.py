"""The figures of the report (matplotlib's Agg backend: no display is needed), drawn by concern:

- ``embreg.analysis.accuracy_plots``: per ablation accuracy (points with intervals) and the headline;
- ``embreg.analysis.collapse_plots``: collapse per layer, the per-layer heatmap, the spectra;
- ``embreg.analysis.training_plots``: coefficient sensitivity and the loss terms per epoch;
- ``embreg.analysis.study_plots``: the robustness studies' curves.

Colours come from one function of the arm's name (``embreg.analysis.palette``), sizes and legends
from ``embreg.analysis.figure``. Every plot function draws whatever finished runs exist; with none it
still writes a figure that says so, so the report's image links never dangle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt

from embreg.analysis.accuracy_plots import accuracy_plot, headline_plot
from embreg.analysis.collapse_plots import collapse_plot, layer_heatmap, spectra_plot
from embreg.analysis.summary import Analysis
from embreg.analysis.training_plots import loss_terms_plot, sensitivity_plot

HEADLINE = "headline"


def plot_jobs(an: Analysis) -> dict[str, Callable[[Path], Path]]:
    """name -> draw(path) for the ablations' figures (``plots/<name>.png``)."""
    results = an.results
    jobs: dict[str, Callable[[Path], Path]] = {}
    if an.runs:
        jobs[HEADLINE] = lambda p: headline_plot(results, p)
    for name, runs in an.runs.items():
        jobs[f"{name}_accuracy"] = lambda p, n=name, r=runs: accuracy_plot(results, n, r, p, an.accuracy.get(n))
        jobs[f"{name}_collapse"] = lambda p, n=name, r=runs: collapse_plot(results, n, r, p)
    if an.runs or not an.studies:  # a profile of robustness studies alone has its own figures only
        jobs.update({"sensitivity": lambda p: sensitivity_plot(results, p),
                     "loss_terms": lambda p: loss_terms_plot(results, p),
                     "layer_collapse_heatmap": lambda p: layer_heatmap(results, p),
                     "spectra": lambda p: spectra_plot(results, p)})
    return jobs


def make_plots(an: Analysis, plots_dir: Path, extra: dict[str, Callable[[Path], Path]] | None = None
               ) -> tuple[dict[str, Path], dict[str, str]]:
    """Every figure (plus ``extra``: name -> draw(path), the studies' curves); returns (name -> path,
    name -> error) so one broken plot never stops the report. PNGs no figure writes any more are
    removed: the folder is the stage's output, and a stale figure would read as a current one."""
    jobs = {**plot_jobs(an), **(extra or {})}
    if plots_dir.is_dir():
        for stale in plots_dir.glob("*.png"):
            if stale.stem not in jobs:
                stale.unlink()
    paths, errors = {}, {}
    for name, draw in jobs.items():
        try:
            paths[name] = draw(plots_dir / f"{name}.png")
        except Exception as exc:  # noqa: BLE001 - reported in REPORT.md instead of aborting
            plt.close("all")
            errors[name] = f"{type(exc).__name__}: {exc}"
    return paths, errors
