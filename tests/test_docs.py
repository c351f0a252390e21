"""The README stays a short front door, and every relative link in it and in docs/ resolves:
to an existing file and, when it names an anchor, to a heading of that file (GitHub's slugs).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

README_MAX_LINES = 160
# The two set-up commands, exactly as the README's "## The two commands" gives them.
TWO_COMMANDS = [
    "make demo    # creates .venv if missing, builds tiny models, runs the embedded stack"
    " end to end",
    "make test    # creates .venv if missing, starts PostgreSQL/Redis if needed, runs every test",
]

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[^)]*)?\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def _without_code(text: str) -> str:
    """The text with fenced blocks and code spans blanked out: links there are not links."""
    text = FENCE.sub("", text)
    return CODE_SPAN.sub("code", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation other than - and _
    dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub gives the headings of a page; a repeated slug gets -1, -2, ..."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(FENCE.sub("", path.read_text())):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    text = _without_code(path.read_text())
    targets = [m.group(1) for m in INLINE_LINK.finditer(text)]
    targets += [m.group(1) for m in REFERENCE_DEFINITION.finditer(text)]
    targets = [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in targets]
    return [t for t in targets if not EXTERNAL.match(t)]


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and unquote(anchor) not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {_name(linked)}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_docs_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_docs_link_checker_catches_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Two words, and `code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md) [fine](other.md#two-words-and-code) [fine](#page)\n"
        "[gone](missing.md) [gone](other.md#no-such-heading) [gone](#nowhere)\n"
        "`[not a link](missing.md)`\n\n```\n[not a link](missing.md)\n```\n"
    )
    assert [line.split(":")[0] for line in broken_links(page)] == [
        "missing.md",
        "other.md#no-such-heading",
        "#nowhere",
    ]


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Many keys, one service", "many-keys-one-service"),
        ("M-BEIR: `umarvel eval mbeir ROOT`", "m-beir-umarvel-eval-mbeir-root"),
        (
            "Your own data: `umarvel eval collection NAME --queries FILE`",
            "your-own-data-umarvel-eval-collection-name---queries-file",
        ),
        ("What `make test` covers", "what-make-test-covers"),
        ("snake_case stays", "snake_case-stays"),
    ],
)
def test_docs_slug_follows_github(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_readme_is_short() -> None:
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_readme_keeps_the_two_commands() -> None:
    text = README.read_text()
    assert "\n## The two commands\n" in text
    section = text.split("\n## The two commands\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    for command in TWO_COMMANDS:
        assert command in lines, f"README's two commands lost: {command!r}"


def test_readme_links_every_docs_page() -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)
    }
    unlinked = [_name(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert unlinked == [], "docs pages missing from the README's Documentation list"


@pytest.mark.parametrize("page", PAGES[1:], ids=_name)
def test_docs_page_links_back_to_the_readme(page: Path) -> None:
    targets = {(page.parent / t.partition("#")[0]).resolve() for t in relative_links(page)}
    assert README.resolve() in targets
