"""One colour per arm, the same in every figure and every profile.

A reader who learnt that SVMax is red in the headline figure must find it red in the spectra, the
loss curves and the robustness study, so the colour is a function of the arm's name alone, never
of its position in a figure's list. Families share a hue (SVMax reds, VICReg blues), a sweep point
(``<arm>@<key>=<value>``) is a shade of its arm's colour, and the references are greys told apart
by their line style.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import re

from matplotlib.colors import to_rgb

RGB = tuple[float, float, float]

# the arms of conf/objective; a name not listed gets a stable colour from FALLBACK (by its hash)
ARM_COLORS: dict[str, str] = {
    "inv_only": "#8c6d31",  # the collapse control: a brown, away from both families
    "svmax": "#d62728", "svmax_all": "#8c1c1d", "contrastive_svmax": "#f28e2b",
    "vicreg": "#1f77b4", "vicreg_all": "#0b3d6b", "vicreg_nocov": "#17becf",
    "var_l2": "#2ca02c", "contrastive": "#9467bd", "barlow": "#e377c2",
    # ablation D: the host teal; with stop-gradient a term's light shade (variance raw blue,
    # variance l2 green, SVMax red, as in the families above); without it (the collapsing host,
    # yellow-olive) a dark or shifted shade that no arm of A-C wears (indigo, dark green, magenta)
    "simsiam": "#35978f", "simsiam_var": "#6baed6", "simsiam_var_l2": "#74c476", "simsiam_svmax": "#fb6a4a",
    "simsiam_nosg": "#bcbd22", "simsiam_nosg_var": "#4a1486", "simsiam_nosg_var_l2": "#006d2c",
    "simsiam_nosg_svmax": "#e7298a",
}
# references: greys, told apart by line style where they are drawn as lines
REFERENCE_COLORS: dict[str, str] = {"pixels": "#4d4d4d", "random_init": "#8c8c8c", "supervised": "#262626"}
REFERENCE_LINES: dict[str, str] = {"pixels": ":", "random_init": "--", "supervised": "-."}
FALLBACK = ("#e377c2", "#bcbd22", "#7f7f7f", "#aec7e8", "#ff9896", "#98df8a", "#c5b0d5", "#c49c94",
            "#9edae5", "#dbdb8d", "#393b79", "#637939", "#843c39", "#7b4173")
_VALUE = re.compile(r"=\s*([-+]?[0-9.]+(?:e[-+]?\d+)?)")


def base_arm(run_id: str) -> str:
    """``svmax`` for ``svmax@svmax=0.1``: the arm a sweep point belongs to."""
    return run_id.split("@")[0]


def is_reference(run_id: str) -> bool:
    return base_arm(run_id) in REFERENCE_COLORS


def _stable_index(name: str, n: int) -> int:
    # hashlib, not hash(): Python salts str hashes per process, which would recolour every run
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % n


def _mix(rgb: RGB, towards: float, amount: float) -> RGB:
    return tuple(c + (towards - c) * amount for c in rgb)  # type: ignore[return-value]


def shade(rgb: RGB, run_id: str) -> RGB:
    """A sweep point's shade: lighter below 1 (a weaker coefficient or a smaller step), darker above,
    by how many decades its value sits from 1; lighter by a fixed step when no value can be read."""
    m = _VALUE.search(run_id.split("@", 1)[1]) if "@" in run_id else None
    try:
        value = float(m.group(1)) if m else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        return _mix(rgb, 1.0, 0.4)
    decades = max(-2.0, min(2.0, math.log10(value)))
    # at least a visible step away from the arm itself, at most 60% of the way to white / black
    amount = 0.2 + 0.2 * abs(decades)
    return _mix(rgb, 1.0 if decades <= 0 else 0.0, min(amount, 0.6))


def arm_color(run_id: str) -> RGB:
    """The arm's colour (references grey); a sweep point gets a shade of its arm's colour."""
    arm = base_arm(run_id)
    hexcode = REFERENCE_COLORS.get(arm) or ARM_COLORS.get(arm) or FALLBACK[_stable_index(arm, len(FALLBACK))]
    rgb = to_rgb(hexcode)
    return shade(rgb, run_id) if "@" in run_id else rgb


def reference_line(run_id: str) -> dict[str, object]:
    """Keyword arguments for ``axhline`` / ``axvline`` / ``plot`` of a reference."""
    arm = base_arm(run_id)
    return {"color": arm_color(arm), "linestyle": REFERENCE_LINES.get(arm, "--"), "linewidth": 1.3}


def lightness(rgb: RGB) -> float:
    """HLS lightness in [0, 1] (the tests check that shades move it the intended way)."""
    return colorsys.rgb_to_hls(*rgb)[1]
