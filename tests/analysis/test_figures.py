"""The figures' conventions on the synthetic results (tests/analysis/conftest.py): one colour per arm in
every figure, sweep points a shade of their arm, greys for references, log axes where a term spans
decades, any number of loss terms (the widths: tests/analysis/test_analysis.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from embreg.analysis import training_plots
from embreg.analysis.accuracy_plots import accuracy_plot, headline_plot
from embreg.analysis.aggregate import load_results
from embreg.analysis.collapse_plots import collapse_plot, spectra_plot
from embreg.analysis.figure import axis_scale
from embreg.analysis.palette import ARM_COLORS, FALLBACK, arm_color, is_reference, lightness
from embreg.analysis.training_plots import loss_terms_plot, sensitivity_plot

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every figure saved while the test runs (the plot functions close theirs after saving)."""
    figures: list[Figure] = []
    original = Figure.savefig

    def record(fig: Figure, *args, **kwargs):  # type: ignore[no-untyped-def]
        figures.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figures


def legend_colors(fig: Figure) -> dict[str, tuple[float, float, float]]:
    """Run id -> colour of its legend entry, from the figure's and its axes' legends."""
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    out = {}
    for leg in legends:
        for handle, text in zip(leg.legend_handles, leg.get_texts(), strict=True):
            color = handle.get_color() if hasattr(handle, "get_color") else handle.get_edgecolor()
            out[text.get_text().split(" (")[0]] = to_rgb(color)
    return out


def test_one_colour_per_arm_in_every_figure(results_dir: tuple[Path, Path], tmp_path: Path,
                                            captured: list[Figure]) -> None:
    res = load_results(results_dir[0])
    runs = ["random_init", "supervised", "vicreg", "vicreg_all", "svmax", "svmax_all", "vicreg_all@layer_weight=0.2"]
    collapse_plot(res, "layers", runs, tmp_path / "collapse.png")
    spectra_plot(res, tmp_path / "spectra.png")
    loss_terms_plot(res, tmp_path / "loss.png")
    sensitivity_plot(res, tmp_path / "sensitivity.png")
    seen: dict[str, set[tuple[float, float, float]]] = {}
    for fig in captured:
        for name, color in legend_colors(fig).items():
            seen.setdefault(name.split(":")[0], set()).add(color)
    assert {"svmax", "vicreg", "vicreg_all", "random_init"} <= set(seen)
    for name, colors in seen.items():
        assert colors == {arm_color(name)}, name  # the same colour in every figure that shows the arm
    # the headline and the ablation figure draw an arm's points in that colour too
    headline_plot(res, tmp_path / "headline.png")
    accuracy_plot(res, "anticollapse", ["pixels", "svmax", "var_l2"], tmp_path / "acc.png")
    for fig in captured[-2:]:
        drawn = {to_rgb(c) for ax in fig.axes for line in ax.get_lines() for c in [line.get_color()]}
        assert arm_color("svmax") in drawn and arm_color("var_l2") in drawn


def test_palette_is_a_function_of_the_name_alone() -> None:
    assert arm_color("svmax") == to_rgb(ARM_COLORS["svmax"]) and arm_color("svmax") != arm_color("vicreg")
    # a sweep point: a shade of its arm (lighter below 1, darker above), never another hue
    base, weak, strong = arm_color("svmax"), arm_color("svmax@svmax=0.1"), arm_color("svmax@svmax=10.0")
    assert lightness(weak) > lightness(base) > lightness(strong)
    assert arm_color("svmax@svmax=0.1") == weak  # stable
    # references are greys; an unknown arm gets a fallback colour that no process salt changes
    for ref in ("pixels", "random_init", "supervised"):
        r, g, b = arm_color(ref)
        assert is_reference(ref) and r == g == b
    # another process (another str-hash salt) gives the same colour
    code = "from embreg.analysis.palette import arm_color; print(arm_color('some_new_arm'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "1", "PYTHONPATH": str(SRC)}).stdout
    assert out.strip() == str(arm_color("some_new_arm")) and arm_color("some_new_arm") in map(to_rgb, FALLBACK)


def test_every_arm_and_reference_wears_a_colour_of_its_own() -> None:
    """One colour per arm in every figure: the default profile draws A-D's arms and the references
    together (headline, loss terms, sensitivity), so no two named colours may be near twins."""
    import itertools
    import math

    from embreg.analysis.palette import REFERENCE_COLORS

    named = {**ARM_COLORS, **REFERENCE_COLORS}
    close = [(a, b, round(math.dist(to_rgb(named[a]), to_rgb(named[b])), 3))
             for a, b in itertools.combinations(named, 2) if math.dist(to_rgb(named[a]), to_rgb(named[b])) < 0.15]
    assert not close, f"near-identical colours (RGB distance < 0.15): {close}"


def test_axis_scale_rule() -> None:
    assert axis_scale([0.2, 0.5, 1.0]) == "linear"
    assert axis_scale([0.5, 3.0, 2500.0]) == "log"  # one arm near 2,500 would flatten the rest
    assert axis_scale([0.0, 0.5, 2500.0]) == "symlog"  # a zero cannot sit on a log axis
    assert axis_scale([float("nan"), 1.0]) == "linear"


def _panels(fig: Figure) -> dict[str, str]:
    """Visible panel title (without its scale note) -> y scale."""
    return {ax.get_title().split(" (")[0]: ax.get_yscale() for ax in fig.axes if ax.get_visible() and ax.axison}


def test_loss_terms_log_panel_where_a_term_spans_decades(results_dir: tuple[Path, Path], tmp_path: Path,
                                                         captured: list[Figure]) -> None:
    root, _ = results_dir
    for seed in (0, 1, 2):  # one arm's covariance near 2,500, the others' at 0.1
        path = root / "runs" / "vicreg_nocov" / f"seed{seed}" / "history.json"
        hist = json.loads(path.read_text())
        path.write_text(json.dumps([{**h, "covariance": 2500.0} for h in hist]))
    loss_terms_plot(load_results(root), tmp_path / "loss.png")
    panels = _panels(captured[-1])
    assert panels == {"invariance": "linear", "variance": "linear", "covariance": "log", "svmax": "linear"}
    assert "covariance (log scale)" in {ax.get_title() for ax in captured[-1].axes}


def test_loss_terms_figure_takes_any_list_of_terms(results_dir: tuple[Path, Path], tmp_path: Path,
                                                   captured: list[Figure], monkeypatch: pytest.MonkeyPatch) -> None:
    res = load_results(results_dir[0])
    for terms in (("invariance",), ("invariance", "variance", "covariance", "svmax", "loss")):
        monkeypatch.setattr(training_plots, "loss_terms", lambda terms=terms: list(terms))
        loss_terms_plot(res, tmp_path / "loss.png")
        assert set(_panels(captured[-1])) == set(terms)
    assert set(training_plots.history_table(res)["term"]) == {"invariance", "variance", "covariance", "svmax",
                                                                "loss"}

