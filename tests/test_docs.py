"""The documentation's links: every relative link leads to a file, every #anchor to a heading."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(
    {
        ROOT / "README.md",
        ROOT / "BENCHMARKS.md",
        ROOT / "bench" / "README.md",
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("examples/*/README.md"),
        *ROOT.glob("results/**/README.md"),
    }
)
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")


def _prose(text: str) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slugs(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lowercase, punctuation but hyphens and spaces
    removed, spaces to hyphens, a repeated heading suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    found = set()
    for line in _prose(page.read_text(encoding="utf-8")):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    """Every link on the page that is not a URL with a scheme (http:, mailto:, ...)."""
    links = []
    for line in _prose(page.read_text(encoding="utf-8")):
        text = re.sub(r"`[^`]*`", "", line)
        links += [t for t in LINK.findall(text) if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]
    return links


def broken(page: Path) -> list[str]:
    problems = []
    for link in relative_links(page):
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            problems.append(f"{link}: no file {path}")
        elif anchor and path.suffix == ".md" and anchor not in slugs(path):
            problems.append(f"{link}: no heading #{anchor} in {path}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_in_the_docs_leads_somewhere(page: Path) -> None:
    assert broken(page) == []


def test_the_link_check_finds_a_broken_link_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# A title\n\n## Same\n\n## Same\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#same-1) [ok](#here) [ok](https://example.org/x)\n"
        "[gone](missing.md) [no heading](other.md#same-2)\n\n## Here\n"
    )
    problems = [p.split(":")[0] for p in broken(page)]
    assert problems == ["missing.md", "other.md#same-2"]


def test_headings_get_githubs_anchors(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# From Python: a notebook, or a script\n## d. gpu_grid.py on the GPU\n## Data\n## Data\n")
    assert slugs(page) == {"from-python-a-notebook-or-a-script", "d-gpu_gridpy-on-the-gpu", "data", "data-1"}


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in relative_links(ROOT / "README.md")}
    unlinked = [p.name for p in sorted(ROOT.glob("docs/*.md")) if p.resolve() not in linked]
    assert unlinked == []


def test_the_readme_reads_in_five_minutes() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150
