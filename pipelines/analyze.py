"""DVC stage `analyze`: tables, plots, REPORT.md, summary.json, metrics/ and README_results.md from
the run directories (then `python pipelines/readme.py --all` puts the generated blocks into docs/results/ and README.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import fail, stage_params
from embreg.analysis.report import analyze
from embreg.params import compose_run


def main() -> None:
    params = stage_params()
    results = Path(compose_run(params.profile, params.overrides).paths.results)
    analyze(results)
    print(f"wrote {results}/REPORT.md; `python pipelines/readme.py --all` updates docs/results/ and README.md")


if __name__ == "__main__":
    sys.exit(fail(main))
