"""The figures of the report (seaborn on matplotlib's Agg backend: no display is needed).

Every plot function draws whatever finished runs exist; with none it still writes a figure that
says so, so the report's image links never dangle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless machines and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from embreg.analysis.aggregate import (  # noqa: E402
    LAYER_ORDER,
    Results,
    all_methods,
    loss_terms,
    mean_std,
    sweep_points,
)
from embreg.analysis.compare import embeddings  # noqa: E402
from embreg.analysis.references import is_pixels  # noqa: E402
from embreg.analysis.stats import describe  # noqa: E402
from embreg.analysis.summary import Analysis  # noqa: E402

DPI = 120
BAR_METRICS = {"linear": "linear_top1", "kNN-20": "knn20_top1", "10% labels": "semi_10pct_top1",
               "1% labels": "semi_1pct_top1"}
COLLAPSE_PANELS = {"normalized score (s_mu - L) / (U - L)": "s_mu_score", "RankMe": "rankme"}


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # "tight" also keeps figure-level legends and suptitles (seaborn's relplot) inside the image
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _empty(path: Path, title: str, message: str) -> Path:
    """A placeholder figure, so a link to the plot still shows why there is nothing to see."""
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11)
    ax.set_title(title)
    ax.set_axis_off()
    return _save(fig, path)


def seed_frame(results: Results, methods: list[str], metrics: dict[str, str]) -> pd.DataFrame:
    """Long frame (method, seed, metric label, value) over the finished seeds."""
    rows = [{"method": m, "seed": r.seed, "metric": label, "value": r.metrics[key]}
            for m in methods for r in results.done(m) for label, key in metrics.items()
            if key in r.metrics and not math.isnan(r.metrics[key])]
    return pd.DataFrame(rows, columns=["method", "seed", "metric", "value"])


def t_interval(values: pd.Series) -> tuple[float, float]:
    """The 95% Student-t interval of the mean (the point itself for one seed): seaborn's error bar."""
    s = describe(list(values))
    return (s.ci_low, s.ci_high) if s.has_ci else (s.mean, s.mean)


def bars_plot(results: Results, name: str, methods: list[str], path: Path) -> Path:
    """Linear / 1% / 10% top-1 per row of one ablation table: mean bars, 95% t-interval error bars, seeds."""
    abl = results.manifest["ablations"][name]
    df = seed_frame(results, methods, BAR_METRICS)
    title = abl.get("title", name)
    if df.empty:
        return _empty(path, title, "no finished runs")
    # every method keeps its slot (a failed one shows an empty slot labelled n=0)
    labels = {m: f"{m}\n(n={len(results.done(m))})" for m in methods}
    df["method"] = df["method"].map(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(methods)), 4.5))
    kw = {"x": "method", "y": "value", "hue": "metric", "order": list(labels.values()),
          "hue_order": [k for k in BAR_METRICS if k in set(df["metric"])]}
    sns.barplot(data=df, errorbar=t_interval, capsize=0.15, alpha=0.85, ax=ax, **kw)
    state = np.random.get_state()  # seaborn jitters with numpy's global generator: fix it, so the
    np.random.seed(0)  # figure is a function of the results alone (re-running never rewrites it)
    try:
        sns.stripplot(data=df, dodge=True, palette=dict.fromkeys(kw["hue_order"], "black"), size=3,
                      legend=False, ax=ax, **kw)
    finally:
        np.random.set_state(state)
    ax.set(title=title, xlabel="", ylabel="top-1 accuracy (%)")
    ax.legend(title="evaluation", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)  # off the bars
    return _save(fig, path)


def _sweep_frame(results: Results, sweep: dict) -> pd.DataFrame:
    """Per-seed (value, linear top-1, projector RankMe) for every point of a sweep."""
    rows = [{"value": p.value, "linear top-1 (%)": r.metrics.get("linear_top1", math.nan),
             "projector RankMe": r.metrics.get("projector_rankme", math.nan)}
            for p in sweep_points(results, sweep) if p.value is not None and p.value > 0
            for r in results.done(p.run_id)]
    return pd.DataFrame(rows, columns=["value", "linear top-1 (%)", "projector RankMe"])


def _sweep_panel(ax: plt.Axes, data: pd.DataFrame, metric: str, missing: list[float]) -> None:
    """Mean ± std over seeds vs coefficient, the seeds as dots, and a dotted line where no run finished."""
    if not data.empty:
        stats = data.groupby("value")[metric].agg(lambda v: mean_std(list(v))[:2]).sort_index()
        mean, std = np.array([s[0] for s in stats]), np.nan_to_num([s[1] for s in stats])
        ax.errorbar(stats.index.to_numpy(), mean, yerr=std, marker="o", capsize=4)
        ax.scatter(data["value"], data[metric], color="black", s=10, zorder=3)
    for v in missing:
        ax.axvline(v, color="grey", linestyle=":")
        ax.text(v, 0.5, "no finished run", rotation=90, ha="right", va="center", color="grey",
                transform=ax.get_xaxis_transform(), fontsize=8)
    if data.empty and not missing:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
        return
    ax.set_xscale("log")


def sensitivity_plot(results: Results, path: Path) -> Path:
    """One column per sweep: linear top-1 (top row) and projector RankMe (bottom) vs coefficient."""
    sweeps = [s for abl in results.manifest.get("ablations", {}).values() if not abl.get("study")
              for s in abl.get("sweeps", [])]  # a study's sweeps are its curves (embreg.analysis.study_plots)
    sweeps = list({(s["arm"], s["key"]): s for s in sweeps}.values())  # one panel per (arm, key)
    if not sweeps:
        return _empty(path, "Coefficient sensitivity", "no sweeps in the manifest")
    fig, axes = plt.subplots(2, len(sweeps), figsize=(4.5 * len(sweeps), 6.5), squeeze=False)
    for col, sweep in enumerate(sweeps):
        df = _sweep_frame(results, sweep)
        for row, metric in enumerate(("linear top-1 (%)", "projector RankMe")):
            data = df.dropna(subset=[metric])
            missing = [p.value for p in sweep_points(results, sweep)
                       if p.value is not None and p.value > 0 and p.value not in set(data["value"])]
            _sweep_panel(axes[row, col], data, metric, missing)
            axes[row, col].set(xlabel=f"{sweep['key']} coefficient (log scale)", ylabel=metric)
        axes[0, col].set_title(f"{sweep['arm']}: {sweep['key'].split('.')[-1]}")
    return _save(fig, path)


def loss_frame(results: Results, methods: list[str]) -> pd.DataFrame:
    """Long frame (arm, seed, epoch, term, value) of the logged loss terms of the SSL arms."""
    rows = [{"arm": m, "seed": r.seed, "epoch": h.get("epoch", i + 1), "term": term, "value": h[term]}
            for m in methods for r in results.done(m) for i, h in enumerate(r.history or [])
            for term in loss_terms() if isinstance(h.get(term), int | float)]
    return pd.DataFrame(rows, columns=["arm", "seed", "epoch", "term", "value"])


def loss_terms_plot(results: Results, path: Path) -> Path:
    """Per-epoch loss terms, one panel per term, one line per arm (mean over seeds)."""
    arms = [a for abl in results.manifest.get("ablations", {}).values() for a in abl.get("arms", [])]
    df = loss_frame(results, list(dict.fromkeys(arms)))
    if df.empty:
        return _empty(path, "Loss terms per epoch", "no training history")
    terms = [t for t in loss_terms() if t in set(df["term"])]
    grid = sns.relplot(data=df, x="epoch", y="value", hue="arm", col="term", col_order=terms, kind="line",
                       errorbar=None, marker="o", markersize=4, height=3.2, aspect=1.3, col_wrap=2,
                       facet_kws={"sharey": False})
    grid.set_axis_labels("epoch", "term value (unweighted)")
    grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    grid.figure.suptitle("Loss terms per epoch (mean over seeds)")
    # outside the axes: _save's tight_layout would otherwise let the last panel run under it
    sns.move_legend(grid, "center left", bbox_to_anchor=(1.0, 0.5))
    return _save(grid.figure, path)


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
        return _empty(path, "Collapse per layer", "no collapse metrics")
    ncols, nrows = max(len(score.columns), len(ranks.columns)), max(len(score), len(ranks))
    fig, axes = plt.subplots(1, 2, figsize=(max(9.0, 2.6 * ncols + 4), 1.8 + 0.5 * nrows))
    for ax, mat, title in ((axes[0], score, "normalized score (s_mu - L) / (U - L)"),
                           (axes[1], ranks, "RankMe / dim")):
        if mat.empty:
            ax.set_axis_off()
            continue
        sns.heatmap(mat, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=ax,
                    cbar_kws={"label": "fraction (0 = collapsed, 1 = full)"})
        ax.set(title=title, xlabel="embedding", ylabel="arm")
    return _save(fig, path)


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
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    palette = dict(zip(methods, sns.color_palette("tab10", len(methods)), strict=False))
    drawn = False
    for ax, emb in zip(axes, ("projector", "backbone"), strict=True):
        for m in methods:
            s = mean_spectrum(results, m, emb)
            if s is None:
                continue
            s = np.where(s > 0, s, np.nan)  # log axis: an exact zero is drawn as a gap
            ax.plot(np.arange(1, len(s) + 1), s, label=m, color=palette[m])
            drawn = True
        ax.set_yscale("log")
        ax.set(title=f"{emb} output", xlabel="singular value index",
               ylabel="singular value / largest (log scale)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if not drawn:
        plt.close(fig)
        return _empty(path, "Singular-value spectra", "no spectra")
    fig.suptitle("Normalized singular-value spectra on the test set (mean over seeds)")
    return _save(fig, path)


def collapse_plot(results: Results, name: str, methods: list[str], path: Path) -> Path:
    """Per layer (x, network order): normalized score and RankMe per run, mean with 95% t-interval bars."""
    runs = [m for m in methods if not is_pixels(results, m)]
    layers = embeddings(results, runs)
    title = results.manifest["ablations"][name].get("title", name)
    if not layers:
        return _empty(path, title, "no collapse metrics")
    fig, axes = plt.subplots(1, len(COLLAPSE_PANELS), figsize=(6.0 * len(COLLAPSE_PANELS), 4.2))
    x = np.arange(len(layers))
    for ax, (label, suffix) in zip(axes, COLLAPSE_PANELS.items(), strict=True):
        for i, m in enumerate(runs):
            stats = [describe(results.values(m, f"{lay}_{suffix}")) for lay in layers]
            if all(s.n == 0 for s in stats):
                continue
            mean = np.array([s.mean for s in stats])
            err = np.array([[s.mean - s.ci_low, s.ci_high - s.mean] if s.has_ci else [0.0, 0.0] for s in stats]).T
            n = max(s.n for s in stats)
            # a small x offset per run keeps overlapping error bars readable
            ax.errorbar(x + 0.06 * (i - len(runs) / 2), mean, yerr=err, marker="o", capsize=3, label=f"{m} (n={n})")
        ax.set_xticks(x, layers)
        ax.set(title=label, xlabel="embedding (network order)", ylabel=label)
        if suffix == "rankme":
            ax.set_yscale("log")
    axes[-1].legend(bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    fig.suptitle(f"{title}: collapse per layer (mean, 95% t-interval over seeds)")
    return _save(fig, path)


def make_plots(an: Analysis, plots_dir: Path, extra: dict[str, Callable[[Path], Path]] | None = None
               ) -> tuple[dict[str, Path], dict[str, str]]:
    """Every figure (plus ``extra``: name -> draw(path), the studies' curves); returns (name -> path,
    name -> error) so one broken plot never stops the report."""
    results = an.results
    jobs: dict[str, Callable[[Path], Path]] = {}
    for name, runs in an.runs.items():
        jobs[f"{name}_bars"] = lambda p, n=name, r=runs: bars_plot(results, n, r, p)
        jobs[f"{name}_collapse"] = lambda p, n=name, r=runs: collapse_plot(results, n, r, p)
    if an.runs or not an.studies:  # a profile of robustness studies alone has its own figures only
        jobs.update({"sensitivity": lambda p: sensitivity_plot(results, p),
                     "loss_terms": lambda p: loss_terms_plot(results, p),
                     "layer_collapse_heatmap": lambda p: layer_heatmap(results, p),
                     "spectra": lambda p: spectra_plot(results, p)})
    jobs.update(extra or {})
    paths, errors = {}, {}
    for name, draw in jobs.items():
        try:
            paths[name] = draw(plots_dir / f"{name}.png")
        except Exception as exc:  # noqa: BLE001 - reported in REPORT.md instead of aborting
            plt.close("all")
            errors[name] = f"{type(exc).__name__}: {exc}"
    return paths, errors
