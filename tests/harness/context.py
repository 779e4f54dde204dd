"""What Dagger uploads for a host directory loaded with ``exclude`` patterns (a module's contextual directory).

Dagger 0.21 walks the host directory with moby's patternmatcher (``internal/fsutil/filter.go``):

- each pattern is cleaned like a path (``!app/`` is ``!app``); ``*`` matches within one path part, ``**/x``
  at any depth (the top level included), ``?`` one character;
- a path is excluded when the last pattern that matches it, or one of its parent directories, is an exclusion
  (later patterns win, ``!`` re-includes);
- the walk skips an excluded directory unless some ``!`` pattern starts with that directory plus ``/`` (or
  any ``!`` pattern holds a wildcard), so ``!ci/src`` is found under an excluded ``ci``, which then appears
  only as the parent of what it holds;
- files arrive owned by root (uid and gid 0) with their modes kept;
- ``.gitignore`` is *not* applied to contextual directories (applied in 0.18.17, reverted in 0.18.18).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

WILDCARDS = frozenset("*?[\\")


@dataclass(frozen=True)
class Pattern:
    text: str  # cleaned, without the leading "!"
    exclusion: bool  # a "!" pattern: matching re-includes
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, raw: str) -> Pattern:
        text = raw.strip()
        exclusion = text.startswith("!")
        if exclusion:
            text = text[1:].strip()
        text = os.path.normpath(text).lstrip("/") if text not in ("", "/") else text
        return cls(text, exclusion, re.compile(to_regex(text)))

    def matches(self, path: str) -> bool:
        """True when ``path`` or one of its parent directories matches."""
        parts = path.split("/")
        return any(self.regex.fullmatch("/".join(parts[: i + 1])) for i in range(len(parts)))


def to_regex(pattern: str) -> str:
    """patternmatcher's translation of one cleaned pattern into a regular expression."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out.append(".*" if i >= len(pattern) else "(.*/)?")
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


class Filter:
    """The exclude patterns of one upload, evaluated as Dagger's walker does."""

    def __init__(self, exclude: Sequence[str]) -> None:
        self.patterns = [Pattern.parse(p) for p in exclude if p.strip()]
        inclusions = [p for p in self.patterns if p.exclusion]
        self.any_wild_inclusion = any(WILDCARDS & set(p.text) for p in inclusions)
        self.inclusions = [p.text for p in inclusions]

    def excluded(self, path: str) -> bool:
        excluded = False
        for pattern in self.patterns:
            if pattern.matches(path):
                excluded = not pattern.exclusion
        return excluded

    def descend(self, directory: str) -> bool:
        """Whether the walk enters an excluded ``directory`` (something under it may be re-included)."""
        return self.any_wild_inclusion or any(text.startswith(directory + "/") for text in self.inclusions)


def uploaded(root: Path, exclude: Sequence[str]) -> list[str]:
    """The relative POSIX paths Dagger uploads from ``root`` (files, symlinks, directories), sorted.

    Parent directories of what is uploaded are listed too, as they exist in the upload.
    """
    rules = Filter(exclude)
    kept: set[str] = set()

    def walk(directory: Path, relative: str) -> Iterator[str]:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path = f"{relative}/{entry.name}" if relative else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if rules.excluded(path):
                if is_dir and rules.descend(path):
                    yield from walk(Path(entry.path), path)
                continue
            yield path
            if is_dir:
                yield from walk(Path(entry.path), path)

    for path in walk(root, ""):
        kept.add(path)
        for parent in PurePosixPath(path).parents:
            if str(parent) != ".":
                kept.add(str(parent))
    return sorted(kept)
