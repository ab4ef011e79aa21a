"""The README's results blocks are what the analysis generates from the committed results/default
and results/robustness (the robustness studies' block between its own markers).

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
PROFILES = ["default", "robustness"]


@pytest.fixture(scope="module", params=PROFILES)
def generated(request: pytest.FixtureRequest) -> tuple[str, str, dict]:
    """The block and the summary the analysis writes for results/<profile> (comparisons from conf/ablation)."""
    results = f"results/{request.param}"
    an = build(load_results(REPO / results), REPO / "conf" / "ablation")
    return request.param, readme_block(an, results), summarize(an)


def test_readme_block_is_generated(generated: tuple[str, str, dict]) -> None:
    profile, block, _ = generated
    assert block_in((REPO / "README.md").read_text(), profile) == block, (
        f"README.md's {profile} results block is stale: run `python pipelines/analyze.py --profile {profile} && "
        f"python pipelines/readme.py --profile {profile}`")


def test_readme_numbers_are_in_summary(generated: tuple[str, str, dict]) -> None:
    profile, _, summary = generated
    readme_block_text = block_in((REPO / "README.md").read_text(), profile)
    assert len(stated_numbers(readme_block_text)) > 50  # the main table and the findings, not an empty block
    assert missing_from_summary(readme_block_text, summary) == []
