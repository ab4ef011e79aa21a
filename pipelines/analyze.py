"""DVC stage `analyze`: tables, plots and REPORT.md from the run directories."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import fail
from embreg.analysis.report import analyze
from embreg.params import compose_run, load_params


def main() -> None:
    params = load_params()
    results = Path(compose_run(params.profile, params.overrides).paths.results)
    analyze(results)
    print(f"wrote {results}/REPORT.md")


if __name__ == "__main__":
    sys.exit(fail(main))
