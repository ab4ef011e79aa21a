"""The collapse figures: per-layer collapse per ablation, the per-layer heatmap, the spectra.

Arms keep their colour (embreg.analysis.palette); legends sit under the axes, outside the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from embreg.analysis.aggregate import LAYER_ORDER, Results, all_methods, mean_std
from embreg.analysis.compare import embeddings
from embreg.analysis.figure import WHISKERS, caption, ci_error, empty, legend_below, save, width
from embreg.analysis.palette import arm_color, is_reference, reference_line
from embreg.analysis.references import is_pixels
from embreg.analysis.stats import describe

# direction-based measures only: row lengths cannot hide a collapse from them (embreg.metrics)
COLLAPSE_PANELS = {"normalized score (s_mu - L) / (U - L)": "s_mu_score", "RankMe": "rankme",
                   "std of the l2-normalized rows (x sqrt d)": "std_l2"}


def collapse_plot(results: Results, name: str, methods: list[str], path: Path) -> Path:
    """Per layer (x, network order): normalized score, RankMe and direction std per run, mean with
    95% t-interval bars."""
    runs = [m for m in methods if not is_pixels(results, m)]
    layers = embeddings(results, runs)
    title = results.manifest["ablations"][name].get("title", name)
    if not layers:
        return empty(path, title, "no collapse metrics")
    fig, axes = plt.subplots(1, len(COLLAPSE_PANELS), figsize=(width(5.6 * len(COLLAPSE_PANELS)), 4.0))
    x = np.arange(len(layers))
    handles: dict[str, object] = {}
    for ax, (label, suffix) in zip(axes, COLLAPSE_PANELS.items(), strict=True):
        for i, m in enumerate(runs):
            stats = [describe(results.values(m, f"{lay}_{suffix}")) for lay in layers]
            if all(s.n == 0 for s in stats):
                continue
            n = max(s.n for s in stats)
            # a small x offset per run keeps overlapping error bars readable
            style = reference_line(m) if is_reference(m) else {"color": arm_color(m)}
            bars = ax.errorbar(x + 0.06 * (i - len(runs) / 2), [s.mean for s in stats], yerr=ci_error(stats),
                               marker="o", markersize=4, capsize=3, **style)  # type: ignore[arg-type]
            handles[f"{m} (n={n})"] = bars
        ax.set_xticks(x, layers)
        ax.set(title=label, xlabel="embedding (network order)", ylabel=label)
        if suffix == "rankme":  # effective ranks run from about 1 to hundreds
            ax.set_yscale("log")
    fig.tight_layout()
    legend_below(fig, list(handles.values()), list(handles))
    caption(fig, f"{title}: collapse per layer\npoint: mean; {WHISKERS} (n in the legend)")
    return save(fig, path)


def layer_matrix(results: Results, value: Callable[[dict[str, float], str], float]) -> pd.DataFrame:
    """Arms x embeddings of ``value(metrics, layer)`` averaged over finished seeds (NaN when absent)."""
    methods = all_methods(results.manifest)
    suffix = "_s_mu_score"  # every collapse entry has one: it names the embedding
    seen = {k[: -len(suffix)] for m in methods for r in results.done(m) for k in r.metrics if k.endswith(suffix)}
    layers = [lay for lay in LAYER_ORDER if lay in seen] + sorted(seen - set(LAYER_ORDER))
    data = {lay: [mean_std([value(r.metrics, lay) for r in results.done(m)])[0] for m in methods] for lay in layers}
    return pd.DataFrame(data, index=methods).dropna(how="all")


def _rank_fraction(metrics: dict[str, float], layer: str) -> float:
    dim = metrics.get(f"{layer}_dim", math.nan)
    return metrics.get(f"{layer}_rankme", math.nan) / dim if dim and dim > 0 else math.nan


def layer_heatmap(results: Results, path: Path) -> Path:
    """Normalized SVMax score and RankMe / dim per arm and embedding, side by side."""
    score = layer_matrix(results, lambda mt, lay: mt.get(f"{lay}_s_mu_score", math.nan))
    ranks = layer_matrix(results, _rank_fraction)
    if score.empty and ranks.empty:
        return empty(path, "Collapse per layer", "no collapse metrics")
    ncols, nrows = max(len(score.columns), len(ranks.columns)), max(len(score), len(ranks))
    fig, axes = plt.subplots(1, 2, sharey=True, figsize=(width(2.0 + 1.9 * ncols), 1.6 + 0.42 * nrows))
    for i, (ax, mat, title) in enumerate(((axes[0], score, "normalized score (s_mu - L) / (U - L)"),
                                          (axes[1], ranks, "RankMe / dim"))):
        if mat.empty:
            ax.set_axis_off()
            continue
        sns.heatmap(mat, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=ax, cbar=i == 1,
                    annot_kws={"fontsize": 8},
                    cbar_kws={"label": "0 = collapsed, 1 = full"})
        ax.set(title=title, xlabel="embedding", ylabel="arm" if i == 0 else "")
        ax.tick_params(axis="x", labelrotation=0)
    fig.suptitle("Collapse per layer (mean over seeds)")
    fig.tight_layout()
    return save(fig, path)


def mean_spectrum(results: Results, method: str, emb: str) -> np.ndarray | None:
    """Mean normalized spectrum over seeds (truncated to the shortest), or None."""
    spectra = [np.asarray(r.spectra[emb], dtype=float) for r in results.done(method)
               if r.spectra and r.spectra.get(emb)]
    if not spectra:
        return None
    k = min(len(s) for s in spectra)
    return np.mean([s[:k] for s in spectra], axis=0)


def spectra_plot(results: Results, path: Path) -> Path:
    """Singular-value spectra (log y) of the projector and the backbone, one line per arm."""
    methods = all_methods(results.manifest)
    fig, axes = plt.subplots(1, 2, figsize=(width(11.0), 4.0))
    handles: dict[str, object] = {}
    for ax, emb in zip(axes, ("projector", "backbone"), strict=True):
        for m in methods:
            s = mean_spectrum(results, m, emb)
            if s is None:
                continue
            s = np.where(s > 0, s, np.nan)  # log axis: an exact zero is drawn as a gap
            style = reference_line(m) if is_reference(m) else {"color": arm_color(m), "linewidth": 1.5}
            (line,) = ax.plot(np.arange(1, len(s) + 1), s, **style)  # type: ignore[arg-type]
            handles[f"{m} (n={len(results.done(m))})"] = line
        ax.set_yscale("log")
        ax.set(title=f"{emb} output", xlabel="singular value index", ylabel="singular value / largest (log scale)")
    if not handles:
        plt.close(fig)
        return empty(path, "Singular-value spectra", "no spectra")
    fig.tight_layout()
    legend_below(fig, list(handles.values()), list(handles), ncol=5)
    caption(fig, "Normalized singular-value spectra on the test set\nmean over seeds; grey: references")
    return save(fig, path)
