"""What every figure of the report shares: the backend, size limits, saving, placeholders, legends
outside the data, the whisker convention and the log-scale rule.

Whiskers are always the 95% Student-t interval of the mean over seeds (the tables' interval), so a
figure and its table never disagree; a captioned figure says so, with n.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless machines and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.transforms import offset_copy  # noqa: E402

from embreg.analysis.stats import CONFIDENCE, CellStats  # noqa: E402

DPI = 120
MAX_WIDTH_IN = 13.0  # 1,560 px at DPI: a figure a README or a laptop screen shows without shrinking it
WHISKERS = f"whiskers: {CONFIDENCE:.0%} Student-t CI of the mean over seeds"
# a term whose positive values span this ratio or more is drawn on a log axis (two decades)
LOG_SPAN = 100.0


def width(inches: float) -> float:
    """``inches``, capped so the saved figure stays within MAX_WIDTH_IN."""
    return min(inches, MAX_WIDTH_IN)


def save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # "tight" keeps figure legends and captions placed outside the axes inside the image
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def empty(path: Path, title: str, message: str) -> Path:
    """A placeholder figure, so a link to the plot still shows why there is nothing to see."""
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11)
    ax.set_title(title)
    ax.set_axis_off()
    return save(fig, path)


def legend_below(fig: plt.Figure, handles: list, labels: list[str], ncol: int | None = None,
                 title: str | None = None) -> None:
    """One legend for the whole figure, under its axes, so it covers no data."""
    if not handles:
        return
    ncol = ncol or min(len(labels), 4)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, fontsize=8,
               frameon=False, title=title, title_fontsize=8)


def caption(fig: plt.Figure, text: str) -> None:
    """A figure title in two sizes above the axes: what it shows, then how to read it (whiskers, n),
    wrapped to the figure's width. Call after ``tight_layout`` (it places the text above the top
    axes; ``save`` keeps it in the image)."""
    head, _, rest = text.partition("\n")
    top = max((ax.get_position().y1 for ax in fig.axes), default=0.9)
    chars = max(40, int(fig.get_figwidth() * 13))  # about 13 characters of 9-point text per inch
    lines = textwrap.wrap(rest, chars) if rest else []
    # offsets in points from the top of the axes, so the two never overlap whatever the figure's height
    sub = offset_copy(fig.transFigure, fig=fig, y=28, units="points")
    if lines:
        fig.text(0.5, top, "\n".join(lines), transform=sub, ha="center", va="bottom", fontsize=9, color="#444444")
    title = offset_copy(fig.transFigure, fig=fig, y=32 + 11 * len(lines), units="points")
    fig.text(0.5, top, head, transform=title, ha="center", va="bottom", fontsize=12)


def ci_error(stats: Sequence[CellStats]) -> np.ndarray:
    """2 x n array of (mean - low, high - mean) for matplotlib's ``xerr`` / ``yerr`` (0 without a CI)."""
    return np.array([[s.mean - s.ci_low, s.ci_high - s.mean] if s.has_ci else [0.0, 0.0] for s in stats]).T


def axis_scale(values: Sequence[float]) -> str:
    """``"log"`` when the finite values are positive and span LOG_SPAN or more (one arm at 2,500 and the
    rest near 1 would flatten every other line on a linear axis); ``"symlog"`` for such a span with
    zeros or negatives in it; ``"linear"`` otherwise."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    pos = [v for v in vals if v > 0]
    if len(pos) < 2 or max(pos) / min(pos) < LOG_SPAN:
        return "linear"
    return "log" if len(pos) == len(vals) else "symlog"


def apply_scale(ax: plt.Axes, axis: str, scale: str, values: Sequence[float]) -> None:
    """Set ``scale`` on ``ax``'s x or y axis; symlog's linear band is the smallest positive value."""
    setter = ax.set_yscale if axis == "y" else ax.set_xscale
    if scale == "symlog":
        pos = [v for v in values if v is not None and math.isfinite(v) and v > 0]
        setter("symlog", linthresh=min(pos) if pos else 1.0)
    else:
        setter(scale)


def fixed_jitter(n: int, spread: float = 0.12, seed: int = 0) -> np.ndarray:
    """Offsets for ``n`` seed dots from a private generator: the figure is a function of the results
    (re-running the analysis writes the same bytes) and numpy's global state is left alone."""
    return np.random.default_rng(seed).uniform(-spread, spread, n)
