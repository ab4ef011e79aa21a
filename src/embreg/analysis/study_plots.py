"""The robustness studies in the SVMax paper's form: a metric against the swept setting, one line per
arm with 95% t-intervals over seeds, diverged seeds marked at the bottom of the axes (never a gap).

``learning_rate`` (its Fig. 9): linear top-1 of the self-supervised arms and recall@1 of the
metric-learning arms against the learning-rate multiple. ``batch_size`` (its Fig. 6): the test-set
s_mu of the embedding against the batch size, its bounds L and U drawn, and linear top-1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

from embreg.analysis.aggregate import Results
from embreg.analysis.figure import WHISKERS, caption, empty, legend_below, save, width
from embreg.analysis.palette import arm_color, reference_line
from embreg.analysis.references import PIXELS, RANDOM_INIT
from embreg.analysis.stats import describe
from embreg.analysis.studies import LEARNING_RATE, USABLE, StudyResult, arm_kind, seed_counts
from embreg.analysis.summary import Analysis

# a diverged or failed point: black, so it never reads as an arm's colour
FAILED_MARK = {"marker": "x", "color": "black", "markersize": 8}


def _curve(ax: plt.Axes, results: Results, study: StudyResult, arm: str, key: str, offset: float) -> None:
    """The arm's mean and 95% t-interval per point; a black x (with k/n) where seeds diverged or failed."""
    xs, means, errs = [], [], []
    for x in study.xs(arm):
        pt = study.at(arm, x)
        if pt is None:
            continue
        s = describe(results.values(pt.run_id, key))
        if s.n:
            xs.append(x * offset)
            means.append(s.mean)
            errs.append([s.mean - s.ci_low, s.ci_high - s.mean] if s.has_ci else [0.0, 0.0])
        c = seed_counts(results, pt.run_id)
        if c["diverged"] or c["other"]:
            bad = c["diverged"] + c["other"]
            ax.plot(x * offset, 0.04, transform=ax.get_xaxis_transform(), **FAILED_MARK)  # type: ignore[arg-type]
            ax.text(x * offset, 0.08, f"{arm}: {bad}/{c['seeds']} " + ("diverged" if c["diverged"] else "failed"),
                    rotation=90, fontsize=7, color=arm_color(arm), ha="center", va="bottom",
                    transform=ax.get_xaxis_transform())
    n = max((len(results.done(p.run_id)) for p in study.points if p.arm == arm), default=0)
    if xs:
        ax.errorbar(xs, means, yerr=np.array(errs).T, marker="o", markersize=5, capsize=3, color=arm_color(arm),
                    label=f"{arm} (n≤{n})")


def _references(ax: plt.Axes, results: Results, key: str) -> None:
    for ref in (PIXELS, RANDOM_INIT):
        vals = results.values(ref, key)
        if vals:
            ax.axhline(float(np.mean(vals)), label=f"reference: {ref} (n={len(vals)})",
                       **reference_line(ref))  # type: ignore[arg-type]


def lr_plot(results: Results, study: StudyResult, path: Path, title: str) -> Path:
    """Left: the self-supervised arms' linear top-1; right: the metric arms' recall@1; x: lr multiple."""
    groups = {kind: [a for a in study.arms() if arm_kind(results, a) == kind] for kind in USABLE}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return empty(path, title, "no arms in the study")
    fig, axes = plt.subplots(1, len(groups), figsize=(width(6.2 * len(groups)), 4.4), squeeze=False)
    for ax, (kind, arms) in zip(axes[0], groups.items(), strict=True):
        label, key = USABLE[kind]
        for i, arm in enumerate(arms):
            _curve(ax, results, study, arm, key, 1.0 + 0.04 * (i - len(arms) / 2))
        _references(ax, results, key)
        ax.set_xscale("log")
        ticks = study.xs()
        ax.set_xticks(ticks, [f"{x:g}x" for x in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="learning rate (multiple of the profile's; log scale)", ylabel=f"{label} (%)",
               title="self-supervised arms" if kind == "ssl" else "metric learning (class-disjoint split)")
        # under each panel: the two panels hold different arms
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    caption(fig, f"{title}\npoint: mean; {WHISKERS} (n in the legend); x: diverged or failed seeds")
    return save(fig, path)


def batch_plot(results: Results, study: StudyResult, path: Path, title: str) -> Path:
    """Left: the embedding's test-set s_mu against the batch, with L and U (and b = d); right: linear top-1."""
    if not study.points:
        return empty(path, title, "no runs in the study")
    fig, axes = plt.subplots(1, 2, figsize=(width(12.0), 4.4))
    arms = study.arms()
    for ax, key, label in ((axes[0], "projector_s_mu", "embedding s_mu (test set)"),
                           (axes[1], "linear_top1", "linear top-1 (%)")):
        for i, arm in enumerate(arms):
            _curve(ax, results, study, arm, key, 1.0 + 0.05 * (i - len(arms) / 2))
        ax.set_xscale("log", base=2)
        ax.set_xticks(study.xs(), [f"{x:g}" for x in study.xs()])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="batch size b (equal images seen)", ylabel=label)
    done = [r.metrics for p in study.points for r in results.done(p.run_id)]
    for bound, style in (("projector_s_mu_upper", "--"), ("projector_s_mu_lower", ":")):
        vals = [m[bound] for m in done if bound in m]
        if vals:
            axes[0].axhline(float(np.mean(vals)), color="#555555", linestyle=style, linewidth=1.2,
                            label=("upper bound U" if "upper" in bound else "lower bound L"))
    dims = {int(m["projector_dim"]) for m in done if "projector_dim" in m}
    for d in dims:
        for ax in axes:
            ax.axvline(d, color="grey", linestyle="-.", linewidth=0.8)
        axes[0].text(d, 0.5, f" b = d = {d}", color="grey", fontsize=8, transform=axes[0].get_xaxis_transform())
    fig.tight_layout()
    handles, labels = axes[0].get_legend_handles_labels()  # the same arms in both panels: one legend
    legend_below(fig, handles, labels, ncol=5)
    caption(fig, f"{title}\npoint: mean; {WHISKERS} (n in the legend); x: diverged or failed seeds")
    return save(fig, path)


def study_plot_jobs(an: Analysis) -> dict[str, Callable[[Path], Path]]:
    """name -> draw(path) for each study's figure (``plots/<study>.png``)."""
    jobs: dict[str, Callable[[Path], Path]] = {}
    for name, study in an.studies.items():
        title = an.results.manifest["ablations"][name].get("title", name)
        draw = lr_plot if study.kind == LEARNING_RATE else batch_plot
        jobs[name] = lambda p, d=draw, s=study, t=title: d(an.results, s, p, t)
    return jobs
