"""Generated blocks in the README and the docs: each spliced between two markers,
``<!-- tag:begin -->`` and ``<!-- tag:end -->``, and checked by a test that regenerates it.

A profile's results block: ``analyze`` writes ``results/<profile>/README_results.md``;
``python pipelines/readme.py --profile P`` copies it into its docs page, docs/results/P.md
(markers ``results`` for the default profile, ``results:P`` for another), with its links
rewritten relative to the page. The docs' other blocks (the table of terms, the profiles' facts,
their SLURM resources: ``embreg.analysis.docs_blocks``) are written by ``--docs``; ``--all``
writes every block whose source exists. tests/analysis/test_readme.py and tests/test_docs.py
regenerate each block and compare, so a page that was not refreshed fails.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from embreg.analysis.claims import verdict_line, verdicts
from embreg.analysis.findings import findings, method_note, resolution_line
from embreg.analysis.study_report import spearman_lines, verdict_lines
from embreg.analysis.summary import Analysis, resolution
from embreg.analysis.tables import main_table

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"  # the default profile's (markers())
BLOCK_FILE = "README_results.md"
DOCS_RESULTS = Path("docs") / "results"  # docs/results/<profile>.md: a profile's results page
# a Markdown link or image whose target is a path (no scheme, no anchor-only target)
LINK = re.compile(r"(!?\[[^\]]*\]\()(?![a-z][a-z0-9+.-]*:|#|/)([^)\s]+)(\))")


def readme_block(an: Analysis, results_path: str) -> str:
    """The block's Markdown: the main table whole, the generated findings and what the profile resolves."""
    manifest = an.results.manifest
    out = [f"From [`{results_path}/REPORT.md`]({results_path}/REPORT.md) (every table, test and plot); "
           "cells are mean [95% CI] over seeds, n seeds per row, `—` with a footnote where a run has no value.",
           "", main_table(an.results).markdown().rstrip("\n"), "",
           "What the numbers show (generated from the statistics). " + method_note(), ""]
    for name, abl in manifest.get("ablations", {}).items():
        out.append(f"**{abl.get('title', name)}**")
        if name in an.studies:
            study = an.studies[name]
            out += [f"- {line}" for line in [*verdict_lines(an.results, study), *spearman_lines(study)]]
        else:
            out += [f"- {line}" for line in findings(an.accuracy.get(name, []))]
            out += [f"- collapse: {line}" for line in findings(an.collapse.get(name, []), list_rest=False)]
            comps = an.accuracy.get(name, []) + an.collapse.get(name, [])
            out += [f"- claim: {verdict_line(v)}" for v in verdicts(abl, comps)]
        out.append("")
    if an.runs or not an.studies:
        out.append(resolution_line(an, resolution(an)))
    return "\n".join(out).rstrip("\n") + "\n"


def tag_markers(tag: str) -> tuple[str, str]:
    """The markers around the block ``tag``: ``<!-- tag:begin -->``, ``<!-- tag:end -->``."""
    return f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"


def results_tag(profile: str = "default") -> str:
    """A profile's results block: ``results`` for the default, ``results:<profile>`` else."""
    return "results" if profile == "default" else f"results:{profile}"


def markers(profile: str = "default") -> tuple[str, str]:
    """The markers of a profile's results block."""
    return tag_markers(results_tag(profile))


def _span(text: str, tag: str) -> tuple[int, int]:
    begin, end_mark = tag_markers(tag)
    start, end = text.find(begin), text.find(end_mark)
    if start < 0 or end < start:
        raise ValueError(f"no {begin} ... {end_mark} pair: add both markers where the block goes")
    return start + len(begin), end


def splice_tag(text: str, block: str, tag: str) -> str:
    """``text`` with what lies between the markers of ``tag`` replaced by ``block``."""
    start, end = _span(text, tag)
    return text[:start] + "\n" + block.rstrip("\n") + "\n" + text[end:]


def block_at(text: str, tag: str) -> str:
    """What lies between the markers of ``tag`` (without the newlines next to them)."""
    start, end = _span(text, tag)
    return text[start:end].strip("\n") + "\n"


def splice(readme: str, block: str, profile: str = "default") -> str:
    """``readme`` with a profile's results block replaced by ``block``."""
    return splice_tag(readme, block, results_tag(profile))


def block_in(readme: str, profile: str = "default") -> str:
    """A profile's results block in ``readme``."""
    return block_at(readme, results_tag(profile))


def relink(block: str, page: Path) -> str:
    """``block``'s relative links, written from the repository root, rewritten from ``page``'s folder
    (``page`` relative to the root; the README's own links stay as they are)."""
    base = page.parent
    if base == Path("."):
        return block
    return LINK.sub(lambda m: m.group(1) + Path(os.path.relpath(m.group(2), base)).as_posix() + m.group(3), block)


def results_page(profile: str) -> Path:
    """The docs page of a profile's results, relative to the repository root."""
    return DOCS_RESULTS / f"{profile}.md"


def page_block(block: str, page: Path) -> str:
    """A profile's results block as its page shows it (links from the page's folder)."""
    return relink(block, page)


def write_block(repo: Path, page: Path, block: str, tag: str) -> None:
    path = repo / page
    path.write_text(splice_tag(path.read_text(), block, tag))
    print(f"{page}: block {tag!r}")


def splice_results(repo: Path, profile: str, page: Path | None = None) -> int:
    """Copy ``results/<profile>/README_results.md`` into its docs page (or ``page``)."""
    block = repo / "results" / profile / BLOCK_FILE
    if not block.is_file():
        print(f"error: {block.relative_to(repo)} not found: run the analysis first (dvc repro, or python "
              f"pipelines/analyze.py --profile {profile})", file=sys.stderr)
        return 1
    page = page or results_page(profile)
    write_block(repo, page, page_block(block.read_text(), page), results_tag(profile))
    return 0


def main(argv: list[str] | None = None, repo: Path | None = None) -> int:
    """Splice a profile's results block into its docs page; ``--docs``: the docs' other blocks;
    ``--all``: both, for every profile that has a page and a generated block."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default", help="the profile whose results block to copy (default: default)")
    ap.add_argument("--into", type=Path, help="the page to splice it into (default: docs/results/<profile>.md)")
    ap.add_argument("--docs", action="store_true", help="the docs' generated blocks: terms, profiles, SLURM resources")
    ap.add_argument("--all", action="store_true", help="--docs and every profile's results page")
    args = ap.parse_args(argv)
    repo = repo or Path.cwd()
    rc = 0
    if args.docs or args.all:
        from embreg.analysis.docs_blocks import PAGES, blocks

        for tag, block in blocks(repo).items():
            write_block(repo, Path(PAGES[tag]), block, tag)
    if args.all:
        for page in sorted((repo / DOCS_RESULTS).glob("*.md")):
            if (repo / "results" / page.stem / BLOCK_FILE).is_file():
                rc |= splice_results(repo, page.stem, page.relative_to(repo))
    elif not args.docs:
        rc = splice_results(repo, args.profile, args.into)
    return rc


if __name__ == "__main__":
    sys.exit(main())
