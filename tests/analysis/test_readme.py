"""The README's results block is what the analysis generates from the committed results/default.

Read at test time, so regenerated results (new arms, more seeds) only need
`python pipelines/readme.py` to pass again; a README edited by hand, or not refreshed, fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from embreg.analysis.aggregate import load_results
from embreg.analysis.readme import block_in, readme_block
from embreg.analysis.summary import build, summarize
from tests.analysis.helpers import missing_from_summary, stated_numbers

REPO = Path(__file__).resolve().parents[2]
RESULTS = "results/default"


@pytest.fixture(scope="module")
def generated() -> tuple[str, dict]:
    """The block and the summary the analysis writes for results/default (comparisons from conf/ablation)."""
    an = build(load_results(REPO / RESULTS), REPO / "conf" / "ablation")
    return readme_block(an, RESULTS), summarize(an)


def test_readme_block_is_generated(generated: tuple[str, dict]) -> None:
    block, _ = generated
    assert block_in((REPO / "README.md").read_text()) == block, (
        "README.md's results block is stale: run `python pipelines/analyze.py && python pipelines/readme.py`")


def test_readme_numbers_are_in_summary(generated: tuple[str, dict]) -> None:
    block, summary = generated
    readme_block_text = block_in((REPO / "README.md").read_text())
    assert len(stated_numbers(readme_block_text)) > 50  # the main table and the findings, not an empty block
    assert missing_from_summary(readme_block_text, summary) == []
