"""Checks shared by the synthetic and the committed-results tests."""

from __future__ import annotations

import re
from typing import Any

SUPERSCRIPT = "⁰¹²³⁴⁵⁶⁷⁸⁹"
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.(\d+))?(?:e([-+]?\d+))?")


def numeric_leaves(obj: Any) -> list[float]:
    """Every number in a JSON tree (booleans are not numbers)."""
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in numeric_leaves(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in numeric_leaves(x)]
    return [float(obj)] if isinstance(obj, int | float) and not isinstance(obj, bool) else []


def stated_numbers(block: str) -> list[str]:
    """The numbers a Markdown block states: table cells (not headers, not the method column) and text.

    Code spans (run ids, metric labels), bold titles and footnote lines carry names, not results.
    """
    out = []
    lines = block.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(tuple(SUPERSCRIPT)) or re.match(r"^\|[:\-| ]+\|$", line):
            continue
        if line.startswith("|"):
            if i + 1 < len(lines) and re.match(r"^\|[:\-| ]+\|$", lines[i + 1]):
                continue  # header row
            line = "|".join(line.split("|")[2:])  # drop the method column
        line = re.sub(r"`[^`]*`|\*\*[^*]*\*\*|\]\([^)]*\)", " ", line)
        out += [m.group(0) for m in NUMBER.finditer(line)]
    return out


def missing_from_summary(block: str, summary: dict[str, Any]) -> list[str]:
    """The stated numbers that no summary.json value rounds to (within half the last shown digit)."""
    values = numeric_leaves(summary)
    missing = []
    for text in stated_numbers(block):
        m = NUMBER.fullmatch(text)
        assert m
        decimals = len(m.group(1) or "")
        tol = 0.5 * 10.0 ** (-decimals) * (10.0 ** int(m.group(2)) if m.group(2) else 1.0) + 1e-12
        if not any(abs(v - float(text)) <= tol for v in values):
            missing.append(text)
    return missing
