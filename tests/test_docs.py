"""The documentation: the site builds with `mkdocs build --strict` (and that build fails on a
broken link, anchor or repository path), every generated block of the docs equals what its
generator writes now, the README's links resolve, and no tracked file carries words about how
the project was developed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from markdown.extensions.toc import slugify

from embreg.analysis.docs_blocks import PAGES, blocks
from embreg.analysis.readme import block_at, tag_markers

REPO = Path(__file__).resolve().parents[1]
HOOK = REPO / "docs" / "_hooks" / "repo_links.py"


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, cwd=config.parent)


def test_site_builds_strict(tmp_path: Path) -> None:
    res = mkdocs_build(REPO / "mkdocs.yml", tmp_path / "site")
    assert res.returncode == 0 and "WARNING" not in res.stderr, res.stderr[-3000:]
    assert (tmp_path / "site" / "slurm" / "index.html").is_file()


@pytest.fixture
def small_site(tmp_path: Path) -> Path:
    """A copy of the site's configuration around two pages and one repository file."""
    cfg = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    cfg.update(nav=["index.md", "other.md"], hooks=[str(HOOK)], site_name="t")
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## A section\n\ntext\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "x.yaml").write_text("a: 1\n")
    return tmp_path


@pytest.mark.parametrize("link, why", [
    ("[ok](other.md#a-section) and [a file](../conf/x.yaml) and `[in code](../conf/nothere.yaml)`", None),
    ("[gone](missing.md)", "not found among documentation files"),
    ("[anchor](other.md#no-such-section)", "does not contain an anchor"),
    ("[repository path](../conf/nothere.yaml)", "no such file in the repository"),
])
def test_strict_build_fails_on_a_broken_link_anchor_or_path(small_site: Path, link: str, why: str | None) -> None:
    (small_site / "docs" / "index.md").write_text(f"# Home\n\n{link}\n")
    res = mkdocs_build(small_site / "mkdocs.yml", small_site / "site")
    if why is None:
        assert res.returncode == 0, res.stderr[-3000:]
        html = (small_site / "site" / "index.html").read_text()
        assert "<code>conf/x.yaml</code>" in html  # a repository path, rewritten for the site
    else:
        assert res.returncode != 0 and why in res.stderr, res.stderr[-3000:]


def test_generated_docs_blocks_are_current() -> None:
    """The table of terms, the profiles, the ablations, the SLURM resources and the module map."""
    stale = []
    for tag, block in blocks(REPO).items():
        if block_at((REPO / PAGES[tag]).read_text(), tag) != block:
            stale.append(f"{PAGES[tag]} ({tag})")
    assert not stale, f"stale generated blocks: {stale}; run `python pipelines/readme.py --docs`"


def test_key_findings_read_at_a_glance() -> None:
    """3 to 6 findings, one per question (scale, each ablation, the robustness studies), and the
    headline figure (its numbers: test_generated_docs_blocks_are_current)."""
    text = block_at((REPO / "README.md").read_text(), "findings")
    bullets = [line for line in text.splitlines() if line.startswith("- ")]
    assert 3 <= len(bullets) <= 6, bullets
    assert "![" in text and "headline.png" in text


def test_every_docs_page_is_in_the_nav() -> None:
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    listed = set(re.findall(r"[\w/-]+\.md", str(nav)))
    pages = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert pages == listed, (sorted(pages - listed), sorted(listed - pages))


def _anchors(page: Path) -> set[str]:
    return {slugify(re.sub(r"[`*]", "", m.group(1)).strip(), "-")
            for m in re.finditer(r"^#+\s+(.*)$", page.read_text(), re.M)}


def test_readme_links_resolve_and_its_blocks_are_marked() -> None:
    """The README is read on GitHub: each relative link names a file of the repository (and an
    anchor of that page); it holds the two blocks the analysis fills, once each."""
    text = (REPO / "README.md").read_text()
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue
        path, _, anchor = target.partition("#")
        file = REPO / path
        if not file.exists() or (anchor and anchor not in _anchors(file)):
            bad.append(target)
    assert not bad, f"README links to nothing: {bad}"
    for tag in ("findings", "status"):
        begin, end = tag_markers(tag)
        assert text.count(begin) == 1 and text.count(end) == 1 and text.index(begin) < text.index(end), tag
    assert len(text.splitlines()) <= 220, "the README stays short: the rest belongs in docs/"


# Words about how the project was developed, rather than what it is: (pattern, what a line with a
# legitimate use also holds, what to write instead). A public reference such as pytorch#94772
# matches none of them.
BUILD_WORDS = [
    (r"\bissues? #?\d+|\(issue\b|\bissue #", None, "an issue number: state the fact itself"),
    (r"(?<![\w\"'.])sessions?(?![\w\"'])", r"pytest|scope=\"session\"|terminal session|start_new_session",
     "a session: say what the project does"),
    (r"\blent\b|\bat hand\b|device call|device time", None,
     "which machine was available: state the hardware of a measurement"),
    (r"\$OUT\b|/work/|shared/GPU\.md", None, "a path or variable outside the repository"),
    (r"\bmachine it was built with\b|\bwhile building\b|\botherwise idle\b|\btried (it )?at [0-9a-f]{7}", None,
     "an account of how it was built: state what holds, with hardware and commit"),
]


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    skip = ("results/", "dvc.lock")
    return [REPO / f for f in out.stdout.split("\0") if f and not f.startswith(skip) and f != "tests/test_docs.py"]


def test_no_words_about_how_the_project_was_built() -> None:
    hits = []
    for path in tracked_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for pattern, allowed, why in BUILD_WORDS:
                if re.search(pattern, line, re.I) and not (allowed and re.search(allowed, line)):
                    hits.append(f"{path.relative_to(REPO)}:{n}: {why}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
