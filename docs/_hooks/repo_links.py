"""MkDocs hook: links from the docs to repository files outside docs/ (results/, conf/, src/, ...).

The pages link to them with relative paths, which work where the Markdown is read in the
repository (GitHub, an editor). The site holds docs/ only, so here each such link is checked and
rewritten: a path that does not exist is a warning (``mkdocs build --strict`` fails on it); a link
becomes a link to the repository (``repo_url`` in mkdocs.yml, branch ``extra.repo_branch``) or,
without ``repo_url``, the path in a code span; an image is copied into the site (under _repo/).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.repo_links")
LINK = re.compile(r"(!?)\[([^\]]*)\]\((?![a-z][a-z0-9+.-]*:|#|/)([^)\s#]+)(#[^)\s]*)?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).+?\1")
SITE_COPY = "_repo"  # where images from outside docs/ go in the site


def _outside(docs: Path, page_src: str, target: str) -> Path | None:
    """The target, relative to the repository root, when it lies outside docs/; else None."""
    path = Path(os.path.normpath(docs / Path(page_src).parent / target))
    return None if path.is_relative_to(docs) else Path(os.path.relpath(path, docs.parent))


def _each_link(markdown: str):
    """(line index, match) for every link outside fenced code."""
    fenced = False
    for i, line in enumerate(markdown.split("\n")):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            spans = [c.span() for c in CODE_SPAN.finditer(line)]
            for m in LINK.finditer(line):
                if not any(a <= m.start() < b for a, b in spans):
                    yield i, m


def on_files(files: Files, config) -> Files:
    """Add the images the pages show from outside docs/ to the site."""
    docs = Path(config.docs_dir).resolve()
    wanted = set()
    for f in files.documentation_pages():
        for _, m in _each_link(Path(f.abs_src_path).read_text()):
            rel = _outside(docs, f.src_uri, m.group(3))
            if m.group(1) and rel is not None and (docs.parent / rel).is_file():
                wanted.add(rel)
    for rel in sorted(wanted):
        files.append(File.generated(config, f"{SITE_COPY}/{rel.as_posix()}", abs_src_path=str(docs.parent / rel)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Check and rewrite the page's links to repository files outside docs/."""
    docs = Path(config.docs_dir).resolve()
    repo_url = (config.repo_url or "").rstrip("/")
    branch = (config.extra or {}).get("repo_branch", "main")
    lines = markdown.split("\n")
    for i, m in reversed(list(_each_link(markdown))):
        image, text, target, anchor = m.group(1), m.group(2), m.group(3), m.group(4) or ""
        rel = _outside(docs, page.file.src_uri, target)
        if rel is None:
            continue  # a page or file of the site: MkDocs' own validation checks it
        path = docs.parent / rel
        if rel.parts[0] == ".." or not path.exists():
            log.warning(f"Doc file '{page.file.src_uri}' links to '{target}': no such file in the repository")
            continue
        if image:
            new = f"![{text}]({os.path.relpath(f'{SITE_COPY}/{rel.as_posix()}', Path(page.file.src_uri).parent)})"
        elif repo_url:
            new = f"[{text}]({repo_url}/{'tree' if path.is_dir() else 'blob'}/{branch}/{rel.as_posix()}{anchor})"
        else:
            new = text if text == f"`{rel.as_posix()}`" else f"{text} (`{rel.as_posix()}`)"
        lines[i] = lines[i][: m.start()] + new + lines[i][m.end():]
    return "\n".join(lines)
