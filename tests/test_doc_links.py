"""The repository's Markdown files link only inside the repository, to files that exist and headings they hold.

A unit test (it reads repository files only): a section renamed or dropped breaks the links to it, as the README's
link to the quickstart's timing once broke when another section took that heading's place.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[1]
LINK: Final = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)
HEADING: Final = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)
FENCE: Final = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
SKIPPED: Final = ("ci/sdk/", "bench/.venvs/", "bench/results/", "node_modules/")


def markdown_files() -> list[Path]:
    """The repository's own Markdown files: none under a hidden folder (``.venv``), the SDK the Dagger module
    generates (``ci/sdk``) or the peers' venvs and results of the benchmarks."""
    return sorted(
        path
        for path in ROOT.rglob("*.md")
        if not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
        and not path.relative_to(ROOT).as_posix().startswith(SKIPPED)
    )


def prose(path: Path) -> str:
    """``path``'s text without its fenced code blocks (a ``#`` there is a comment, a ``[x](y)`` code)."""
    return FENCE.sub("", path.read_text())


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, no punctuation but ``-`` and ``_``, spaces as ``-``."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every heading anchor of ``path``; a repeated heading's second anchor ends in ``-1``, as GitHub makes it."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(prose(path)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def test_the_slug_is_githubs() -> None:
    assert slug("The quickstart's timing") == "the-quickstarts-timing"
    assert slug("The interactive docs (`/docs` and `/redoc`)") == "the-interactive-docs-docs-and-redoc"
    assert slug("Open Inference Protocol (V2)") == "open-inference-protocol-v2"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_link_stays_in_the_repository_and_reaches_its_target(path: Path) -> None:
    broken = []
    for target in LINK.findall(prose(path)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:...: outside the repository
            broken.append(f"{target}: a link outside the repository")
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.is_relative_to(ROOT) or not linked.exists():
            broken.append(f"{target}: no such file in the repository")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert broken == []
