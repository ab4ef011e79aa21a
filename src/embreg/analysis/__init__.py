"""Analysis of a sweep: tables, plots, REPORT.md and summary.json from the run directories.

Entry point: :func:`embreg.analysis.report.analyze`.
"""

from embreg.analysis.report import analyze

__all__ = ["analyze"]
