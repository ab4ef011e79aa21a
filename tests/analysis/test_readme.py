"""Each profile's results page (docs/results/<profile>.md) holds what the analysis generates from the
committed results/<profile> (the default's block between `<!-- results:... -->` markers, another
profile's between `<!-- results:<profile>:... -->`), with its links written from the page; a
profile without committed results says so.

Read at test time, so regenerated results (new arms, more seeds) only need
`python pipelines/readme.py --profile P` to pass again; a page edited by hand, or not refreshed,
fails. The splicer itself: tests/analysis/test_analysis.py and test_studies.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from embreg.analysis.aggregate import load_results
from embreg.analysis.readme import block_in, page_block, readme_block, relink, results_page, splice
from embreg.analysis.summary import build, summarize
from tests.analysis.helpers import missing_from_summary, stated_numbers

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted(p.stem for p in (REPO / "docs" / "results").glob("*.md") if p.stem != "index")
WITH_RESULTS = [p for p in PAGES if (REPO / "results" / p / "runs" / "manifest.json").is_file()]


def page_text(profile: str) -> str:
    return (REPO / results_page(profile)).read_text()


@pytest.fixture(scope="module", params=WITH_RESULTS)
def generated(request: pytest.FixtureRequest) -> tuple[str, str, dict]:
    """The block and the summary the analysis writes for results/<profile> (comparisons from conf/ablation)."""
    results = f"results/{request.param}"
    an = build(load_results(REPO / results), REPO / "conf" / "ablation")
    return request.param, readme_block(an, results), summarize(an)


def test_committed_profiles_have_a_page() -> None:
    assert {"default", "robustness"} <= set(WITH_RESULTS), WITH_RESULTS


def test_results_page_block_is_generated(generated: tuple[str, str, dict]) -> None:
    profile, block, _ = generated
    page = results_page(profile)
    assert block_in(page_text(profile), profile) == page_block(block, page), (
        f"{page}'s results block is stale: run `python pipelines/analyze.py --profile {profile} && "
        f"python pipelines/readme.py --profile {profile}`")


def test_results_page_numbers_are_in_summary(generated: tuple[str, str, dict]) -> None:
    profile, _, summary = generated
    text = block_in(page_text(profile), profile)
    assert len(stated_numbers(text)) > 50  # the main table and the findings, not an empty block
    assert missing_from_summary(text, summary) == []


@pytest.mark.parametrize("profile", [p for p in PAGES if p not in WITH_RESULTS])
def test_a_page_without_results_says_so(profile: str) -> None:
    assert block_in(page_text(profile), profile).startswith("No committed results for this profile yet")


def test_links_are_rewritten_from_the_page() -> None:
    block = "From [`results/x/REPORT.md`](results/x/REPORT.md), [site](https://a.b/c) and [top](#top).\n"
    assert relink(block, Path("docs/results/x.md")) == (
        "From [`results/x/REPORT.md`](../../results/x/REPORT.md), [site](https://a.b/c) and [top](#top).\n")
    assert relink(block, Path("README.md")) == block
    page = "# x\n<!-- results:x:begin -->\nold\n<!-- results:x:end -->\n"
    assert block_in(splice(page, "new\n", "x"), "x") == "new\n"


def test_status_table_gives_each_profiles_runs_time_and_machine(tmp_path: Path) -> None:
    """A row per profile from its provenance.json: finished runs, their run time summed, the
    machine, the date; a profile without results says so in every column."""
    import json

    from embreg.analysis.headline import status_table

    done = tmp_path / "done"
    (done / "runs").mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"profile": "done"}))
    (done / "runs" / "manifest.json").write_text(json.dumps({"ablations": {"anticollapse": [], "hosts": []}}))
    (done / "provenance.json").write_text(json.dumps({
        "runs_done": 71, "run_hours": 0.85, "last_end": "2026-12-06 19:00 UTC",
        "fields": {"CPU": {"Some CPU (2 cores)": 71}, "GPU": {"none": 71}}}))
    long = tmp_path / "long"
    long.mkdir()
    (long / "summary.json").write_text(json.dumps({"profile": "long"}))
    (long / "provenance.json").write_text(json.dumps({"runs_done": 3, "run_hours": 12.25, "fields": {"GPU": {"H100": 3}}}))
    rows = status_table(tmp_path, ["done", "long", "none"]).splitlines()
    assert rows[0].startswith("| profile | ablations | finished runs | run time, summed |")
    assert rows[2] == ("| `done` | anticollapse, hosts | 71 | 51 min | Some CPU (2 cores) | 2026-12-06 "
                       "| [REPORT](results/done/REPORT.md) |")
    assert "| 12.2 h | H100 |" in rows[3]
    assert rows[4] == "| `none` | — | none committed | — | — | — | — |"
